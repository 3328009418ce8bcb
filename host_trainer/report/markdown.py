"""report.md: summary ratios, one table row per accepted generation, the rejected attempts, the figures.

The table's columns are the generation record's (`record.COLUMNS`, `REPORT_COLUMNS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from host_trainer.record import COLUMNS, REPORT_COLUMNS, GenerationRecord
from host_trainer.report import labels
from host_trainer.report.labels import DASH, fmt, num, ratio
from host_trainer.rundir import PRECISION_PNG, SYNAPSES_PNG


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")  # a '|' in a reason would split the row


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _times(value: Optional[float]) -> str:
    return f"{value:.2f}×" if value is not None else DASH


def summary(lineage: Sequence[GenerationRecord], config: Optional[dict] = None) -> str:
    first, last = lineage[0], lineage[-1]
    shrink = {key: ratio(num(first, key), num(last, key)) for key in ("synapses", "params", "macs")}
    fps = ratio(num(last, "fps"), num(first, "fps"))
    change = {k: num(last, k, 100) - num(first, k, 100) for k in ("accuracy", "precision", "recall")}
    quality = f"test accuracy changed by {fmt(change['accuracy'], '+.2f')} points."
    if (config or {}).get("task") == "detect":
        quality = (f"test mAP@0.5 changed by {fmt(change['accuracy'], '+.2f')} points, precision by "
                   f"{fmt(change['precision'], '+.2f')} and recall by {fmt(change['recall'], '+.2f')}.")
    return (f"From generation {first.generation} to generation {last.generation}: "
            f"synapses reduced {_times(shrink['synapses'])}, parameters reduced {_times(shrink['params'])}, "
            f"MACs reduced {_times(shrink['macs'])}; fps ratio {_times(fps)} "
            f"(the fps measured during the run, each generation measured separately, "
            f"so not a same-process A/B comparison); " + quality)


def _accepted_line(r: GenerationRecord) -> list[str]:
    gen = f"{r.generation}*" if r.carried_over else str(r.generation)
    cells = [COLUMNS[key].text(r, missing=DASH) for key in REPORT_COLUMNS[1:]]
    return [gen, *cells, fmt((r.model_sha256 or "")[:12] or None)]


def _rejected_section(rejected: Sequence[GenerationRecord], score: str = "accuracy") -> list[str]:
    if not rejected:
        return ["No offspring was rejected."]
    rows = [[r.generation, fmt(r.attempt), fmt(r.alpha_c, ".3f"),
             fmt(r.accuracy, ".2f", 100) + (" %" if r.accuracy is not None else ""),
             fmt(r.reject_reason)] for r in rejected]
    return _table(["gen", "attempt", "α_c", score, "reason"], rows)


def _heading(config: dict) -> list[str]:
    alpha = f"α_c = {fmt(config.get('alpha_c'))}, α_s = {fmt(config.get('alpha_s'))}"
    return [f"# Evolution report: {labels.name(config)}", "",
            f"Model **{config.get('model', '?')}**, dataset **{config.get('dataset', '?')}**, "
            f"precision **{labels.number_format(config)}**, {alpha}, seed **{config.get('seed', '?')}**."]


def render_markdown(config: dict, lineage: Sequence[GenerationRecord], rejected: Sequence[GenerationRecord]) -> str:
    score, task = labels.score(config), config.get("task")
    header = [COLUMNS[key].title(task) for key in REPORT_COLUMNS] + ["sha256"]
    lines = _heading(config) + ["", summary(lineage, config), "", "## Accepted generations", ""]
    lines += _table(header, [_accepted_line(r) for r in lineage])
    if any(r.carried_over for r in lineage):
        lines += ["", "\\* carried over: no offspring of that generation survived, the parent lives on."]
    lines += ["", f"{score[0].upper() + score[1:]}, {labels.pr_kind(config)} on the held-out test split; fps and "
                  f"latency at batch 1 ({labels.bench(config, lineage)}).", "", "## Rejected attempts", ""]
    lines += _rejected_section(rejected, score)
    lines += ["", "## Figures", "", f"![synapses and fps per generation]({SYNAPSES_PNG})", "",
              f"![precision, recall and {score} per generation]({PRECISION_PNG})", ""]
    if "max_accuracy_drop" in config:
        lines += [f"The dashed floor is drawn on test {score}; offspring are accepted or rejected on "
                  f"validation {score} against generation 0's.", ""]
    return "\n".join(lines)
