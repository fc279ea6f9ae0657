#!/bin/sh
# rpm %postun of p0-ssh-agent. $1 is how many versions remain after this step: 0 = erase, 1 or more = upgrade.
# rpm has no "purge": on erase, the configuration, the keys and /var/lib/p0-ssh-agent stay (docs/install.md
# says how to remove them by hand).

unit=p0-ssh-agent.service

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi

if [ "$1" -ge 1 ]; then
    # Upgrade: the new files are in place; restart the agent only if it is running, so it runs the new code.
    if [ -d /run/systemd/system ]; then
        systemctl try-restart "$unit" >/dev/null 2>&1 || :
    fi
else
    # Erase: the unit is gone and systemd has forgotten it (daemon-reload above); nothing else to do.
    :
fi

exit 0
