"""The disk cache of the procedural sets: one `.npz` per generator config.

`cache_path` names the file under $EDGE_EVOLVER_CACHE (default ~/.cache/edge-evolver; "off" disables it);
`load_cached` reads it back when valid, else generates the arrays and writes them atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import PIL

Arrays = dict[str, np.ndarray]


def cache_path(name: str, config: dict[str, Any], version: int) -> Path | None:
    """Where the disk cache of `name` with `config` lives; None when EDGE_EVOLVER_CACHE is "off"."""
    root = os.environ.get("EDGE_EVOLVER_CACHE", "").strip()
    if root.lower() == "off":
        return None
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "edge-evolver"
    # The key covers what changes the pixels: the config, the generator and the rasteriser.
    key = json.dumps([config, version, PIL.__version__], sort_keys=True)
    return base / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def read_cache(path: Path, valid: Callable[[Arrays], bool]) -> Arrays | None:
    """The cached arrays, or None when the file is missing, truncated, corrupt or not `valid`."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    return arrays if valid(arrays) else None


def write_cache(path: Path, arrays: Arrays) -> None:
    """Write atomically (temp file + rename) so that a concurrent reader never sees half a file."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False) as f:
            tmp = f.name
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub confuses ** with allow_pickle
        os.chmod(tmp, 0o644)  # NamedTemporaryFile makes it private; the cache holds nothing secret
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass  # the cache is an optimisation: a read-only or full disk must not stop a run
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def load_cached(path: Path | None, valid: Callable[[Arrays], bool], generate: Callable[[], Arrays]) -> Arrays:
    """The arrays from the disk cache when valid, else freshly generated (and cached). Read-only."""
    arrays = read_cache(path, valid) if path is not None and path.is_file() else None
    if arrays is None:
        arrays = generate()
        if path is not None:
            write_cache(path, arrays)
    for a in arrays.values():
        a.setflags(write=False)  # shared by every caller in this process
    return arrays


class Remembered:
    """The arrays of the `maxsize` most recently used configs, in this process (thread-safe; one load per
    key at a time). `clear()` frees them (the default shapes-det training split alone is 786 MB as float32)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._store: OrderedDict[Hashable, Arrays] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], Arrays]) -> Arrays:
        with self._lock:
            if key not in self._store:
                while len(self._store) >= self.maxsize:
                    self._store.popitem(last=False)  # the least recently used
                self._store[key] = load()
            self._store.move_to_end(key)
            return self._store[key]

    def clear(self) -> None:
        with self._lock:
            self._store.clear()
