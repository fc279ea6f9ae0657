# Agent access from the packaged agent under its real unit (issue 17 item 4), sourced by tests/system/run.sh once
# the agent is running and connected to the dev backend.
#
# The agent's unit is ProtectSystem=strict (so /var/www is read-only to it), UMask=0077, NoNewPrivileges=yes,
# with its seccomp filter, capability bounding set and address families: an operation must run outside it, as the
# target account, in a transient unit of its own (agent_access/confine.py). With agentAccess on, one account
# `deploy` listed, a trust file and a policy, this drives ssh_file_create and cosigned ssh_exec through the tunnel
# and checks: the file is deploy's (where the agent itself cannot write), exec answers as deploy from a
# p0-agent-access-* unit, sudo through a NOPASSWD rule fails (no new privileges), a timeout ends the command with
# nothing of deploy left, no transient unit stays, and no token text reaches the journal. Afterwards the
# configuration, the policy and the dev backend are as run.sh had them, so its later checks are unaffected.
# shellcheck shell=bash

access_user=deploy
access_prefix=/var/www/app
access_host=ops-01.example.com
access_keys=/root/p0-dev-keys

# access_call COSIGN REQUEST_JSON: send one ssh_* request through the dev backend (`dev-backend call` mints the
# UCAN, and the cosignature when COSIGN is "cosign"); prints "HTTP <status>" and the answer's JSON.
access_call() {
    local flags=(--client "$client_id" --host "$access_host" --path-prefix "$access_prefix")
    [ "$1" = cosign ] && flags+=(--cosign)
    printf '%s' "$2" | C_write /root/p0-access-request.json 0600
    C p0-ssh-agent dev-backend call "${flags[@]}" /root/p0-access-request.json 2>&1
}

# answer_field ANSWER EXPRESSION: EXPRESSION (Python, over `r`: the answer's result object, and `b64`) printed,
# or the HTTP status, the reason and the end of the answer.
read -r -d '' answer_py <<'PY'
import base64, json, sys
status, _, body = sys.argv[1].partition("\n")
b64 = lambda text: base64.b64decode(text).decode("utf-8", "replace")
try:
    answer = json.loads(body)
    r = answer["result"] if isinstance(answer.get("result"), dict) else answer["data"]["result"]
    print(eval(sys.argv[2]))
except Exception as exc:
    sys.exit(f"{status} ({type(exc).__name__} {exc}): {' '.join(body.split())[-300:]}")
PY
answer_field() { python3 -c "$answer_py" "$1" "$2" 2>&1; }

# exec_request ID ARGV_JSON [EXTRA_MEMBERS]: an ssh_exec body as deploy in the prefix.
exec_request() {
    printf '{"command": "ssh_exec", "requestId": "%s", "username": "%s", "cwd": "%s", "argv": %s%s}' \
        "$1" "$access_user" "$access_prefix" "$2" "${3:+, $3}"
}

