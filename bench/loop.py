"""Closed-loop benchmarks, in one run, on the real CLI.

1. Overhead of measuring over MQTT: the same tiny run (mlp on digits, identical seeds) measured in-process
   (`--no-mqtt`, the foundation's benchmark) and through the embedded broker + local daemon. Per generation,
   `measure_seconds` is publish -> result (MQTT) or the in-process benchmark; the difference is the loop's
   overhead (framing, broker, spool, engine build in the daemon, result).
2. Parallel measurement: a generation with `--offspring 4` measured by 1 daemon and by 4 daemons of one
   shared-subscription group (`--any-device`); `measure_batch_seconds` is the wall time to measure all 4.
   On this 2-core machine, 4 daemons share 2 cores, so the speed-up is bounded by the cores, not the loop.

    python bench/loop.py [--generations 3] [--bench-seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, markdown, save  # also puts the repository on sys.path

from host_trainer.record import GenerationRecord
from host_trainer.rundir import RunDir
from tests.mqtt_support import Broker, Collector, Daemon, enrol

TINY = ["--model", "mlp", "--dataset", "digits", "--epochs", "1", "--gen0-epochs", "3", "--env-factor", "0.7",
        "--max-accuracy-drop", "100"]


def evolve(args: list[str], folder: Path) -> list[GenerationRecord]:
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "host_trainer", "evolve", *TINY, *args, "--run-dir", str(folder)]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    (run,) = [p for p in folder.iterdir() if p.is_dir()]
    return RunDir(run).records()


def overhead(workdir: Path, generations: int, bench: list[str]) -> dict:
    local = evolve([*bench, "--generations", str(generations), "--no-mqtt"], workdir / "local")
    mqtt = evolve([*bench, "--generations", str(generations)], workdir / "mqtt")
    med = statistics.median
    pairs = [(a.measure_seconds, b.measure_seconds) for a, b in zip(local, mqtt) if a.accepted]
    return {"generations": len(pairs), "local_measure_s": med(a for a, _ in pairs),
            "mqtt_measure_s": med(b for _, b in pairs), "overhead_s": med(b - a for a, b in pairs),
            "ratio": med(b for _, b in pairs) / med(a for a, _ in pairs),
            "local_fps": med(r.fps for r in local if r.accepted),
            "mqtt_fps": med(r.fps for r in mqtt if r.accepted)}


def parallel(workdir: Path, daemons: int, bench: list[str]) -> float:
    broker = Broker(str(workdir / f"broker-{daemons}")).start()
    names = [f"p{daemons}-{i}" for i in range(daemons)]
    keys = str(workdir / f"host-keys-{daemons}")  # a signed fleet, as in the field
    procs = [Daemon(broker.url, str(workdir / f"state-{n}"), n, "--group", "bench",
                    *enrol(keys, str(workdir / f"state-{n}"), n)).start() for n in names]
    watcher = Collector(broker.url, ["edge-evolver/devices/+/status"])
    try:
        for n in names:
            watcher.wait_for(lambda m, n=n: m["topic"].endswith(f"/{n}/status") and m["data"]["state"] == "online", 60)
        rows = evolve([*bench, "--generations", "2", "--offspring", "4", "--any-device", "--broker", broker.url,
                       "--keys-dir", keys],
                      workdir / f"par-{daemons}")
        batches = {r.generation: r.measure_batch_seconds for r in rows if r.generation > 0}
        return statistics.median(batches.values())
    finally:
        watcher.close()
        for p in procs:
            p.terminate()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--bench-seconds", type=float, default=1.0)
    args = parser.parse_args()
    bench = ["--bench-min-seconds", str(args.bench_seconds), "--bench-min-iterations", "200"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        loop = overhead(work, args.generations, bench)
        one, four = parallel(work, 1, bench), parallel(work, 4, bench)
    par = {"offspring": 4, "one_daemon_s": one, "four_daemons_s": four, "speedup": one / four,
           "cores": os.cpu_count()}
    table = ("### Measuring over MQTT vs in-process (medians per generation)\n" + markdown([loop], [
        ("generations", "generations", "d"), ("in-process s", "local_measure_s", ".3f"),
        ("MQTT s", "mqtt_measure_s", ".3f"), ("overhead s", "overhead_s", ".3f"), ("ratio", "ratio", ".2f"),
        ("in-process fps", "local_fps", ".0f"), ("MQTT fps", "mqtt_fps", ".0f")])
        + "\n\n### Measuring 4 offspring: 1 daemon vs 4 daemons in one group (median over 2 generations)\n"
        + markdown([par], [("offspring", "offspring", "d"), ("1 daemon s", "one_daemon_s", ".2f"),
                           ("4 daemons s", "four_daemons_s", ".2f"), ("speed-up", "speedup", ".2f"),
                           ("CPU cores", "cores", "d")]))
    save("loop", {"overhead": loop, "parallel": par, "bench": bench}, table)


if __name__ == "__main__":
    main()
