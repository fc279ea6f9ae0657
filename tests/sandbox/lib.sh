# Shared by tests/sandbox/enter and tests/sandbox/selfcheck (sourced, not run).
#
# host_fingerprint prints one line per host file the test suite must never change: the account and sudo files
# that useradd/userdel/visudo/the agent edit, the top level of /home, the agent's default state directory (the
# ledger an agent started with default settings writes) and root's home (children run with HOME=/root; root's
# ~/.ssh is a login). `enter` records it before building the
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
    # The agent's state: every entry with its content. Absent on a host that does not run the agent, and it must
    # stay absent (it would be a ledger written on the host).
    if [[ -e /var/lib/p0-ssh-agent || -L /var/lib/p0-ssh-agent ]]; then
        find /var/lib/p0-ssh-agent -printf 'state %p %y %U:%G %m %s\n' 2>/dev/null | LC_ALL=C sort
        find /var/lib/p0-ssh-agent -type f -exec sha256sum {} + 2>/dev/null | LC_ALL=C sort
    else
        echo 'absent /var/lib/p0-ssh-agent'
    fi
    # Root's home: its own owner and mode, the names at its top (not their times: a shell or a cache on the host
    # may touch those while the tests run), and ~/.ssh in full.
    find /root -maxdepth 1 -printf 'root %p %y %U:%G %m\n' 2>/dev/null | LC_ALL=C sort
    if [[ -e /root/.ssh || -L /root/.ssh ]]; then
        find /root/.ssh -printf 'root-ssh %p %y %U:%G %m %s\n' 2>/dev/null | LC_ALL=C sort
        find /root/.ssh -type f -exec sha256sum {} + 2>/dev/null | LC_ALL=C sort
    else
        echo 'absent /root/.ssh'
    fi
}

# overlay_writes_away DIR LAYERS: mount an overlay over DIR whose lower layer is DIR itself (read as it is) and whose
# upper layer is a new tmpfs at LAYERS (an empty directory), so every write under DIR lands in memory and vanishes
# with the mount namespace. The upper layer is a tmpfs of its own because overlayfs cannot write into every
# filesystem (not into another overlay, which / is in most containers); tmpfs always works. Returns non-zero if
# the overlay did not come up.
overlay_writes_away() {
    local dir=$1 layers=$2
    mount -t tmpfs -o mode=700,nosuid,nodev p0-overlay-layers "$layers" || return 1
    mkdir "$layers/upper" "$layers/work"
    chown --reference="$dir" "$layers/upper"
    chmod --reference="$dir" "$layers/upper"
    mount -t overlay -o "lowerdir=$dir,upperdir=$layers/upper,workdir=$layers/work" p0-overlay "$dir" || return 1
    [[ $(findmnt -n -o FSTYPE --mountpoint "$dir") == overlay ]]
}
