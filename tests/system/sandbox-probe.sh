#!/bin/sh
# Runs INSIDE the booted container, as a oneshot service carrying exactly the sandbox of the installed
# p0-ssh-agent.service (run.sh copies its [Service] lines). It does by hand what the agent must be able to do
# for a grant and a revoke, with the same tools (useradd, visudo, usermod, pkill, userdel), and checks that what
# the sandbox must forbid is forbidden. One line per step: "ok STEP" or "no STEP: why"; exit 1 if any "no".
#
#   sandbox-probe.sh grant USER PUBKEY_FILE | revoke USER
# (The key is read from a file: systemd would expand $ and % in an ExecStart= argument.)
# shellcheck disable=SC2016  # single-quoted $ is expanded later by the inner shell, on purpose
set -u
status=0
ok() { echo "ok $1"; }
no() { echo "no $1${2:+: $2}"; status=1; }
try() {
    step=$1
    shift
    if out=$("$@" 2>&1); then ok "$step"; else no "$step" "$(echo "$out" | tail -n 2 | tr '\n' ' ')"; fi
}
# forbidden STEP PATH: opening PATH for writing must fail (read-only in the sandbox). Append mode, so an
# existing file such as /etc/sudoers is never truncated even if the check fails; a file it created is removed.
forbidden() {
    existed=no
    [ -e "$2" ] && existed=yes
    if (: >>"$2") 2>/dev/null; then
        [ $existed = no ] && rm -f "$2"
        no "$1" "$2 was writable"
    else
        ok "$1"
    fi
}

mode=$1
user=$2
case "$mode" in
    grant)
        key=$(cat "$3")
        try "useradd -m" /usr/sbin/useradd -m -s /bin/bash -p '*' "$user"
        try "create ~/.ssh 0700 owned by the user" /usr/bin/install -d -m 0700 -o "$user" -g "$user" "/home/$user/.ssh"
        tmp="/home/$user/.ssh/.authorized_keys.p0probe"
        try "write authorized_keys into the user's 0700 directory" sh -c \
            'printf "# RequestID: PROBE1\n%s\n" "$1" >"$2" && chown "$3:$3" "$2" && chmod 0600 "$2" && mv "$2" "${2%/*}/authorized_keys"' \
            _ "$key" "$tmp" "$user"
        try "visudo -cf a sudoers drop-in, then rename it into /etc/sudoers.d" sh -c \
            'printf "%s ALL=(ALL) NOPASSWD: ALL\n" "$1" >/etc/sudoers.d/.p0-probe.tmp && chmod 0440 /etc/sudoers.d/.p0-probe.tmp && /usr/sbin/visudo -c -q -f /etc/sudoers.d/.p0-probe.tmp && mv /etc/sudoers.d/.p0-probe.tmp /etc/sudoers.d/p0-probe && /usr/sbin/visudo -c -q' \
            _ "$user"
        try "edit the legacy /etc/sudoers-p0" sh -c ': >>/etc/sudoers-p0.p0probe && mv /etc/sudoers-p0.p0probe /etc/sudoers-p0 && rm /etc/sudoers-p0'
        forbidden "/etc/ssh is read-only" /etc/ssh/p0-probe
        forbidden "/etc/pam.d is read-only" /etc/pam.d/p0-probe
        forbidden "/etc/sudoers is read-only" /etc/sudoers
        forbidden "/etc/systemd is read-only" /etc/systemd/p0-probe
        forbidden "/etc/p0-ssh-agent is read-only" /etc/p0-ssh-agent/p0-probe
        forbidden "/root is read-only" /root/p0-probe
        forbidden "/opt is read-only" /opt/p0-probe
        forbidden "/usr is read-only" /usr/p0-probe
        ;;
    revoke)
        try "remove the sudoers drop-in" rm /etc/sudoers.d/p0-probe
        try "usermod -L -e 1 (lock)" /usr/sbin/usermod -L -e 1 "$user"
        try "pkill -u (end the user's sessions)" /usr/bin/pkill -KILL -u "$user"
        # userdel refuses while the user still has processes; give the kill a moment to land.
        sleep 1
        try "userdel -r" /usr/sbin/userdel -r "$user"
        ;;
    *)
        echo "usage: sandbox-probe.sh grant USER PUBKEY_FILE | revoke USER" >&2
        exit 64
        ;;
esac
exit $status
