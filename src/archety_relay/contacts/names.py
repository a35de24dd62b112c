"""The names a message carries: its sender's, and in a group every member's Contacts knows."""

from __future__ import annotations

from typing import Any

import structlog

from ..model import Message
from .reader import AddressBook

log = structlog.get_logger("archety_relay.contacts")


def names_for(book: AddressBook, message: Message) -> dict[str, Any]:
    """`sender_name` when the sender has a card; `participant_names` {handle: name} for a
    group's members that have one. Nothing for people without a card, and nothing (with a
    warning, never the names) when Contacts cannot be read: a name never costs a message."""
    try:
        return _names(book, message)
    except Exception as exc:
        log.warning("contact_names_failed", error_type=type(exc).__name__)
        return {}


def _names(book: AddressBook, message: Message) -> dict[str, Any]:
    found: dict[str, Any] = {}
    sender = book.name_for(message.sender)
    if sender is not None:
        found["sender_name"] = sender
    if message.mode == "group":
        members = book.names_for(message.participants)
        if members:
            found["participant_names"] = members
    return found
