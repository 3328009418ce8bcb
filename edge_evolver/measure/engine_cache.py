"""On-disk engine cache: a built engine is reused when the same model meets the same build.

The key hashes the model's sha256 with the backend's ``cache_key`` (backend, runtime version,
device, precision, build flags and the batch profile): a TensorRT plan is only valid for the
TensorRT version and GPU that built it, so any change there must miss. Entries are written
atomically (temp file + ``os.replace``), so a daemon killed mid-write leaves no half plan; a
plan that fails to load anyway is dropped and rebuilt. The oldest entries are evicted once the
cache grows past ``max_bytes``.

A single entry is refused (not written) when it is far larger than any sane engine for its model:
more than ``max(ENTRY_FLOOR_BYTES, ENTRY_RATIO * model bytes)``, or more than the whole budget. A
9 KB model once produced a 513 MB ONNX Runtime optimised model through constant folding; kept,
such an entry would evict every useful engine and fill the disk with one hostile job. The limit holds
before anything is written, not after: ``put`` checks the plan's length before it opens a file, and
measure_model hands the same limit to the build (``plan_max_bytes``), under which ONNX Runtime's optimised
model, which ORT itself writes to disk while building, stops at the limit and is not kept
(``backends/onnxruntime_backend.py``).
"""

import hashlib
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import structlog

from ..files import atomic_write

log = structlog.get_logger("edge_evolver.engine_cache")

DEFAULT_MAX_BYTES = 2 * 1024 ** 3
# A TensorRT plan holds the weights (fp16: at most the ONNX size; fp32 from an fp16 model: twice) plus
# the chosen kernels, a few MB to some tens of MB whatever the model: hence the floor, which a tiny
# model's plan may legitimately exceed many times over. An ONNX Runtime optimised model is the graph
# plus layout-transformed weights (NCHWc padding: under 3x on a 3-channel layer). 16x the model
# leaves ample room for both; constant folding that multiplies a model's size by more is an attack
# or a bug, not an engine worth keeping.
ENTRY_FLOOR_BYTES = 64 * 1024 ** 2
ENTRY_RATIO = 16
PLAN_SUFFIX = ".plan"
META_SUFFIX = ".json"


def entry_limit(model_bytes: Optional[int], budget: int) -> int:
    """The largest entry kept for a model of ``model_bytes`` (unknown: only the budget bounds it)."""
    if model_bytes is None:
        return budget
    return min(budget, max(ENTRY_FLOOR_BYTES, ENTRY_RATIO * model_bytes))


def cache_digest(model_sha256: str, key: Dict[str, Any]) -> str:
    """The entry name: sha256 over the model digest and the canonical JSON of the build key."""
    canonical = json.dumps({"model_sha256": model_sha256, "build": key}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class EngineCache:
    def __init__(self, directory: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        os.makedirs(directory, exist_ok=True)

    def _paths(self, digest: str) -> Tuple[str, str]:
        base = os.path.join(self.directory, digest)
        return base + PLAN_SUFFIX, base + META_SUFFIX

    def get(self, model_sha256: str, key: Dict[str, Any]) -> Optional[bytes]:
        plan_path, _ = self._paths(cache_digest(model_sha256, key))
        try:
            with open(plan_path, "rb") as handle:
                plan = handle.read()
        except OSError:
            return None
        os.utime(plan_path)  # least recently *used* is what eviction should drop
        return plan

    def entry_limit(self, model_bytes: Optional[int] = None) -> int:
        """The largest entry kept for a model of ``model_bytes`` (unknown: only the budget bounds it)."""
        return entry_limit(model_bytes, self.max_bytes)

    def put(self, model_sha256: str, key: Dict[str, Any], plan: bytes, model_bytes: Optional[int] = None) -> bool:
        """Store ``plan``; False when it was refused as oversized or could not be written."""
        digest = cache_digest(model_sha256, key)
        limit = self.entry_limit(model_bytes)
        if len(plan) > limit:
            log.warning("engine_cache_entry_refused", digest=digest[:12], bytes=len(plan), limit=limit,
                        model_bytes=model_bytes, reason="far larger than an engine for this model, or than the cache")
            return False
        plan_path, meta_path = self._paths(digest)
        meta = {"model_sha256": model_sha256, "build": key, "bytes": len(plan), "created": time.time()}
        try:
            atomic_write(plan_path, plan)
            atomic_write(meta_path, json.dumps(meta, sort_keys=True, indent=1).encode("utf-8"), fsync=False)
        except OSError as exc:
            # A full disk must not fail the job: the engine is built and works, it just is not kept.
            log.warning("engine_cache_write_failed", digest=digest[:12], error=str(exc))
            return False
        self.evict()
        return True

    def discard(self, model_sha256: str, key: Dict[str, Any]) -> None:
        for path in self._paths(cache_digest(model_sha256, key)):
            if os.path.exists(path):
                os.remove(path)

    def entries(self) -> List[Tuple[float, int, str]]:
        """(last use, size, digest) of every plan, oldest first."""
        out = []
        for name in os.listdir(self.directory):
            if name.endswith(PLAN_SUFFIX):
                path = os.path.join(self.directory, name)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                out.append((stat.st_mtime, stat.st_size, name[: -len(PLAN_SUFFIX)]))
        return sorted(out)

    def evict(self) -> int:
        """Drop least recently used plans until the cache fits ``max_bytes``; returns how many."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        dropped = 0
        for _, size, digest in entries:
            if total <= self.max_bytes:
                break
            for path in self._paths(digest):
                if os.path.exists(path):
                    os.remove(path)
            total -= size
            dropped += 1
        return dropped
