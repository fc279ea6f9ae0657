#!/bin/bash
# Installs the Debian packages that `make test` needs on a fresh Debian 12 machine (run as root).
# Idempotent: packages already present are skipped, so a second run costs one dpkg-query.
#
# openssh-server and sudo are installed with a policy-rc.d guard so their maintainer scripts cannot start
# a host sshd on 0.0.0.0:22 (../shared/docs/test-harness.md §3). systemd-container is pinned to the host's
# systemd version so installing it never upgrades the host's systemd.
set -euo pipefail

# gcc and libc6-dev build the slow-NSS LD_PRELOAD shim of the fault-injection tests (tests/fixtures/slow_nss.c).
# debootstrap builds the Debian 11 root the bundled runtime is compiled in (packaging/runtime/buildroot.sh) and
# the system test's rootfs; binutils (readelf) checks the payload's glibc ceiling; lintian and rpmlint check the
# packages (tests/test_package_payload.py). apt-utils (apt-ftparchive), createrepo-c, gnupg and rpm build and sign
# the repositories of `make repo`; dnf installs the .rpm from the signed dnf repository into a scratch root in the
# system test.
want=(openssh-server openssh-client sudo debootstrap rpm python3-venv iproute2 procps util-linux passwd gcc libc6-dev
    apt-utils createrepo-c gnupg dnf binutils lintian rpmlint)
need_nspawn_wanted=1
if [ "${1:-}" = "--venv-only" ]; then   # `make run` needs only a working venv module
    want=(python3-venv)
    need_nspawn_wanted=0
elif [ "${1:-}" = "--package" ]; then   # `make package`: the runtime build and the checks of packaging/build.sh
    want=(python3-venv debootstrap binutils)
    need_nspawn_wanted=0
    # ARCH=arm64: the cross-built runtime is smoke-tested under qemu-user.
    [ "${2:-amd64}" = amd64 ] || want+=(qemu-user-static)
fi
missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
need_nspawn=0
if [ $need_nspawn_wanted -eq 1 ]; then
    dpkg-query -W -f='${Status}\n' systemd-container 2>/dev/null | grep -q '^install ok installed$' || need_nspawn=1
fi

if [ ${#missing[@]} -eq 0 ] && [ $need_nspawn -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-build-deps: need root to install: ${missing[*]} ${need_nspawn:+systemd-container}" >&2
    exit 77
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
guard=/usr/sbin/policy-rc.d
guard_was_ours=0
if [ ! -e "$guard" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$guard" && chmod +x "$guard"
    guard_was_ours=1
fi
trap '[ $guard_was_ours -eq 1 ] && rm -f "$guard"' EXIT
if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ $need_nspawn -eq 1 ]; then
    v=$(dpkg-query -W -f='${Version}' systemd)
    apt-get install -y -qq --no-install-recommends "systemd-container=$v" >/dev/null \
        || apt-get install -y -qq --no-install-recommends systemd-container >/dev/null
fi
echo "install-build-deps: installed ${missing[*]}$([ $need_nspawn -eq 1 ] && echo ' systemd-container')"
