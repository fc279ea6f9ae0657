#!/bin/bash
# Builds (or reuses) the bundled runtime: CPython and OpenSSL 3, compiled from the upstream sources of Debian's
# trixie source packages inside the Debian 11 build root (glibc 2.31), so nothing in it needs a symbol newer than
# GLIBC_2.31 and it runs on every target of docs/install.md.
#
#   packaging/runtime/build-runtime.sh ARCH      (ARCH: amd64 or arm64; prints the runtime directory)
#
# The result is cached outside the checkout, under ${P0_BUILD_CACHE:-/var/cache/p0-ssh-agent-build}, in
# runtime-ARCH-HASH, HASH covering every input (this script, inner.sh, sources.conf, the build root's stamp):
# a second `make package`, or a fresh clone on the same machine, reuses it. arm64 is cross-compiled with the amd64
# runtime as its build interpreter (CPython's cross build needs the same version to run), so it builds that first.
#
# Layout of a runtime directory:
#   python/            the interpreter at its final place, /usr/lib/p0-ssh-agent/python: bin/python3.X,
#                      lib/python3.X (stdlib without tests, idle, tkinter, ensurepip), lib/libssl.so.3,
#                      lib/libcrypto.so.3 and the bundled C libraries; every ELF file finds them through an $ORIGIN
#                      run path, so the tree also runs from where it was built (tests, smoke tests)
#   components.txt     name<TAB>version<TAB>origin of every bundled C component (the SBOM's first part)
#   build.log          the compiler output
# Needs root (chroot, mounts in a private mount namespace).
set -euo pipefail
umask 022

arch=${1:?usage: build-runtime.sh amd64|arm64}
case "$arch" in amd64 | arm64) ;; *) echo "build-runtime: unknown ARCH '$arch' (amd64 or arm64)" >&2; exit 64 ;; esac
here=$(cd "$(dirname "$0")" && pwd -P)
cache=${P0_BUILD_CACHE:-/var/cache/p0-ssh-agent-build}
root=$cache/bullseye-root

log() { printf 'runtime: [%4ss] %s\n' "$SECONDS" "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { echo "build-runtime: needs root (chroot)" >&2; exit 1; }
mkdir -p "$cache"
bash "$here/buildroot.sh" "$root" >&2

# One build per cache at a time: two would unpack into the same work directory.
exec 9>"$cache/.runtime-$arch.lock"
flock 9

inputs_hash=$(cat "$here/build-runtime.sh" "$here/inner.sh" "$here/sources.conf" "$root.stamp" | sha256sum | cut -c1-16)
out=$cache/runtime-$arch-$inputs_hash
if [ -f "$out/.complete" ]; then
    log "reusing $out"
    echo "$out"
    exit 0
fi

build_python_dir=
if [ "$arch" = arm64 ]; then
    build_python_dir=$(bash "$here/build-runtime.sh" amd64)
fi

log "building the $arch runtime into $out (a cold build takes 10-20 minutes on 2 cores)"
work=$cache/work-$arch
rm -rf "$out" "$work"
mkdir -p "$out/python" "$work"
cp "$here/inner.sh" "$here/sources.conf" "$work/"

# A private mount namespace: the build root sees the work directory at /build, the output at its final path
# /usr/lib/p0-ssh-agent/python (configure and the build's own import checks run against it), and the amd64
# runtime for a cross build at /build/host-python. Nothing is mounted on the host, and the mounts die with us.
start=$SECONDS
if ! unshare --mount --propagation private -- bash -c '
    set -euo pipefail
    root=$1 work=$2 out=$3 build_python_dir=$4
    mkdir -p "$root/build" "$root/usr/lib/p0-ssh-agent/python"
    mount --bind "$work" "$root/build"
    mount --bind "$out/python" "$root/usr/lib/p0-ssh-agent/python"
    if [ -n "$build_python_dir" ]; then
        # Under the root'"'"'s /build itself: a mount made on $work now would not show through the bind above.
        mkdir -p "$work/host-python"
        mount --bind -o ro "$build_python_dir/python" "$root/build/host-python"
    fi
    mount -t proc proc "$root/proc"
    mount -t tmpfs tmpfs "$root/tmp"
    chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/build \
        DEBIAN_FRONTEND=noninteractive bash /build/inner.sh "$5"
' _ "$root" "$work" "$out" "$build_python_dir" "$arch" >"$out/build.log" 2>&1; then
    tail -n 40 "$out/build.log" >&2
    echo "build-runtime: the $arch build failed (full log: $out/build.log)" >&2
    exit 1
fi
cp "$work/components.txt" "$out/components.txt"
rm -rf "$work"
echo "$((SECONDS - start))" >"$out/build-seconds"
touch "$out/.complete"
log "$arch runtime built in $((SECONDS - start)) s ($(du -sh "$out/python" | cut -f1))"
echo "$out"
