"""Closed-loop figures: the Pareto front of measured offspring, and fps per device per generation.

A TX1 and an Orin differ by an order of magnitude, so each device gets its own curve (log axis).
"""

from __future__ import annotations

from typing import Any, Sequence

from host_trainer.report import _finish, _legend_below, _new_figure
from host_trainer.selection import pareto_front

PARETO_PNG, DEVICES_PNG = "pareto.png", "fps_per_device.png"


def device_series(lineage: Sequence[dict]) -> dict[str, list[tuple[int, float]]]:
    """device id -> [(generation, fps)] from each generation's per-device results (or its single device)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in lineage:
        per_device = row.get("devices") or ({row["device_id"]: row} if row.get("device_id") else {})
        for target, result in per_device.items():
            if result.get("fps"):
                series.setdefault(result.get("device_id") or target, []).append((row["generation"], result["fps"]))
    return series


def plot_devices(config: dict, lineage: Sequence[dict]) -> bytes:
    fig, ax = _new_figure()
    handles = []
    for device, points in sorted(device_series(lineage).items()):
        (line,) = ax.plot([g for g, _ in points], [f for _, f in points], marker="o", label=f"{device}")
        handles.append(line)
    ax.set_yscale("log")
    ax.set_ylabel("measured fps (batch 1)")
    return _finish(fig, ax, lineage, handles, f"fps per device per generation: {config.get('model')}")


def plot_pareto(config: dict, rows: Sequence[dict]) -> bytes:
    import io

    fig, ax = _new_figure()
    measured = [r for r in rows if r.get("fps") and r.get("accuracy") is not None and not r.get("carried_over")]
    front = pareto_front(measured)
    dots = ax.scatter([r["fps"] for r in measured], [r["accuracy"] * 100 for r in measured], c="0.7", s=18,
                      label="measured offspring")
    best = front["front"]
    (line,) = ax.plot([p["fps"] for p in best], [p["accuracy"] * 100 for p in best], "o-", color="C3",
                      label="Pareto front (" + " x ".join(front["axes"]) + ")")
    ax.set_xscale("log")
    ax.set_xlabel("measured fps (batch 1)")
    score = "mAP@0.5" if config.get("task") == "detect" else "accuracy"
    ax.set_ylabel(f"test {score} %")
    ax.grid(True, alpha=0.35)
    ax.set_title(f"{score} vs speed of every measured offspring: {config.get('model')}")
    _legend_below(fig, [dots, line])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    return buffer.getvalue()


def fleet_figures(config: dict, rows: Sequence[dict], lineage: Sequence[dict]) -> dict[str, Any]:
    """File name -> PNG bytes, for the figures this run has data for."""
    out: dict[str, Any] = {}
    if any(r.get("fps") for r in rows):
        out[PARETO_PNG] = plot_pareto(config, rows)
    if device_series(lineage):
        out[DEVICES_PNG] = plot_devices(config, lineage)
    return out
