"""Plays Contacts: writes `AddressBook-v22.abcddb` files the way the Mac's address book keeps
them (Core Data tables `ZABCDRECORD`, `ZABCDPHONENUMBER`, `ZABCDEMAILADDRESS`, numbers as
typed), for the tests and the demo. Only the columns the relay reads, plus their keys. Never
point it at a real address book.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from ..contacts.reader import FILE_NAME

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ZABCDRECORD (
    Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER,
    ZFIRSTNAME VARCHAR, ZLASTNAME VARCHAR, ZMIDDLENAME VARCHAR, ZORGANIZATION VARCHAR,
    ZNICKNAME VARCHAR, ZUNIQUEID VARCHAR
);
CREATE TABLE IF NOT EXISTS ZABCDPHONENUMBER (
    Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER, ZOWNER INTEGER,
    ZORDERINGINDEX INTEGER, ZFULLNUMBER VARCHAR, ZLABEL VARCHAR
);
CREATE TABLE IF NOT EXISTS ZABCDEMAILADDRESS (
    Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER, ZOWNER INTEGER,
    ZORDERINGINDEX INTEGER, ZADDRESS VARCHAR, ZADDRESSNORMALIZED VARCHAR, ZLABEL VARCHAR
);
CREATE INDEX IF NOT EXISTS ZABCDPHONENUMBER_ZOWNER_INDEX ON ZABCDPHONENUMBER (ZOWNER);
CREATE INDEX IF NOT EXISTS ZABCDEMAILADDRESS_ZOWNER_INDEX ON ZABCDEMAILADDRESS (ZOWNER);
"""


class AddressBookWriter:
    """One account's address book file: `root/Sources/<source>/AddressBook-v22.abcddb`."""

    def __init__(self, root: Path, source: str = "4B7C1C8E-0000-4000-8000-000000000001") -> None:
        folder = root / "Sources" / source
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / FILE_NAME
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL").fetchall()
        self.conn.executescript(_SCHEMA)

    def card(
        self,
        first: str | None = None,
        last: str | None = None,
        *,
        organization: str | None = None,
        nickname: str | None = None,
        phones: Sequence[str] = (),
        emails: Sequence[str] = (),
    ) -> int:
        """One contact card, its numbers exactly as typed and its e-mail addresses."""
        self.conn.execute("BEGIN")
        owner = int(
            self.conn.execute(
                "INSERT INTO ZABCDRECORD (Z_ENT, Z_OPT, ZFIRSTNAME, ZLASTNAME, ZORGANIZATION, "
                "ZNICKNAME) VALUES (22, 1, ?, ?, ?, ?)",
                (first, last, organization, nickname),
            ).lastrowid
            or 0
        )
        for index, number in enumerate(phones):
            self.conn.execute(
                "INSERT INTO ZABCDPHONENUMBER (Z_ENT, Z_OPT, ZOWNER, ZORDERINGINDEX, "
                "ZFULLNUMBER, ZLABEL) VALUES (19, 1, ?, ?, ?, '_$!<Mobile>!$_')",
                (owner, index, number),
            )
        for index, address in enumerate(emails):
            self.conn.execute(
                "INSERT INTO ZABCDEMAILADDRESS (Z_ENT, Z_OPT, ZOWNER, ZORDERINGINDEX, ZADDRESS, "
                "ZADDRESSNORMALIZED, ZLABEL) VALUES (9, 1, ?, ?, ?, ?, '_$!<Home>!$_')",
                (owner, index, address, address.lower()),
            )
        self.conn.execute("COMMIT")
        return owner

    def rename(self, owner: int, first: str | None, last: str | None) -> None:
        self.conn.execute(
            "UPDATE ZABCDRECORD SET ZFIRSTNAME = ?, ZLASTNAME = ? WHERE Z_PK = ?",
            (first, last, owner),
        )

    def close(self) -> None:
        self.conn.close()
