#!/bin/bash
# Runs INSIDE the Debian 11 build root (packaging/runtime/build-runtime.sh mounts it): builds OpenSSL 3 and
# CPython at their final prefix /usr/lib/p0-ssh-agent/python, trims and strips the result, and records the
# bundled C components in /build/components.txt.
#
#   bash /build/inner.sh amd64|arm64
set -euxo pipefail
arch=$1
# shellcheck source=packaging/runtime/sources.conf
. /build/sources.conf
prefix=/usr/lib/p0-ssh-agent/python
jobs=$(nproc)
cd /build

case "$arch" in
    amd64) triplet=x86_64-linux-gnu openssl_target=linux-x86_64 ;;
    arm64) triplet=aarch64-linux-gnu openssl_target=linux-aarch64 ;;
esac
multiarch_lib=/usr/lib/$triplet
if [ "$arch" = arm64 ]; then
    cross=(--host=aarch64-linux-gnu --build=x86_64-linux-gnu)
    export CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ AR=aarch64-linux-gnu-ar RANLIB=aarch64-linux-gnu-ranlib
    export PKG_CONFIG_LIBDIR=$multiarch_lib/pkgconfig:/usr/share/pkgconfig
    strip=aarch64-linux-gnu-strip
else
    cross=()
    strip=strip
fi

# --- sources: the upstream tarballs of the pinned Debian source packages ---------------------------------------
fetch() {  # fetch SOURCE VERSION: prints the path of the upstream tarball
    local source=$1 version=$2
    mkdir -p "src/$source" && cd "src/$source"
    if ! apt-get source --download-only -q "$source=$version" >&2; then
        apt-get update -q >&2
        apt-get source --download-only -q "$source=$version" >&2 || {
            echo "inner: $source=$version is no longer on the mirror: bump packaging/runtime/sources.conf" >&2
            exit 1
        }
    fi
    cd /build
    local tarball
    for tarball in "/build/src/$source/${source}_${version%-*}".orig.tar.{gz,xz,bz2}; do
        [ -f "$tarball" ] && { echo "$tarball"; return 0; }
    done
    echo "inner: no upstream tarball in the $source source package" >&2
    exit 1
}
python_tarball=$(fetch "$PYTHON_SOURCE" "$PYTHON_VERSION")
openssl_tarball=$(fetch "$OPENSSL_SOURCE" "$OPENSSL_VERSION")

# --- OpenSSL 3 -------------------------------------------------------------------------------------------------
# Its own OPENSSLDIR inside the runtime, with no openssl.cnf: the host's /etc/ssl/openssl.cnf belongs to the
# distribution's OpenSSL (on RHEL it includes crypto-policies and may name a FIPS provider this build does not
# have). The trust store is the distribution's CA bundle, which the agent finds itself (runtime/trust.py).
# The run path makes libssl find this libcrypto, never the host's libcrypto.so.3 (RHEL 9 has one).
mkdir -p build-openssl && tar -C build-openssl --strip-components=1 -xf "$openssl_tarball"
cd build-openssl
openssl_cross=()
[ "$arch" = arm64 ] && openssl_cross=(--cross-compile-prefix=aarch64-linux-gnu-)
# (OpenSSL prefixes its own CC with the cross prefix: the CPython cross variables must not reach it.)
env -u CC -u CXX -u AR -u RANLIB ./Configure "$openssl_target" "${openssl_cross[@]}" --prefix="$prefix" \
    --libdir=lib --openssldir="$prefix/ssl" shared no-tests no-docs no-engine no-module no-legacy
env -u CC -u CXX -u AR -u RANLIB make -j"$jobs" build_sw >/dev/null
make install_sw >/dev/null
cd /build
openssl_version=$(sed -n 's/^# define OPENSSL_FULL_VERSION_STR "\(.*\)"/\1/p' "$prefix/include/openssl/opensslv.h")

# --- CPython ---------------------------------------------------------------------------------------------------
# libffi (for ctypes), liblzma and libbz2 are copied in from Debian 11: their sonames differ between
# distributions (libffi.so.7/.8, libbz2.so.1.0/.1), so the host's cannot be used. Modules that would need
# anything else outside the base set are not built: _crypt (libcrypt.so.1 is gone from RHEL 9's default
# install), readline and curses (ncurses sonames differ), dbm/gdbm, sqlite3, tkinter, uuid (uuid.uuid4 needs
# no C library), nis.
mkdir -p build-python && tar -C build-python --strip-components=1 -xf "$python_tarball"
cd build-python
python_version=$(sed -n 's/^#define PY_VERSION[[:space:]]*"\(.*\)"/\1/p' Include/patchlevel.h)
short=${python_version%.*}
build_python=()
cross_cache=()
if [ "$arch" = arm64 ]; then
    build_python=(--with-build-python=/build/host-python/bin/python$short)
    # configure cannot run test programs for the target: the answers for Linux.
    cross_cache=(ac_cv_file__dev_ptmx=yes ac_cv_file__dev_ptc=no ac_cv_buggy_getaddrinfo=no)
