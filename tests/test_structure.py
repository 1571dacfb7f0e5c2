"""The package's shape: every module imports, no module imports itself in a circle, and
every help text of the command line is shown as written."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import typer

import seqformer
from seqformer.cli import app

from cli_helpers import run_cli

PACKAGE = Path(seqformer.__file__).parent
MODULES = sorted(
    ".".join(("seqformer", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
        ".__init__") for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module):
    importlib.import_module(module)


def _imports(module: str) -> set[str]:
    """The seqformer modules `module` imports anywhere in its file (inside functions too),
    each `from X import name` counted as X.name where that is a module."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # imports for type hints only are no import at run time
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n in MODULES and n != module)
    return found


def test_no_import_cycles_inside_the_package():
    graph = {m: _imports(m) for m in MODULES}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in MODULES:
        if m not in index:
            connect(m)
    assert not cycles, cycles


def test_the_import_graph_is_read():
    """The cycle check reads real edges: the CLI's verbs import the pipeline."""
    assert "seqformer.pipeline.run_dir" in _imports("seqformer.cli.train")
    assert "seqformer.cli.score" in _imports("seqformer.cli.embed")


def _commands(group, path: tuple[str, ...] = ()):  # noqa: ANN001  (typer's own click)
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _words(text: str) -> str:
    """The text as words, wherever the help screen wrapped it (after a hyphen, too)."""
    return re.sub(r"\s+", " ", re.sub(r"(?<=\w-)\n\s*", "", text)).strip()


COMMANDS = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_help_text_is_shown_as_written(path, command):
    code, text = run_cli(*path, "--help")
    assert code == 0, text
    shown = _words(text)
    helps = [p.help for p in command.params if getattr(p, "help", None)]
    helps.append(command.help.split("\n\n")[0])
    for help_text in helps:
        assert _words(help_text) in shown, (help_text, shown)


def test_brackets_in_help_survive():
    code, text = run_cli("score", "dna", "--help")
    assert "seqformer[tracks]" in _words(text)
