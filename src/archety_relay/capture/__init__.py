"""Capture: what a new or changed chat.db row means, and putting it in the outbox.

    new_rows    the capture step: rows after the saved cursor into the outbox, one transaction
    placement   where capture reads from (the cursor; chat.db or the state file replaced)
    arrivals    what a new row is beyond "a message": a reaction, a group change, an own send
    lateness    late message or iCloud back-fill, a pure rule
    inbound     the backend's message rules and a chat's context, applied before the enqueue
    changes     edits, unsends and read receipts found by re-reading a recent window
    outcomes    what became of the persona's sends: delivered, or failed after going out
    events      conversation events as pure functions over rows and fingerprints
    backfill    `archety-relay backfill`: replaying recent history on purpose
    detection   how fast new messages were noticed (kept by the daemon, shown by `status`)

Touches no outside thing itself: it reads through `chatdb` and writes through `store`.
May import: chatdb, store, backend (the pure rules), config and the top-level values.
"""
