"""docs/options.md, generated from the `host-trainer evolve` command itself (`make docs` writes it).

One row per option: its flags, its default (the text config.py renders, as `--help` shows it), the environment
variable it also reads, and its help. tests/test_architecture.py checks the file against this and the defaults
against config.py, so the page cannot drift from the code.
"""

from __future__ import annotations

import re
from pathlib import Path

HEADER = """# `host-trainer evolve` options

Generated from the command's own definition (`make docs`; a test fails when this page and the code disagree).
The defaults live in one place, `host_trainer/config.py`; `host-trainer evolve --help` shows the same. Every
option also reads the environment variable beside it. Bad input (an unknown model or data set, an unreadable
factory file, a non-number α, ...) ends with one `error: ...` line and exit code 2, before anything is written.

| option | default | environment | meaning |
|---|---|---|---|
"""
_DEFAULT = re.compile(r"\s*\\?\[default: (.*)\]\s*$")


def _row(param) -> str:  # noqa: ANN001 (a click.Parameter; click is typer's, imported lazily)
    help_text = " ".join((param.help or "").split())
    match = _DEFAULT.search(help_text)
    if match:
        default, help_text = match.group(1), help_text[: match.start()]
    elif param.is_flag:
        default = "off"
    elif param.default is None or param.default == ():
        default = "none"
    else:
        default = str(param.default)
    flags = ", ".join(f"`{flag}`" for flag in param.opts)
    envvar = f"`{param.envvar}`" if param.envvar else ""
    return f"| {flags} | {default} | {envvar} | {help_text.replace('|', '/')} |"


def options_markdown() -> str:
    """The page, from the click command typer builds for `evolve`."""
    import typer.main

    from host_trainer.cli import app

    group = typer.main.get_command(app)
    command = group.commands["evolve"]  # type: ignore[attr-defined]
    rows = [_row(p) for p in command.params if p.opts and p.opts[0].startswith("--") and p.name != "help"]
    return HEADER + "\n".join(rows) + "\n"


def write_options_doc(path: str | Path) -> None:
    Path(path).write_text(options_markdown())
