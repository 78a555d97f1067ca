"""`react`: a thin command line over the public API.

Each subcommand registers itself with `@command(...)`; user errors print one line and
exit with code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from ..core.errors import UserError

Handler = Callable[[argparse.Namespace], int | None]
Setup = Callable[[argparse.ArgumentParser], Handler]
_COMMANDS: dict[str, tuple[str, Setup]] = {}


def command(name: str, help: str) -> Callable[[Setup], Setup]:
    """Register `react NAME`: the decorated function adds its arguments to the parser and
    returns the handler that runs the command."""

    def deco(setup: Setup) -> Setup:
        _COMMANDS[name] = (help, setup)
        return setup

    return deco


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    from . import cluster, commands, compress, optimize, serve  # noqa: F401  (register)

    parser = argparse.ArgumentParser(
        prog="react", description="ReAct: fast, cheap inference with measured quality.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, setup) in _COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(_handler=setup(sp))
    return parser


def _version() -> str:
    from .. import __version__

    return f"react {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        rc = args._handler(args)
    except UserError as e:
        print(f"react {args.command}: error: {_without_prefix(str(e), args.command)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"react {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def _without_prefix(message: str, command: str) -> str:
    """API errors name their verb ("serve: port 80 ..."); the CLI line names it already."""
    prefix = f"{command}: "
    return message[len(prefix):] if message.startswith(prefix) else message


if __name__ == "__main__":
    sys.exit(main())
