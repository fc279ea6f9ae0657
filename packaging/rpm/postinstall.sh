#!/bin/sh
# rpm %post of p0-ssh-agent. rpm passes a number: $1 is how many versions of the package are installed once
# this transaction step is done (1 = first install, 2 or more = upgrade).
# On an upgrade the NEW package's %post runs before the OLD package's %postun, so the restart lives in
# %postun (packaging/rpm/postremove.sh), after the old files are gone.

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi

if [ "$1" -eq 1 ]; then
    # First install: neither enabled nor started. `p0-ssh-agent register` writes the configuration, then the
    # admin runs `systemctl enable --now p0-ssh-agent`; ConditionPathExists= makes an earlier start a no-op.
    :
else
    # Upgrade: the unit file may have changed (reloaded above); the running agent is restarted by %postun.
    :
fi

exit 0
