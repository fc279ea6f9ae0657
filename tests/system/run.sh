#!/bin/bash
# The package test on a booted systemd (`make system-test`), issue 5.
#
#   tests/system/run.sh [SUITE]      SUITE: bookworm (Debian 12, the default) or trixie (Debian 13)
#
# 1. builds the packages (packaging/build.sh) unless dist/ already holds ones newer than every source, and the
#    same tree as the next patch version (the upgrade), cached in build/system/next-VERSION;
# 2. checks the .deb and the .rpm structurally on the host (tests/system/packages.sh);
# 3. publishes the signed apt and dnf repositories with packaging/repo.sh (tests/system/repo.sh) and, on bookworm,
#    installs the .rpm from the dnf one with `dnf --installroot`, later upgrades it there (tests/system/dnf.sh);
# 4. builds or reuses a Debian rootfs of SUITE (tests/system/rootfs.sh, cached in build/rootfs[-SUITE]);
# 5. boots it with systemd-nspawn (--register=no --keep-unit --private-network --volatile=overlay) and, inside:
#    the repository as an apt source with Signed-By:, apt-get update without a warning, `apt-get install
#    p0-ssh-agent`, keygen, the dev backend under systemd-run, a config pointing at it, enable --now, READY and
#    STATUS, agent access (tests/system/agent-access.sh: ssh_file_create and cosigned ssh_exec run as an account in
#    a transient unit outside the agent's own), grants over the backend and an ssh login as the new user, the audit
#    trail found with journalctl field filters, fork chains that a revoke still ends, reload, a watchdog restart of
#    a hung agent, the journal, an upgrade to the next version from the repository with the grants kept, stop,
#    remove (the live grants named), purge (the ledger kept while they live), reinstall, revoke-all and a purge
#    that leaves nothing; on bookworm then the upgrade from the 0.1.0 release (tests/system/upgrade-0.1.0.sh).
#
# Everything runs inside `unshare --mount --pid --fork`, so the container and every process it started die with
# this script, whatever happens to it; nothing is written to the host's /etc, /home or /run.
# Prints PASS/FAIL per check and "N passed, M failed"; exits 1 if anything failed.
#
# Environment: P0_SYSTEM_TEST_REBUILD=auto|always|never (default auto), P0_DEBIAN_MIRROR (see rootfs.sh).
# A run that cannot apply to SUITE prints "SKIP: <reason>" and its summary, and exits 0 (test_system_package.py
# reports it as a skip).
# shellcheck disable=SC2016  # single-quoted $ is expanded later by the inner shell, on purpose
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd -P)
root=$(cd "$here/../.." && pwd -P)

if [ -z "${P0_SYSTEM_TEST_IN_NS:-}" ]; then
    [ "$(id -u)" -eq 0 ] || { echo "system-test: needs root (namespaces, debootstrap, systemd-nspawn)" >&2; exit 77; }
    for tool in systemd-nspawn debootstrap nsenter unshare rpm dpkg-deb; do
        command -v "$tool" >/dev/null || {
            echo "system-test: $tool is missing; run packaging/install-build-deps.sh" >&2
            exit 69
        }
    done
    # --kill-child: if whoever runs us kills unshare, the namespace's init (this script) and all in it die too.
    exec env P0_SYSTEM_TEST_IN_NS=1 unshare --mount --pid --fork --kill-child --mount-proc --propagation private \
        -- "$0" "$@"
fi

# shellcheck source=tests/system/lib.sh
source "$here/lib.sh"
# shellcheck source=tests/system/packages.sh
source "$here/packages.sh"
# shellcheck source=tests/system/repo.sh
source "$here/repo.sh"
# shellcheck source=tests/system/dnf.sh
source "$here/dnf.sh"
# shellcheck source=tests/system/upgrade-0.1.0.sh
source "$here/upgrade-0.1.0.sh"
# shellcheck source=tests/system/agent-access.sh
source "$here/agent-access.sh"

cd "$root" || exit 1
# Nothing this test runs may write the machine's /root: Debian's rpm keeps its database in $HOME/.rpmdb (every
# `rpm -qp` creates it), gpg its trustdb in ~/.gnupg. /root is an overlay here whose writes land in a tmpfs and
# vanish with this namespace; reads (pip's cache) still see the real /root.
# shellcheck source=tests/sandbox/lib.sh
source "$root/tests/sandbox/lib.sh"
# The layers' mount point stays behind empty: the tmpfs on it dies with the namespace.
mkdir -p build/system-root-layers
overlay_writes_away /root build/system-root-layers || { echo "system-test: the overlay over /root did not come up" >&2; exit 70; }
# One system test at a time per checkout: they share build/rootfs, build/ and dist/.
mkdir -p build
exec 9>build/.system-test.lock
if ! flock -n 9; then
    say "--- waiting for another system test in this checkout"
    flock 9
fi
started=$SECONDS
suite=${1:-bookworm}
case "$suite" in
    bookworm) rootfs=$root/build/rootfs ;;
    trixie) rootfs=$root/build/rootfs-$suite ;;
    *) echo "system-test: unknown suite '$suite' (bookworm or trixie)" >&2; exit 64 ;;
esac
say "--- Debian $suite"
version=$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' agent/p0_ssh_agent/_version.py)
deb=$root/dist/p0-ssh-agent_${version}_amd64.deb
rpm=$root/dist/p0-ssh-agent-${version}.x86_64.rpm
machine=p0-system-test
org_id=p0test
host_id=host-1
client_id=$org_id:$host_id:ssh
unit=p0-ssh-agent.service

