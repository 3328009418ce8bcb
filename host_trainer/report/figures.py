"""The seed's two figures for a run (Shafiee et al. 2017, Figures 2 and 3): synapses and fps per
generation, and precision, recall and accuracy (or mAP@0.5) per generation; and what every figure of
the report shares (a headless Agg figure, the legend below, whole-number generations)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from host_trainer.errors import UserError
from host_trainer.record import GenerationRecord
from host_trainer.report import labels
from host_trainer.report.labels import bench, name, num, number_format, pr_kind


def new_figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("matplotlib is not installed: pip install 'edge-evolver[host]'") from None
    # A bare Figure needs no pyplot and no display: it renders with Agg, safe on a headless machine.
    fig = Figure(figsize=(9, 5.2), layout="constrained")
    return fig, fig.add_subplot()


def legend_below(fig: Any, handles: Sequence[Any]) -> None:
    # Outside the axes, below them: a legend inside always ends up covering some run's points.
    # Two rows at most; columns fill top to bottom, so related entries pair up in the plotting order.
    ncol = len(handles) if len(handles) <= 2 else math.ceil(len(handles) / 2)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False)


def _shade_carried_over(ax: Any, lineage: Sequence[GenerationRecord]) -> list[Any]:
    """Grey bands behind carried-over generations (they explain flat stretches); returns the legend entry."""
    from matplotlib.patches import Patch

    carried = [r.generation for r in lineage if r.carried_over]
    for gen in carried:
        ax.axvspan(gen - 0.45, gen + 0.45, color="0.94", zorder=0)
    return [Patch(color="0.94", label="carried over (no offspring survived)")] if carried else []


def _thousands(value: float, _position: Any = None) -> str:
    return f"{value:,.0f}"


def _readable_counts(axis: Any, log: bool) -> None:
    """'60,000' instead of '6e4' or '10^4'; on a log axis also label the 2s and 5s of each decade."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(_thousands))
    if log:
        def minor(value: float, _position: Any = None) -> str:
            mantissa = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0
            return _thousands(value) if round(mantissa) in (2, 5) else ""

        axis.set_minor_formatter(FuncFormatter(minor))


def finish(fig: Any, ax: Any, lineage: Sequence[GenerationRecord], handles: list[Any], title: str) -> bytes:
    """The parts both figures share: whole-number generations, grid, shading, legend, title; the PNG."""
    from matplotlib.ticker import MaxNLocator

    generations = [r.generation for r in lineage]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(min(generations) - 0.4, max(generations) + 0.4)
    ax.set_xlabel("generation")
    ax.grid(True, alpha=0.35)
    legend_below(fig, handles + _shade_carried_over(ax, lineage))
    ax.set_title(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    return buffer.getvalue()


def _synapse_axis(ax: Any, gens: Sequence[int], lineage: Sequence[GenerationRecord]) -> list[Any]:
    synapses = [num(r, "synapses") for r in lineage]
    handles = ax.plot(gens, synapses, color="tab:blue", marker="o", label="synapses (left axis)")
    finite = [s for s in synapses if s > 0]
    # Log scale only pays off once the counts span more than a decade; below that it hides the steps.
    log = bool(finite) and max(finite) > 10 * min(finite)
    ax.set_yscale("log" if log else "linear")
    ax.set_ylabel("synapses (non-zero weights)" + (", log scale" if log else ""), color="tab:blue")
    if not log:
        ax.set_ylim(bottom=0)
    _readable_counts(ax.yaxis, log)
    return handles


def _fps_axis(ax: Any, gens: Sequence[int], lineage: Sequence[GenerationRecord]) -> list[Any]:
    fps = [num(r, "fps") for r in lineage]
    handles = ax.plot(gens, fps, color="tab:red", marker="s", linestyle="--", label="fps (right axis)")
    measured = any(math.isfinite(f) for f in fps)
    ax.set_ylabel("measured fps at batch 1" if measured else "fps: not measured", color="tab:red")
    if measured:
        ax.set_ylim(bottom=0)  # from zero: run-to-run timing noise must not look like a trend
        _readable_counts(ax.yaxis, log=False)
    else:
        ax.set_yticks([])  # an empty axis would otherwise show a column of meaningless "0" labels
    return handles


def plot_synapses_fps(config: dict, lineage: Sequence[GenerationRecord]) -> bytes:
    fig, ax = new_figure()
    gens = [r.generation for r in lineage]
    handles = _synapse_axis(ax, gens, lineage) + _fps_axis(ax.twinx(), gens, lineage)
    return finish(fig, ax, lineage, handles, f"{name(config)}: synapses and speed per generation\n"
                   f"fps measured during the run ({bench(config, lineage)})")


def plot_precision_recall(config: dict, lineage: Sequence[GenerationRecord],
                          rejected: Sequence[GenerationRecord]) -> bytes:
    fig, ax = new_figure()
    gens = [r.generation for r in lineage]
    # Macro recall is close to accuracy on balanced classes: accuracy is drawn wide, pale and underneath,
    # so that recall stays visible on top of it.
    score = labels.score(config)
    styles = (("precision", "precision", "tab:blue", "o", 1.6, 1.0, 3),
              ("recall", "recall", "tab:orange", "s", 1.6, 1.0, 3),
              ("accuracy", score, "tab:green", "^", 4.5, 0.45, 2))
    for key, label, colour, marker, width, alpha, z in styles:
        ax.plot(gens, [num(r, key, 100) for r in lineage], color=colour, marker=marker, linewidth=width,
                alpha=alpha, zorder=z, label=label)
    drop, base = config.get("max_accuracy_drop"), num(lineage[0], "accuracy", 100)
    if isinstance(drop, (int, float)) and math.isfinite(base):
        ax.axhline(base - drop, color="grey", linestyle="--", linewidth=1,
                   label=f"floor: gen-0 {score} − {drop:g} points")
    tried = [(r.generation, num(r, "accuracy", 100)) for r in rejected]
    if tried:
        ax.scatter(*zip(*tried), color="grey", marker="x", s=30, zorder=3,
                   label=f"rejected attempt ({score})")
    ax.set_ylabel("% on the held-out test split")
    return finish(fig, ax, lineage, ax.get_legend_handles_labels()[0],
                   f"{name(config)}: precision, recall and {score} per generation\n"
                   f"{pr_kind(config)}; weights restricted to {number_format(config)}")