agent_access_checks() {
    say "--- agent access: an operation runs as the account, outside the agent's unit"
    local access_started=$SECONDS answer
    C useradd -m "$access_user"
    C install -d -o root -g root -m 0755 /var/www
    C install -d -o "$access_user" -g "$access_user" -m 0755 "$access_prefix"
    # A NOPASSWD rule, as a P0 grant gives one: it works for deploy outside agent access, and must not inside.
    printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$access_user" | C_write /etc/sudoers.d/p0-test-deploy 0440
    check "agent access: $access_user's NOPASSWD rule works outside agent access" \
        C setpriv --reuid "$access_user" --regid "$access_user" --init-groups /usr/bin/sudo -n true

    # The dev backend again, now holding an issuer and an approver key; their public halves are the trust file.
    C systemctl stop p0-dev-backend
    check "agent access: dev backend with --agent-access-keys" C systemd-run --unit p0-dev-backend \
        --property Restart=no /usr/bin/p0-ssh-agent dev-backend --call-timeout-ms 30000 \
        --public-key /etc/p0-ssh-agent/keys/jwk.public.json --agent-access-keys "$access_keys"
    wait_until 30 C test -s "$access_keys/agent-access-keys.json"
    check "agent access: trust file installed" C install -o root -g root -m 0644 \
        "$access_keys/agent-access-keys.json" /etc/p0-ssh-agent/agent-access-keys.json
    # Copies, so that both go back byte for byte (the policy is a conffile: dpkg --verify later checks it).
    C cp -p /etc/p0-ssh-agent/agent-access.cedar /root/p0-agent-access.cedar.saved
    C cp -p /etc/p0-ssh-agent/config.yaml /root/p0-config.yaml.saved
    C_write /etc/p0-ssh-agent/agent-access.cedar 0644 <<EOF
@id("test-deploy-upload")
permit (principal, action in [Action::"/ssh/file/create", Action::"/ssh/file/write"], resource)
when { resource.host == "$access_host" && resource.username == "$access_user" && resource.ancestors.contains("$access_prefix") };
@id("test-deploy-exec")
permit (principal, action == Action::"/ssh/exec", resource)
when { resource.host == "$access_host" && resource.username == "$access_user" };
@id("test-exec-step-up")
forbid (principal, action == Action::"/ssh/exec", resource) when { !context.cosigner };
EOF
    { C cat /root/p0-config.yaml.saved; printf 'hostname: "%s"\nagentAccess: true\nagentAccessUsers: [%s]\n' \
        "$access_host" "$access_user"; } | C_write /etc/p0-ssh-agent/config.yaml 0640
    check "agent access: systemctl restart p0-ssh-agent" C systemctl restart "$unit"
    wait_until 30 backend_up
    if wait_until 30 connected; then ok "agent access: reconnected with agentAccess on"; else bad "agent access: reconnected with agentAccess on" "$(show StatusText)"; fi

    # The control: inside the agent's own unit /var/www is read-only, whatever the rights of root.
    expect_contains "agent access: the agent's own unit cannot write $access_prefix" "Read-only file system" \
        "$(C nsenter -t "$(show MainPID)" -m -- /usr/bin/touch "$access_prefix/written-by-the-agent" 2>&1)"

    answer=$(access_call - "{\"command\": \"ssh_file_create\", \"requestId\": \"acc-create\", \"username\": \"$access_user\", \"path\": \"$access_prefix/index.html\", \"data\": \"$(printf '<h1>deployed</h1>' | base64 -w0)\"}")
    expect_eq "agent access: ssh_file_create answered 200 with the file's size" 17 "$(answer_field "$answer" 'r["size"]')"
    expect_eq "agent access: the file is deploy's (0644) and holds what was sent" "$access_user 644 <h1>deployed</h1>" \
        "$(C stat -c '%U %a' "$access_prefix/index.html" 2>&1) $(C cat "$access_prefix/index.html" 2>&1)"

    answer=$(access_call - "$(exec_request acc-exec-0 '["/usr/bin/id", "-un"]')")
    expect_contains "agent access: ssh_exec without a cosignature is refused" "HTTP 403" "$answer"
    answer=$(access_call cosign "$(exec_request acc-exec-1 '["/usr/bin/id", "-un"]')")
    expect_eq "agent access: cosigned ssh_exec /usr/bin/id -un answers $access_user" "0 $access_user" \
        "$(answer_field "$answer" '"%s %s" % (r["exitCode"], b64(r["stdout"]).strip())')"
    answer=$(access_call cosign "$(exec_request acc-exec-2 '["/bin/cat", "/proc/self/cgroup"]')")
    expect_contains "agent access: exec runs in a transient unit of its own" "/p0-agent-access-" \
        "$(answer_field "$answer" 'b64(r["stdout"])')"
    answer=$(access_call cosign "$(exec_request acc-exec-3 '["/usr/bin/sudo", "-n", "true"]')")
    expect_eq "agent access: sudo -n true inside exec fails (NoNewPrivileges), despite the NOPASSWD rule" \
        "1 no new privileges" \
        "$(answer_field "$answer" 'str(r["exitCode"]) + " " + ("no new privileges" if "no new privileges" in b64(r["stderr"]) else b64(r["stderr"])[:200])')"
    local exec_started=$SECONDS
    answer=$(access_call cosign "$(exec_request acc-exec-4 '["/bin/sleep", "60"]' '"timeoutSeconds": 2')")
    expect_eq "agent access: exec /bin/sleep 60 with timeoutSeconds 2 ends as timedOut" True \
        "$(answer_field "$answer" 'r["timedOut"]')"
    say "    (the timed-out exec was answered in $((SECONDS - exec_started))s)"
    expect_eq "agent access: no process of $access_user survives" "" "$(C pgrep -u "$access_user" -a)"
    expect_eq "agent access: no p0-agent-access-* unit left" "" \
        "$(C systemctl list-units --all --plain --no-legend 'p0-agent-access-*' 2>&1)"
    expect_eq "agent access: the unit is still active and connected" "active" "$(show ActiveState)"
    local tokens
    tokens=$(grep -c 'eyJ' <<<"$(C journalctl -u "$unit" --no-pager -o cat)")
    expect_eq "agent access: no token text (eyJ) in the agent's journal" 0 "$tokens"

    # As run.sh had it: its later checks (upgrade, remove, purge) count on this configuration and policy.
    C systemctl stop p0-dev-backend
    C systemd-run --quiet --unit p0-dev-backend --property Restart=no \
        /usr/bin/p0-ssh-agent dev-backend --public-key /etc/p0-ssh-agent/keys/jwk.public.json
    C mv /root/p0-agent-access.cedar.saved /etc/p0-ssh-agent/agent-access.cedar
    C mv /root/p0-config.yaml.saved /etc/p0-ssh-agent/config.yaml
    C rm -f /etc/sudoers.d/p0-test-deploy /etc/p0-ssh-agent/agent-access-keys.json /root/p0-access-request.json
    C systemctl restart "$unit"
    wait_until 30 backend_up
    if wait_until 30 connected; then ok "agent access: reconnected with agentAccess off again"; else bad "agent access: reconnected with agentAccess off again" "$(show StatusText)"; fi
    say "    (agent access checks took $((SECONDS - access_started))s)"
}