# --- build or reuse the packages --------------------------------------------------------------------------------
stale_sources() {
    find agent packaging systemd debian docs nfpm.yaml pyproject.toml constraints.txt CHANGELOG.md README.md \
        -type f -newer "$1" -not -path '*/__pycache__/*' -not -name '*.pyc' -print -quit 2>/dev/null
}
rebuild=${P0_SYSTEM_TEST_REBUILD:-auto}
if [ "$rebuild" = always ] || [ ! -f "$deb" ] || [ ! -f "$rpm" ] \
    || { [ "$rebuild" = auto ] && [ -n "$(stale_sources "$deb")" ]; }; then
    say "--- building the packages"
    if ! bash packaging/build.sh 2>&1 | grep -v "^WARNING: Location '"; then
        bad "make package" "packaging/build.sh failed"
        summary
        exit 1
    fi
else
    say "--- reusing $(basename "$deb") and $(basename "$rpm") (newer than every source)"
fi

next=$(next_version "$version")
next_dist=$root/build/system/next-$next
build_next "$next" "$next_dist"
next_deb=$next_dist/p0-ssh-agent_${next}_amd64.deb
next_rpm=$next_dist/p0-ssh-agent-${next}.x86_64.rpm
[ -f "$next_deb" ] && [ -f "$next_rpm" ] || bad "build of version $next" "packaging/build.sh failed"
[ "$suite" = bookworm ] && build_old_release

check_deb "$deb" "$version" "$root"
check_rpm "$rpm" "$version" "$root"
say "    (packages checked at ${SECONDS}s)"

# --- the repositories -------------------------------------------------------------------------------------------
say "--- signed repositories"
publish "make repo with version $version" "$deb" "$rpm"
for f in deb/dists/stable/Release deb/dists/stable/InRelease deb/dists/stable/Release.gpg p0-ssh-agent.sources \
    p0-ssh-agent-archive-keyring.gpg p0-ssh-agent.repo p0-ssh-agent.asc rpm/repodata/repomd.xml.asc; do
    check "repo: $f" test -s "$serve/repo/$f"
done
# /srv is a tmpfs in this mount namespace only: the repository appears at the address its files name.
mount -t tmpfs -o mode=0755 tmpfs /srv && mkdir -p /srv/p0-ssh-agent && mount --bind "$serve" /srv/p0-ssh-agent
[ "$suite" = bookworm ] && check_dnf_repo "$repo_in_container" "$version"

# --- the rootfs -------------------------------------------------------------------------------------------------
if ! bash "$here/rootfs.sh" "$rootfs" "$suite"; then
    bad "rootfs" "debootstrap failed"
    summary
    exit 1
fi

# --- boot -------------------------------------------------------------------------------------------------------
# nspawn keeps per-machine state in /run/systemd/nspawn: a tmpfs there (private to this mount namespace) keeps
# the host's /run clean.
made_nspawn_dir=0
if [ ! -d /run/systemd/nspawn ]; then
    mkdir -p /run/systemd/nspawn && made_nspawn_dir=1
fi
mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
console=$(mktemp /tmp/p0-system-test-console.XXXXXX)
distdir=$(dirname "$deb")
mkdir -p "$root/build/system/old"

say "--- booting $rootfs"
systemd-nspawn -q -D "$rootfs" -b -M "$machine" --register=no --keep-unit --private-network \
    --volatile=overlay --bind-ro="$distdir":/mnt/dist --bind-ro="$serve":/srv/p0-ssh-agent \
    --bind-ro="$root/build/system/old":/mnt/old </dev/null >"$console" 2>&1 &
nspawn_pid=$!
leader=""

cleanup() {
    if kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
        [ -n "$leader" ] && kill -KILL "$leader" 2>/dev/null
    fi
    umount /run/systemd/nspawn 2>/dev/null
    [ $made_nspawn_dir -eq 1 ] && rmdir /run/systemd/nspawn 2>/dev/null
    rm -f "$console"
}
trap cleanup EXIT

find_leader() {
    leader=$(ps -o pid= --ppid "$nspawn_pid" | head -1 | tr -d ' ' || true)
    [ -n "$leader" ]
}
# C CMD...: run CMD in the container (all its namespaces), with a clean environment and no stdin.
C() {
    nsenter -t "$leader" -m -u -i -n -p -C -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
        "$@" </dev/null
}
# C_write PATH MODE: write stdin to PATH in the container.
C_write() {
    nsenter -t "$leader" -m -u -i -n -p -C -- /bin/sh -c 'umask 077; cat >"$1" && chmod "$2" "$1"' _ "$1" "$2"
}
show() { C systemctl show "$unit" -p "$1" --value; }

# The leader is looked up again on every try: right after the start, nspawn's only child can still be its
# short-lived intermediate process rather than the container's PID 1.
booted() { find_leader && [ -S "/proc/$leader/root/run/systemd/private" ]; }
if ! wait_until 90 booted; then
    bad "boot" "the container did not start; console:"
    tail -n 30 "$console" | sed 's/^/    /'
    summary
    exit 1
fi
state=$(C timeout 90 systemctl is-system-running --wait 2>/dev/null)
if [ "$state" = running ]; then
    ok "boot: systemd is running ($((SECONDS - started))s so far)"
else
    bad "boot: systemd is running" "state '$state'; failed units: $(C systemctl list-units --failed --plain --no-legend | tr '\n' ' ')"
fi

# --- install from the signed apt repository ---------------------------------------------------------------------
say "--- install from the repository"
add_apt_source
apt_update_clean "apt-get update: the signed repository, no warning"
apt_refuses_tampered
if [ "$suite" = trixie ]; then
    expect_eq "Debian 13: apt verified it with sqv (gpgv is not even installed)" sqv \
        "$(C sh -c 'command -v sqv >/dev/null && ! command -v gpgv >/dev/null && echo sqv')"
