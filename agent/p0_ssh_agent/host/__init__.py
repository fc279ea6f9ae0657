"""Effects on the host: every file write, account change and subprocess the agent makes lives here.

    actions     a change as data: the Plan (a tuple of actions) a handler builds, what applying it came to
    apply       HostApplier: runs a Plan's actions in order, with their locks and rollbacks
    describe    DescribingApplier: a dry run's; checks read-only and describes each action, changes nothing
    proc        run(argv) with an absolute path, minimal environment and a deadline; which() without PATH
    safefile    edit_in_user_dir (symlink-safe ~/.ssh edits) and its preview
    rootfile    read / write / remove root-owned files (the drop-in, the ledger), and their previews
    plainfile   the rules for reading a file a user controls: one link, a limit counted in bytes read
    locks       user_file_lock(uid), global_lock(name): cross-process flock locks
    selinux     restorecon after a write, when SELinux is on
    sudoers_install   the sudoers drop-in and the legacy /etc/sudoers-p0, always checked with visudo
    ledger      what the agent owns (users, keys, sudo grants, UID high-water mark): LedgerStore, per-user records
    audit_trail the journald / JSON-lines audit trail (AuditTrail); audit_events its entries and encodings
    openssh     the local OpenSSH's version (which expiry-time= form it reads); policy_file the Cedar file
    accounts    users: lookup, the manage rules, UID allocation; account_changes: create / lock / unlock / delete
    sessions    ending a user's live sessions
    inventory   runAudit / listUsers
    sudosh      collectSudoshRecordings: only trusted recordings, built only up to the output cap

Everything here blocks (files, flock, subprocesses): async callers run it with trio.to_thread.run_sync.
"""
