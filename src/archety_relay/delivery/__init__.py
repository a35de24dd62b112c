"""Delivery: queued messages to the backend, one chat at a time.

    lanes      which chats may have a message at the backend now, and what one answer means for
               the others (pure decisions over outcomes)
    attempt    one attempt at one queued message: pictures settled, POST, the outcome stored

Touches no outside thing itself. May import: outbound (a reply becomes outgoing work), pictures,
backend, store, config and the top-level values.
"""
