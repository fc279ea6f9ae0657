#!/bin/sh
# rpm %posttrans of p0-ssh-agent: runs once the whole transaction is done, after the old package's files are
# gone (on an upgrade the old %postun runs after the new %post, so %post is too early for this).
#
# Up to 0.1.0 the application was a venv in /opt/p0-ssh-agent on the distribution's python3.11; later versions
# carry their own runtime elsewhere. With the venv's entry point gone, this package ships nothing in /opt, and
# whatever is left there (bytecode or directories made at run time, which rpm never knew) belongs to the old
# runtime. Harmless on a fresh install: there is nothing to remove.

old_runtime=/opt/p0-ssh-agent
if [ -d "$old_runtime" ] && [ ! -L "$old_runtime" ] && [ ! -e "$old_runtime/venv/bin/p0-ssh-agent" ]; then
    rm -rf "$old_runtime"
fi

exit 0
