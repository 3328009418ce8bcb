"""The run directory. Every write is atomic, so a run killed at any instant (SIGKILL included)
leaves only complete files and complete generation folders behind.

    <run>/config.json           the EvolveConfig, written once
    <run>/gen-003/              checkpoint.json, weights.npz, model.onnx of generation 3
    <run>/generations.jsonl     one JSON object per offspring attempt (accepted or rejected)

A generation folder is built under a temporary name and renamed into place; the jsonl is
rewritten whole through a temporary file and os.replace. The folder lands before its rows, so
on resume a folder without an accepted row is left over from a kill and is redone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIG, GENERATIONS = "config.json", "generations.jsonl"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are meant to be shared and read
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    def gen_dir(self, generation: int) -> Path:
        return self.path / f"gen-{generation:03d}"

    def read_config(self) -> dict:
        return json.loads((self.path / CONFIG).read_text())

    def write_config(self, config: dict) -> None:
        atomic_write_json(self.path / CONFIG, config)

    def rows(self) -> list[dict]:
        path = self.path / GENERATIONS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_rows(self, rows: list[dict]) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        atomic_write_bytes(self.path / GENERATIONS, text.encode())

    def commit_generation(self, generation: int, fill: Callable[[Path], None]) -> Path:
        """Let `fill` write a complete folder under a temporary name, then rename it into place."""
        final = self.gen_dir(generation)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.path))
        try:
            fill(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def completed_rows(self) -> list[dict]:
        """Rows up to the last accepted generation whose folder exists; later rows are discarded."""
        rows = self.rows()
        last = -1
        for i, row in enumerate(rows):
            if row.get("accepted") and self.gen_dir(int(row["generation"])).is_dir():
                last = i
        return rows[: last + 1]

    def clean_partial(self, last_generation: int) -> None:
        """Remove temporary folders and generation folders beyond the last completed one."""
        for child in self.path.iterdir():
            temporary = child.name.startswith(".gen-") or child.name.startswith(f".{GENERATIONS}.")
            if temporary and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            elif temporary:
                child.unlink(missing_ok=True)
            elif child.name.startswith("gen-") and child.is_dir() and int(child.name[4:]) > last_generation:
                shutil.rmtree(child)
