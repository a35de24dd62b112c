"""Apple's Messages database, read only: the rows, the text inside them, the file events.

Owns the only SQL on `~/Library/Messages/chat.db` (`reader`, short read-only transactions) and the
only use of watchdog (`watcher`, a hint that something may be new). The rest are pure functions
over what was read: `rows` (a row becomes a `Message` or a `Skipped`), `typedstream` (the text in
`attributedBody`), `guids` (what a chat guid says).

May import: the top-level values (`model`, `errors`). Nothing else of ours.
"""
