"""Errors the CLI reports as one clear line and a non-zero exit, without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class InputError(Exception):
    """Bad user input: the message names the file and what is wrong."""


class Interrupted(InputError):
    """A run stopped by Ctrl-C or SIGTERM after saving what it needs to resume."""

    exit_code = 130


def report_errors(fn: Callable[..., object], *args: object) -> int:
    """Run fn(*args) as a command-line program: an InputError becomes one `error:` line on
    stderr and exit code 2 (its exit_code if it has one), Ctrl-C exit code 130, success 0.
    For scripts built on seqformer (apps/) that are not Typer commands."""
    try:
        fn(*args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
