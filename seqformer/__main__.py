"""`python -m seqformer` runs the CLI (the same as the `seqformer` command)."""

from .cli import app

if __name__ == "__main__":
    app()
