"""The persona learns the names the Mac's owner gave people: read from Contacts' own files
(written here the way the address book keeps them), matched to chat.db's handles however the
number was typed, re-read when Contacts changes, never written to the log."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from conftest import ALICE, BOB, posted, read_log, run_cli

from archety_relay.contacts.reader import RECHECK_SECONDS, AddressBook
from archety_relay.demo.address_book import AddressBookWriter
from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.demo.stub_backend import StubBackend
from archety_relay.relay import Relay

BOB_MAIL = "Bob.Builder@Example.com"


def address_book(tmp_path: Path) -> tuple[Path, AddressBookWriter]:
    root = tmp_path / "AddressBook"
    book = AddressBookWriter(root)
    book.card("Alice", "Liddell", phones=["+1 (555) 555-0101"])
    book.card(organization="Builders Ltd", emails=["bob.builder@example.com"])
    return root, book


def test_sender_and_group_members_get_their_names(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """A number typed `+1 (555) 555-0101` names the handle +15555550101; an e-mail handle
    matches whatever its case; a group lists the members with a card; no card, no name."""
    root, _ = address_book(tmp_path)
    relay = make_relay(ARCHETY_ADDRESS_BOOK_DIR=str(root))
    direct = writer.direct_chat(ALICE)
    group = writer.group_chat("chat77", [ALICE, BOB, BOB_MAIL])
    relay.capture_step(time.time())
    writer.message("hi", sender=ALICE, chat=direct, guid="D")
    writer.message("hello all", sender=BOB_MAIL, chat=group, guid="G")
    writer.message("who's this?", sender=BOB, chat=group, guid="U")
    got = posted(relay, backend)
    assert got["D"]["sender_name"] == "Alice Liddell"
    assert "participant_names" not in got["D"]
    assert got["G"]["sender_name"] == "Builders Ltd"
    assert got["G"]["participant_names"] == {ALICE: "Alice Liddell", BOB_MAIL: "Builders Ltd"}
    assert "sender_name" not in got["U"]


def test_numbers_without_a_country_code_are_read_in_the_personas_region(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """A persona on a UK number: a card's `07700 900123` is +447700900123."""
    root = tmp_path / "AddressBook"
    AddressBookWriter(root).card("Ada", None, phones=["07700 900123"])
    relay = make_relay(ARCHETY_ADDRESS_BOOK_DIR=str(root), ARCHETY_PERSONA_PHONE="+447700900001")
    chat = writer.direct_chat("+447700900123")
    relay.capture_step(time.time())
    writer.message("hiya", sender="+447700900123", chat=chat, guid="UK")
    assert posted(relay, backend)["UK"]["sender_name"] == "Ada"


def test_contact_names_can_be_turned_off(
    make_relay: Callable[..., Relay], writer: MessagesWriter, backend: StubBackend, tmp_path: Path
) -> None:
    """ARCHETY_CONTACT_NAMES=0: no names, even for a person with a card."""
    root, _ = address_book(tmp_path)
    relay = make_relay(ARCHETY_ADDRESS_BOOK_DIR=str(root), ARCHETY_CONTACT_NAMES="0")
    chat = writer.direct_chat(ALICE)
    relay.capture_step(time.time())
    writer.message("hi", sender=ALICE, chat=chat, guid="OFF")
    assert "sender_name" not in posted(relay, backend)["OFF"]


def test_a_changed_card_is_read_again(tmp_path: Path) -> None:
    """The index is kept between messages and rebuilt when a file changes, looked at most
    every RECHECK_SECONDS; a card added in another account's file is found too."""
    root, writer = address_book(tmp_path)
    clock = [100.0]
    book = AddressBook(root, "US", clock=lambda: clock[0])
    assert book.name_for(ALICE) == "Alice Liddell"
    writer.rename(1, "Alice", "Pleasance")
    assert book.name_for(ALICE) == "Alice Liddell"  # not looked at again yet
    clock[0] += RECHECK_SECONDS
    assert book.name_for(ALICE) == "Alice Pleasance"
    AddressBookWriter(root, source="SECOND-ACCOUNT").card("Bob", "B", phones=["555-555-0102"])
    clock[0] += RECHECK_SECONDS
    assert book.name_for(BOB) == "Bob B"
    assert book.name_for("+15555550199") is None


def test_names_never_reach_the_log(
    env: dict[str, str], tmp_path: Path, writer: MessagesWriter, backend: StubBackend
) -> None:
    """Through the real CLI: the backend gets the name; the log file has counts, never it."""
    root, _ = address_book(tmp_path)
    env = {**env, "ARCHETY_ADDRESS_BOOK_DIR": str(root)}
    chat = writer.direct_chat(ALICE)
    run_cli(["--once"], env, cwd=tmp_path)
    writer.message("hi", sender=ALICE, chat=chat, guid="LOG")
    assert run_cli(["--once"], env, cwd=tmp_path).returncode == 0
    assert [m.body.get("sender_name") for m in backend.messages()] == ["Alice Liddell"]
    log = Path(env["ARCHETY_LOG_FILE"])
    assert "Liddell" not in log.read_text()
    (read,) = [e for e in read_log(log) if e["event"] == "contacts_read"][-1:]
    assert (read["files"], read["entries"]) == (1, 2)


def test_doctor_says_whether_contacts_can_be_read(env: dict[str, str], tmp_path: Path) -> None:
    """doctor names how many files and entries it read; no address book is a skipped line that
    does not fail the doctor on its own, with what to do."""
    root, _ = address_book(tmp_path)
    found = run_cli(["doctor"], {**env, "ARCHETY_ADDRESS_BOOK_DIR": str(root)}, cwd=tmp_path)
    (line,) = [x for x in found.stdout.splitlines() if "Contacts names" in x]
    assert "1 address book file(s)" in line and "2 numbers and addresses" in line
    assert "Liddell" not in found.stdout
    empty = tmp_path / "nothing"
    missing = run_cli(["doctor"], {**env, "ARCHETY_ADDRESS_BOOK_DIR": str(empty)}, cwd=tmp_path)
    text = missing.stdout
    (line,) = [x for x in text.splitlines() if "Contacts names" in x]
    assert line.lstrip().startswith("–") and "no AddressBook-v22.abcddb" in line
    assert "ARCHETY_CONTACT_NAMES=0" in text