fi
check "apt-get install -y p0-ssh-agent" C env DEBIAN_FRONTEND=noninteractive apt-get install -y -q p0-ssh-agent
expect_eq "installed version" "install ok installed $version-1" \
    "$(C dpkg-query -W -f='${Status} ${Version}' p0-ssh-agent 2>&1)"
expect_eq "fresh install: unit not enabled" disabled "$(C systemctl is-enabled "$unit" 2>&1)"
expect_eq "fresh install: unit not started" inactive "$(C systemctl is-active "$unit" 2>&1)"
expect_eq "installed modes of /etc/p0-ssh-agent and keys/" "750 root 700 root" \
    "$(C stat -c '%a %U' /etc/p0-ssh-agent /etc/p0-ssh-agent/keys | tr '\n' ' ' | sed 's/ $//')"
expect_contains "p0-ssh-agent version" "p0-ssh-agent $version" "$(C p0-ssh-agent version 2>&1)"
expect_eq "man p0-ssh-agent finds the page" /usr/share/man/man8/p0-ssh-agent.8.gz "$(C man -w p0-ssh-agent 2>&1)"
# Condition failed, not an error: an enabled but unregistered host boots cleanly.
C systemctl start "$unit" >/dev/null 2>&1
expect_eq "without config.yaml, a start is skipped by ConditionPathExists" "inactive no" \
    "$(C systemctl is-active "$unit") $(show ConditionResult)"

# --- the unit: verify and security --------------------------------------------------------------------------------
say "--- unit"
# Installed, so ExecStart= and the Documentation= man page exist: any output at all is a finding.
verify_out=$(C systemd-analyze verify /usr/lib/systemd/system/$unit 2>&1)
verify_rc=$?
expect_eq "systemd-analyze verify: exit 0, no output" "0 " "$verify_rc $verify_out"
exposure_line=$(C systemd-analyze security --offline=yes --no-pager /usr/lib/systemd/system/$unit 2>&1 | grep 'Overall exposure level')
exposure=$(printf '%s' "$exposure_line" | sed -n 's/.*: \([0-9.]*\) .*/\1/p')
say "    systemd-analyze security: ${exposure_line#→ }"
if [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e <= 3.0) }'; then
    ok "systemd-analyze security exposure $exposure <= 3.0"
else
    bad "systemd-analyze security exposure <= 3.0" "got '${exposure_line:-nothing}'"
fi

# --- keys, dev backend, configuration, start ---------------------------------------------------------------------
say "--- start"
check "p0-ssh-agent keygen" C p0-ssh-agent keygen
expect_eq "private key 0600 in a 0700 directory" "600 700" \
    "$(C stat -c %a /etc/p0-ssh-agent/keys/jwk.private.json /etc/p0-ssh-agent/keys | tr '\n' ' ' | sed 's/ $//')"
check "dev backend started under systemd-run" C systemd-run --unit p0-dev-backend --property Restart=no \
    /usr/bin/p0-ssh-agent dev-backend --public-key /etc/p0-ssh-agent/keys/jwk.public.json
