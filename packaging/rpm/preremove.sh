#!/bin/sh
# rpm %preun of p0-ssh-agent. $1 is how many versions remain after this step: 0 = erase, 1 or more = upgrade.
#
# Live grants (JIT users, authorized_keys entries, /etc/sudoers.d/p0-ssh-agent) are deliberately NOT revoked on
# erase: a package operation that goes wrong must never lock every user out of the host. Erase says how many
# there are and how to revoke them (`p0-ssh-agent revoke-all`, docs/install.md); the ledger in
# /var/lib/p0-ssh-agent stays (rpm has no purge), so a reinstall can still take them back.

unit=p0-ssh-agent.service

# What the agent's ledger says it granted and still holds, as "KEYS SUDO USERS" (counts). The ledger is JSON the
# agent writes with one field per line (host/ledger_records.py): one "fingerprint" per key or CA line, one "run_as"
# per sudo rule, one "adopted" per account it created or adopted; one record per user in ledger/users/<name>.json,
# or, before the agent migrated it, the whole ledger in ledger.json (the ledger.json.migrated-* backup a
# migration leaves, and temp files, are not counted). A grant is a key line or a sudo rule: an account left
# without either (what `revoke-all` leaves with userRevokeMode lock) gives no access, so it alone keeps nothing.
# grep, not a JSON parser: this must work when the package's own runtime is already broken or gone, and with
# nothing but a POSIX shell and grep (grep -r: a directory of 100,000 records fits in no argument list).
state=/var/lib/p0-ssh-agent
ledger=$state/ledger.json
[ -e "$ledger" ] || ledger=$state/ledger
ledger_lines() {
    pattern=$1 total=0
    set --
    if [ -f "$state/ledger.json" ]; then set -- "$@" "$state/ledger.json"; fi
    if [ -d "$state/ledger/users" ]; then set -- "$@" "$state/ledger/users"; fi
    if [ $# -gt 0 ]; then
        for count in $(grep -r -c -F --include='*.json' -e "$pattern" "$@" 2>/dev/null); do
            total=$((total + ${count##*:}))
        done
    fi
    echo "$total"
}
ledger_counts() {
    printf '%s %s %s\n' "$(ledger_lines '"fingerprint":')" "$(ledger_lines '"run_as":')" "$(ledger_lines '"adopted":')"
}

# warn_live_grants: on removal, say what stays on the host and how to take it back (stderr: apt and dnf show it).
warn_live_grants() {
    set -- $(ledger_counts)
    [ "$1" -gt 0 ] || [ "$2" -gt 0 ] || return 0
    echo "p0-ssh-agent: WARNING: $(($1 + $2)) live grant(s) stay on this host: $1 key line(s), $2 sudo rule(s), for $3 account(s) the agent manages." >&2
    echo "p0-ssh-agent: removing the package does not revoke them (the users keep logging in, and their sudo rules keep working)." >&2
    echo "p0-ssh-agent: to revoke them all, run: p0-ssh-agent revoke-all   (reinstall the package first if it is already gone)" >&2
}

if [ "$1" -eq 0 ]; then
    # Erase: stop the agent and remove its enablement symlinks.
    warn_live_grants
    if [ -d /run/systemd/system ]; then
        systemctl disable --now --quiet "$unit" >/dev/null 2>&1 || :
    elif command -v systemctl >/dev/null 2>&1; then
        # No running systemd (chroot, image build): disable only edits symlinks, which works offline.
        systemctl disable --quiet "$unit" >/dev/null 2>&1 || :
    fi
else
    # Upgrade: keep the agent running; %postun of the old package restarts it on the new files.
    :
fi

exit 0
