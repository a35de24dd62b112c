"""Delivery: queued messages to the backend, one chat at a time.

    lanes      which chats may have a message at the backend now, and what one answer means for
               the others (pure decisions over outcomes)
    attempt    one attempt at one queued message: pictures settled, POST, the outcome stored
    contents   what a voice note or a card holds once macOS or the download is done (Apple's
               transcript, a recording's length, a .vcf's cards), waited for by its chat only

Touches no outside thing itself but the attachment files `contents` reads. May import: outbound
(a reply becomes outgoing work), pictures, backend, store, chatdb, config and the top-level
values.
"""
