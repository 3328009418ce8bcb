"""Closed-loop figures: the Pareto front of measured offspring, and fps per device per generation.

A TX1 and an Orin differ by an order of magnitude, so each device gets its own curve (log axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from host_trainer.loop.selection import pareto_front
from host_trainer.record import GenerationRecord
from host_trainer.report import labels
from host_trainer.report.figures import finish, legend_below, new_figure
from host_trainer.rundir import DEVICES_PNG, PARETO_PNG


def device_series(lineage: Sequence[GenerationRecord]) -> dict[str, list[tuple[int, float]]]:
    """device id -> [(generation, fps)] from each generation's per-device results (or its single device)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in lineage:
        single = {record.device_id: {"device_id": record.device_id, "fps": record.fps}} if record.device_id else {}
        for device, result in (record.devices or single).items():
            fps = result.get("fps") if isinstance(result, dict) else None
            if isinstance(fps, (int, float)) and fps:
                series.setdefault(str(result.get("device_id") or device), []).append((record.generation, fps))
    return series


def plot_devices(config: dict, lineage: Sequence[GenerationRecord]) -> bytes:
    fig, ax = new_figure()
    handles = []
    for device, points in sorted(device_series(lineage).items()):
        (line,) = ax.plot([g for g, _ in points], [f for _, f in points], marker="o", label=f"{device}")
        handles.append(line)
    ax.set_yscale("log")
    ax.set_ylabel("measured fps (batch 1)")
    return finish(fig, ax, lineage, handles, f"fps per device per generation: {config.get('model')}")


def plot_pareto(config: dict, records: Sequence[GenerationRecord]) -> bytes:
    import io

    fig, ax = new_figure()
    measured = [r for r in records if r.fps and r.accuracy is not None and not r.carried_over]
    front = pareto_front(measured)
    dots = ax.scatter([r.fps for r in measured], [(r.accuracy or 0.0) * 100 for r in measured], c="0.7", s=18,
                      label="measured offspring")
    best = front["front"]
    (line,) = ax.plot([p["fps"] for p in best], [p["accuracy"] * 100 for p in best], "o-", color="C3",
                      label="Pareto front (" + " x ".join(front["axes"]) + ")")
    ax.set_xscale("log")
    ax.set_xlabel("measured fps (batch 1)")
    score = labels.score(config)
    ax.set_ylabel(f"test {score} %")
    ax.grid(True, alpha=0.35)
    ax.set_title(f"{score} vs speed of every measured offspring: {config.get('model')}")
    legend_below(fig, [dots, line])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    return buffer.getvalue()


def fleet_figures(config: dict, records: Sequence[GenerationRecord],
                  lineage: Sequence[GenerationRecord]) -> dict[str, Any]:
    """File name -> PNG bytes, for the figures this run has data for."""
    out: dict[str, Any] = {}
    if any(r.fps for r in records):
        out[PARETO_PNG] = plot_pareto(config, records)
    if device_series(lineage):
        out[DEVICES_PNG] = plot_devices(config, lineage)
    return out
