"""Shared by the bench scripts: same-process, interleaved latency measurement and table printing."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

from edge_evolver.measure.benchmark import BenchSettings  # noqa: E402
from edge_evolver.measure.pipeline import measure_model  # noqa: E402


def evolve_into(folder: Path, args: list[str]) -> tuple[Path, float]:
    """Run the real CLI (`host-trainer evolve --run-dir folder ...`); returns the new run and its wall time."""
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.iterdir())
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "host_trainer", "evolve", "--run-dir", str(folder), *args]
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - started
    (run,) = set(folder.iterdir()) - before
    return run, wall


def interleaved_latency(models: dict[str, bytes], rounds: int = 5, threads: int = 1,
                        min_seconds: float = 1.0) -> dict[str, dict]:
    """Measure every model `rounds` times, alternating A B C A B C ..., so drift of the machine
    (thermal, other load) hits all of them alike. Reports the median over rounds of each round's p50."""
    settings = BenchSettings(batch=1, min_iterations=200, min_seconds=min_seconds)
    samples: dict[str, list[dict]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, data in models.items():
            result = measure_model(data, backend="onnxruntime", settings=settings, options={"threads": threads})
            if not result.ok:
                raise RuntimeError(f"{name}: {result.code}: {result.message}")
            samples[name].append(result.to_dict())
    return {name: {"p50_ms": statistics.median(r["latency_ms_p50"] for r in rs),
                   "fps": statistics.median(r["fps"] for r in rs),
                   "p99_ms": statistics.median(r["latency_ms_p99"] for r in rs),
                   "threads": threads, "rounds": rounds, "backend": rs[0]["backend"],
                   "backend_version": rs[0]["backend_version"]}
            for name, rs in samples.items()}


def first_and_last(run: Path, rounds: int) -> tuple[list, dict[int, Any], dict[str, dict]]:
    """A run's records, its lineage {generation: accepted record}, and generation 0 ("gen0") and the last
    generation ("last") measured again here, interleaved, with 1 thread."""
    from host_trainer.record import lineage as lineage_of
    from host_trainer.rundir import RunDir

    records = RunDir(run).records()
    lineage = {r.generation: r for r in lineage_of(records)}
    first, last = lineage[0], lineage[max(lineage)]
    models = {"gen0": (run / first.onnx_path).read_bytes(), "last": (run / last.onnx_path).read_bytes()}
    return records, lineage, interleaved_latency(models, rounds=rounds, threads=1)


def markdown(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """columns: (header, key, format spec)."""
    lines = ["| " + " | ".join(h for h, _k, _f in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = []
        for _h, key, spec in columns:
            value = row.get(key)
            cells.append("–" if value is None else format(value, spec))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save(name: str, payload: dict, table: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    (OUT / f"{name}.md").write_text(table + "\n")
    print(table)
    print(f"\nwritten: {OUT / (name + '.json')}, {OUT / (name + '.md')}")


def interleaved_rounds(models: dict[str, bytes], rounds: int = 5, threads: int = 1,
                       min_seconds: float = 1.0, burst_s: float = 0.02) -> dict[str, list[float]]:
    """Every round's p50 in ms per model (batch 1, ONNX Runtime, `threads` intra-op threads); the caller takes the
    median over rounds (bench/pareto.py).

    Finely interleaved, because this VM drifts by +-25 % over minutes: every model's session is built once and kept
    open, and each round runs `burst_s` bursts of every model in turn (the order reversed on every other pass) until
    each has had `min_seconds`. A model's samples in a round are thus spread over the whole round, so a slow minute
    hits every model alike; timing one model per second (a session per model per round, as before) let the same
    file read 713 us in one run and 948 us in the next, and moved the generations bench/pareto.py picked."""
    engines, feeds = _open_sessions(models, threads)
    out: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for _ in range(rounds):
        samples: dict[str, list[float]] = {name: [] for name in names}
        spent = dict.fromkeys(names, 0.0)
        flip = False
        while min(spent.values()) < min_seconds:
            for name in reversed(names) if flip else names:
                spent[name] += _burst(engines[name], feeds[name], burst_s, samples[name])
            flip = not flip
        for name in names:
            out[name].append(statistics.median(samples[name]))
    for engine in engines.values():
        engine.close()
    return out


def _open_sessions(models: dict[str, bytes], threads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One ONNX Runtime engine per model (the daemon's backend and session settings), its seeded random feeds, and
    a 0.2 s warm-up each."""
    from edge_evolver.backends.onnxruntime_backend import OnnxRuntimeBackend
    from edge_evolver.measure.inputs import synthesize_inputs

    backend = OnnxRuntimeBackend()
    engines, feeds = {}, {}
    for name, data in models.items():
        engines[name], _plan = backend.build(data, {"threads": threads})
        feeds[name] = synthesize_inputs(engines[name].inputs, 1, seed=0)
        _burst(engines[name], feeds[name], 0.2, [])
    return engines, feeds


def _burst(engine: Any, feeds: Any, seconds: float, into: list[float]) -> float:
    """Run `engine` back to back for at least `seconds` (and at least once); appends each run's ms to `into` and
    returns the seconds spent."""
    began = now = time.perf_counter()
    while True:
        engine.infer(feeds)
        then, now = now, time.perf_counter()
        into.append((now - then) * 1000.0)
        if now - began >= seconds:
            return now - began
