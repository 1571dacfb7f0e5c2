"""`python -m seqformer` runs the CLI (the same as the `seqformer` command)."""

from .cli import app

app()
