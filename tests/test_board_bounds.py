"""A board that cannot be wedged or made to overspend (issue #20).

Each test stands for one way a job was found to overspend the board: threads beyond its cores, an ONNX Runtime
profile trace of tens of MiB read whole, a million raw samples in a result, an optimised model far over the
engine cache's limit written to disk before it was refused, a memory limit of all the RAM with the daemon's own
OOM score, and a child handed a path into the state directory. Python 3.6 compatible; the runtime tests need
onnx and onnxruntime.
"""

import io
import json
import os

import numpy as np
import pytest

from edge_evolver.backends import _ort_profile
from edge_evolver.backends import onnxruntime_backend as ort_backend
from edge_evolver.backends.profiling import ProfileSettings, RawLayer, RawProfile
from edge_evolver.daemon import runner as runner_module
from edge_evolver.daemon.config import build_config
from edge_evolver.daemon.containment import MemoryLimit, available_memory_bytes, raise_oom_score
from edge_evolver.daemon.runner import RunnerClient, error_result
from edge_evolver.errors import MAX_MESSAGE, EdgeError, ErrorCode
from edge_evolver.job import decode_job, encode_job
from edge_evolver.measure import engine_cache, layer_map, profile
from edge_evolver.measure.benchmark import MAX_RESULT_SAMPLES, BenchResult
from edge_evolver.measure.engine_cache import EngineCache
from edge_evolver.measure.pipeline import MeasureResult
from edge_evolver.protocol import FrameError

MB = 1024 * 1024
CORES = ort_backend.usable_cores()
QUICK = {"min_iterations": 5, "min_seconds": 0.0, "warmup_s": 0.0}
FAST_PASS = ProfileSettings(warmup_runs=1, min_runs=5, min_seconds=0.0)


# --------------------------------------------------------------------------------------------------
# 1. threads: at most the board's usable cores
# --------------------------------------------------------------------------------------------------
def test_usable_cores_follow_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert ort_backend.usable_cores() == 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert ort_backend.usable_cores() == max(1, os.cpu_count() or 1)


def test_a_job_asking_more_threads_than_cores_is_refused_at_intake():
    ok = decode_job(encode_job("t-ok", b"model", options={"threads": CORES}), 1 << 20)
    assert ok.options["threads"] == CORES
    with pytest.raises(FrameError) as info:
        decode_job(encode_job("t-many", b"model", options={"threads": CORES + 1}), 1 << 20)
    assert (info.value.code, info.value.job_id) == (ErrorCode.BAD_INPUT, "t-many")
    assert f"from 1 to {CORES}" in info.value.message and "\n" not in info.value.message
    for bad in (0, -1, True, 2.0, "2", 64):
        with pytest.raises(FrameError) as info:
            decode_job(encode_job("t-bad", b"model", options={"threads": bad}), 1 << 20)
        assert info.value.code == ErrorCode.BAD_INPUT


def test_the_backend_refuses_threads_above_the_cores():
    with pytest.raises(EdgeError) as info:
        ort_backend._parse_options({"threads": CORES + 1})
    assert info.value.code == ErrorCode.BAD_INPUT and "usable cores" in info.value.message
    assert ort_backend._parse_options({"threads": CORES})[0] == CORES


def test_the_daemon_refuses_a_threads_setting_above_the_cores():
    assert build_config(None, {"threads": CORES, "device_id": "b1"}).threads == CORES
    with pytest.raises(EdgeError) as info:
        build_config(None, {"threads": CORES + 1, "device_id": "b1"})
    assert info.value.code == ErrorCode.BAD_INPUT
    assert f"threads {CORES + 1} is more than this board's {CORES} usable cores" in info.value.message


