#!/bin/bash
# Builds (or reuses) the Debian 12 rootfs the system test boots with systemd-nspawn.
#
#   tests/system/rootfs.sh DIR
#
# The rootfs is cached: DIR.stamp records what went into it, and a rootfs whose stamp matches is reused as is
# (the test boots it with --volatile=overlay, so it never changes). Anything else is rebuilt from scratch with
# debootstrap from the Debian mirror in this machine's apt sources (override with P0_DEBIAN_MIRROR).
set -euo pipefail

dir=${1:?usage: rootfs.sh DIR}
suite=bookworm
hostname=p0-system-test
# What the test needs inside: a booting systemd, the package's dependencies (so apt resolves everything from
# the rootfs and the local repository, with no network), sshd and ssh to log in, curl to talk to the dev
# backend, apt-utils for apt-ftparchive (the local repository), man-db so `systemd-analyze verify` can check
# the unit's Documentation=man: page.
packages=systemd,systemd-sysv,dbus,python3.11,sudo,passwd,openssh-server,openssh-client,iproute2,procps,curl,apt-utils,man-db
# Bump when the customisation below changes, so cached rootfs are rebuilt.
recipe=2
stamp_text="suite=$suite recipe=$recipe hostname=$hostname packages=$packages"

if [ -d "$dir" ] && [ -f "$dir.stamp" ] && [ "$(cat "$dir.stamp")" = "$stamp_text" ]; then
    echo "rootfs: reusing $dir"
    exit 0
fi

# The first Debian mirror for $suite in the host's apt sources (deb822 .sources or one-line .list).
host_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '
            /^[[:space:]]*$/ { if (uri != "" && ok) { print uri; done = 1; exit } uri = ""; ok = 0; next }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            END { if (!done && uri != "" && ok) print uri }
        ' "$f"
    done
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk -v suite="$suite" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i ~ /:\/\//) { if ($(i+1) == suite) print $i; break } }'
}
# (|| true: a missing sources file, or head closing the pipe early, is not an error here.)
mirror=${P0_DEBIAN_MIRROR:-$( (host_mirror | grep -v -- '-security' | head -1) || true)}
[ -n "$mirror" ] || { echo "rootfs: no Debian $suite mirror in /etc/apt/sources*; set P0_DEBIAN_MIRROR" >&2; exit 1; }

echo "rootfs: debootstrap $suite from $mirror into $dir (about a minute)"
rm -rf "$dir.new" "$dir.stamp"
mkdir -p "$(dirname "$dir")"
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$dir.new" "$mirror" >"$dir.log" 2>&1; then
    tail -n 30 "$dir.log" >&2
    echo "rootfs: debootstrap failed (full log: $dir.log)" >&2
    exit 1
fi

# The minbase rootfs copies the host's hostname and has no /etc/hosts: sudo would warn "unable to resolve host".
echo "$hostname" >"$dir.new/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$hostname" >"$dir.new/etc/hosts"
# The container has only its own loopback (--private-network); say so to sshd as well.
printf 'ListenAddress 127.0.0.1\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n' \
    >"$dir.new/etc/ssh/sshd_config.d/p0-system-test.conf"
# No network inside: apt must only ever see the test's local repository.
: >"$dir.new/etc/apt/sources.list"
rm -f "$dir.new"/var/cache/apt/archives/*.deb
rm -rf "$dir"
mv "$dir.new" "$dir"
echo "$stamp_text" >"$dir.stamp"
echo "rootfs: ready ($(du -sh "$dir" | cut -f1))"
