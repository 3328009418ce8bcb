"""`host-trainer report RUN_DIR`: synapses_fps.png and precision_recall.png (after Figures 2 and 3 of
Shafiee et al. 2017) and report.md (summary ratios, one table row per generation, the rejected attempts).

Only generations.jsonl and config.json are read, so a run that is still going can be reported on too.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from host_trainer.errors import UserError
from host_trainer.runstore import atomic_write_bytes

ROWS_FILE, CONFIG_FILE = "generations.jsonl", "config.json"
SYNAPSES_PNG, PRECISION_PNG, REPORT_MD = "synapses_fps.png", "precision_recall.png", "report.md"
DASH = "–"  # what a missing value looks like in the tables
Row = dict  # one line of generations.jsonl


# ---- reading the run ------------------------------------------------------------------------
def _check_run_dir(run: Path) -> None:
    if not run.exists():
        raise UserError(f"{run} does not exist")
    if not run.is_dir():
        raise UserError(f"{run} is not a folder (expected a run directory made by `host-trainer evolve`)")
    missing = [name for name in (ROWS_FILE, CONFIG_FILE) if not (run / name).is_file()]
    if missing:
        # `--run-dir` names the parent folder, so pointing at it is an easy mistake: say where the run is.
        inner = sorted(p.parent for p in run.glob(f"*/{ROWS_FILE}"))
        hint = f"; did you mean {inner[0]}?" if len(inner) == 1 else ""
        raise UserError(f"{run} is not a run directory: no {' or '.join(missing)}{hint}")


def _load_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read as JSON: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object")
    return config


def _parse_row(path: Path, number: int, line: str) -> Row:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} line {number} is not valid JSON: {exc.msg}") from None
    if not isinstance(row, dict) or not isinstance(row.get("generation"), int):
        raise UserError(f"{path} line {number} is not a generation record (no integer 'generation')")
    return row


def _load_rows(path: Path) -> list[Row]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read: {exc}") from None
    rows = [_parse_row(path, n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise UserError(f"{path} is empty: the run has not finished generation 0 yet")
    if not any(r.get("accepted") for r in rows):
        raise UserError(f"{path} has no accepted generation")
    return rows


def _lineage(rows: Sequence[Row]) -> list[Row]:
    """The accepted row of each generation; a later row wins, as after a --resume that redid one."""
    by_generation = {r["generation"]: r for r in rows if r.get("accepted")}
    return [by_generation[g] for g in sorted(by_generation)]


# ---- numbers --------------------------------------------------------------------------------
def _num(row: Row, key: str, scale: float = 1.0) -> float:
    """The value as a float, NaN when missing, so that matplotlib leaves a gap instead of failing."""
    value = row.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) * scale
    return math.nan


def _ratio(top: float, bottom: float) -> Optional[float]:
    return top / bottom if math.isfinite(top) and math.isfinite(bottom) and bottom > 0 else None


def _fmt(value: Any, spec: str = "", scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value * scale if scale != 1.0 else value, spec)  # keep ints ints: "61,470"
    return str(value)


def _bench(config: dict, lineage: Sequence[Row]) -> str:
    """Backend and threads as measured (the rows), falling back to what was asked for (the config)."""
    row = lineage[-1]
    backend = row.get("bench_backend") or config.get("bench_backend") or "unknown backend"
    threads = row.get("bench_threads") or config.get("bench_threads")
    return f"{backend}, {threads} thread{'s' if threads != 1 else ''}" if threads else str(backend)


def _name(config: dict) -> str:
    return f"{config.get('model', '?')} on {config.get('dataset', '?')}"


def _score(config: dict) -> str:
    """What the rows' `accuracy` holds: top-1 accuracy, or mAP@0.5 in a detection run."""
    return "mAP@0.5" if config.get("task") == "detect" else "accuracy"


def _pr_kind(config: dict) -> str:
    if config.get("task") == "detect":
        return "precision / recall at IoU 0.5, score ≥ 0.3"
    return "macro precision / recall"


# ---- figures --------------------------------------------------------------------------------
def _new_figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("matplotlib is not installed: pip install 'edge-evolver[host]'") from None
    # A bare Figure needs no pyplot and no display: it renders with Agg, safe on a headless machine.
    fig = Figure(figsize=(9, 5.2), layout="constrained")
    return fig, fig.add_subplot()


def _legend_below(fig: Any, handles: Sequence[Any]) -> None:
    # Outside the axes, below them: a legend inside always ends up covering some run's points.
    # Two rows at most; columns fill top to bottom, so related entries pair up in the plotting order.
    ncol = len(handles) if len(handles) <= 2 else math.ceil(len(handles) / 2)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False)


def _shade_carried_over(ax: Any, lineage: Sequence[Row]) -> list[Any]:
    """Grey bands behind carried-over generations (they explain flat stretches); returns the legend entry."""
    from matplotlib.patches import Patch

    carried = [r["generation"] for r in lineage if r.get("carried_over")]
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