# --------------------------------------------------------------------------------------------------
# 2. the per-layer profile: entries, nodes and names bounded; the mapping's scan bounded
# --------------------------------------------------------------------------------------------------
def _chain(count, name, op="Relu"):
    """``count`` nodes in a chain, the i-th named ``name(i)``."""
    onnx = pytest.importorskip("onnx")
    helper, tp = onnx.helper, onnx.TensorProto
    nodes, previous = [], "x"
    for i in range(count):
        nodes.append(helper.make_node(op, [previous], [name(i) + "_out"], name=name(i)))
        previous = name(i) + "_out"
    nodes.append(helper.make_node("Identity", [previous], ["y"], name="last"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", tp.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", tp.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model.SerializeToString()


def test_a_profile_keeps_the_slowest_entries_and_sums_the_rest():
    model = _chain(100, lambda i: f"n{i}")
    names = tuple(f"n{i}" for i in range(100))
    # 100 layers, layer i took i ms; the first names every node of the model and has a long name.
    layers = [RawLayer("L" * 5000, "Relu", 0.5, names)] + [RawLayer(f"n{i}", "Relu", float(i)) for i in range(1, 100)]
    entries, truncated = profile.bounded_profile(RawProfile(layers, 1), model)
    assert truncated and len(entries) == profile.MAX_ENTRIES == 64
    kept, other = entries[:-1], entries[-1]
    assert [e.name for e in kept] == [f"n{i}" for i in range(37, 100)]  # the 63 slowest, in execution order
    assert other.name == "(other: 37 entries)" and other.nodes == [] and other.ms == 0.5 + sum(range(1, 37))
    assert abs(sum(e.share for e in entries) - 1.0) < 1e-9
    small, cut = profile.bounded_profile(RawProfile(layers[:1], 1), model)
    assert cut and len(small[0].name) == profile.MAX_TEXT == 256 and len(small[0].nodes) == profile.MAX_NODES == 32
    plain, cut = profile.bounded_profile(RawProfile(layers[1:10], 1), model)
    assert not cut and [e.nodes for e in plain] == [[f"n{i}"] for i in range(1, 10)]


def test_the_node_search_reads_a_bounded_part_of_a_name():
    model = _chain(3, lambda i: ("abc/" * 100) + f"n{i}" if i == 2 else f"n{i}")
    from edge_evolver.onnxgraph import read_nodes

    index = layer_map.GraphIndex(read_nodes(model))
    assert index.longest <= layer_map.MAX_MATCH  # a 406-character node name is not searched for in layer names
    found = [index.label(i) for i, _ in layer_map.named_nodes("x/n0/" + "-" * 5000 + "/n1", index)]
    assert found == ["n0"]  # n1 lies beyond the first MAX_SCAN characters
    recorded = layer_map.assign_nodes([RawLayer("anything", "Relu", 1.0, (("abc/" * 100) + "n2",))],
                                      read_nodes(model))
    assert recorded == [[("abc/" * 100) + "n2"]]  # a name the runtime recorded still counts, whatever its length


def test_the_trace_is_read_one_event_at_a_time(monkeypatch):
    events = [{"cat": "Session", "name": "model_run", "ts": 1, "dur": 9},
              {"cat": "Node", "name": "a_kernel_time", "ts": 2, "dur": 4, "args": {"op_name": "Relu", "x": [1] * 50}},
              {"cat": "Node", "name": "a_fence_before", "ts": 2, "dur": 0}, [1, 2], "text"]
    text = "[\n" + ",\n".join(json.dumps(e) for e in events) + "\n]\n"
    monkeypatch.setattr(_ort_profile, "_READ_CHUNK", 7)  # events cut anywhere between two reads
    assert list(_ort_profile._events(io.StringIO(text))) == events
    kept = [_ort_profile._kept(e) for e in events if _ort_profile._wanted(e)]
    assert kept[1] == {"cat": "Node", "name": "a_kernel_time", "ts": 2, "dur": 4, "args": {"op_name": "Relu"}}
    with pytest.raises(ValueError):
        list(_ort_profile._events(io.StringIO(text[:-10])))  # a trace cut short is not a trace


def test_a_trace_at_its_bound_is_not_read(tmp_path, monkeypatch):
    path = tmp_path / "profile.json"
    with open(str(path), "wb") as out:
        out.truncate(_ort_profile.MAX_TRACE_BYTES)  # sparse: the size without the bytes

    def never(*args, **kwargs):
        raise AssertionError("the trace was opened")

    monkeypatch.setattr(_ort_profile, "open", never, raising=False)
    with pytest.raises(EdgeError) as info:
        _ort_profile._read_trace(str(path), str(tmp_path))
    assert info.value.code == ErrorCode.OVERSIZE and "16 MiB" in info.value.message


def test_the_run_budget_follows_the_names_and_refuses_what_cannot_fit():
    short = _ort_profile.run_bytes(_chain(10, lambda i: f"n{i}"))
    long = _ort_profile.run_bytes(_chain(10, lambda i: "n" * 4000 + str(i)))
    assert 0 < short < long
    settings = ProfileSettings(warmup_runs=2, min_runs=20, max_runs=1000)
    assert _ort_profile.within_trace_budget(settings, short) == settings
    tight = _ort_profile.within_trace_budget(settings, _ort_profile.MAX_TRACE_BYTES // 12)
    assert (tight.max_runs, tight.min_runs, tight.warmup_runs) == (10, 10, 2)
    with pytest.raises(EdgeError) as info:
        _ort_profile.within_trace_budget(settings, _ort_profile.MAX_TRACE_BYTES // 2)
    assert info.value.code == ErrorCode.OVERSIZE


# ----- with ONNX Runtime
def _measure(model, **request):
    pytest.importorskip("onnxruntime")
    from edge_evolver.measure.benchmark import BenchSettings
    from edge_evolver.measure.pipeline import MeasureRequest, measure_model

    settings = BenchSettings(min_iterations=5, min_seconds=0.0, warmup_s=0.0)
    return measure_model(model, request=MeasureRequest(backend="onnxruntime", settings=settings, **request))


@pytest.fixture
def trace_sizes(monkeypatch):
    """The size of every profile trace ONNX Runtime wrote, seen before it is read."""
    sizes = []
    read = _ort_profile._read_trace

    def spy(path, directory):
        sizes.append(os.path.getsize(path))
        return read(path, directory)

    monkeypatch.setattr(_ort_profile, "_read_trace", spy)
    return sizes


def test_long_node_names_make_a_bounded_trace_and_a_small_result(trace_sizes):
    model = _chain(48, lambda i: "/" + "ab/" * 1330 + f"Relu_{i:02d}")  # 48 names of 4,000 characters
    result = _measure(model)
    flat = result.to_dict()
    assert result.ok and flat["profile_runs"] >= 1 and flat["profile_truncated"] is True, flat.get("profile_error")
    assert trace_sizes and max(trace_sizes) < _ort_profile.MAX_TRACE_BYTES
    assert all(len(e["name"]) <= 256 and len(e["nodes"]) <= 32 for e in flat["profile"])
    assert len(json.dumps(flat)) < 64 * 1024 < len(model)


def test_a_model_whose_trace_cannot_fit_gets_a_profile_error(monkeypatch, trace_sizes):
    monkeypatch.setattr(_ort_profile, "MAX_TRACE_BYTES", 64 * 1024)
    flat = _measure(_chain(48, lambda i: "n" * 1000 + str(i)), profile=FAST_PASS).to_dict()
    assert flat["status"] == "ok" and "profile" not in flat and "bound" in flat["profile_error"]
    assert trace_sizes == []  # refused before ORT ran a single profiled run


def test_ort_stops_writing_the_trace_at_its_bound(monkeypatch, trace_sizes):
    monkeypatch.setattr(_ort_profile, "MAX_TRACE_BYTES", 256 * 1024)
    monkeypatch.setattr(_ort_profile, "run_bytes", lambda source: 0)  # no estimate: the file size limit alone
    flat = _measure(_chain(48, lambda i: "n" * 1000 + str(i)), profile=FAST_PASS).to_dict()
    assert flat["status"] == "ok" and "profile" not in flat
    assert "reached its 0.25 MiB bound" in flat["profile_error"]
    assert trace_sizes == [256 * 1024]  # the file stopped at the bound and was not read


# --------------------------------------------------------------------------------------------------
# 3. raw samples and messages in a result
# --------------------------------------------------------------------------------------------------
def _bench(samples):
    return BenchResult(latencies_ms=samples, iterations=len(samples), seconds=1.0, batch=1, warmup_iterations=0,
                       fps=1.0, mean=1.0, p50=1.0, p90=1.0, p99=1.0, min=0.0, max=1.0)


def test_raw_latency_samples_in_a_result_are_capped():
    many = [float(i) for i in range(250000)]
    out = _bench(many).to_dict(include_samples=True)
    kept = out["latencies_ms"]
    assert len(kept) == MAX_RESULT_SAMPLES == 10000 and out["samples_truncated"] is True
    assert kept[0] == 0.0 and kept[-1] == 249999.0 and kept == sorted(set(kept))  # evenly spread, in order
    assert out["iterations"] == 250000  # the statistics and the count still cover every sample
    few = _bench([1.0, 2.0, 3.0]).to_dict(include_samples=True)
    assert few["latencies_ms"] == [1.0, 2.0, 3.0] and few["samples_truncated"] is False
    assert "latencies_ms" not in _bench(many).to_dict()


def test_power_samples_are_capped_and_the_message_is_one_short_line():
    power = {"mean_w": 5.0, "samples_w": [5.0] * 30000, "meter": "fake", "rail": "VDD_IN", "reason": None}
    result = MeasureResult(status="ok", bench=_bench([1.0] * 20), power=power)
    out = result.to_dict(include_samples=True)
    assert len(out["power_samples_w"]) == MAX_RESULT_SAMPLES and out["power_samples_total"] == 30000
    assert out["samples_truncated"] is True and len(out["latencies_ms"]) == 20
    failed = MeasureResult(status="error", code=ErrorCode.INTERNAL, message="boom " * 100000).to_dict()
    assert len(failed["message"]) <= MAX_MESSAGE and failed["message"].endswith("...")
    assert len(json.dumps(out)) < 400 * 1024


# --------------------------------------------------------------------------------------------------
# 4. the engine cache: nothing over the entry limit reaches the disk
# --------------------------------------------------------------------------------------------------
def _folding_model(count):
    """A few hundred bytes that ONNX Runtime's constant folding turns into a ``4 * count``-byte initializer."""
    onnx = pytest.importorskip("onnx")
    helper, numpy_helper, tp = onnx.helper, onnx.numpy_helper, onnx.TensorProto
    shape = numpy_helper.from_array(np.array([count], dtype=np.int64), "shape")
    value = helper.make_tensor("v", tp.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("ConstantOfShape", ["shape"], ["c"], value=value),
                               helper.make_node("Add", ["x", "c"], ["y"])], "fold",
                              [helper.make_tensor_value_info("x", tp.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", tp.FLOAT, [count])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model.SerializeToString()


def test_the_cache_checks_an_entry_before_it_opens_a_file(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a file was written")

    monkeypatch.setattr(engine_cache, "atomic_write", never)
    cache = EngineCache(str(tmp_path), max_bytes=10 * MB)
    assert cache.put("big", {"backend": "x"}, b"p" * (11 * MB), model_bytes=10) is False
    assert os.listdir(str(tmp_path)) == []


def test_an_optimised_model_over_the_limit_never_reaches_the_disk(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(engine_cache, "ENTRY_FLOOR_BYTES", 1 * MB)
    written = []
    read = ort_backend._read_and_remove

    def spy(path, limit):
        written.append((os.path.getsize(path), limit))
        return read(path, limit)

    monkeypatch.setattr(ort_backend, "_read_and_remove", spy)
    cache = EngineCache(str(tmp_path / "cache"), max_bytes=64 * MB)
    model = _folding_model(4 * MB)  # ~150 bytes, a 16 MiB optimised model
    result = _measure(model, cache=cache, options={"profile": False})
    assert result.ok and result.cache_hit is False and result.engine_bytes is None, result.message
    assert "not kept" in result.engine_info["optimized_model"]
    assert written == [(1 * MB, 1 * MB)]  # ORT's write stopped at the limit
    assert cache.entries() == [] and os.listdir(str(tmp_path / "cache")) == []
    small = _measure(_folding_model(1000), cache=cache, options={"profile": False})
    assert small.ok and small.engine_bytes and len(cache.entries()) == 1  # a plan within the limit is kept


def test_measure_model_without_a_cache_keeps_the_plan_bounded(monkeypatch):
    monkeypatch.setattr(engine_cache, "ENTRY_FLOOR_BYTES", 1 * MB)
    result = _measure(_folding_model(4 * MB), options={"profile": False})
    assert result.ok and result.engine_bytes is None


# --------------------------------------------------------------------------------------------------
# 5. and 6. the measuring process: OOM killer's first choice, the job as bytes
# --------------------------------------------------------------------------------------------------
def test_available_memory_and_oom_score_helpers(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  4000000 kB\nMemFree:  100 kB\nMemAvailable:  2500000 kB\n")
    assert available_memory_bytes(str(meminfo)) == 2500000 * 1024
    meminfo.write_text("MemTotal:  4000000 kB\n")
    assert available_memory_bytes(str(meminfo)) == 0
    assert raise_oom_score(str(tmp_path / "missing" / "oom_score_adj")) is False  # logged, never raised


def test_messages_of_the_measuring_process_are_one_short_line():
    assert len(error_result(ErrorCode.INTERNAL, "x\n" * 100000)["message"]) <= MAX_MESSAGE
    limit = MemoryLimit("RLIMIT_AS", 512, "child_memory_mb")
    failed = {"status": "error", "code": ErrorCode.INFERENCE_FAILED, "message": "out of memory " * 10000}
    explained = runner_module.explain_memory_failure(failed, limit)
    assert explained["code"] == ErrorCode.OVERSIZE and len(explained["message"]) <= MAX_MESSAGE


def _small_model():
    return _chain(2, lambda i: f"n{i}")


@pytest.fixture
def client(tmp_path):
    pytest.importorskip("onnxruntime")
    runner = RunnerClient({"backend": "onnxruntime", "cache_dir": str(tmp_path / "engines"), "cache_max_mb": 64,
                           "work_dir": str(tmp_path / "work"), "memory_mb": 1024, "log_level": "warning"})
    runner.start()
    yield runner
    runner.stop()


def test_the_measuring_process_is_the_oom_killers_first_choice(client):
    with open("/proc/self/oom_score_adj") as handle:
        own = handle.read().strip()
    result = client.run(encode_job("oom-score", _small_model(), bench=QUICK), 120, lambda m: None)
    assert result["status"] == "ok", result
    with open(f"/proc/{client.pid()}/oom_score_adj") as handle:
        assert handle.read().strip() == "1000"
    with open("/proc/self/oom_score_adj") as handle:
        assert handle.read().strip() == own  # the daemon keeps its own


def test_the_child_gets_the_job_as_bytes_and_the_daemon_reads_the_spool(client, tmp_path):
    payload = encode_job("bytes-1", _small_model(), bench=QUICK)
    result = client.run(payload, 120, lambda m: None)  # no file anywhere: the child works from the bytes
    assert result["status"] == "ok" and result["model_sha256"], result
    pid = client.pid()
    missing = client.run(str(tmp_path / "spool" / "gone.job"), 120, lambda m: None)
    assert missing["code"] == ErrorCode.INTERNAL and "could not be read" in missing["message"]
    assert client.pid() == pid  # the daemon found out, the child never saw a path
    spooled = tmp_path / "job.job"
    spooled.write_bytes(encode_job("path-1", _small_model(), bench=QUICK))
    assert client.run(str(spooled), 120, lambda m: None)["status"] == "ok"  # service.py's call still works


class _Pipe:
    """The child's end of the pipe, in this process: what RunnerClient sends, and what comes back."""

    def __init__(self, *messages):
        self.incoming, self.sent = list(messages), []

    def recv(self):
        message = self.incoming.pop(0)
        assert not isinstance(message, bytes), "a job's bytes read as a request"
        return message

    def recv_bytes(self):
        message = self.incoming.pop(0)
        assert isinstance(message, bytes), "the child expected the job's bytes"
        return message

    def send(self, message):
        self.sent.append(message)


def test_the_childs_loop_measures_the_bytes_it_receives(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(str(tmp_path))
    payload = encode_job("loop-1", _small_model(), bench=QUICK)
    pipe = _Pipe({"bytes": len(payload)}, payload, None)
    params = {"backend": "onnxruntime", "threads": 1}
    runner_module._serve(pipe, params, (None, None, MemoryLimit("", 0, "test"), str(tmp_path)), pipe.send)
    results = [message[1] for message in pipe.sent if message[0] == "result"]
    assert len(results) == 1 and results[0]["status"] == "ok", results
    assert pipe.incoming == []


def test_agreement_per_output_is_bounded():
    import numpy as np

    from edge_evolver.measure.agreement import MAX_PER_OUTPUT, compare_outputs

    outputs = [np.zeros((1, 2), np.float32) for _ in range(MAX_PER_OUTPUT + 8)]
    names = ["o" * 5000 + str(i) for i in range(len(outputs))]
    result = compare_outputs(outputs, outputs, names)
    assert result["outputs_compared"] == MAX_PER_OUTPUT + 8 and result["per_output_truncated"] is True
    assert len(result["per_output"]) == MAX_PER_OUTPUT and all(len(e["name"]) <= 256 for e in result["per_output"])
