#!/bin/bash
# Builds the self-contained application venv at its FINAL path, /opt/p0-ssh-agent/venv, so that its shebangs and
# pyvenv.cfg are correct once installed (venvs are not relocatable). The host's /opt is never touched: this script
# re-executes itself in a private mount namespace and bind-mounts the staging directory over /opt there.
#
#   packaging/build-venv.sh STAGE_OPT WHEEL_DIR VERSION
#
# STAGE_OPT   directory that receives p0-ssh-agent/venv (it becomes /opt inside the namespace)
# WHEEL_DIR   the project's wheel plus every runtime dependency wheel (packaging/build.sh downloads them), so the
#             install needs no network and no index: what was resolved under constraints.txt is what ships
# VERSION     the project version; exactly p0_ssh_agent-VERSION is installed
#
# Run by packaging/build.sh; needs root (unshare -m, mount --bind).
set -euo pipefail

if [ -z "${P0_BUILD_VENV_IN_NS:-}" ]; then
    exec env P0_BUILD_VENV_IN_NS=1 unshare --mount --propagation private -- "$0" "$@"
fi

stage_opt=${1:?usage: build-venv.sh STAGE_OPT WHEEL_DIR VERSION}
wheel_dir=${2:?usage: build-venv.sh STAGE_OPT WHEEL_DIR VERSION}
version=${3:?usage: build-venv.sh STAGE_OPT WHEEL_DIR VERSION}
stage_opt=$(readlink -f "$stage_opt")
wheel_dir=$(readlink -f "$wheel_dir")
# Debian's interpreter: the package depends on python3.11, so the venv must point at exactly this binary.
python=/usr/bin/python3.11
venv=/opt/p0-ssh-agent/venv

case "$wheel_dir" in
    /opt | /opt/*) echo "build-venv: WHEEL_DIR must not be under /opt (it is hidden by the bind mount)" >&2; exit 64 ;;
esac

rm -rf "$stage_opt/p0-ssh-agent"
mkdir -p "$stage_opt"
mount --bind "$stage_opt" /opt

# --without-pip: the shipped venv never contains pip or setuptools. The build's own pip installs into it with
# --python (pip >= 22.3), from the local wheel directory only.
"$python" -m venv --without-pip "$venv"

# A clean pip environment: no user or site configuration, no extra index or find-links from this machine.
env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null PIP_NO_INPUT=1 \
    "$python" -m pip --disable-pip-version-check --python "$venv/bin/python" install \
    --quiet --no-index --find-links "$wheel_dir" --no-compile --no-cache-dir \
    "p0-ssh-agent==$version"

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
for unwanted in pip setuptools wheel pytest mypy ruff hypothesis; do
    if "$venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$unwanted') is None)"; then
        echo "build-venv: $unwanted ended up in the shipped venv" >&2
        exit 1
    fi
done
rm -rf "$site"/pip "$site"/pip-*.dist-info "$site"/setuptools "$site"/setuptools-*.dist-info "$site"/_distutils_hack
# The PowerShell and csh activators are of no use on a server; the POSIX one stays for debugging.
rm -f "$venv/bin/Activate.ps1" "$venv/bin/activate.csh" "$venv/bin/activate.fish"

# The unit makes /opt read-only and sets PYTHONDONTWRITEBYTECODE, so every .pyc must exist now. unchecked-hash
# pycs are valid without comparing mtimes, so dpkg/rpm-set mtimes never invalidate them.
find "$venv" -name __pycache__ -prune -exec rm -rf {} +
"$venv/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$venv/lib" >/dev/null

# Smoke test with the shipped interpreter only: the package and every runtime dependency import, and the version
# is the one asked for.
"$venv/bin/python" -I -c '
import sys
import cryptography, jose, ruamel.yaml, structlog, trio, trio_websocket
from p0_ssh_agent._version import __version__
sys.exit(0 if __version__ == sys.argv[1] else f"build-venv: built {__version__}, expected {sys.argv[1]}")
' "$version"
echo "build-venv: $venv ($(du -sh "$venv" | cut -f1))"