backend_up() { C curl -s -o /dev/null --max-time 2 http://127.0.0.1:8081/; }
if wait_until 30 backend_up; then
    ok "dev backend answers on 127.0.0.1:8081"
else
    bad "dev backend answers on 127.0.0.1:8081" "$(C journalctl -u p0-dev-backend --no-pager -o cat | tail -n 5)"
fi
C_write /etc/p0-ssh-agent/config.yaml 0640 <<EOF
# written by tests/system/run.sh
version: "1.0"
orgId: "$org_id"
hostId: "$host_id"
tunnelHost: "ws://127.0.0.1:8079"
keyPath: "/etc/p0-ssh-agent/keys"
EOF
# Test-only drop-in: the SIGUSR2 hang hook, a short watchdog so the restart is seen within seconds, and
# --verbose, so the check that no token reaches the journal also covers the debug lines.
C mkdir -p /etc/systemd/system/$unit.d
C_write /etc/systemd/system/$unit.d/test.conf 0644 <<'EOF'
[Service]
Environment=P0_SSH_AGENT_TEST_HOOKS=1
WatchdogSec=4s
RestartSec=1s
ExecStart=
ExecStart=/usr/bin/p0-ssh-agent start --verbose
EOF
C systemctl daemon-reload
check "systemctl enable --now p0-ssh-agent" C systemctl enable --now "$unit"
expect_eq "active and running (READY=1 received)" "active running" "$(show ActiveState) $(show SubState)"
connected() { grep -q '^connected to ' <<<"$(show StatusText)"; }
if wait_until 30 connected; then
    ok "StatusText: $(show StatusText)"
else
    bad "StatusText says 'connected to'" "got '$(show StatusText)'"
fi
# Resource ceilings (issue 11 item 7): what systemd loaded, then what the running agent really gets from its cgroup
# and its rlimits (a unit value the kernel never sees would bound nothing).
expect_eq "MemoryMax TasksMax LimitNOFILE as the unit sets them" "469762048 256 2048" \
    "$(show MemoryMax) $(show TasksMax) $(show LimitNOFILE)"
# The cgroup limits, read where the running agent's cgroup is: unified (v2), or per controller (v1). On a host
# with the legacy hierarchy the container may have no controller of its own to apply them with: that is reported
# as SKIP with the agent's cgroup, never counted as a pass (on a unified host the check is binding).
agent_cgroups=$(C cat "/proc/$(show MainPID)/cgroup" 2>&1)
if C test -f /sys/fs/cgroup/cgroup.controllers; then
    v2_path=$(sed -n 's/^0:://p' <<<"$agent_cgroups")
    expect_eq "in force: the agent's cgroup memory.max and pids.max" "469762048 256" \
        "$(C cat "/sys/fs/cgroup$v2_path/memory.max" "/sys/fs/cgroup$v2_path/pids.max" 2>&1 | tr '\n' ' ' | sed 's/ $//')"
else
    for pair in memory:memory.limit_in_bytes:469762048 pids:pids.max:256; do
        IFS=: read -r controller file expected <<<"$pair"
        path=$(sed -n "s/^[0-9]*:$controller:\(.*\)/\1/p" <<<"$agent_cgroups")
        if [[ $path == */$unit ]] && C test -f "/sys/fs/cgroup/$controller$path/$file"; then
            expect_eq "in force: the agent's $controller cgroup $file" "$expected" \
                "$(C cat "/sys/fs/cgroup/$controller$path/$file" 2>&1)"
        else
            say "SKIP in force: $controller limit: cgroup v1 host whose $controller controller systemd does not" \
                "manage in this container (the agent's $controller cgroup is '${path:-none}', not its unit's)"
        fi
    done
fi
expect_eq "in force: the agent's open-files limit (soft hard)" "2048 2048" \
    "$(C awk '/^Max open files/ { print $4, $5 }' "/proc/$(show MainPID)/limits" 2>&1)"

# --- `p0-ssh-agent status` on the running unit, and with the backend stopped (issue 15) --------------------------
# status_rc: the exit code of `p0-ssh-agent status` in the container.
status_rc() { local rc=0; C p0-ssh-agent status >/dev/null 2>&1 || rc=$?; echo "$rc"; }
status_is() { [ "$(status_rc)" = "$1" ]; }
status_checks() {
    say "--- status"
    expect_eq "status after enable --now: exit 0 (running and connected)" 0 "$(status_rc)"
    expect_eq "status --json says what STATUS= says" "$(show StatusText)" \
        "$(C p0-ssh-agent status --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["agent"]["state"]["status_text"])' 2>&1)"
    expect_eq "live state and metrics: 0600 and 0640 in a 0755 runtime directory" "755 600 640" \
        "$(C stat -c %a /run/p0-ssh-agent /run/p0-ssh-agent/status.json /run/p0-ssh-agent/p0-ssh-agent.prom | tr '\n' ' ' | sed 's/ $//')"
    expect_contains "metrics: connected 1" "p0_ssh_agent_connected 1" "$(C cat /run/p0-ssh-agent/p0-ssh-agent.prom 2>&1)"
    check "bash completion installed" C test -f /usr/share/bash-completion/completions/p0-ssh-agent
    C systemctl stop p0-dev-backend
    if wait_until 60 status_is 151; then ok "status with the backend stopped: exit 151 (unreachable)"; else bad "status with the backend stopped: exit 151" "exit $(status_rc): $(show StatusText)"; fi
    expect_contains "metrics: connected 0 with the backend stopped" "p0_ssh_agent_connected 0" "$(C cat /run/p0-ssh-agent/p0-ssh-agent.prom 2>&1)"
    C systemd-run --unit p0-dev-backend --property Restart=no \
        /usr/bin/p0-ssh-agent dev-backend --public-key /etc/p0-ssh-agent/keys/jwk.public.json >/dev/null 2>&1
    if wait_until 60 status_is 0; then ok "status after the backend is back: exit 0"; else bad "status after the backend is back: exit 0" "exit $(status_rc): $(show StatusText)"; fi
}
status_checks

# --- agent access: an operation as the account, in a transient unit outside the agent's own (issue 17 item 4) ----
agent_access_checks

# --- the unit's sandbox against the agent's tools ----------------------------------------------------------------
# The agent's own grants below are the real proof; this probe also runs while the agent cannot apply changes yet,
# and checks the other direction: what the sandbox must forbid. Its units carry every [Service] line of the
# installed unit except the lifecycle ones, so it follows the unit as it changes.
say "--- sandbox probe"
C ssh-keygen -q -t ed25519 -N '' -C p0-system-test -f /root/p0-test-key
SSH=(ssh -i /root/p0-test-key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes
    -o ConnectTimeout=10 -o LogLevel=ERROR)
# ssh_sudo USER: log in, then try sudo without a password; prints "USER sudo", "USER no-sudo" or ssh's error.
ssh_sudo() {
    C "${SSH[@]}" "$1@127.0.0.1" \
        'printf "%s " "$(id -un)"; if sudo -n true 2>/dev/null; then echo sudo; else echo no-sudo; fi' 2>&1
}
C_write /root/p0-sandbox-probe.sh 0644 <"$here/sandbox-probe.sh"
sandbox_lines=$(sed -n '/^\[Service\]/,/^\[/p' "/proc/$leader/root/usr/lib/systemd/system/$unit" \
    | grep -E '^[A-Za-z]+=' \
    | grep -vE '^(Type|NotifyAccess|ExecStart|ExecReload|Restart|RestartSec|RestartPreventExitStatus|WatchdogSec|Timeout[A-Za-z]*Sec|StateDirectory[A-Za-z]*|RuntimeDirectory[A-Za-z]*|EnvironmentFile|Environment)=')
# run_probe PHASE ARGS...: the probe as a oneshot unit with the agent's sandbox; every step becomes a check.
run_probe() {
    local phase=$1 name=p0-sandbox-probe-$1.service line
    shift
    printf '[Unit]\nDescription=p0-ssh-agent sandbox probe (%s)\n\n[Service]\nType=oneshot\nExecStart=/bin/sh /root/p0-sandbox-probe.sh %s\n%s\n' \
        "$phase" "$phase $*" "$sandbox_lines" | C_write "/run/systemd/system/$name" 0644
    C systemctl daemon-reload
    C systemctl start "$name" >/dev/null 2>&1
    while IFS= read -r line; do
        case "$line" in
            "ok "*) ok "sandbox $phase: ${line#ok }" ;;
            "no "*) bad "sandbox $phase: ${line#no }" ;;
        esac
    done < <(C journalctl -u "$name" --no-pager -o cat)
    expect_eq "sandbox $phase: the probe unit succeeded" success "$(C systemctl show "$name" -p Result --value)"
}
probe_user=p0probe
run_probe grant "$probe_user" /root/p0-test-key.pub
expect_eq "sandbox: the user it made logs in with ssh and has sudo" "$probe_user sudo" "$(ssh_sudo "$probe_user")"
C systemd-run --quiet --unit p0-probe-session --uid="$probe_user" /bin/sleep 600
run_probe revoke "$probe_user"
# SIGKILLed, so the session's unit ends up "failed" (or "inactive" once collected): anything but active.
session_state=$(C systemctl show p0-probe-session -p ActiveState --value)
expect_eq "sandbox: the user's process was ended" "ended" "$(case $session_state in inactive | failed) echo ended ;; *) echo "$session_state" ;; esac)"
expect_contains "sandbox: the user is gone, login refused" "Permission denied" "$(ssh_sudo "$probe_user")"

