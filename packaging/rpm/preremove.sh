#!/bin/sh
# rpm %preun of p0-ssh-agent. $1 is how many versions remain after this step: 0 = erase, 1 or more = upgrade.
#
# Live grants (JIT users, authorized_keys entries, /etc/sudoers.d/p0-ssh-agent) are deliberately NOT revoked on
# erase: a package operation that goes wrong must never lock every user out of the host. An admin who wants
# everything gone runs `p0-ssh-agent revoke-all` BEFORE erasing the package (docs/install.md).

unit=p0-ssh-agent.service

if [ "$1" -eq 0 ]; then
    # Erase: stop the agent and remove its enablement symlinks.
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
