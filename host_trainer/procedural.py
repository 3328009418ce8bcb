"""What the procedural data sets (glyphs, shapes-det) share: rendering in a fork pool, and the disk cache.

- `render_jobs` runs a module-level render function over chunks, in a fork pool when the set is big enough
  to pay for one (`default_workers`), serially otherwise; both paths give the same arrays.
- `cache_path` names the `.npz` for a config under $EDGE_EVOLVER_CACHE (default ~/.cache/edge-evolver; "off"
  disables it); `load_cached` reads it back when valid, else generates and writes it atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import PIL

Job = TypeVar("Job")
Part = TypeVar("Part")
Arrays = dict[str, np.ndarray]


def default_workers(total: int, minimum: int) -> int:
    """Worker processes for `total` samples: 1 below `minimum` or without fork, else one per CPU (at most 8).

    The pool needs fork, so that a user's script without a `__main__` guard is never re-imported by the
    workers (spawn would do that)."""
    import multiprocessing

    if total < minimum or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, 8))


def render_jobs(render: Callable[[Job], Part], jobs: Sequence[Job], workers: int) -> list[Part]:
    if workers > 1:
        import multiprocessing
        from concurrent.futures.process import BrokenProcessPool

        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                return list(pool.map(render, jobs))
        except (OSError, BrokenProcessPool):
            pass  # no processes to be had (limits, memory): the serial path gives the same arrays
    return [render(job) for job in jobs]


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
