"""Errors the CLI reports as one clear line and a non-zero exit, without a traceback."""


class InputError(Exception):
    """Bad user input: the message names the file and what is wrong."""
