"""Errors the CLI reports as one clear line and a non-zero exit, without a traceback."""


class InputError(Exception):
    """Bad user input: the message names the file and what is wrong."""


class Interrupted(InputError):
    """A run stopped by Ctrl-C or SIGTERM after saving what it needs to resume."""

    exit_code = 130
