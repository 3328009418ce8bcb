"""docs/options.md's table of `host-trainer evolve`'s options, generated from the command itself: its flags,
environment variables, help texts and choices, and so config.py's defaults. `make docs` writes it between the
`<!-- options -->` markers; tests/test_architecture.py checks that the file holds what this module makes."""

from __future__ import annotations

import re
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from host_trainer.config_file import SELF

DEFAULT = re.compile(r"\s*\\\[default: (.*)\]$")  # how cli._opt writes a config.py default into the help
START, END = "<!-- options", "<!-- /options -->"


def options_markdown() -> str:
    """One row per option of `host-trainer evolve`, in the order `--help` shows them."""
    from host_trainer.cli import app, evolve

    command = typer.main.get_command(app).commands["evolve"]  # type: ignore[attr-defined]
    hints = typing.get_type_hints(evolve)
    lines = ["| option | file key | default | variable | what it sets |", "|---|---|---|---|---|"]
    for param in command.params:
        help_text = str(param.help or "")
        found = DEFAULT.search(help_text)
        default = found.group(1) if found else _shown(param.default)
        meaning = DEFAULT.sub("", help_text) + _choices(hints.get(param.name))
        meaning = meaning.replace("<", "\\<").replace("|", "\\|")  # no HTML tag, no extra cell
        flags = ", ".join(f"`{flag}`" for flag in param.opts)
        key = "" if param.name == SELF else f"`{param.name}`"
        lines.append(f"| {flags} | {key} | {default} | `{param.envvar}` | {meaning} |")
    return "\n".join(lines) + "\n"


def _choices(annotation: Any) -> str:
    enum = next((a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, Enum)), None)
    return "" if enum is None else " One of " + ", ".join(f"`{member.value}`" for member in enum) + "."


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def write_options_doc(path: str | Path) -> None:
    """Replace the table between the `<!-- options … -->` and `<!-- /options -->` markers of `path`."""
    text = Path(path).read_text(encoding="utf-8")
    head, marker, rest = text.partition(START)
    opening, newline, rest = rest.partition("-->\n")
    _, end, tail = rest.partition(END)
    if not marker or not newline or not end:
        raise ValueError(f"{path} has no {START} --> ... {END} markers")
    Path(path).write_text(head + marker + opening + newline + options_markdown() + end + tail, encoding="utf-8")
