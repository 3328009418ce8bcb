"""Edge daemon benchmarks, all in one run against a real Mosquitto on a free loopback port.

1. Idle cost: RSS and CPU of `edge-evolver serve` (daemon + measuring child) while idle.
2. Round-trip overhead: publish -> result through the daemon, against `edge-evolver bench` (a fresh
   process, no MQTT) on the same model and settings, interleaved. Overhead = wall time minus what
   both must spend anyway (warm-up + timed window + engine build, as each reports).
3. Our ONNX Runtime benchmark against a plain timing loop on the same model, same session settings,
   interleaved in one process: fps should agree within 5%. (ONNX Runtime's own onnxruntime_perf_test
   is not shipped in the pip wheel, so the plain loop is the reference.)

    python bench/daemon.py [--idle-seconds 30] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from common import ROOT, markdown, save  # also puts the repository on sys.path

from edge_evolver.job import encode_job
from edge_evolver.measure.benchmark import BenchSettings, run_benchmark
from edge_evolver.measure.inputs import synthesize_inputs
from edge_evolver.measure.pipeline import measure_model
from edge_evolver.protocol import Topics
from tests.mqtt_support import Broker, Collector, Daemon, children, result_for, status_is

SETTINGS = {"min_iterations": 200, "min_seconds": 1.0, "warmup_s": 0.2}
TOPICS = Topics()


def cnn(widths: list[int], seed: int = 0) -> bytes:
    """A plain conv net on 1x32x32 (conv3x3+relu per width, maxpool between, GAP, fc 10), fp32."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(seed)
    nodes, inits, prev, name = [], [], 1, "x"
    for i, width in enumerate(widths):
        w = (rng.standard_normal((width, prev, 3, 3)) / np.sqrt(prev * 9)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [name, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        name, prev = f"r{i}", width
        if i % 2 == 1:
            nodes.append(helper.make_node("MaxPool", [name], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            name = f"p{i}"
    inits.append(numpy_helper.from_array((rng.standard_normal((prev, 10)) / np.sqrt(prev)).astype(np.float32), "fc"))
    nodes += [helper.make_node("GlobalAveragePool", [name], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("MatMul", ["f", "fc"], ["y"])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model.SerializeToString()


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def idle_cost(broker: Broker, workdir: str, seconds: float) -> dict:
    daemon = Daemon(broker.url, os.path.join(workdir, "idle"), "idle1").start()
    watcher = Collector(broker.url, [TOPICS.status("idle1")])
    watcher.wait_for(status_is("online"), timeout=60)
    watcher.close()
    time.sleep(3.0)  # let start-up work (imports, the child's first import of onnxruntime) finish
    pids = [daemon.proc.pid] + children(daemon.proc.pid)
    before, start = sum(_cpu_ticks(p) for p in pids), time.monotonic()
    time.sleep(seconds)
    used = (sum(_cpu_ticks(p) for p in pids) - before) / os.sysconf("SC_CLK_TCK")
    rss = daemon.rss_kb()
    daemon.terminate()
    return {"idle_seconds": round(time.monotonic() - start, 1), "cpu_percent": 100.0 * used / seconds,
            "rss_mib": rss / 1024.0, "processes": len(pids)}


def _cli_bench(model_path: str) -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "edge_evolver", "bench", model_path, "--json", "--power", "none",
                          "--min-iterations", str(SETTINGS["min_iterations"]), "--min-seconds",
                          str(SETTINGS["min_seconds"]), "--warmup-s", str(SETTINGS["warmup_s"])],
                         capture_output=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout)
    result["wall_s"] = time.perf_counter() - started
    return result


def _round_trip(watcher: Collector, job_id: str, model: bytes) -> dict:
    mark = watcher.mark()
    started = time.perf_counter()
    watcher.publish(TOPICS.jobs("rt1"), encode_job(job_id, model, SETTINGS))
    result = watcher.wait_for(result_for(job_id), timeout=120, after=mark)["data"]
    result["wall_s"] = time.perf_counter() - started
    return result


def _overhead(result: dict) -> float:
    return result["wall_s"] - result["warmup_seconds"] - result["seconds"] - result["engine_build_s"]


def round_trip(broker: Broker, workdir: str, model: bytes, rounds: int) -> dict:
    path = os.path.join(workdir, "small.onnx")
    with open(path, "wb") as out:
        out.write(model)
    daemon = Daemon(broker.url, os.path.join(workdir, "rt"), "rt1").start()
    watcher = Collector(broker.url, ["edge-evolver/devices/rt1/+"])
    watcher.wait_for(status_is("online"), timeout=60)
    cli, mqtt = [], []
    try:
        for i in range(rounds):  # interleaved, so machine drift hits both alike
            cli.append(_cli_bench(path))
            mqtt.append(_round_trip(watcher, f"rt-{i}", model))
    finally:
        daemon.terminate()
        watcher.close()
    med = statistics.median
    return {
        "rounds": rounds,
        "cli_wall_s": med(r["wall_s"] for r in cli), "mqtt_wall_s": med(r["wall_s"] for r in mqtt),
        "cli_overhead_s": med(_overhead(r) for r in cli), "mqtt_overhead_s": med(_overhead(r) for r in mqtt),
        "cli_fps": med(r["fps"] for r in cli), "mqtt_fps": med(r["fps"] for r in mqtt),
        "mqtt_cache_hits": sum(bool(r["cache_hit"]) for r in mqtt),
        "mqtt_queue_s": med(r["queue_s"] for r in mqtt),
        "first_mqtt_overhead_s": _overhead(mqtt[0]),
    }


def ort_agreement(name: str, model: bytes, rounds: int) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feeds = synthesize_inputs([_spec(session.get_inputs()[0])], 1, seed=0)
    ours, plain, ours_isolated = [], [], []
    settings = BenchSettings(min_iterations=1000, min_seconds=2.0, warmup_s=0.2)
    for _ in range(rounds):
        # Same session, same feeds: only the measuring loop differs.
        ours.append(run_benchmark(lambda: session.run(None, feeds), settings).fps)
        plain.append(_plain_loop(session, feeds, settings))
        # And the full path the daemon takes (its own session, built by our backend).
        ours_isolated.append(measure_model(model, "onnxruntime", settings, {"threads": 1}).to_dict()["fps"])
    med = statistics.median
    return {"model": name, "rounds": rounds, "ours_fps": med(ours), "plain_fps": med(plain),
            "measure_model_fps": med(ours_isolated), "ratio": med(ours) / med(plain),
            "measure_model_ratio": med(ours_isolated) / med(plain)}


def _spec(node_arg):
    from edge_evolver.backends.tensors import TensorSpec

    return TensorSpec(node_arg.name, tuple(node_arg.shape), "float32")


def _plain_loop(session, feeds, settings: BenchSettings) -> float:
    """The simplest honest loop: warm up, then N runs between two clock reads."""
    end = time.perf_counter() + settings.warmup_s
    while time.perf_counter() < end:
        session.run(None, feeds)
    count, start = 0, time.perf_counter()
    while True:
        session.run(None, feeds)
        count += 1
        if count >= settings.min_iterations and time.perf_counter() - start >= settings.min_seconds:
            return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    small, medium = cnn([16, 16, 32, 32]), cnn([32, 32, 64, 64, 128, 128])
    with tempfile.TemporaryDirectory() as workdir:
        broker = Broker(os.path.join(workdir, "broker")).start()
        try:
            idle = idle_cost(broker, workdir, args.idle_seconds)
            trip = round_trip(broker, workdir, small, args.rounds)
        finally:
            broker.stop()
    agreement = [ort_agreement("small cnn", small, args.rounds), ort_agreement("medium cnn", medium, args.rounds)]
    tables = [
        "### Daemon idle\n" + markdown([idle], [("idle s", "idle_seconds", ".0f"), ("CPU %", "cpu_percent", ".2f"),
                                                ("RSS MiB (daemon + child)", "rss_mib", ".1f"),
                                                ("processes", "processes", "d")]),
        "### Round trip vs `edge-evolver bench` (small CNN, medians)\n" + markdown([trip], [
            ("rounds", "rounds", "d"), ("bench wall s", "cli_wall_s", ".3f"), ("MQTT wall s", "mqtt_wall_s", ".3f"),
            ("bench overhead s", "cli_overhead_s", ".3f"), ("MQTT overhead s", "mqtt_overhead_s", ".3f"),
            ("first MQTT overhead s", "first_mqtt_overhead_s", ".3f"), ("bench fps", "cli_fps", ".0f"),
            ("MQTT fps", "mqtt_fps", ".0f"), ("cache hits", "mqtt_cache_hits", "d")]),
        "### Our benchmark loop vs a plain timing loop (ONNX Runtime, 1 thread, medians)\n" + markdown(agreement, [
            ("model", "model", "s"), ("ours fps", "ours_fps", ".0f"), ("plain fps", "plain_fps", ".0f"),
            ("ratio", "ratio", ".3f"), ("measure_model fps", "measure_model_fps", ".0f"),
            ("ratio", "measure_model_ratio", ".3f")]),
    ]
    save("daemon", {"idle": idle, "round_trip": trip, "agreement": agreement, "settings": SETTINGS},
         "\n\n".join(tables))


if __name__ == "__main__":
    main()
