"""`archety-relay`: argument parsing and dispatch. Errors become an exit code and a hint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import RelayError
from . import demo, run, state

EPILOG = """exit codes: 0 ok, 2 configuration error, 3 auth rejected (401/403),
4 backend unreachable, 5 chat.db unreadable (Full Disk Access), 6 state directory unusable"""


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
    common.add_argument("-v", "--verbose", action="store_true", help="debug logs on the console")
    common.add_argument(
        "--log-format",
        choices=("json", "console"),
        default=None,
        help="also log to stderr in this form (default: console when stderr is a terminal)",
    )
    for action in common._actions:
        if action.dest != "help":
            parser._add_action(action)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="run the daemon (the default)")
    p.set_defaults(handler=run.cmd_run)
    p = sub.add_parser("once", parents=[common], help="same as --once")
    p.set_defaults(handler=run.cmd_once)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="the whole path on a sample chat.db and a local stand-in backend",
    )
    p.add_argument("--keep", action="store_true", help="keep the demo's temporary directory")
    p.set_defaults(handler=demo.cmd_demo)

    p = sub.add_parser("status", parents=[common], help="daemon, cursor, queue, dead letters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=state.cmd_status)

    p = sub.add_parser("retry-dead", parents=[common], help="queue every dead letter again")
    p.set_defaults(handler=state.cmd_retry_dead)

    p = sub.add_parser("purge-dead", parents=[common], help="delete old dead letters")
    p.add_argument(
        "--older-than",
        default="7d",
        type=state.parse_duration,
        help="age such as 7d, 12h, 30m (default 7d)",
    )
    p.set_defaults(handler=state.cmd_purge_dead)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        handler = run.cmd_once if args.once else run.cmd_run
    elif args.once and handler is not run.cmd_once:
        parser.error("--once cannot be combined with a subcommand")
    try:
        return int(handler(args))
    except RelayError as exc:
        print(f"archety-relay: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
