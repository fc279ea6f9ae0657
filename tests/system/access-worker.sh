#!/bin/bash
# Agent access in systemd mode under a booted systemd (issue 17 item 4): boots the Debian rootfs with
# systemd-nspawn, binds this worktree (and its venv, built on /usr/bin/python3.11 as the rootfs has it) in
# read-only at the same path, makes an account and a prefix inside, and runs tests/system/access_worker_probe.py
# there as root: confine.run_worker in systemd mode against the container's own systemd.
#
#   tests/system/access-worker.sh ROOTFS       (ROOTFS from tests/system/rootfs.sh; needs root)
#
# Everything runs in a private mount and PID namespace (test-harness.md §2b): the container dies with this script.
set -euo pipefail

if [ -z "${P0_ACCESS_IN_NS:-}" ]; then
    exec env P0_ACCESS_IN_NS=1 unshare --mount --pid --fork --mount-proc --propagation private "$0" "$@"
fi
mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn

rootfs=$(readlink -f "${1:?usage: access-worker.sh ROOTFS}")
worktree=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
venv_python="$worktree/.venv/bin/python"
[ "$(readlink -f "$venv_python")" = /usr/bin/python3.11 ] || {
    echo "SKIP: the venv is not built on /usr/bin/python3.11, so it cannot run inside the rootfs"
    echo "0 passed, 0 failed"
    exit 0
}
console=$(mktemp /tmp/p0-access-console.XXXXXX)
name=p0access$$

systemd-nspawn -q -D "$rootfs" -b -M "$name" --register=no --keep-unit --private-network \
    --volatile=overlay --bind-ro="$worktree" </dev/null >"$console" 2>&1 &
nspawn=$!
leader=""
cleanup() {
    kill -TERM "$nspawn" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.2; done
    [ -n "$leader" ] && kill -KILL "$leader" 2>/dev/null || true
    rm -f "$console"
}
trap cleanup EXIT
# The container's PID 1 is nspawn's only child once it has booted far enough to have systemd's private socket
# (before that, nspawn may have a helper child of its own).
for _ in $(seq 300); do
    leader=$(ps -o pid= --ppid "$nspawn" | head -1 | tr -d ' ' || true)
    [ -n "$leader" ] && [ -S "/proc/$leader/root/run/systemd/private" ] && break
    sleep 0.1
done
[ -n "$leader" ] && [ -S "/proc/$leader/root/run/systemd/private" ] ||
    { echo "FAIL the container did not boot"; cat "$console"; echo "0 passed, 1 failed"; exit 1; }
C() { nsenter -t "$leader" -m -u -i -n -p -C -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
echo "boot: $(C systemctl is-system-running --wait || true)"

C useradd -m -s /bin/bash p0deploy
C install -d -o p0deploy -g p0deploy -m 0755 /srv/app /srv/outside
# A NOPASSWD grant, as P0 may give the account: exec must still not become root (NoNewPrivileges=yes).
C sh -c 'echo "p0deploy ALL=(ALL:ALL) NOPASSWD: ALL" > /etc/sudoers.d/p0deploy && chmod 0440 /etc/sudoers.d/p0deploy'
C "$venv_python" -I "$worktree/tests/system/access_worker_probe.py" p0deploy /srv/app /srv/outside
