"""bench/pareto.py's output: one table per task, the per-point notes, one line per goal and the verdict last."""

from __future__ import annotations

import argparse

import pareto_rules as rules
from common import markdown

from host_trainer.config import EvolveConfig

COLUMNS = [("point", "pt", "s"), ("method", "method", "s"), ("TP ratio", "ratio", ".3f"), ("MMACs", "mmacs", ".2f"),
           ("fewer MACs", "fewer", ".1f"), ("parameters", "params", ",.0f"), ("batch-1 p50 µs", "p50_us", ".0f"),
           ("speed-up vs dense", "speedup", ".2f"), ("accuracy % (mean)", "acc", ".2f"), ("per seed", "accs", "s"),
           ("fine-tune epochs", "budget", ".3g"), ("ours' generation", "gens", "s")]


def _ratio(result: dict, row: dict) -> float | None:
    """The pruning ratio of a Torch-Pruning row, mean over seeds (Taylor's differs per seed)."""
    mine = [r["ratio"] for s in result["seeds"] for r in s["rows"]
            if r["method"] == row["method"] and r["point"] == row["point"] and r.get("ratio") is not None]
    return sum(mine) / len(mine) if mine else None


def point_lines(result: dict) -> list[str]:
    lines = []
    for point, v in sorted(result["points"].items()):
        bound = "" if v["reached"] else " (Torch-Pruning never reaches ours' accuracy: its most accurate model)"
        lines.append(f"- {point:g}x: ours {v['ours_p50_us']:.0f} µs at {v['ours_acc']:.2f}; the fastest "
                     f"Torch-Pruning model at equal or better accuracy is {v['tp_method']} at {v['tp_point']:g}x, "
                     f"{v['tp_p50_us']:.0f} µs at {v['tp_acc']:.2f}{bound}: speed ratio {v['speed_ratio']:.2f}x "
                     f"({'holds' if v['holds'] else 'does not hold'}); against {v['matched_method']} it was matched "
                     f"to: {v['matched_gap']:+.2f} points at {v['matched_ratio']:.2f}x its speed")
    return lines


def run_lines(name: str, result: dict) -> list[str]:
    used = [s["device_run_allocations"] for s in result["seeds"]]
    offspring = [s["offspring"] for s in result["seeds"]]
    budgets = [s["budgets"] for s in result["seeds"]]
    return [f"- {name}: offspring trained per run and seed (rejected included): {offspring}; device-aware budget "
            f"in epochs at each point, per seed: {budgets}",
            f"- {name}: how the device-aware runs' offspring were allocated, per seed: {used} (magnitude there: the "
            "allocator fell back, e.g. no per-layer profile of the parent)"]


def head(name: str, result: dict, args: argparse.Namespace) -> str:
    cfg, b = EvolveConfig.for_task(name), result["budget"]
    metric = "top-1 accuracy" if name == "classify" else "mAP@0.5"
    gen0 = "; ".join(f"seed {s['seed']}: {s['gen0']['epochs']} epochs, best {s['gen0']['best_epoch']} "
                     f"(validation {s['gen0']['best_val'] * 100:.2f})" for s in result["seeds"])
    return (f"### {name}: {cfg.model} on {cfg.dataset}, {metric} on the test split\n\n{len(result['seeds'])} "
            f"seed(s); ours {b['generations']} generations x {b['epochs']:g} epochs per offspring; train subset "
            f"{b['train_subset'] or 'all'}; generation 0 with train_until_plateau, patience {b['patience']}, cap "
            f"{b['cap']} ({gen0}); Torch-Pruning solved for measured speed-up; one timing: ONNX Runtime CPU, 1 "
            f"intra-op thread, batch 1, median of {args.rounds} interleaved rounds' p50; "
            f"{result['wall_s'] / 60:.1f} min")


def task_table(name: str, result: dict, args: argparse.Namespace) -> str:
    dense_macs = result["rows"][0]["macs"]
    shown = [{**r, "pt": "–" if r["point"] is None else f"{r['point']:g}x", "mmacs": r["macs"] / 1e6,
              "fewer": dense_macs / r["macs"], "ratio": _ratio(result, r) if rules.is_tp(r) else None}
             for r in result["rows"]]
    notes = point_lines(result) + run_lines(name, result)
    return f"{head(name, result, args)}\n\n{markdown(shown, COLUMNS)}\n\n" + "\n".join(notes)


def report(results: dict, args: argparse.Namespace) -> tuple[str, dict]:
    """(the text: tables, notes, goal lines, the verdict last; the JSON payload)."""
    goals = rules.goals(results)
    verdict = rules.verdict_line("pareto", goals, {t: r["summary"] for t, r in results.items()})
    text = "\n\n".join(task_table(t, r, args) for t, r in results.items())
    text += "\n\n" + "\n".join(rules.goal_line(g) for g in goals) + f"\n\n{verdict}"
    return text, {"tasks": results, "goals": goals, "verdict": verdict}