def _finish(fig: Any, ax: Any, lineage: Sequence[Row], handles: list[Any], title: str) -> bytes:
    """The parts both figures share: whole-number generations, grid, shading, legend, title; the PNG."""
    from matplotlib.ticker import MaxNLocator

    generations = [r["generation"] for r in lineage]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(min(generations) - 0.4, max(generations) + 0.4)
    ax.set_xlabel("generation")
    ax.grid(True, alpha=0.35)
    _legend_below(fig, handles + _shade_carried_over(ax, lineage))
    ax.set_title(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    return buffer.getvalue()


def _synapse_axis(ax: Any, gens: Sequence[int], lineage: Sequence[Row]) -> list[Any]:
    synapses = [_num(r, "synapses") for r in lineage]
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


def _fps_axis(ax: Any, gens: Sequence[int], lineage: Sequence[Row]) -> list[Any]:
    fps = [_num(r, "fps") for r in lineage]
    handles = ax.plot(gens, fps, color="tab:red", marker="s", linestyle="--", label="fps (right axis)")
    measured = any(math.isfinite(f) for f in fps)
    ax.set_ylabel("measured fps at batch 1" if measured else "fps: not measured", color="tab:red")
    if measured:
        ax.set_ylim(bottom=0)  # from zero: run-to-run timing noise must not look like a trend
        _readable_counts(ax.yaxis, log=False)
    else:
        ax.set_yticks([])  # an empty axis would otherwise show a column of meaningless "0" labels
    return handles


def plot_synapses_fps(config: dict, lineage: Sequence[Row]) -> bytes:
    fig, ax = _new_figure()
    gens = [r["generation"] for r in lineage]
    handles = _synapse_axis(ax, gens, lineage) + _fps_axis(ax.twinx(), gens, lineage)
    return _finish(fig, ax, lineage, handles, f"{_name(config)}: synapses and speed per generation\n"
                   f"fps measured during the run ({_bench(config, lineage)})")


def plot_precision_recall(config: dict, lineage: Sequence[Row], rejected: Sequence[Row]) -> bytes:
    fig, ax = _new_figure()
    gens = [r["generation"] for r in lineage]
    # Macro recall is close to accuracy on balanced classes: accuracy is drawn wide, pale and underneath,
    # so that recall stays visible on top of it.
    score = _score(config)
    styles = (("precision", "precision", "tab:blue", "o", 1.6, 1.0, 3),
              ("recall", "recall", "tab:orange", "s", 1.6, 1.0, 3),
              ("accuracy", score, "tab:green", "^", 4.5, 0.45, 2))
    for key, label, colour, marker, width, alpha, z in styles:
        ax.plot(gens, [_num(r, key, 100) for r in lineage], color=colour, marker=marker, linewidth=width,
                alpha=alpha, zorder=z, label=label)
    drop, base = config.get("max_accuracy_drop"), _num(lineage[0], "accuracy", 100)
    if isinstance(drop, (int, float)) and math.isfinite(base):
        ax.axhline(base - drop, color="grey", linestyle="--", linewidth=1,
                   label=f"floor: gen-0 {score} − {drop:g} points")
    tried = [(r["generation"], _num(r, "accuracy", 100)) for r in rejected]
    if tried:
        ax.scatter(*zip(*tried), color="grey", marker="x", s=30, zorder=3,
                   label=f"rejected attempt ({score})")
    ax.set_ylabel("% on the held-out test split")
    return _finish(fig, ax, lineage, ax.get_legend_handles_labels()[0],
                   f"{_name(config)}: precision, recall and {score} per generation\n"
                   f"{_pr_kind(config)}; weights restricted to {config.get('precision', '?')}")


# ---- markdown -------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")  # a '|' in a reason would split the row


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _times(value: Optional[float]) -> str:
    return f"{value:.2f}×" if value is not None else DASH


def summary(lineage: Sequence[Row], config: Optional[dict] = None) -> str:
    first, last = lineage[0], lineage[-1]
    shrink = {key: _ratio(_num(first, key), _num(last, key)) for key in ("synapses", "params", "macs")}
    fps = _ratio(_num(last, "fps"), _num(first, "fps"))
    change = {k: _num(last, k, 100) - _num(first, k, 100) for k in ("accuracy", "precision", "recall")}
    quality = f"test accuracy changed by {_fmt(change['accuracy'], '+.2f')} points."
    if (config or {}).get("task") == "detect":
        quality = (f"test mAP@0.5 changed by {_fmt(change['accuracy'], '+.2f')} points, precision by "
                   f"{_fmt(change['precision'], '+.2f')} and recall by {_fmt(change['recall'], '+.2f')}.")
    return (f"From generation {first['generation']} to generation {last['generation']}: "
            f"synapses reduced {_times(shrink['synapses'])}, parameters reduced {_times(shrink['params'])}, "
            f"MACs reduced {_times(shrink['macs'])}; fps ratio {_times(fps)} "
            f"(the fps measured during the run, each generation measured separately, "
            f"so not a same-process A/B comparison); " + quality)


# The accepted-generations table between "gen" and "sha256": (header, row key, format, scale).
COLUMNS = (("α_c", "alpha_c", ".3f", 1), ("synapses", "synapses", ",", 1), ("clusters", "clusters", "", 1),
           ("params", "params", ",", 1), ("MMACs", "macs", ".3f", 1e-6),
           ("accuracy %", "accuracy", ".2f", 100), ("precision %", "precision", ".2f", 100),
           ("recall %", "recall", ".2f", 100), ("fps", "fps", ",.0f", 1),
           ("p50 ms", "latency_ms_p50", ".3f", 1), ("p99 ms", "latency_ms_p99", ".3f", 1),
           ("ONNX KB", "onnx_bytes", ".1f", 1e-3))


def _columns(config: dict) -> tuple:
    score = _score(config)
    return tuple((f"{score} %", *c[1:]) if c[1] == "accuracy" else c for c in COLUMNS)


def _accepted_line(r: Row, columns: tuple = COLUMNS) -> list[str]:
    gen = f"{r['generation']}*" if r.get("carried_over") else str(r["generation"])
    cells = [_fmt(r.get(key), spec, scale) for _, key, spec, scale in columns]
    return [gen, *cells, _fmt((r.get("model_sha256") or "")[:12] or None)]


def _rejected_section(rejected: Sequence[Row], score: str = "accuracy") -> list[str]:
    if not rejected:
        return ["No offspring was rejected."]
    rows = [[r["generation"], _fmt(r.get("attempt")), _fmt(r.get("alpha_c"), ".3f"),
             _fmt(r.get("accuracy"), ".2f", 100) + (" %" if r.get("accuracy") is not None else ""),
             _fmt(r.get("reject_reason"))] for r in rejected]
    return _table(["gen", "attempt", "α_c", score, "reason"], rows)


def _heading(config: dict) -> list[str]:
    alpha = f"α_c = {_fmt(config.get('alpha_c'))}, α_s = {_fmt(config.get('alpha_s'))}"
    return [f"# Evolution report: {_name(config)}", "",
            f"Model **{config.get('model', '?')}**, dataset **{config.get('dataset', '?')}**, "
            f"precision **{config.get('precision', '?')}**, {alpha}, seed **{config.get('seed', '?')}**."]


def render_markdown(config: dict, lineage: Sequence[Row], rejected: Sequence[Row]) -> str:
    columns, score = _columns(config), _score(config)
    header = ["gen", *(name for name, *_ in columns), "sha256"]
    lines = _heading(config) + ["", summary(lineage, config), "", "## Accepted generations", ""]
    lines += _table(header, [_accepted_line(r, columns) for r in lineage])
    if any(r.get("carried_over") for r in lineage):
        lines += ["", "\\* carried over: no offspring of that generation survived, the parent lives on."]
    lines += ["", f"{score[0].upper() + score[1:]}, {_pr_kind(config)} on the held-out test split; fps and "
                  f"latency at batch 1 ({_bench(config, lineage)}).", "", "## Rejected attempts", ""]
    lines += _rejected_section(rejected, score)
    lines += ["", "## Figures", "", f"![synapses and fps per generation]({SYNAPSES_PNG})", "",
              f"![precision, recall and {score} per generation]({PRECISION_PNG})", ""]
    if "max_accuracy_drop" in config:
        lines += [f"The dashed floor is drawn on test {score}; offspring are accepted or rejected on "
                  f"validation {score} against generation 0's.", ""]
    return "\n".join(lines)


# ---- entry point ----------------------------------------------------------------------------
def write_report(run: Path) -> list[Path]:
    """Write the two figures and report.md into the run directory; return their paths."""
    run = Path(run)
    _check_run_dir(run)
    config = _load_config(run / CONFIG_FILE)
    rows = _load_rows(run / ROWS_FILE)
    lineage, rejected = _lineage(rows), [r for r in rows if not r.get("accepted")]
    outputs = {
        run / SYNAPSES_PNG: plot_synapses_fps(config, lineage),
        run / PRECISION_PNG: plot_precision_recall(config, lineage, rejected),
        run / REPORT_MD: render_markdown(config, lineage, rejected).encode("utf-8"),
    }
    from host_trainer.report_fleet import fleet_figures  # imports this module: kept out of its top

    outputs.update({run / name: png for name, png in fleet_figures(config, rows, lineage).items()})
    # Everything is rendered before the first write, so a failure leaves no half-updated report behind.
    for path, data in outputs.items():
        atomic_write_bytes(path, data)
    return list(outputs)
