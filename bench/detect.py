"""Benchmark 6: the seed's own experiment. 13 generations of det-small on shapes-det, fp16, through the
embedded loop (Mosquitto + a local `edge-evolver serve` measuring with ONNX Runtime on this CPU).

Runs the real CLI (`host-trainer evolve --task detect`, its defaults unless you pass options after `--`)
and times it. Reports the synapse reduction, the device-measured fps of generation 0 and of the last
generation from the run itself, the same two models measured again here interleaved (same process, same
minute: the fair ratio), and precision, recall and mAP@0.5 of every generation. Draws Figures 2 and 3
(`host-trainer report`).

    python bench/detect.py                      # the full run (about 25 minutes on 2 cores)
    python bench/detect.py --reuse RUN_DIR      # only summarise and re-measure an existing run
    python bench/detect.py -- --generations 3   # pass options to host-trainer evolve
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import OUT, evolve_into, first_and_last, markdown, save

from host_trainer.report.writer import write_report

GOALS = ("goal: >=10x fewer synapses, >=3x fps, precision and recall each within 3 points of generation 0, "
         "< 30 min")


def _per_generation(lineage: dict) -> str:
    rows = [{"gen": g, "syn": r.synapses, "fps": r.fps, "p": r.precision * 100,
             "r": r.recall * 100, "map": r.map50 * 100, "alpha": r.alpha_c}
            for g, r in sorted(lineage.items())]
    return markdown(rows, [("gen", "gen", "d"), ("α_c", "alpha", ".3f"), ("synapses", "syn", ","),
                           ("device fps", "fps", ",.0f"), ("precision %", "p", ".2f"), ("recall %", "r", ".2f"),
                           ("mAP@0.5 %", "map", ".2f")])


def summarize(run: Path, wall: float | None, rounds: int) -> tuple[dict, str]:
    rows, lineage, lat = first_and_last(run, rounds)
    first, last = lineage[0], lineage[max(lineage)]
    result = {
        "run_dir": str(run), "wall_s": wall, "generations": last.generation,
        "synapses": [first.synapses, last.synapses], "params": [first.params, last.params],
        "macs": [first.macs, last.macs], "device_fps": [first.fps, last.fps],
        "interleaved_fps": [lat["gen0"]["fps"], lat["last"]["fps"]],
        "interleaved_speedup": lat["gen0"]["p50_ms"] / lat["last"]["p50_ms"],
        "precision": [r.precision for _, r in sorted(lineage.items())],
        "recall": [r.recall for _, r in sorted(lineage.items())],
        "map50": [r.map50 for _, r in sorted(lineage.items())],
        "rejected": sum(not r.accepted for r in rows), "figures": [str(p) for p in write_report(run)],
        "backend": f"onnxruntime {lat['gen0']['backend_version']} (CPU), 1 thread",
    }
    headline = markdown([{
        "wall": f"{wall / 60:.1f} min" if wall else "(reused)", "gens": result["generations"],
        "syn": f"{first.synapses / last.synapses:.1f}× ({first.synapses:,} → {last.synapses:,})",
        "mac": f"{first.macs / last.macs:.1f}× ({first.macs / 1e6:.1f} M → {last.macs / 1e6:.1f} M)",
        "dev": f"{first.fps:.0f} → {last.fps:.0f} ({last.fps / first.fps:.2f}×)",
        "same": f"{lat['gen0']['fps']:.0f} → {lat['last']['fps']:.0f} ({result['interleaved_speedup']:.2f}×)",
        "p": f"{first.precision * 100:.2f} → {last.precision * 100:.2f} "
             f"({(last.precision - first.precision) * 100:+.2f})",
        "r": f"{first.recall * 100:.2f} → {last.recall * 100:.2f} "
             f"({(last.recall - first.recall) * 100:+.2f})",
        "map": f"{first.map50 * 100:.2f} → {last.map50 * 100:.2f}",
    }], [("wall time", "wall", "s"), ("generations", "gens", "d"), ("synapses", "syn", "s"), ("MACs", "mac", "s"),
         ("fps on the device (during the run)", "dev", "s"), ("fps, re-measured interleaved", "same", "s"),
         ("precision", "p", "s"), ("recall", "r", "s"), ("mAP@0.5", "map", "s")])
    table = (f"{headline}\n\n{result['backend']}, {rounds} interleaved rounds; {result['rejected']} offspring "
             f"rejected; {GOALS}\n\nEvery generation (test split; precision/recall at IoU 0.5, score ≥ 0.3):\n\n"
             f"{_per_generation(lineage)}")
    return result, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", type=Path, help="summarise this existing run directory instead of evolving")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("extra", nargs="*", help="options after -- go to host-trainer evolve")
    args = parser.parse_args()
    run, wall = (args.reuse, None) if args.reuse else evolve_into(OUT / "detect", ["--task", "detect", *args.extra])
    result, table = summarize(run, wall, args.rounds)
    save("detect", result, table)


if __name__ == "__main__":
    main()