# --- a grant through the backend, and an ssh login as the new user ---------------------------------------------
say "--- grant and login"
user=p0alice
pubkey=$(C cat /root/p0-test-key.pub)
# backend_call NAME JSON: POST to the backend; PASS when HTTP 200 and data.success is true.
backend_call() {
    local reply
    reply=$(C curl -sS --max-time 30 -H 'content-type: application/json' -d "$2" -w '\n%{http_code}' \
        "http://127.0.0.1:8081/client/$client_id" 2>&1)
    if [ "$(printf '%s' "$reply" | tail -n 1)" = 200 ] \
        && printf '%s' "$reply" | sed '$d' | python3 -c 'import json, sys; sys.exit(json.load(sys.stdin).get("success") is not True)'; then
        ok "$1"
    else
        bad "$1" "$(printf '%s' "$reply" | tr '\n' ' ' | tail -c 400)"
    fi
}
backend_call "provisionUser grant" \
    "{\"command\":\"provisionUser\",\"userName\":\"$user\",\"action\":\"grant\",\"requestId\":\"REQuser1\"}"
backend_call "provisionAuthorizedKeys grant" \
    "{\"command\":\"provisionAuthorizedKeys\",\"userName\":\"$user\",\"action\":\"grant\",\"requestId\":\"REQkey1\",\"publicKey\":\"$pubkey\"}"
expect_contains "ssh login as $user" "($user)" "$(C "${SSH[@]}" "$user@127.0.0.1" id 2>&1)"
expect_eq "login works, but no sudo before provisionSudo" "$user no-sudo" "$(ssh_sudo "$user")"
backend_call "provisionSudo grant" \
    "{\"command\":\"provisionSudo\",\"userName\":\"$user\",\"action\":\"grant\",\"requestId\":\"REQsudo1\",\"sudo\":true}"
expect_eq "sudo -n over ssh after provisionSudo" 0 "$(C "${SSH[@]}" "$user@127.0.0.1" sudo -n id -u 2>&1)"
check "visudo -c accepts the result" C visudo -c -q
backend_call "provisionSudo revoke" \
    "{\"command\":\"provisionSudo\",\"userName\":\"$user\",\"action\":\"revoke\",\"requestId\":\"REQsudo1\",\"sudo\":true}"
expect_eq "login still works, sudo gone after the revoke" "$user no-sudo" "$(ssh_sudo "$user")"

journal=$(C journalctl -u "$unit" --no-pager -o cat)
expect_contains "journal: canonical request line for REQkey1" "request_id=REQkey1" "$journal"
# A here-string, not `printf | grep -q`: under pipefail an early match would read as "not found".
secrets=$(grep -E 'eyJ|Bearer' <<<"$journal")
if [ -n "$secrets" ]; then
    bad "journal: no JWT and no Authorization header" "$(head -n 2 <<<"$secrets")"
else
    ok "journal: no JWT and no Authorization header"
fi

# --- the audit trail: journald field filters find a request's history (docs/audit.md) -----------------------------
say "--- audit trail"
grant_mid=f33b033a953543769449f6852a6b4d59
revoke_mid=25ecb00d02f340d19fccfff32483f70c
key_blob=$(awk '{print $2}' <<<"$pubkey")
key_fp=$(C ssh-keygen -l -E sha256 -f /root/p0-test-key.pub | awk '{print $2}')
# audit_entries REQUEST_ID: the unit's audit entries for that request, one JSON object per line.
audit_entries() { C journalctl -u "$unit" REQUEST_ID="$1" -o json --no-pager 2>/dev/null; }
audit_count_at_least() { [ "$(audit_entries "$1" | grep -c '^{')" -ge "$2" ]; }
# Checks the entries on stdin: argv = REQUEST_ID, the ACTIONs expected in order, user, fingerprint, key blob, ids.
read -r -d '' audit_py <<'PY'
import json, sys
rid, actions, user, fingerprint, blob, grant_mid, revoke_mid = sys.argv[1:]
raw = sys.stdin.read()
entries = [json.loads(line) for line in raw.splitlines() if line.strip()]
problems = ["the key's base64 blob is in an audit entry"] if blob and blob in raw else []
if [e.get("ACTION") for e in entries] != actions.split(","):
    problems.append(f"ACTIONs {[e.get('ACTION') for e in entries]}, expected {actions.split(',')}")
