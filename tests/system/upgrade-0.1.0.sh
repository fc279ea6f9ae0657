# The upgrade from the 0.1.0 release (sourced by run.sh after lib.sh and repo.sh; issue 12 item 6).
#
# 0.1.0 was a venv in /opt/p0-ssh-agent on Debian 12's python3.11. build_old_release builds it from git history
# (commit 04f9419, `git archive` into build/system/old/src, then its own packaging/build.sh) once per checkout;
# upgrade_from_0_1_0 installs it in the booted Debian 12 root, makes a key, a configuration, a user with a key
# and a sudo rule through the daemon, then upgrades to the newest package in the repository with plain
# `apt-get install p0-ssh-agent`, and checks that configuration, keys, ledger and live grants survive and that
# nothing of the old runtime is left.
# shellcheck shell=bash
# shellcheck disable=SC2016  # single-quoted $ is expanded later by the inner shell, on purpose

old_release_commit=04f9419
old_release_version=0.1.0
old_deb=""

build_old_release() {
    local dir=$root/build/system/old
    local built=$dir/p0-ssh-agent_${old_release_version}_amd64.deb
    if [ -f "$built" ]; then
        old_deb=$built
        say "--- reusing the $old_release_version release built from $old_release_commit"
        return 0
    fi
    if ! git -C "$root" cat-file -e "$old_release_commit^{commit}" 2>/dev/null; then
        say "NOTE: commit $old_release_commit (release $old_release_version) is not in this clone (shallow?): the upgrade from it is not tested"
        return 0
    fi
    say "--- building the $old_release_version release from $old_release_commit (once per checkout)"
    rm -rf "$dir/src"
    mkdir -p "$dir/src"
    git -C "$root" archive "$old_release_commit" | tar -C "$dir/src" -xf -
    if (cd "$dir/src" && bash packaging/build.sh 2>&1 | grep -v "^WARNING: Location '" | tail -n 2) \
        && cp "$dir/src/dist/p0-ssh-agent_${old_release_version}_amd64.deb" "$built"; then
        old_deb=$built
        rm -rf "$dir/src"
    else
        bad "build of release $old_release_version from $old_release_commit" "its packaging/build.sh failed"
    fi
}

