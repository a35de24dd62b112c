"""The layout keeps telling the story of a message: no import cycle, no arrow back up the
layers, every outside tool called from its one home, and docs/architecture.md drawn from the code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "archety_relay"

# Each outside command and the one package that may name it in an argv.
TOOL_HOMES = {
    "osascript": "macos",
    "/usr/bin/osascript": "macos",
    "launchctl": "macos",
    "security": "macos",
    "/usr/bin/security": "macos",
    "tccutil": "macos",
    "codesign": "macos",
    "/usr/bin/codesign": "macos",
    "osacompile": "macos",
    "plutil": "macos",
    "/usr/bin/sips": "pictures",
}


def test_architecture_doc_matches_the_imports_and_nothing_runs_back_up() -> None:
    """`scripts/architecture.py --check` passes: the map in docs/architecture.md is what the
    code's imports draw, with 0 import cycles and 0 arrows against the declared layers (a new
    import that breaks either, or a stale map, fails here with the offending pair)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "architecture.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert "- import cycles between modules: 0; between packages: 0" in doc
    assert "- arrows that run back up (or sideways between siblings): 0" in doc


def test_outside_commands_are_named_only_in_their_home_package() -> None:
    """An argv naming osascript, launchctl, security (…) appears only under macos/, and sips only
    in pictures/: a string literal equal to the command's name anywhere else is a second path
    to an outside tool that the seams' tests would not cover."""
    strays = []
    for path in sorted(PACKAGE.rglob("*.py")):
        package = path.relative_to(PACKAGE).parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                home = TOOL_HOMES.get(node.value)
                if home is not None and package != home:
                    strays.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert strays == []


def test_the_top_level_keeps_only_shared_values_and_the_engine() -> None:
    """At most 15 modules sit directly in src/archety_relay, and every package's __init__ says
    what it owns in a docstring (a newcomer reads the tree, not the history)."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 15, top
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring, f"{init.relative_to(ROOT)} has no docstring"
