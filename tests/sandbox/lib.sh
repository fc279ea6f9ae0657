# Shared by tests/sandbox/enter and tests/sandbox/selfcheck (sourced, not run).
#
# host_fingerprint prints one line per host file the test suite must never change: the account and sudo files
# that useradd/userdel/visudo/the agent edit, and the top level of /home. `enter` records it before building the
# sandbox and compares it after the command ends, so any leak out of the sandbox fails the run.

P0_SANDBOX_GUARDED_FILES=(
    /etc/passwd /etc/shadow /etc/group /etc/gshadow /etc/subuid /etc/subgid
    /etc/sudoers /etc/sudoers-p0 /etc/login.defs /etc/default/useradd
)

host_fingerprint() {
    local f
    for f in "${P0_SANDBOX_GUARDED_FILES[@]}"; do
        if [[ -e $f || -L $f ]]; then
            printf '%s %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "$f"
        else
            printf 'absent %s\n' "$f"
        fi
    done
    # Every drop-in: a stray p0-ssh-agent file here would change what sudo grants on the host.
    find /etc/sudoers.d -mindepth 1 -printf 'sudoers.d %P %y %U:%G %m %s\n' 2>/dev/null | LC_ALL=C sort
    find /etc/sudoers.d -mindepth 1 -type f -exec sha256sum {} + 2>/dev/null | LC_ALL=C sort
    # Home directories: name, type, owner and mode (useradd -m / userdel -r would add or remove one).
    find /home /var/mail -mindepth 1 -maxdepth 1 -printf 'home %p %y %U:%G %m\n' 2>/dev/null | LC_ALL=C sort
}
