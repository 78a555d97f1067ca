"""`react`: a thin command line over the public API.

Each subcommand registers itself with `@command(...)` in registry.py; this module imports
the command modules to fill the table. User errors print one line and exit with code 2,
never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator

from ..core.errors import UserError
from .registry import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    from . import cluster, commands, compress, optimize, serve  # noqa: F401  (register)

    parser = argparse.ArgumentParser(
        prog="react", description="ReAct: fast, cheap inference with measured quality.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, setup) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(_handler=setup(sp))
    return parser


def _version() -> str:
    from .. import __version__

    return f"react {__version__}"


@contextlib.contextmanager
def _library_progress(enabled: bool) -> Iterator[None]:
    """--no-progress silences the libraries' own bars too (transformers' "Loading weights"),
    for this command only: a caller running several commands in one process keeps its own
    setting afterwards."""
    if enabled:
        yield
        return
    key = "HF_HUB_DISABLE_PROGRESS_BARS"  # read when huggingface_hub is first imported
    env_before = os.environ.get(key)
    hf_before = sys.modules.get("transformers.utils.logging")
    # the state to come back to: the caller's, or what a fresh import would have had
    on_after = hf_before.is_progress_bar_enabled() if hf_before else env_before is None
    os.environ[key] = "1"
    if hf_before is not None:
        hf_before.disable_progress_bar()
    try:
        yield
    finally:
        if env_before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = env_before
        hf_after = sys.modules.get("transformers.utils.logging")
        if hf_after is not None and on_after:
            with warnings.catch_warnings():  # huggingface_hub read the variable at import
                warnings.simplefilter("ignore", UserWarning)
                hf_after.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        with _library_progress(not getattr(args, "no_progress", False)):
            rc = args._handler(args)
    except UserError as e:
        print(f"react {args.command}: error: {_without_prefix(str(e), args.command)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"react {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `react info ... | head`: the reader left; that is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(rc or 0)


def _without_prefix(message: str, command: str) -> str:
    """API errors name their verb ("serve: port 80 ..."); the CLI line names it already."""
    prefix = f"{command}: "
    return message[len(prefix):] if message.startswith(prefix) else message


if __name__ == "__main__":  # `python -m reactinfer.cli.main`
    sys.exit(main())
