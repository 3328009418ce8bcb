"""A minimal reader for the `names:` entry of a YOLO data.yaml (PyYAML is not a dependency).

It reads the forms label tools write: `[a, b]` (also over several lines), `{0: a, 1: b}`, a block list
(`- a`) or a block mapping (`0: a`), with quotes and `#` comments. Anything else is a one-line UserError
naming the file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

from host_trainer.errors import UserError


def _outside_quotes(text: str, chars: str) -> list[int]:
    """Positions of `chars` in `text` that are not inside '...' or "..."."""
    quote, found = "", []
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in chars:
            found.append(i)
    return found


def _uncomment(line: str) -> str:
    cuts = [i for i in _outside_quotes(line, "#") if i == 0 or line[i - 1].isspace()]
    return (line[:cuts[0]] if cuts else line).rstrip()


def _scalar(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text


def yaml_names(text: str, file: Path) -> tuple[str, ...] | None:
    """The top-level `names:` entry of a data.yaml's `text` (read from `file`), or None when there is none."""
    lines = [_uncomment(line) for line in text.splitlines()]
    for i, line in enumerate(lines):
        match = re.match(r"names\s*:(.*)$", line)
        if not match:
            continue
        where, rest = f"{file} line {i + 1}", match.group(1).strip()
        if not rest:  # a block list or mapping on the indented lines below
            block = []
            for below in lines[i + 1:]:
                if below and not below[0].isspace():
                    break
                block += [below.strip()] if below.strip() else []
            if block and all(s.startswith("-") for s in block):
                return _names_list([s[1:] for s in block], where)
            return _names_map(block, where)
        for more in lines[i + 1:]:  # a flow collection may continue on the next lines
            if rest[0] not in "[{" or rest[-1] in "]}":
                break
            rest += " " + more.strip()
        if (rest[0], rest[-1]) in (("[", "]"), ("{", "}")):
            cuts = _outside_quotes(rest, ",")
            items = [rest[a + 1:b].strip() for a, b in zip([0, *cuts], [*cuts, len(rest) - 1])]
            items = items[:-1] if items and not items[-1] else items  # a trailing comma
            return _names_list(items, where) if rest[0] == "[" else _names_map(items, where)
        raise UserError(f"{where}: cannot read 'names:' (expected [a, b], {{0: a, 1: b}} or an indented list)")
    return None


def _names_list(items: list[str], where: str) -> tuple[str, ...]:
    names = tuple(_scalar(s) for s in items)
    if not names or not all(names):
        raise UserError(f"{where}: 'names:' lists no classes, or an empty class name")
    return names


def _names_map(items: list[str], where: str) -> tuple[str, ...]:
    """`ID: name` items -> names in id order; the ids must be 0..n-1."""
    table: dict[int, str] = {}
    for item in items:
        colon = (_outside_quotes(item, ":") or [-1])[0]
        key = _scalar(item[:colon]) if colon > 0 else ""
        if not key.isdigit() or int(key) in table:
            raise UserError(f"{where}: 'names:' entries must read 'ID: name' with integer ids 0, 1, ... each once")
        table[int(key)] = item[colon + 1:]
    if sorted(table) != list(range(len(table))):
        raise UserError(f"{where}: 'names:' ids must be 0..{len(table) - 1}, got {sorted(table)}")
    return _names_list([table[i] for i in range(len(table))], where)