for e in entries:
    action = e.get("ACTION")
    want = {"REQUEST_ID": rid, "COMMAND": "provisionAuthorizedKeys", "TARGET_USER": user, "RESULT": "success",
            "DRY_RUN": "false", "SYSLOG_IDENTIFIER": "p0-ssh-agent", "_SYSTEMD_UNIT": "p0-ssh-agent.service",
            "MESSAGE_ID": {"grant": grant_mid, "revoke": revoke_mid}.get(action)}
    if action == "grant":
        want["KEY_FINGERPRINT"] = fingerprint
    problems += [f"{action}: {k}={e.get(k)!r}, expected {v!r}" for k, v in want.items() if e.get(k) != v]
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
# audit_history NAME REQUEST_ID ACTIONS: PASS when journalctl -u p0-ssh-agent REQUEST_ID=... returns exactly those.
audit_history() {
    local out expected
    expected=$(tr ',' '\n' <<<"$3" | grep -c .)
    wait_until 10 audit_count_at_least "$2" "$expected"
    if out=$(audit_entries "$2" | python3 -c "$audit_py" "$2" "$3" "$user" "$key_fp" "$key_blob" "$grant_mid" "$revoke_mid" 2>&1); then
        ok "$1"
    else
        bad "$1" "$(tr '\n' ' ' <<<"$out" | tail -c 400)"
    fi
}
if [ -n "$key_fp" ] && [ -n "$key_blob" ]; then ok "audit: the test key's fingerprint $key_fp"; else bad "audit: the test key's fingerprint" "ssh-keygen -l failed"; fi
audit_history "audit: journalctl -u $unit REQUEST_ID=REQkey1 finds the grant (fields, fingerprint, no key)" REQkey1 grant
backend_call "provisionAuthorizedKeys revoke REQkey1" \
    "{\"command\":\"provisionAuthorizedKeys\",\"userName\":\"$user\",\"action\":\"revoke\",\"requestId\":\"REQkey1\"}"
audit_history "audit: the revoke of REQkey1 is its second entry" REQkey1 grant,revoke
expect_contains "audit: MESSAGE_ID and TARGET_USER filters find the sudo grant" "provisionSudo grant for $user" \
    "$(C journalctl -u "$unit" MESSAGE_ID=$grant_mid TARGET_USER="$user" -o cat --no-pager)"
# Granted again under a new request, so the checks after the upgrade and the removal can still log in.
backend_call "provisionAuthorizedKeys grant REQkey2" \
    "{\"command\":\"provisionAuthorizedKeys\",\"userName\":\"$user\",\"action\":\"grant\",\"requestId\":\"REQkey2\",\"publicKey\":\"$pubkey\"}"
expect_contains "ssh login as $user with the key granted again" "($user)" "$(C "${SSH[@]}" "$user@127.0.0.1" id 2>&1)"

# --- the local policy -----------------------------------------------------------------------------------------
say "--- local policy"
expect_eq "policy: /etc/p0-ssh-agent/policy.cedar installed 0644 root" "644 root" \
    "$(C stat -c '%a %U' /etc/p0-ssh-agent/policy.cedar 2>&1)"
denied=$(C curl -sS --max-time 30 -H 'content-type: application/json' -w '\n%{http_code}' \
    -d "{\"command\":\"provisionSudo\",\"userName\":\"$user\",\"action\":\"grant\",\"requestId\":\"REQdeny1\",\"sudo\":true,\"runAsUser\":\"root\"}" \
    "http://127.0.0.1:8081/client/$client_id" 2>&1)
expect_eq "policy: a sudo rule running as root is answered 403" 403 "$(printf '%s' "$denied" | tail -n 1)"
expect_contains "policy: the answer names the policy" "forbidden by p0-forbid-run-as-root" "$denied"
expect_eq "policy: the denial changed nothing (no sudo)" "$user no-sudo" "$(ssh_sudo "$user")"
wait_until 10 audit_count_at_least REQdeny1 1
expect_contains "audit: the denial is in the journal with its policy" '"POLICY":"p0-forbid-run-as-root"' \
    "$(audit_entries REQdeny1 | tr -d ' ')"
printf '%s' '{"command":"provisionSudo","userName":"x","action":"grant","requestId":"r","sudo":true,"runAsUser":"root"}' \
    | C_write /root/p0-deny.json 0644
check_rc=0
check_out=$(C p0-ssh-agent policy check /root/p0-deny.json 2>&1) || check_rc=$?
expect_eq "policy check: a run-as-root request is denied offline (exit 1)" 1 "$check_rc"
expect_contains "policy check: names the policy and its line" \
    "p0-forbid-run-as-root (/etc/p0-ssh-agent/policy.cedar:32)" "$check_out"

# --- a fork chain cannot outrun a revoke (issue 11 item 5) ------------------------------------------------------
# Fork chains as a JIT user (each generation forks the next and exits, SIGTERM ignored), started from outside any
# session or user slice, the way a cron job's would run: logind cannot end them, only the agent's kill(-1) sent as
# the user, from inside the hardened unit (CAP_SETUID, the seccomp filter, NoNewPrivileges). Bounded by prlimit
# and by a lifetime the chain checks itself; the container dies with this script in any case.
say "--- fork chain against the revoke"
chain_user=p0chain
# The same fork chain as the sandbox suite's (tests/fixtures/fork_chain.py): 4 chains that end after 120 s.
chain_py=$(cat "$root/tests/fixtures/fork_chain.py")
# seen_alive: how many PIDs of the user twenty /proc scans saw (one scan can miss a chain between generations).
read -r -d '' seen_py <<'PY'
import os, pwd, sys, time
uid, seen = pwd.getpwnam(sys.argv[1]).pw_uid, set()
for _ in range(20):
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if str(uid) in fields["Uid"].split() and not fields["State"].strip().startswith("Z"):
            seen.add(pid)
    time.sleep(0.01)
