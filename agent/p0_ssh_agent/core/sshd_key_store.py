"""The key-store mode (issue 14 item 6), as data: where sshd reads the keys of the agent's JIT accounts (pure).

keyStore: home (the default, P0's Go agent's and every existing host's) keeps each account's grants in its
~/.ssh/authorized_keys, a file its user owns and can append to. keyStore: store moves the key and CA lines of the
accounts the agent CREATED into root-owned files, one per account, in KEY_STORE_DIR, and an sshd drop-in makes
sshd read that file, and nothing else, for the members of KEY_STORE_GROUP:

    Match Group p0-ssh-agent-keys
        AuthorizedKeysFile /var/lib/p0-ssh-agent/keys/%u
        AuthorizedKeysCommand none

so nothing in a user-writable directory decides who logs in. Adopted and unmanaged accounts keep their own
~/.ssh/authorized_keys: their files are their admin's, and the agent adds and removes only its marked pairs there.

Why a group: sshd can pick another AuthorizedKeysFile only per Match block, and a group is the one criterion the
agent can keep exact without editing /etc/ssh (read-only to it under its unit): it puts every created account into
the group when the store holds its keys, and the user cannot take themselves out of /etc/group.

sshd opens the file as the user (OpenSSH's temporarily_use_uid, then StrictModes): the directories up to it must
be root-owned and not group/world-writable but traversable (0711: nobody can list the names), and the file is
root:<the account's group> 0640, so the user can read it and only root can write it.
"""

from __future__ import annotations

KEY_STORE_SUBDIR = "keys"  # of the state directory; the default one's:
KEY_STORE_DIR = "/var/lib/p0-ssh-agent/keys"
KEY_STORE_GROUP = "p0-ssh-agent-keys"
STATE_DIR_MODE = 0o711  # /var/lib/p0-ssh-agent: traversable by sshd acting as the user, never listable
KEY_DIR_MODE = 0o711
KEY_FILE_MODE = 0o640  # root:<the account's primary group>: the user reads, only root writes

# Early in the lexical order of /etc/ssh/sshd_config.d: sshd applies the first AuthorizedKeysFile that a matching
# Match block sets, so ours must come before any other drop-in's.
SSHD_DROPIN_DIR = "/etc/ssh/sshd_config.d"
SSHD_DROPIN_NAME = "01-p0-ssh-agent-keys.conf"
SSHD_DROPIN_PATH = f"{SSHD_DROPIN_DIR}/{SSHD_DROPIN_NAME}"
# Where the package ships the same text (packaging/sshd-key-store.conf); `p0-ssh-agent key-store` installs it.
PACKAGED_DROPIN_PATH = "/usr/share/p0-ssh-agent/sshd-key-store.conf"


def sshd_dropin_text(key_dir: str = KEY_STORE_DIR, group: str = KEY_STORE_GROUP) -> str:
    """The sshd drop-in that makes sshd read the store, and only it, for the group's members."""
    return (
        "# Installed by `p0-ssh-agent key-store store` (p0-ssh-agent's key-store mode); removed by\n"
        "# `p0-ssh-agent key-store home`. The accounts p0-ssh-agent created log in with the keys it keeps in a\n"
        "# root-owned file, never with ~/.ssh/authorized_keys, which their users can edit.\n"
        f"Match Group {group}\n"
        f"    AuthorizedKeysFile {key_dir}/%u\n"
        "    AuthorizedKeysCommand none\n"
    )


def key_file_path(name: str, key_dir: str = KEY_STORE_DIR) -> str:
    """The store file sshd reads for the account `name` (a name the request parser or the ledger checked)."""
    return f"{key_dir.rstrip('/')}/{name}"
