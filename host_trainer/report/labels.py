"""Numbers and names the report's figures and report.md share: missing values, ratios, the run's title,
what its `accuracy` means (top-1, or mAP@0.5 in a detection run) and how it was measured."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

from host_trainer.record import GenerationRecord

DASH = "–"  # what a missing value looks like in the tables


def num(record: GenerationRecord, key: str, scale: float = 1.0) -> float:
    """The value as a float, NaN when missing, so that matplotlib leaves a gap instead of failing."""
    value = getattr(record, key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value) * scale
        except OverflowError:  # an integer too large for a float, from a hand-edited file
            return math.nan
    return math.nan


def ratio(top: float, bottom: float) -> Optional[float]:
    return top / bottom if math.isfinite(top) and math.isfinite(bottom) and bottom > 0 else None


def fmt(value: Any, spec: str = "", scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value * scale if scale != 1.0 else value, spec)  # keep ints ints: "61,470"
    return str(value)


def bench(config: dict, lineage: Sequence[GenerationRecord]) -> str:
    """Backend and threads as measured (the records), falling back to what was asked for (the config)."""
    last = lineage[-1]
    backend = last.bench_backend or last.device_backend or config.get("bench_backend") or "unknown backend"
    threads = last.bench_threads or config.get("bench_threads")
    return f"{backend}, {threads} thread{'s' if threads != 1 else ''}" if threads else str(backend)


def name(config: dict) -> str:
    return f"{config.get('model', '?')} on {config.get('dataset', '?')}"


def score(config: dict) -> str:
    """What the records' `accuracy` holds: top-1 accuracy, or mAP@0.5 in a detection run."""
    return "mAP@0.5" if config.get("task") == "detect" else "accuracy"


def pr_kind(config: dict) -> str:
    if config.get("task") == "detect":
        return "precision / recall at IoU 0.5, score ≥ 0.3"
    return "macro precision / recall"


def number_format(config: dict) -> str:
    """The number format of the weights (config.json said `precision` before 0.2)."""
    return str(config.get("precision_format") or config.get("precision") or "?")