print(len(seen))
PY
# Inside the container: the package's own interpreter, the one Python every target has once it is installed
# (Debian 13 has no python3.11).
container_python=/usr/lib/p0-ssh-agent/python/bin/python3
seen_alive() { C "$container_python" -I -c "$seen_py" "$chain_user"; }
# Each chain writes one byte once it runs and closes its end, so the output ends once all four are up; a scan of
# /proc cannot tell (a generation lives about as long as one fork). A chain that never reports holds the output
# open until its lifetime (120 s) ends it.
start_chains() {
    local reported
    reported=$(C prlimit --nproc=64 -- setpriv --reuid "$chain_user" --regid "$chain_user" \
        --clear-groups -- "$container_python" -I -S -c "$chain_py" 4 120 2>/dev/null)
    [ "$reported" = "++++" ]
}
backend_call "provisionUser grant $chain_user" \
    "{\"command\":\"provisionUser\",\"userName\":\"$chain_user\",\"action\":\"grant\",\"requestId\":\"REQchain1\"}"
if start_chains; then ok "fork chains run as $chain_user"; else bad "fork chains run as $chain_user" "seen: $(seen_alive)"; fi
backend_call "provisionSession revoke with fork chains running answers success" \
    "{\"command\":\"provisionSession\",\"userName\":\"$chain_user\",\"action\":\"revoke\",\"requestId\":\"REQchain1\"}"
expect_eq "after provisionSession revoke, no process of $chain_user is left" 0 "$(seen_alive)"
if start_chains; then ok "fork chains run as $chain_user again"; else bad "fork chains run as $chain_user again" "seen: $(seen_alive)"; fi
backend_call "provisionUser revoke (lock) with fork chains running answers success" \
    "{\"command\":\"provisionUser\",\"userName\":\"$chain_user\",\"action\":\"revoke\",\"requestId\":\"REQchain1\"}"
expect_eq "after provisionUser revoke (lock), no process of $chain_user is left" 0 "$(seen_alive)"

# --- reload, watchdog, upgrade -------------------------------------------------------------------------------------
say "--- reload, watchdog, upgrade"
pid_before=$(show MainPID)
check "systemctl reload" C systemctl reload "$unit"
unit_active() { [ "$(show ActiveState)" = active ]; }
wait_until 10 unit_active
expect_eq "reload keeps the process and the unit active" "$pid_before active" "$(show MainPID) $(show ActiveState)"

restarts_before=$(show NRestarts)
C systemctl kill --kill-who=main --signal=SIGUSR2 "$unit"
restarted() { [ "$(show NRestarts)" -gt "$restarts_before" ]; }
if wait_until 30 restarted; then ok "hung event loop: watchdog restart (NRestarts $(show NRestarts))"; else bad "hung event loop: watchdog restart" "NRestarts $(show NRestarts)"; fi
expect_contains "journal: Watchdog timeout" "Watchdog timeout" "$(C journalctl -u "$unit" --no-pager -o cat)"
if wait_until 30 connected; then ok "reconnected after the watchdog restart"; else bad "reconnected after the watchdog restart" "$(show StatusText)"; fi

# The upgrade: the repository gains version $next, and a plain `apt-get upgrade` takes it, with live grants.
backend_call "provisionSudo grant REQsudo2 (live across the upgrade)" \
    "{\"command\":\"provisionSudo\",\"userName\":\"$user\",\"action\":\"grant\",\"requestId\":\"REQsudo2\",\"sudo\":true}"
expect_eq "before the upgrade: $user logs in and has sudo" "$user sudo" "$(ssh_sudo "$user")"
ledger_before=$(C sha256sum /etc/p0-ssh-agent/config.yaml /etc/p0-ssh-agent/keys/jwk.private.json 2>&1)
publish "the repository gains version $next" "$deb" "$rpm" "$next_deb" "$next_rpm"
[ "$suite" = bookworm ] && check_dnf_upgrade "$repo_in_container" "$version" "$next"
apt_update_clean "apt-get update after the new version was published: no warning"
pid_before=$(show MainPID)
upgrade_out=$(C env DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -q 2>&1)
expect_contains "apt-get upgrade takes $next from the repository" "p0-ssh-agent" "$(grep -E '^Unpacking|^Setting up' <<<"$upgrade_out")"
expect_eq "upgraded version" "install ok installed $next-1" "$(C dpkg-query -W -f='${Status} ${Version}' p0-ssh-agent 2>&1)"
expect_contains "p0-ssh-agent version after the upgrade" "p0-ssh-agent $next" "$(C p0-ssh-agent version 2>&1)"
pid_after=$(show MainPID)
if [ "$pid_after" != "$pid_before" ] && [ "$pid_after" != 0 ] && [ "$(show ActiveState)" = active ]; then
    ok "upgrade restarted the running agent (MainPID $pid_before -> $pid_after)"
else
    bad "upgrade restarted the running agent" "MainPID $pid_before -> $pid_after, $(show ActiveState)"
fi
expect_eq "upgrade kept the unit enabled" enabled "$(C systemctl is-enabled "$unit" 2>&1)"
expect_eq "upgrade kept the configuration and the host key" "$ledger_before" \
    "$(C sha256sum /etc/p0-ssh-agent/config.yaml /etc/p0-ssh-agent/keys/jwk.private.json 2>&1)"
if wait_until 30 connected; then ok "reconnected after the upgrade"; else bad "reconnected after the upgrade" "$(show StatusText)"; fi
expect_eq "after the upgrade: the grants are kept ($user logs in, sudo -n true works)" "$user sudo" "$(ssh_sudo "$user")"
# -B and a read-only /usr: nothing may have been written into the package's files.
expect_eq "dpkg --verify: installed files unchanged after running" "" "$(C dpkg --verify p0-ssh-agent 2>&1)"
expect_eq "no stray .pyc under /usr/lib/p0-ssh-agent written at run time" "" \
    "$(C find /usr/lib/p0-ssh-agent -name '*.pyc' -newer /var/lib/dpkg/info/p0-ssh-agent.list | head -3)"