upgrade_from_0_1_0() {
    say "--- upgrade from $old_release_version (a venv in /opt on python3.11) to the repository's newest"
    [ -n "$old_deb" ] || { say "NOTE: no $old_release_version package: skipped"; return 0; }
    local old_user=p0bob
    check "install $old_release_version (apt-get install ./p0-ssh-agent_${old_release_version}_amd64.deb)" \
        C env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "/mnt/old/$(basename "$old_deb")"
    expect_eq "installed: $old_release_version with its venv in /opt" "$old_release_version-1 venv" \
        "$(C dpkg-query -W -f='${Version}' p0-ssh-agent) $(C sh -c '[ -x /opt/p0-ssh-agent/venv/bin/p0-ssh-agent ] && echo venv')"
    check "$old_release_version: keygen" C p0-ssh-agent keygen
    C systemctl stop p0-dev-backend >/dev/null 2>&1
    check "$old_release_version: dev backend started with the new key" C systemd-run --unit p0-dev-backend-old --property Restart=no \
        /usr/bin/p0-ssh-agent dev-backend --public-key /etc/p0-ssh-agent/keys/jwk.public.json
    wait_until 30 backend_up || bad "$old_release_version: dev backend answers" "$(C journalctl -u p0-dev-backend-old --no-pager -o cat | tail -n 3)"
    C_write /etc/p0-ssh-agent/config.yaml 0640 <<EOF
# written by tests/system/upgrade-0.1.0.sh
version: "1.0"
orgId: "$org_id"
hostId: "$host_id"
tunnelHost: "ws://127.0.0.1:8079"
keyPath: "/etc/p0-ssh-agent/keys"
EOF
    check "$old_release_version: systemctl enable --now" C systemctl enable --now "$unit"
    if wait_until 30 connected; then ok "$old_release_version: connected"; else bad "$old_release_version: connected" "$(show StatusText)"; fi
    backend_call "$old_release_version: provisionUser grant $old_user" \
        "{\"command\":\"provisionUser\",\"userName\":\"$old_user\",\"action\":\"grant\",\"requestId\":\"REQold1\"}"
    backend_call "$old_release_version: provisionAuthorizedKeys grant" \
        "{\"command\":\"provisionAuthorizedKeys\",\"userName\":\"$old_user\",\"action\":\"grant\",\"requestId\":\"REQold1\",\"publicKey\":\"$pubkey\"}"
    backend_call "$old_release_version: provisionSudo grant" \
        "{\"command\":\"provisionSudo\",\"userName\":\"$old_user\",\"action\":\"grant\",\"requestId\":\"REQold2\",\"sudo\":true}"
    expect_eq "$old_release_version: $old_user logs in and has sudo" "$old_user sudo" "$(ssh_sudo "$old_user")"

    local kept_files="/etc/p0-ssh-agent/config.yaml /etc/p0-ssh-agent/keys/jwk.private.json /etc/p0-ssh-agent/keys/jwk.public.json"
    local sums_before ledger_before pid_before upgrade_out
    # shellcheck disable=SC2086  # the list is split on purpose
    sums_before=$(C sha256sum $kept_files 2>&1)
    # 0.1.0's whole-file ledger (schema 1): the new agent migrates it to per-user records on first use and keeps
    # the original bytes as ledger.json.migrated-<time> (docs/ledger.md), so its content must survive either way.
    ledger_before=$(C sha256sum /var/lib/p0-ssh-agent/ledger.json | cut -d' ' -f1)
    pid_before=$(show MainPID)
    upgrade_out=$(C env DEBIAN_FRONTEND=noninteractive apt-get install -y -q p0-ssh-agent 2>&1)
    expect_eq "upgrade from $old_release_version with apt-get install p0-ssh-agent: version $next" "install ok installed $next-1" \
        "$(C dpkg-query -W -f='${Status} ${Version}' p0-ssh-agent 2>&1)"
    [ "$(C dpkg-query -W -f='${Version}' p0-ssh-agent)" = "$next-1" ] || printf '%s\n' "$upgrade_out" | tail -n 8 | sed 's/^/    /'
    # shellcheck disable=SC2086
    expect_eq "upgrade from $old_release_version: configuration and keys unchanged" "$sums_before" "$(C sha256sum $kept_files 2>&1)"
    local pid_after
    pid_after=$(show MainPID)
    if [ "$pid_after" != "$pid_before" ] && [ "$pid_after" != 0 ] && wait_until 30 connected; then
        ok "upgrade from $old_release_version: the agent was restarted onto the new package and reconnected"
    else
        bad "upgrade from $old_release_version: the agent was restarted onto the new package and reconnected" \
            "MainPID $pid_before -> $pid_after, $(show ActiveState), $(show StatusText)"
    fi
    expect_eq "upgrade from $old_release_version: $old_user still logs in and has sudo" "$old_user sudo" "$(ssh_sudo "$old_user")"
    expect_contains "upgrade from $old_release_version: the new agent reads the old ledger (status lists the grants)" "live grant" \
        "$(C p0-ssh-agent status 2>&1)"
    # A request makes the new agent's store migrate the schema-1 ledger.json (the same grant again: no change).
    backend_call "$old_release_version: the same key grant again, after the upgrade" \
        "{\"command\":\"provisionAuthorizedKeys\",\"userName\":\"$old_user\",\"action\":\"grant\",\"requestId\":\"REQold1\",\"publicKey\":\"$pubkey\"}"
    expect_eq "upgrade from $old_release_version: the ledger is migrated to per-user records" "yes" \
        "$(C sh -c "[ -f /var/lib/p0-ssh-agent/ledger/users/$old_user.json ] && [ -f /var/lib/p0-ssh-agent/ledger/host.json ] && [ ! -e /var/lib/p0-ssh-agent/ledger.json ] && echo yes || echo no")"
    expect_eq "upgrade from $old_release_version: the old ledger's bytes are kept as its migration backup" "$ledger_before" \
        "$(C sh -c 'sha256sum /var/lib/p0-ssh-agent/ledger.json.migrated-*' | cut -d' ' -f1)"
    expect_eq "upgrade from $old_release_version: nothing of the old runtime is left in /opt" "" \
        "$(C sh -c 'ls -d /opt/p0-ssh-agent 2>/dev/null; dpkg -S /opt/p0-ssh-agent 2>/dev/null')"
    expect_contains "upgrade from $old_release_version: the agent runs on the bundled runtime, not the distribution's python3.11" \
        /usr/lib/p0-ssh-agent/python/bin/python3. "$(C readlink "/proc/$(show MainPID)/exe")"
}
