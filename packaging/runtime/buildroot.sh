#!/bin/bash
# Builds (or reuses) the Debian 11 (bullseye, glibc 2.31) root filesystem the bundled runtime is compiled in.
#
#   packaging/runtime/buildroot.sh DIR
#
# Why Debian 11: every ELF file of the package must need no symbol newer than GLIBC_2.34 (RHEL 9, Amazon Linux
# 2023). Whatever is linked on a system only ever asks for the symbol versions of the glibc it was linked
# against, so linking on glibc 2.31 guarantees the ceiling. Its own python3.9 and OpenSSL 1.1.1 are too old, so
# packaging/runtime/build-runtime.sh builds newer upstream sources (Debian's trixie source packages) inside it.
#
# The rootfs is cached: DIR.stamp records what went into it, and a rootfs whose stamp matches is reused as is.
# It is only ever used through chroot by the build, which never installs anything into it after this script.
set -euo pipefail

dir=${1:?usage: buildroot.sh DIR}
suite=bullseye
# build-essential/pkg-config: the compilers. dpkg-dev: apt-get source. patchelf: $ORIGIN run paths on the
# bundled libraries. The -dev packages are the C libraries CPython's extension modules link (libffi and the
# compressors are bundled or linked statically, see build-runtime.sh). crossbuild-essential-arm64 and the
# :arm64 libraries: the arm64 runtime is cross-compiled here (a native build under qemu-user takes hours).
packages=build-essential,pkg-config,dpkg-dev,patchelf,xz-utils,ca-certificates,file,perl
dev_libs=(libffi-dev zlib1g-dev libbz2-dev liblzma-dev uuid-dev)
cross=(crossbuild-essential-arm64)
# Bump when the customisation below changes, so cached roots are rebuilt.
recipe=1
stamp_text="suite=$suite recipe=$recipe packages=$packages dev=${dev_libs[*]} cross=${cross[*]}"

if [ -d "$dir" ] && [ -f "$dir.stamp" ] && [ "$(cat "$dir.stamp")" = "$stamp_text" ]; then
    echo "buildroot: reusing $dir"
    exit 0
fi

mirror=${P0_DEBIAN_MIRROR:-http://deb.debian.org/debian}
echo "buildroot: debootstrap $suite from $mirror into $dir (a few minutes)"
rm -rf "$dir.new" "$dir.stamp"
mkdir -p "$(dirname "$dir")"
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$dir.new" "$mirror" >"$dir.log" 2>&1; then
    tail -n 30 "$dir.log" >&2
    echo "buildroot: debootstrap failed (full log: $dir.log)" >&2
    exit 1
fi

# Binary packages from bullseye; source packages from trixie (CPython and OpenSSL 3 are built from them).
cat >"$dir.new/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb-src $mirror trixie main
SOURCES
in_root() { chroot "$dir.new" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
mount_api() { mount -t proc proc "$dir.new/proc"; }
umount_api() { umount "$dir.new/proc" 2>/dev/null || true; }
trap umount_api EXIT
mount_api
{
    in_root dpkg --add-architecture arm64
    in_root apt-get update -q
    in_root apt-get install -y -q --no-install-recommends "${dev_libs[@]}" "${cross[@]}" \
        "${dev_libs[@]/%/:arm64}"
} >>"$dir.log" 2>&1 || { tail -n 30 "$dir.log" >&2; echo "buildroot: apt-get failed (log: $dir.log)" >&2; exit 1; }
umount_api
rm -f "$dir.new"/var/cache/apt/archives/*.deb
rm -rf "$dir"
mv "$dir.new" "$dir"
echo "$stamp_text" >"$dir.stamp"
echo "buildroot: ready ($(du -sh "$dir" | cut -f1))"
