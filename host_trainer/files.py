"""Atomic writes of the host's files (run directories, fleet state, reports): below every package that writes.

A file is written whole through a temporary name and os.replace (edge_evolver.files.atomic_write), so a
process killed at any instant leaves the old file or the new one, never half of either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_evolver.files import atomic_write

FILE_MODE = 0o644  # run files are meant to be shared and read


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), data, mode=FILE_MODE)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
