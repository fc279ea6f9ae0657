"""The pure provisioning core: request validation, OpenSSH keys, authorized_keys and sudoers text.

    requests         parse_request(command, data) -> typed request, or RequestInvalid naming the field
    sshkeys          parse_public_key(text, field=...) -> SshPublicKey (line(), fingerprint())
    authorized_keys  add_block / remove_block / blocks on the "# RequestID: <id>" + one line format, as bytes
    sudoers          rule, SudoGrant, render_dropin / parse_dropin, includes_sudoers_d
    messages         the upstream Go agent's result strings
    new_accounts     new_account_refusal(name): the names an account the agent CREATES may not have
    sudosh_events    audit_event_pieces: collectSudoshRecordings' AUDIT_EVENTS_JSON, one event at a time
    errors           RequestInvalid (re-exported by requests)

Nothing here imports os or trio, or runs anything: these are functions of values, and host/ applies the results.
"""

from __future__ import annotations
