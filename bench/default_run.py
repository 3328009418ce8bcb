"""Benchmark 1: the default run. 13 generations of vgg-small on glyphs, fp16, on this machine.

Runs the real CLI (`host-trainer evolve`, its defaults unless you pass options after `--`), times
it, then measures generation 0 and the last generation again *in this one process*, interleaved,
with ONNX Runtime on 1 intra-op thread. Reports wall time, synapse, parameter and MAC reduction,
the measured batch-1 speed-up, and the accuracy change.

    python bench/default_run.py                      # the full default run
    python bench/default_run.py --reuse RUN_DIR      # only re-measure an existing run
    python bench/default_run.py -- --generations 3   # pass options to host-trainer evolve
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import OUT, evolve_into, first_and_last, markdown, save

# Twice the offspring training of `make evolve`'s default (4 and 0.75 epochs); the rest are the CLI's defaults.
BUDGET = ["--gen0-epochs", "6", "--epochs", "1.5"]
GOALS = "goal: >=10x fewer synapses, >=4x measured speed-up, accuracy within 2 points, < 15 min"


def summarize(run: Path, wall: float | None, rounds: int) -> tuple[dict, str]:
    rows, lineage, lat = first_and_last(run, rounds)
    first, last = lineage[0], lineage[max(lineage)]
    result = {
        "run_dir": str(run), "wall_s": wall, "generations": last.generation,
        "synapses": [first.synapses, last.synapses], "params": [first.params, last.params],
        "macs": [first.macs, last.macs], "accuracy": [first.accuracy, last.accuracy],
        "latency_p50_ms": [lat["gen0"]["p50_ms"], lat["last"]["p50_ms"]],
        "speedup": lat["gen0"]["p50_ms"] / lat["last"]["p50_ms"], "threads": 1,
        "backend": f"onnxruntime {lat['gen0']['backend_version']} (CPU)",
        "rejected": sum(not r.accepted for r in rows),
    }
    table = markdown([{
        "wall": f"{wall / 60:.1f} min" if wall else "(reused)", "gens": result["generations"],
        "syn": f"{first.synapses / last.synapses:.1f}× ({first.synapses:,} → {last.synapses:,})",
        "par": f"{first.params / last.params:.1f}× ({first.params:,} → {last.params:,})",
        "mac": f"{first.macs / last.macs:.1f}× ({first.macs / 1e6:.2f} M → {last.macs / 1e6:.2f} M)",
        "lat": f"{result['latency_p50_ms'][0] * 1000:.0f} → {result['latency_p50_ms'][1] * 1000:.0f} µs",
        "spd": f"{result['speedup']:.2f}×",
        "acc": f"{first.accuracy * 100:.2f} → {last.accuracy * 100:.2f}% "
               f"({(last.accuracy - first.accuracy) * 100:+.2f})",
    }], [("wall time", "wall", "s"), ("generations", "gens", "d"), ("synapses", "syn", "s"),
         ("parameters", "par", "s"), ("MACs", "mac", "s"), ("batch-1 p50 (1 thread)", "lat", "s"),
         ("measured speed-up", "spd", "s"), ("test accuracy", "acc", "s")])
    table += f"\n\n{result['backend']}, 1 intra-op thread, {rounds} interleaved rounds; {GOALS}"
    return result, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", type=Path, help="measure this existing run directory instead of evolving")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("extra", nargs="*", help="options after -- go to host-trainer evolve")
    args = parser.parse_args()
    run, wall = (args.reuse, None) if args.reuse else evolve_into(OUT / "default_run", [*BUDGET, *args.extra])
    result, table = summarize(run, wall, args.rounds)
    save("default_run", result, table)


if __name__ == "__main__":
    main()
