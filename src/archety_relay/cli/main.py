"""`archety-relay`: argument parsing and dispatch. Errors become an exit code and a hint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module
from typing import Any

from .. import __version__
from ..errors import RelayError
from .state import parse_duration

EPILOG = """exit codes: 0 ok, 1 another relay is running, 2 configuration error,
3 auth rejected (401/403), 4 backend unreachable, 5 chat.db unreadable (Full Disk Access),
6 state directory unusable"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archety-relay",
        description="Relay new iMessages from the Messages database to the Archety backend.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"archety-relay {__version__}")
    parser.add_argument(
        "--once",
        action="store_true",
        help="health check, relay what is new, deliver the queue, one sync; then exit",
    )
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand must not reset what was given before it (`-v run` = `run -v`).
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logs on the console",
    )
    common.add_argument(
        "--log-format",
        choices=("json", "console"),
        default=argparse.SUPPRESS,
        help="also log to stderr in this form (default: console when stderr is a terminal)",
    )
    for action in common._actions:
        if action.dest != "help":
            parser._add_action(action)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="run the daemon (the default)")
    p.set_defaults(handler="run:cmd_run")
    p = sub.add_parser("once", parents=[common], help="same as --once")
    p.set_defaults(handler="run:cmd_once")

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="the whole path on a sample chat.db and a local stand-in backend",
    )
    p.add_argument("--keep", action="store_true", help="keep the demo's temporary directory")
    p.set_defaults(handler="demo:cmd_demo")

    p = sub.add_parser("status", parents=[common], help="daemon, cursor, queue, dead letters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler="state:cmd_status")

    p = sub.add_parser("retry-dead", parents=[common], help="queue every dead letter again")
    p.set_defaults(handler="state:cmd_retry_dead")

    p = sub.add_parser(
        "skip-head",
        parents=[common],
        help="move a queued message that keeps failing to the dead letters (retry-dead undoes)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--message", metavar="GUID", help="this message")
    which.add_argument("--chat", metavar="CHAT_GUID", help="the oldest queued message of a chat")
    p.set_defaults(handler="state:cmd_skip_head")

    p = sub.add_parser("purge-dead", parents=[common], help="delete old dead letters")
    p.add_argument(
        "--older-than",
        default="7d",
        type=parse_duration,
        help="age such as 7d, 12h, 30m (default 7d)",
    )
    p.set_defaults(handler="state:cmd_purge_dead")

    p = sub.add_parser(
        "doctor", parents=[common], help="check every precondition, one line each, with the fix"
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="the first-hour check on the Mac: interpreter image, grants, guid forms, the "
        "watcher on the next incoming message, power and login settings (one report to paste)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=120.0,
        help="with --live: seconds to wait for the next incoming message (default 120; 0 skips)",
    )
    p.set_defaults(handler="ops:cmd_doctor")

    p = sub.add_parser(
        "automation-check",
        parents=[common],
        help="let the relay control Messages: raises macOS's prompt (watch the screen)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=150.0,
        help="seconds to wait for someone to answer the prompt (default 150)",
    )
    p.set_defaults(handler="automation:cmd_automation_check")

    p = sub.add_parser(
        "set-secret",
        parents=[common],
        help="store the webhook secret in the Keychain (read from a prompt or stdin)",
    )
    p.add_argument("--no-verify", action="store_true", help="do not check it against the backend")
    p.add_argument(
        "--generate",
        action="store_true",
        help="print a new random secret (openssl rand -hex 32) for a rotation",
    )
    p.set_defaults(handler="ops:cmd_set_secret")

    p = sub.add_parser(
        "test-message",
        parents=[common],
        help="health check, then post one synthetic message like a real one",
    )
    p.add_argument("text", help="the message text")
    p.set_defaults(handler="ops:cmd_test_message")

    p = sub.add_parser(
        "backfill",
        parents=[common],
        help="deliberately replay recent history (the first start never does)",
    )
    p.add_argument("--since", required=True, type=parse_duration, help="e.g. 2h, 30m")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler="ops:cmd_backfill")

    p = sub.add_parser(
        "install-service",
        parents=[common],
        help="write and load the LaunchAgent for this installation (macOS)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plist and commands only")
    p.add_argument(
        "--identity",
        choices=("app", "python"),
        default="app",
        help="what macOS grants Full Disk Access and Automation to: the relay's own app "
        "'Archety Relay' (built here; needs the Command Line Tools), or the Python it runs",
    )
    p.set_defaults(handler="service:cmd_install")
    p = sub.add_parser(
        "uninstall-service", parents=[common], help="stop and remove the LaunchAgent (macOS)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.set_defaults(handler="service:cmd_uninstall")

    p = sub.add_parser("logs", parents=[common], help="read the relay's log")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument(
        "--errors", action="store_true", help="only warnings and errors, with what to do about them"
    )
    p.add_argument("--since", type=parse_duration, default=None, help="e.g. 1h, 30m")
    p.set_defaults(handler="logs:cmd_logs")
    return parser


def _load(name: str) -> Any:
    """Import a command's module only when it runs: `--once` should not pay for the demo's
    HTTP server or the daemon's file watcher (start-up is a benchmark figure)."""
    module, _, function = name.partition(":")
    return getattr(import_module(f"{__package__}.{module}"), function)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = getattr(args, "handler", None)
    if name is None:
        name = "run:cmd_once" if args.once else "run:cmd_run"
    elif args.once and name != "run:cmd_once":
        parser.error("--once cannot be combined with a subcommand")
    try:
        return int(_load(name)(args))
    except RelayError as exc:
        print(f"archety-relay: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `archety-relay logs | head`
        sys.stderr.close()
        return 0
