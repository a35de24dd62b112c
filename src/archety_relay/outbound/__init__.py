"""Talking back: replies and the backend's commands, carried out through Messages.app, durably.

    dispatch   outgoing work sent when due, confirmed in chat.db, never sent twice
    fetches    the files the persona sends, fetched off the dispatcher's step
    executor   one sync command: its work, its event and its seen mark in one transaction
    sync       heartbeat and `/edge/sync`: status and events out, commands and acks in

Touches no outside thing itself: it sends through `macos.messages_app` and reads chat.db through
`chatdb`. May import: capture (the rules a sync reloads), backend, store, macos, chatdb, config
and the top-level values.
"""
