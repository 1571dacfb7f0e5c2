"""Errors the CLI reports as one clear line and a non-zero exit, without a traceback, and
the one place that turns an exception into that line."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path

from .core.config import ConfigError


class InputError(Exception):
    """Bad user input: the message names the file and what is wrong."""


class Interrupted(InputError):
    """A run stopped by Ctrl-C or SIGTERM after saving what it needs to resume."""

    exit_code = 130


class OutputError(InputError):
    """An output could not be written (full disk, file-size limit, no permission): the
    message names the file and the cause."""


# errno values a write can fail with that the user, not seqformer, can mend
_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EFBIG: "file too large (a file-size limit was reached)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
WRITE_FAILURES = frozenset((errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS))


def os_cause(e: OSError) -> str:
    """What went wrong, in words, for an OSError."""
    return _CAUSES.get(e.errno, (e.strerror or str(e)).lower())


def write_failed(path: str | Path, e: OSError, kept: str = "nothing was changed there"
                 ) -> OutputError:
    """The error for an output that could not be written: file, cause, what is left."""
    return OutputError(f"{path}: cannot write: {os_cause(e)}; {kept}")


def describe(e: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for an error the user can act on; None for a bug,
    which keeps its traceback. An OSError that escaped its writer (a file read or written
    outside seqformer's own writers, a model directory deleted while in use) is reported
    by the file it names."""
    if isinstance(e, (InputError, ConfigError)):
        return getattr(e, "exit_code", 2), str(e)
    if isinstance(e, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(e, OSError) and e.errno is not None:
        where = e.filename if e.filename is not None else "an input or output file"
        return 2, f"{where}: {os_cause(e)}"
    return None


def report_errors(fn: Callable[..., object], *args: object) -> int:
    """Run fn(*args) as a command-line program: an error the user can act on becomes one
    `error:` line on stderr and its exit code (2, 130 for Ctrl-C), success 0. For scripts
    built on seqformer (apps/) that are not Typer commands."""
    try:
        fn(*args)
    except (Exception, KeyboardInterrupt) as e:
        described = describe(e)
        if described is None:
            raise
        code, message = described
        print(message if code == 130 else f"error: {message}", file=sys.stderr)
        return code
    return 0
