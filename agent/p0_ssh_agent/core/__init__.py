"""The pure provisioning core: request validation, OpenSSH keys, authorized_keys and sudoers text."""
