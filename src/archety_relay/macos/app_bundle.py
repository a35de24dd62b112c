"""The relay's own app identity, "Archety Relay.app", made at install-service time.

Why an app: macOS asks about the *responsible* process. Started as Python, that is the framework
build's Python.app (`org.python.python`), whose Info.plist has no `NSAppleEventsUsageDescription`;
without one, Automation is denied with -1743 and no prompt is ever shown (indiestack.com "Apple
Events Usage Description", 2018; cpython PR#30348 added the key to the Python Launcher app for
this reason; manaflow-ai/cmux#2961). So the LaunchAgent starts this bundle's executable, a small C
launcher (launcher.c beside this module) that *spawns* the venv's Python as a child and stays its
parent: a child keeps its parent as responsible process (ghostty#9263, skhd.zig#44), so Full Disk
Access and Automation are asked for and granted once, to "Archety Relay", and survive Python
upgrades. A shell script as the bundle executable would not do: the image would be /bin/sh
(artginzburg/sudo-touchid#8), and exec would make it Python again (nbramia/LifeOS#76).

Signed ad hoc (`codesign -s -`, no certificate), the identity is the cdhash: a rebuilt binary is
a new identity and the grants stop applying while Settings still shows them on (cavaldos/Ice#14,
trycua/cua#2747, go-gui-org/go-gui#303). So a bundle already built from the same launcher source
and Info.plist is kept as it is, and a rebuild over an older one says which grants to redo. No
hardened runtime, so no Apple-events entitlement is needed (tccd wants one only from hardened
code: ActivityWatch#1411).

Built with tools a Mac has once the Command Line Tools are installed (git needs them too): `cc`,
`/usr/bin/codesign`, `/usr/bin/plutil`. `xcode-select -p` is asked first, so a Mac without them
never gets the install dialog from the `cc` shim. None of this has run on a Mac yet.
"""

from __future__ import annotations

import plistlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import RelayError
from . import Ran, run

BUNDLE_ID = "com.archety.relay"
APP_NAME = "Archety Relay"
EXECUTABLE = "archety-relay"
# The launcher's own version, not the relay's: the bundle (and its grants) must not change
# when the relay is upgraded, only when the launcher does.
LAUNCHER_VERSION = "1"
AUTOMATION_USAGE = (
    "Archety Relay sends the replies your assistant writes through Messages, and checks that "
    "Messages recorded them."
)
COMPILE_SECONDS = 120.0
NO_TOOLS_HINT = (
    "install Apple's Command Line Tools (`xcode-select --install`, on the Mac's screen), then "
    "run install-service again; or keep Python.app as the relay's identity: "
    "`archety-relay install-service --identity python` (Automation may then never prompt)"
)

Runner = Callable[[list[str], float], Ran]  # argv, timeout


class BuildFailed(RelayError):
    pass


@dataclass(frozen=True)
class Built:
    app: Path
    rebuilt: bool  # False: the bundle already there was kept, and its grants with it
    replaced: bool  # an older, different bundle was replaced: its grants no longer apply


def app_path(home: Path) -> Path:
    """~/Applications: where the + button of Full Disk Access finds it easily."""
    return home / "Applications" / f"{APP_NAME}.app"


def executable(app: Path) -> Path:
    return app / "Contents" / "MacOS" / EXECUTABLE


def info_plist() -> dict[str, Any]:
    return {
        "CFBundleDevelopmentRegion": "en",
        "CFBundleExecutable": EXECUTABLE,
        "CFBundleIdentifier": BUNDLE_ID,
        "CFBundleInfoDictionaryVersion": "6.0",
        "CFBundleName": APP_NAME,
        "CFBundleDisplayName": APP_NAME,
        "CFBundlePackageType": "APPL",
        "CFBundleShortVersionString": f"{LAUNCHER_VERSION}.0",
        "CFBundleVersion": LAUNCHER_VERSION,
        # No Dock icon and no menu bar: it is a background agent.
        "LSUIElement": True,
        # Without this key macOS denies Apple events without asking (see the module docstring).
        "NSAppleEventsUsageDescription": AUTOMATION_USAGE,
    }


