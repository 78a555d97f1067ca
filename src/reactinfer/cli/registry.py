"""The table of `react` commands. Each command module registers its commands here with
`@command(...)`; main.py imports the command modules (filling the table) and builds the
parser from it. This module sits below both, so neither imports the other's callers."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int | None]
Setup = Callable[[argparse.ArgumentParser], Handler]
COMMANDS: dict[str, tuple[str, Setup]] = {}  # name -> (help, setup), in registration order


def command(name: str, help: str) -> Callable[[Setup], Setup]:
    """Register `react NAME`: the decorated function adds its arguments to the parser and
    returns the handler that runs the command."""

    def deco(setup: Setup) -> Setup:
        COMMANDS[name] = (help, setup)
        return setup

    return deco


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))
