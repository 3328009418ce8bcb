"""Benchmark 8: `make evolve` with its default allocation against the same command with --allocation magnitude.

Runs the real CLI twice, exactly as `make evolve` does (`host-trainer evolve` on its defaults: generation 0 trained
until it plateaus, the embedded Mosquitto and a local daemon measuring every offspring over MQTT), once as it is
(device-aware allocation) and once with `--allocation magnitude`. Both start at the same time, so whatever else
the machine does hits both alike. Then generation 0 and each run's final generation are timed again *in this one
process*, interleaved, ONNX Runtime on 1 intra-op thread, batch 1, --rounds rounds (the median of the per-round
p50s).

Goal (issue: the default must not lose to its own ablation): the default run ends faster than the magnitude run,
at equal or better test accuracy (within 0.3 points, the tolerance of bench/pareto_rules.py).

`--against NAME=OPTIONS` replaces the magnitude arm by other arms (repeatable): the same A/B for any option a
user might ask "should this be the default?" about, e.g. `--distill 0.5` or `--offspring 2`. Every arm runs at
the same time; the wall time of each is printed, since an option that wins by spending twice the time has not
paid for itself.

    python bench/evolve_ab.py                                  # both runs (~10-12 min each, side by side)
    python bench/evolve_ab.py --reuse RUN_DEFAULT RUN_MAGNITUDE # only time two existing runs again
    python bench/evolve_ab.py -- --seed 1                      # options after -- go to every run
    python bench/evolve_ab.py --against distill="--distill 0.5" --against k2="--offspring 2" --name options_ab \
        -- --weights gen0.pt --gen0-epochs 0 --no-mqtt         # other arms, from one generation 0
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import OUT, ROOT, interleaved_latency, markdown, save

TOLERANCE = 0.3  # accuracy points that count as equal
DEFAULT = "default"
ABLATION = {"magnitude": ["--allocation", "magnitude"]}


def parse_arm(text: str) -> tuple[str, list[str]]:
    """`NAME=OPTIONS` → (NAME, the options split as a shell would)."""
    name, sep, options = text.partition("=")
    if not sep or not name.strip() or name.strip() == DEFAULT or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAME=OPTIONS with a NAME other than {DEFAULT!r}, got {text!r}")
    return name.strip(), shlex.split(options)


def evolve_all(arms: dict[str, list[str]], extra: list[str], name: str) -> dict[str, tuple[Path, float]]:
    """Every arm side by side; {arm: (run directory, wall seconds)}."""
    started, procs, before = time.perf_counter(), {}, {}
    for arm, options in arms.items():
        folder = OUT / name / arm
        folder.mkdir(parents=True, exist_ok=True)
        before[arm] = set(folder.iterdir())
        cmd = [sys.executable, "-m", "host_trainer", "evolve", "--run-dir", str(folder), *options, *extra]
        procs[arm] = subprocess.Popen(cmd, cwd=ROOT)
    runs = {}
    for arm, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"error: the {arm} run exited with status {proc.returncode}")
        (run,) = set((OUT / name / arm).iterdir()) - before[arm]
        runs[arm] = (run, time.perf_counter() - started)
    return runs


def final_of(run: Path):
    from host_trainer.record import lineage as lineage_of
    from host_trainer.rundir import RunDir

    records = RunDir(run).records()
    lineage = lineage_of(records)
    return records, lineage[0], lineage[-1]


def summarize(runs: dict[str, tuple[Path, float | None]], rounds: int,
              arms: dict[str, list[str]]) -> tuple[dict, str]:
    read = {arm: final_of(run) for arm, (run, _w) in runs.items()}
    models = {"gen0": (runs[DEFAULT][0] / read[DEFAULT][1].onnx_path).read_bytes()}
    models.update({arm: (runs[arm][0] / last.onnx_path).read_bytes() for arm, (_r, _f, last) in read.items()})
    lat = interleaved_latency(models, rounds=rounds, threads=1)
    rows, result = [], {"rounds": rounds, "gen0_p50_us": lat["gen0"]["p50_ms"] * 1000, "arms": {}}
    for arm, (records, first, last) in read.items():
        p50 = lat[arm]["p50_ms"] * 1000
        arm_result = {"run_dir": str(runs[arm][0]), "wall_s": runs[arm][1], "generations": last.generation,
                      "rejected": sum(not r.accepted for r in records), "macs": [first.macs, last.macs],
                      "accuracy": [first.accuracy, last.accuracy], "p50_us": p50,
                      "speedup": result["gen0_p50_us"] / p50, "daemon_fps": [first.fps, last.fps]}
        result["arms"][arm] = arm_result
        rows.append({"arm": arm, "wall": "(reused)" if runs[arm][1] is None else f"{runs[arm][1] / 60:.1f} min",
                     "gens": last.generation, "rej": arm_result["rejected"],
                     "mac": f"{first.macs / last.macs:.1f}× ({first.macs / 1e6:.2f} → {last.macs / 1e6:.2f} M)",
                     "lat": f"{result['gen0_p50_us']:.0f} → {p50:.0f} µs", "spd": f"{arm_result['speedup']:.2f}×",
                     "acc": f"{first.accuracy * 100:.2f} → {last.accuracy * 100:.2f}%"})
    result["goal"] = "\n".join(goal(result["arms"], arm, options) for arm, options in arms.items())
    table = markdown(rows, [("arm", "arm", "s"), ("wall time", "wall", "s"), ("last generation", "gens", "d"),
                            ("rejected", "rej", "d"), ("MACs", "mac", "s"), ("batch-1 p50 (1 thread)", "lat", "s"),
                            ("measured speed-up", "spd", "s"), ("test accuracy", "acc", "s")])
    backend = lat["gen0"]["backend_version"]
    return result, f"{table}\n\nonnxruntime {backend} (CPU), 1 intra-op thread, {rounds} interleaved rounds\n\n" \
                   f"{result['goal']}"


def goal(arms: dict, other: str, options: list[str]) -> str:
    """One line: does the default beat arm `other` (faster, at equal or better accuracy), and at what time."""
    d, m = arms[DEFAULT], arms[other]
    gain = (d["accuracy"][1] - m["accuracy"][1]) * 100
    faster = m["p50_us"] / d["p50_us"]
    met = faster > 1.0 and gain >= -TOLERANCE
    wall = (f", {m['wall_s'] / d['wall_s']:.2f}x the default's wall time"
            if d.get("wall_s") and m.get("wall_s") else "")
    return (f"evolve_ab: the default {'beats' if met else 'does not beat'} {' '.join(options)}: "
            f"{faster:.2f}x its speed, {gain:+.2f} accuracy points{wall}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", type=Path, nargs="+", metavar="RUN",
                        help="time existing runs again instead of evolving: the default's, then one per arm")
    parser.add_argument("--against", type=parse_arm, action="append", metavar="NAME=OPTIONS",
                        help="an arm to run against the default [magnitude=\"--allocation magnitude\"]")
    parser.add_argument("--name", default="evolve_ab", help="bench/out/NAME.{json,md} and bench/out/NAME/ [evolve_ab]")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("extra", nargs="*", help="options after -- go to every run")
    args = parser.parse_args()
    arms = dict(args.against) if args.against else dict(ABLATION)
    if args.reuse:
        if len(args.reuse) != len(arms) + 1:
            parser.error(f"--reuse takes {len(arms) + 1} run directories: the default's, then {', '.join(arms)}")
        runs = {arm: (run, None) for arm, run in zip([DEFAULT, *arms], args.reuse)}
    else:
        runs = evolve_all({DEFAULT: [], **arms}, args.extra, args.name)
    result, table = summarize(runs, args.rounds, arms)
    save(args.name, result, table)


if __name__ == "__main__":
    main()
