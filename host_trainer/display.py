"""Terminal display: a live progress bar over each generation's epochs, and one table row per
generation. On a TTY the bar is drawn by rich; elsewhere (CI, pipes) only the rows are printed."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

COLUMNS = [  # (header, key, width, format spec)
    ("gen", "generation", 3, "d"),
    ("alpha", "alpha_c", 5, ".3f"),
    ("synapses", "synapses", 9, ",d"),
    ("clusters", "clusters", 8, ",d"),
    ("params", "params", 9, ",d"),
    ("MMACs", "macs", 7, ".2f"),
    ("acc%", "accuracy", 6, ".2f"),
    ("prec%", "precision", 6, ".2f"),
    ("rec%", "recall", 6, ".2f"),
    ("fps", "fps", 8, ".1f"),
    ("p50 ms", "latency_ms_p50", 7, ".3f"),
    ("p99 ms", "latency_ms_p99", 7, ".3f"),
]
SCALE = {"macs": 1e-6, "accuracy": 100.0, "precision": 100.0, "recall": 100.0}


def format_row(row: dict) -> str:
    cells = []
    for _header, key, width, spec in COLUMNS:
        value = row.get(key)
        text = "-" if value is None else format(value * SCALE[key] if key in SCALE else value, spec)
        cells.append(text.rjust(width))
    return "  ".join(cells)


def header(task: str = "classify") -> str:
    """Column titles; in a detection run `accuracy` holds mAP@0.5 (docs/detection.md)."""
    names = [("mAP%" if k == "accuracy" and task == "detect" else h, w) for h, k, w, _s in COLUMNS]
    return "  ".join(h.rjust(w) for h, w in names)


class Display:
    def __init__(self, stream: TextIO | None = None, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._header_done = False

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def generation(self, row: dict) -> None:
        if not self._header_done:
            self._print(header(row.get("task", "classify")))
            self._header_done = True
        suffix = "  (carried over: no offspring survived)" if row.get("carried_over") else ""
        self._print(format_row(row) + suffix)

    def rejected(self, row: dict) -> None:
        self._print(f"  gen {row['generation']} attempt {row['attempt']} rejected: {row['reject_reason']}")

    def progress(self, generation: int, epochs: float) -> Callable[[int, int, float], None] | None:
        if not self.live:
            return None
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn(f"gen {generation:>3}"), BarColumn(), TextColumn("{task.description}"),
                       TimeRemainingColumn(), transient=True)
        task = bar.add_task("", total=None)

        def update(step: int, total: int, loss: float) -> None:
            if step == 1:
                bar.start()
            epoch = step * epochs / max(1, total)
            bar.update(task, completed=step, total=total, description=f"epoch {epoch:.2f}/{epochs:g} loss {loss:.3f}")
            if step >= total:
                bar.stop()

        return update