# --- stop, remove, purge ----------------------------------------------------------------------------------------
say "--- stop, remove, purge"
check "systemctl stop" C systemctl stop "$unit"
expect_eq "stop: Result=success, exit status 0" "success 0" "$(show Result) $(show ExecMainStatus)"
C rm -rf /etc/systemd/system/$unit.d
remove_out=$(C env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q p0-ssh-agent 2>&1)
expect_eq "apt-get remove -y p0-ssh-agent: removed" "" "$(C dpkg-query -W -f='${db:Status-Abbrev}' p0-ssh-agent 2>/dev/null | grep '^ii')"
# One key (REQkey2) and one sudo rule (REQsudo2) for the one account p0alice.
# Two accounts the agent manages: p0alice, who holds the two grants, and $chain_user, created for the fork-chain
# checks and locked (not deleted: userRevokeMode lock) by their revoke, so still in the ledger.
expect_contains "remove: the live grants are named" \
    "2 live grant(s) stay on this host: 1 key line(s), 1 sudo rule(s), for 2 account(s) the agent manages" "$remove_out"
expect_contains "remove: the way to revoke them is named" "p0-ssh-agent revoke-all" "$remove_out"
expect_eq "remove: no enablement symlink left" "" "$(C find /etc/systemd/system -name "$unit" 2>&1)"
expect_eq "remove: configuration, keys and state are kept" "yes" \
    "$(C sh -c '[ -f /etc/p0-ssh-agent/config.yaml ] && [ -f /etc/p0-ssh-agent/keys/jwk.private.json ] && [ -d /var/lib/p0-ssh-agent ] && echo yes || echo no')"
expect_contains "remove: live grants stay (login as $user still works)" "($user)" "$(C "${SSH[@]}" "$user@127.0.0.1" id 2>&1)"
purge_out=$(C env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q p0-ssh-agent 2>&1)
C systemctl daemon-reload
expect_eq "purge: package gone" "" "$(C dpkg-query -W -f='${Status}' p0-ssh-agent 2>/dev/null)"
expect_eq "purge: systemd no longer knows the unit" "not-found" "$(show LoadState)"
expect_contains "purge: says it kept the ledger of the live grants" "kept /var/lib/p0-ssh-agent/ledger: it lists 2 live grant(s)" "$purge_out"
expect_eq "purge: only the ledger is left" "/var/lib/p0-ssh-agent/ledger" \
    "$(C sh -c 'for p in /var/lib/p0-ssh-agent/ledger /etc/p0-ssh-agent /etc/default/p0-ssh-agent /usr/bin/p0-ssh-agent \
        /lib/systemd/system/p0-ssh-agent.service /usr/lib/systemd/system/p0-ssh-agent.service; do [ -e "$p" ] || [ -L "$p" ] && echo "$p"; done')"
expect_eq "purge: the grants still work" "$user sudo" "$(ssh_sudo "$user")"

# --- reinstall, revoke-all, purge: what the messages tell an admin to do ------------------------------------------
say "--- reinstall, revoke-all, purge"
check "apt-get install -y p0-ssh-agent (again)" C env DEBIAN_FRONTEND=noninteractive apt-get install -y -q p0-ssh-agent
# What a purge by 0.1.0 left behind (the ledger deleted, the grants in place): doctor finds the grants anyway.
C_write /etc/p0-ssh-agent/config.yaml 0640 <<EOF
orgId: "$org_id"
hostId: "$host_id"
tunnelHost: "ws://127.0.0.1:8079"
EOF
C mv /var/lib/p0-ssh-agent/ledger /root/ledger.aside
orphans=$(C p0-ssh-agent doctor --offline --json 2>&1 | python3 -c 'import json, sys; c = {x["name"]: x for x in json.load(sys.stdin)["checks"]}["orphans"]; print(c["level"], *sorted(i.split(" /")[0] for i in c["items"]))' 2>&1)
expect_eq "doctor without the ledger: the sudo rule and the key line are orphans" "warn key $user REQkey2 sudo $user REQsudo2" "$orphans"
C mv /root/ledger.aside /var/lib/p0-ssh-agent/ledger
check "p0-ssh-agent revoke-all finds the grants in the kept ledger" C p0-ssh-agent revoke-all
expect_contains "after revoke-all: $user cannot log in" "Permission denied" "$(ssh_sudo "$user")"
expect_eq "after revoke-all: no agent sudo rule left" "" "$(C sh -c 'ls /etc/sudoers.d/p0-ssh-agent 2>/dev/null; grep -s NOPASSWD /etc/sudoers.d/p0-ssh-agent')"
purge_out=$(C env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q p0-ssh-agent 2>&1)
expect_eq "purge after revoke-all: no warning" "" "$(grep 'p0-ssh-agent:' <<<"$purge_out")"
leftovers=$(C sh -c 'for p in /var/lib/p0-ssh-agent /etc/p0-ssh-agent /etc/default/p0-ssh-agent /opt/p0-ssh-agent \
    /usr/lib/p0-ssh-agent /usr/bin/p0-ssh-agent /lib/systemd/system/p0-ssh-agent.service /usr/lib/systemd/system/p0-ssh-agent.service; do [ -e "$p" ] || [ -L "$p" ] && echo "$p"; done')
expect_eq "purge: no state, configuration, keys, application or unit left" "" "$leftovers"

# --- upgrade from the 0.1.0 release (issue 12 item 6), on Debian 12 where 0.1.0 installs -------------------------
[ "$suite" = bookworm ] && upgrade_from_0_1_0

say ""
say "system test took $((SECONDS - started))s"
summary
[ "$failed" -eq 0 ]
