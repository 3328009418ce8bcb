"""Every relative link in the README and the docs points at a file that exists, and at a heading that exists.

Links to the web are not fetched (no network at test time); only the repository's own files are checked.
Anchors follow GitHub's rule: the heading in lower case, punctuation dropped, spaces made hyphens.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCED = re.compile(r"```.*?```", re.S)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def _documents() -> list[Path]:
    found = [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "deploy").rglob("*.md"),
             *(ROOT / "systemd").rglob("*.md"), *(ROOT / "bench").glob("*.md")]
    return sorted(p for p in found if ".venv" not in p.parts and "out" not in p.relative_to(ROOT).parts[:2])


def _slug(heading: str) -> str:
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCED.sub("", path.read_text())  # a heading may hold `code`: it counts in the slug
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def _links(path: Path) -> list[str]:
    text = CODE.sub("", path.read_text())
    return [a or b for a, b in LINK.findall(text)]


def _broken(path: Path) -> list[str]:
    broken = []
    for target in _links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor.lower() not in _anchors(destination):
            broken.append(f"{target} (no such heading)")
    return broken


@pytest.mark.parametrize("path", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert _broken(path) == []


def test_the_checker_catches_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title here\n[ok](a.md#title-here) [bad](nope.md) [anchor](a.md#missing)\n"
                                   "`[in code](ignored.md)` [web](https://example.org/x)\n")
    assert _broken(tmp_path / "a.md") == ["nope.md (no such file)", "a.md#missing (no such heading)"]