fi
# No PGO (--enable-optimizations runs the test suite under instrumentation: too slow for a cold CI build on two
# cores) and no LTO (docs/install.md has the measurements). -O2 as Debian builds its own.
./configure "${cross[@]}" "${build_python[@]}" --prefix="$prefix" --disable-shared --without-ensurepip \
    --disable-test-modules --with-openssl="$prefix" --with-openssl-rpath=no --without-readline \
    "${cross_cache[@]}" \
    OPT='-DNDEBUG -fwrapv -O2' \
    CPPFLAGS="-I$prefix/include" LDFLAGS="-L$prefix/lib -Wl,-rpath,$prefix/lib" \
    py_cv_module__crypt=n/a py_cv_module__curses=n/a py_cv_module__curses_panel=n/a py_cv_module_readline=n/a \
    py_cv_module__dbm=n/a py_cv_module__gdbm=n/a py_cv_module__sqlite3=n/a py_cv_module__tkinter=n/a \
    py_cv_module__uuid=n/a py_cv_module_nis=n/a py_cv_module_xxlimited=n/a py_cv_module_xxlimited_35=n/a
make -j"$jobs" >/dev/null
make install >/dev/null
cd /build

libffi_version=$(dpkg-query -W -f='${Version}' "libffi7:$arch")
liblzma_version=$(dpkg-query -W -f='${Version}' "liblzma5:$arch")
libbz2_version=$(dpkg-query -W -f='${Version}' "libbz2-1.0:$arch")
cp -L "$multiarch_lib/libffi.so.7" "$multiarch_lib/liblzma.so.5" "$multiarch_lib/libbz2.so.1.0" "$prefix/lib/"

# --- trim ------------------------------------------------------------------------------------------------------
stdlib=$prefix/lib/python$short
rm -rf "$prefix/include" "$prefix/share" "$prefix/ssl" "$prefix/lib/pkgconfig" "$prefix/lib/cmake" \
    "$prefix/lib/engines-3" "$prefix/lib/ossl-modules" "$prefix/lib/libssl.so" "$prefix/lib/libcrypto.so" \
    "$prefix"/lib/libssl.a "$prefix"/lib/libcrypto.a "$prefix"/lib/libpython*.a \
    "$stdlib"/config-"$short"-* "$stdlib/test" "$stdlib/idlelib" "$stdlib/tkinter" "$stdlib/turtledemo" \
    "$stdlib/turtle.py" "$stdlib/ensurepip" "$stdlib/lib2to3" "$stdlib/site-packages"/*
find "$stdlib" -depth -type d \( -name tests -o -name test -o -name __pycache__ \) -exec rm -rf {} +
find "$prefix/bin" -mindepth 1 ! -name "python$short" -delete
ln -s "python$short" "$prefix/bin/python3"
mkdir -p "$stdlib/site-packages"

# --- relocatable run paths, then strip ---------------------------------------------------------------------------
# $ORIGIN instead of the absolute prefix: the same tree runs installed and from the build cache (for the tests).
while IFS= read -r -d '' elf; do
    file -b "$elf" | grep -q '^ELF' || continue
    dir=$(dirname "$elf")
    rel=$(realpath --relative-to="$dir" "$prefix/lib")
    patchelf --set-rpath "\$ORIGIN${rel:+/$rel}" "$elf"
    "$strip" --strip-unneeded "$elf"
done < <(find "$prefix" -type f \( -name '*.so*' -o -path "$prefix/bin/*" \) -print0)
# libffi, liblzma, libbz2 need only libc: no run path (patchelf set one above; remove it again).
for lib in libffi.so.7 liblzma.so.5 libbz2.so.1.0; do patchelf --remove-rpath "$prefix/lib/$lib"; done

printf 'CPython\t%s\t%s %s upstream tarball (Debian source package)\n' "$python_version" "$PYTHON_SOURCE" "$PYTHON_VERSION" >/build/components.txt
printf 'OpenSSL\t%s\t%s %s upstream tarball (Debian source package)\n' "$openssl_version" "$OPENSSL_SOURCE" "$OPENSSL_VERSION" >>/build/components.txt
printf 'libffi\t%s\tDebian 11 binary package libffi7\n' "$libffi_version" >>/build/components.txt
printf 'xz-utils (liblzma)\t%s\tDebian 11 binary package liblzma5\n' "$liblzma_version" >>/build/components.txt
printf 'bzip2 (libbz2)\t%s\tDebian 11 binary package libbz2-1.0\n' "$libbz2_version" >>/build/components.txt
echo "inner: done: CPython $python_version, OpenSSL $openssl_version"
