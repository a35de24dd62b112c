"""The grants a Mac needs, named and checked for what they really are (issue #12.4-6).

Full Disk Access goes to the image the process runs (a framework build's Python.app), found
through a seam that stands in for `_NSGetExecutablePath` here. Automation: see test_automation.
osascript is the fake first on PATH (see conftest).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ALICE, BOB, FakeOsascript, cli_env

from archety_relay.demo.messages_writer import MessagesWriter
from archety_relay.macos import interpreter

FRAMEWORK = "/Library/Frameworks/Python.framework/Versions/3.12"
IMAGE = f"{FRAMEWORK}/Resources/Python.app/Contents/MacOS/Python"


def test_full_disk_access_goes_to_the_app_that_runs_not_the_stub() -> None:
    """python.org's bin/python3.12 execs Python.app's binary: that image is what TCC checks,
    and the grant is given to the enclosing Python.app."""
    found = interpreter.running_image(platform="darwin", executable_path=lambda: IMAGE)
    assert found == IMAGE
    assert interpreter.fda_target(found) == f"{FRAMEWORK}/Resources/Python.app"
    assert (
        interpreter.fda_target("/opt/uv/python/bin/python3.12") == "/opt/uv/python/bin/python3.12"
    )

    def no_symbol() -> str | None:
        raise AttributeError("_NSGetExecutablePath")

    fallback = interpreter.running_image(platform="darwin", executable_path=no_symbol)
    assert fallback == os.path.realpath(sys.executable)
    assert interpreter.running_image(platform="linux") == os.path.realpath(sys.executable)


def test_python_version_and_grant_advice() -> None:
    """macOS's own python3 (3.9) is refused with the python.org hint; a Homebrew path is
    warned about (every upgrade drops the grants)."""
    assert "3.9 is too old" in (interpreter.python_problem((3, 9)) or "")
    assert interpreter.python_problem((3, 12)) is None
    brew = "/opt/homebrew/Cellar/python@3.12/3.12.7/Frameworks/Python.framework/Versions/3.12"
    assert "brew upgrade" in (interpreter.python_advice(brew + "/bin/python3.12") or "")
    assert interpreter.python_advice(IMAGE) is None


def test_install_service_refuses_an_interpreter_that_cannot_run_the_relay(
    tmp_path: Path,
) -> None:
    """The plist's interpreter is tried first: one that is gone, or that cannot import the
    package (a moved venv), is named with the reason; this test's own Python passes."""
    assert interpreter.cannot_run_relay(sys.executable) is None
    assert "cannot be started" in (interpreter.cannot_run_relay(str(tmp_path / "nope")) or "")
    other = tmp_path / "python3"
    other.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'x'\" >&2\nexit 1\n")
    other.chmod(0o755)
    assert "ModuleNotFoundError" in (interpreter.cannot_run_relay(str(other)) or "")


def test_doctor_live_reports_the_first_hour_facts_in_one_block(
    env: dict[str, str], writer: MessagesWriter, osascript: FakeOsascript, tmp_path: Path
) -> None:
    """`doctor --live` on this machine: the interpreter image and FDA target, chat.db readable,
    the guid forms in it, a real Automation probe, then it waits for the next incoming message
    and says what noticed it and how fast; the Mac-only lines say they were skipped."""
    chat = writer.direct_chat(ALICE)
    writer.chat("any;+;chat99", 43, [ALICE, BOB], identifier="chat99")
    proc = subprocess.Popen(
        [sys.executable, "-m", "archety_relay", "doctor", "--live", "--wait", "20"],
        env=cli_env({**env, **osascript.env}),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if "send this Mac a message" in line:
                writer.message("are you there?", sender=ALICE, chat=chat)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = "".join(out)
    assert f"FDA target  : {os.path.realpath(sys.executable)}" in text
    assert "argv test   : argv intact (2|a|é😀-x)" in text
    assert "chat.db     : readable by this process" in text
    assert "guid forms  : iMessage;-; 1, any;+; 1" in text
    assert (
        "automation  : this shell: unknown: no answer from macOS (not macOS?) (no prompt)" in text
    )
    assert "noticed by file_event" in text and "ms after its date" in text
    assert "FileVault   : skipped (not macOS)" in text
    assert "are you there?" not in text  # no message text in the report
