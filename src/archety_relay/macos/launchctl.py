"""Installing the LaunchAgent with launchctl, the way launchd actually behaves.

    enable → bootout → wait until `print` fails → write the plist → bootstrap (retry on 5/37)
    → wait for `pid =` in `print`

`bootout` returns before the old job is torn down, and a `bootstrap` in that window fails with
"5: Input/output error"; a label disabled earlier refuses to load; RunAtLoad already starts the
job, so a `kickstart -k` after bootstrap would only kill that instance. The plist is written
after the bootout, so a failed install does not leave a half-replaced service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import RelayError
from . import Ran, launchd, run

Runner = Callable[[list[str]], Ran]
POLL_SECONDS = 0.5
GONE_POLLS = 20  # bootout teardown: up to ~10 s
BOOTSTRAP_ATTEMPTS = 3
PID_POLLS = 20  # the new job's pid: up to ~10 s


class InstallFailed(RelayError):
    pass


@dataclass(frozen=True)
class Installed:
    pid: int
    bootstrap_attempts: int


def install(
    uid: int,
    target: Path,
    plist: bytes,
    *,
    runner: Runner = run,
    sleep: Callable[[float], None] = time.sleep,
) -> Installed:
    runner(launchd.enable_argv(uid))  # fails harmlessly when there is nothing to enable
    runner(launchd.bootout_argv(uid))  # fails when not loaded: fine
    for _ in range(GONE_POLLS):
        if runner(launchd.print_argv(uid)).returncode != 0:
            break
        sleep(POLL_SECONDS)
    else:
        raise InstallFailed(
            f"{launchd.LABEL} was still loaded {GONE_POLLS * POLL_SECONDS:g}s after bootout",
            hint=f"launchctl print {launchd.service_target(uid)}; try again in a moment",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(plist)
    attempts = 0
    while True:
        attempts += 1
        ran = runner(launchd.bootstrap_argv(uid, target))
        if ran.returncode == 0:
            break
        if ran.returncode == launchd.EXIT_NO_GUI_SESSION:
            raise InstallFailed(
                f"launchctl bootstrap failed: {ran.output}", hint=launchd.NO_GUI_SESSION_HINT
            )
        retry = ran.returncode in (launchd.EXIT_IO_ERROR, launchd.EXIT_IN_PROGRESS)
        if not retry or attempts >= BOOTSTRAP_ATTEMPTS:
            no_session = ran.returncode in (launchd.EXIT_IO_ERROR, launchd.EXIT_NO_DOMAIN)
            if no_session and runner(launchd.domain_print_argv(uid)).returncode != 0:
                raise InstallFailed(
                    f"launchctl bootstrap failed (exit {ran.returncode}: {ran.output}) and "
                    f"`launchctl print gui/{uid}` fails too",
                    hint=launchd.NO_GUI_SESSION_HINT,
                )
            raise InstallFailed(
                f"launchctl bootstrap failed after {attempts} attempt(s): exit "
                f"{ran.returncode} {ran.output}",
                hint=f"launchctl print {launchd.service_target(uid)}; "
                "then archety-relay logs --errors",
            )
        sleep(1.0 * attempts)
    last = ""
    for _ in range(PID_POLLS):
        printed = runner(launchd.print_argv(uid))
        last = printed.output
        pid = launchd.pid_of(printed.output) if printed.returncode == 0 else None
        if pid is not None:
            return Installed(pid, attempts)
        sleep(POLL_SECONDS)
    state = launchd.field_of(last, "state") or "unknown"
    exit_code = launchd.field_of(last, "last exit code") or "none"
    raise InstallFailed(
        f"{launchd.LABEL} loaded but not running (state {state}, last exit code {exit_code})",
        hint="archety-relay logs --errors, and the launchd.err.log beside the relay's log",
    )


def uninstall(uid: int, target: Path, *, runner: Runner = run) -> None:
    for argv in launchd.uninstall_commands(uid):
        runner(argv)
    target.unlink(missing_ok=True)
