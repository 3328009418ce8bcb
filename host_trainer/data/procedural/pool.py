"""Rendering a procedural set in chunks: in a fork pool when the set is big enough to pay for one
(`default_workers`), serially otherwise; both paths give the same arrays."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

Job = TypeVar("Job")
Part = TypeVar("Part")


def default_workers(total: int, minimum: int) -> int:
    """Worker processes for `total` samples: 1 below `minimum` or without fork, else one per CPU (at most 8).

    The pool needs fork, so that a user's script without a `__main__` guard is never re-imported by the
    workers (spawn would do that)."""
    import multiprocessing

    if total < minimum or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, 8))


def render_jobs(render: Callable[[Job], Part], jobs: Sequence[Job], workers: int,
                on_part: Callable[[int, int], None] | None = None) -> list[Part]:
    """`render` over every job, in order; `on_part(done, total)` after each finished job."""
    report = on_part or (lambda done, total: None)
    if workers > 1:
        import multiprocessing
        from concurrent.futures.process import BrokenProcessPool

        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                parts = []
                for part in pool.map(render, jobs):
                    parts.append(part)
                    report(len(parts), len(jobs))
                return parts
        except (OSError, BrokenProcessPool):
            pass  # no processes to be had (limits, memory): the serial path gives the same arrays
    parts = []
    for job in jobs:
        parts.append(render(job))
        report(len(parts), len(jobs))
    return parts