def launcher_source() -> bytes:
    return resources.files("archety_relay.macos").joinpath("launcher.c").read_bytes()


def compile_argv(source: Path, output: Path) -> list[str]:
    return ["cc", "-O2", "-Wall", "-o", str(output), str(source)]


def sign_argv(app: Path) -> list[str]:
    return ["codesign", "--force", "--sign", "-", "--identifier", BUNDLE_ID, str(app)]


def verify_argv(app: Path) -> list[str]:
    return ["codesign", "--verify", "--strict", str(app)]


def build_commands(app: Path) -> list[list[str]]:
    """What `build` runs when the bundle has to be made (shown by install-service --dry-run)."""
    contents = app / "Contents"
    return [
        ["xcode-select", "-p"],
        compile_argv(contents / "Resources" / "launcher.c", executable(app)),
        ["plutil", "-lint", str(contents / "Info.plist")],
        sign_argv(app),
        verify_argv(app),
    ]


def is_current(app: Path, *, runner: Runner = run) -> bool:
    """Built from this launcher source and Info.plist, with an intact signature."""
    contents = app / "Contents"
    try:
        same = (contents / "Resources" / "launcher.c").read_bytes() == launcher_source() and (
            plistlib.loads((contents / "Info.plist").read_bytes()) == info_plist()
        )
    except (OSError, plistlib.InvalidFileException):
        return False
    return same and executable(app).is_file() and runner(verify_argv(app), 60.0).returncode == 0


def build(app: Path, *, runner: Runner = run) -> Built:
    """Make the bundle at `app`, or keep the one there when it is current."""
    if is_current(app, runner=runner):
        return Built(app, rebuilt=False, replaced=False)
    tools = runner(["xcode-select", "-p"], 15.0)
    if tools.returncode != 0:
        raise BuildFailed(
            f"cannot build {app.name}: no Command Line Tools (xcode-select -p: "
            f"{tools.output or tools.returncode})",
            hint=NO_TOOLS_HINT,
        )
    staging = app.parent / f".{EXECUTABLE}-staging"
    shutil.rmtree(staging, ignore_errors=True)
    new = staging / app.name
    contents = new / "Contents"
    (contents / "MacOS").mkdir(parents=True)
    (contents / "Resources").mkdir()
    (contents / "Info.plist").write_bytes(plistlib.dumps(info_plist(), fmt=plistlib.FMT_XML))
    (contents / "PkgInfo").write_bytes(b"APPL????")
    source = contents / "Resources" / "launcher.c"
    source.write_bytes(launcher_source())
    try:
        for argv, what, timeout in (
            (compile_argv(source, executable(new)), "compiling the launcher", COMPILE_SECONDS),
            (["plutil", "-lint", str(contents / "Info.plist")], "checking Info.plist", 30.0),
            (sign_argv(new), "signing the bundle", 60.0),
            (verify_argv(new), "verifying the signature", 60.0),
        ):
            ran = runner(argv, timeout)
            if ran.returncode != 0:
                raise BuildFailed(
                    f"cannot build {app.name}: {what} failed (exit {ran.returncode}): "
                    f"{ran.output[-300:]}",
                    hint=NO_TOOLS_HINT,
                )
        replaced = app.exists()
        old = staging / f"{app.name}.old"
        app.parent.mkdir(parents=True, exist_ok=True)
        if replaced:
            app.rename(old)
        new.rename(app)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Built(app, rebuilt=True, replaced=replaced)


def remove(app: Path) -> bool:
    """Delete the bundle (uninstall-service). True when there was one."""
    if not app.exists():
        return False
    shutil.rmtree(app)
    return True
