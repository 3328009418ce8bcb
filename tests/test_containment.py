"""Containment of the measuring process and the daemon's disk bounds (security issue #12).

The child runs each job in a fresh, empty, private directory that is removed afterwards, under a
memory rlimit; a job past the limit comes back OVERSIZE and the next job still runs. Results are
pruned by bytes as well as by count; the engine cache refuses an entry far larger than its model.
Python 3.6 compatible; needs onnx and onnxruntime for the RunnerClient tests.
"""

import os
import signal
import stat
import tempfile

import numpy as np
import pytest

from edge_evolver.daemon import runner as runner_module
from edge_evolver.daemon.containment import (
    MemoryLimit,
    available_memory_bytes,
    explain_memory_failure,
    job_directory,
    plan_memory_limit,
    prepare_work_root,
)
from edge_evolver.daemon.jobstore import JobStore
from edge_evolver.daemon.runner import RunnerClient
from edge_evolver.errors import ErrorCode
from edge_evolver.job import encode_job
from edge_evolver.measure import engine_cache
from edge_evolver.measure.engine_cache import EngineCache

MB = 1024 * 1024
QUICK = {"min_iterations": 5, "min_seconds": 0.0, "warmup_s": 0.0}
SLOW = {"min_iterations": 5, "min_seconds": 1.5, "warmup_s": 0.0}  # long enough to look at the child


# --------------------------------------------------------------------------------------------------
# The pieces, without a child process
# --------------------------------------------------------------------------------------------------
def test_memory_limit_plan_keeps_rlimit_as_away_from_cuda():
    # Automatic: 75% of what is available at the child's start, at least 1024 MB, never above the RAM.
    automatic = plan_memory_limit("onnxruntime", 0, 4096 * MB, 2800 * MB)
    assert automatic[:2] == ("RLIMIT_AS", 2100) and "75% of the 2800 MB available" in automatic.reason
    assert plan_memory_limit("onnxruntime", 0, 4096 * MB, 400 * MB)[:2] == ("RLIMIT_AS", 1024)  # the floor
    assert plan_memory_limit("onnxruntime", 0, 800 * MB, 400 * MB)[:2] == ("RLIMIT_AS", 800)  # never above RAM
    assert plan_memory_limit("onnxruntime", 0, 4096 * MB)[:2] == ("RLIMIT_AS", 4096)  # available unknown
    assert plan_memory_limit("onnxruntime", 700, 4096 * MB, 2800 * MB)[:2] == ("RLIMIT_AS", 700)
    assert plan_memory_limit("onnxruntime", 0, 0).resource == ""
    # CUDA reserves address space far beyond RAM: tensorrt never gets RLIMIT_AS.
    automatic = plan_memory_limit("tensorrt", 0, 4096 * MB)
    assert automatic.resource == "" and "RLIMIT_AS" in automatic.reason
    assert plan_memory_limit("tensorrt", 3000, 4096 * MB)[:2] == ("RLIMIT_DATA", 3000)


def test_job_directory_is_fresh_private_and_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(str(tmp_path))
    root = prepare_work_root(str(tmp_path / "work"))
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    saved = tempfile.tempdir
    with job_directory(root) as path:
        assert os.path.dirname(path) == root and os.path.basename(path).startswith("job-")
        assert os.getcwd() == path and os.listdir(path) == []
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        assert os.environ["TMPDIR"] == path
        handle, name = tempfile.mkstemp()  # where ONNX Runtime's optimised model goes
        os.close(handle)
        assert os.path.dirname(name) == path
        with open("left-behind", "w") as out:
            out.write("x")
    assert not os.path.exists(path) and os.listdir(root) == []
    assert os.getcwd() == root and tempfile.tempdir == saved


def test_work_root_sweeps_a_killed_childs_leftovers(tmp_path):
    work = tmp_path / "work"
    (work / "job-dead" / "sub").mkdir(parents=True)
    (work / "keep.txt").write_text("not ours to remove")
    os.chmod(str(work), 0o755)
    root = prepare_work_root(str(work))
    assert sorted(os.listdir(root)) == ["keep.txt"]
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700


def test_memory_failures_name_the_limit():
    limit = MemoryLimit("RLIMIT_AS", 512, "child_memory_mb")
    failed = {"status": "error", "code": ErrorCode.INFERENCE_FAILED,
              "message": "Failed to allocate memory for requested buffer of size 4000000000"}
    out = explain_memory_failure(failed, limit)
    assert out["code"] == ErrorCode.OVERSIZE
    assert out["message"].startswith("the measuring process ran out of its 512 MB memory limit")
    other = {"status": "error", "code": ErrorCode.BAD_SHAPE, "message": "absurd"}
    assert explain_memory_failure(other, limit) == other
    assert explain_memory_failure(failed, MemoryLimit("", 0, "none")) == failed


def test_a_child_killed_from_outside_is_reported_as_out_of_memory():
    assert runner_module._death_result("died", -signal.SIGKILL)["code"] == ErrorCode.OVERSIZE
    assert runner_module._death_result("died", -signal.SIGSEGV) == {"status": "error", "code": ErrorCode.INTERNAL,
                                                                    "message": "died"}


# --------------------------------------------------------------------------------------------------
# Disk bounds
# --------------------------------------------------------------------------------------------------
def _result_bytes(store):
    return sum(os.path.getsize(os.path.join(store.results_dir, n)) for n in os.listdir(store.results_dir))


def test_results_are_pruned_by_bytes_oldest_first(tmp_path):
    store = JobStore(str(tmp_path), max_results=100, max_bytes=2000)
    for i in range(10):
        store.store_result(f"r{i}", {"job_id": f"r{i}", "pad": "x" * 400})
    left = sorted(os.listdir(store.results_dir))
    assert left == ["r6.json", "r7.json", "r8.json", "r9.json"]  # 4 x ~430 bytes fit in 2000
    assert store.results_bytes == _result_bytes(store) <= 2000
    store.store_result("r9", {"job_id": "r9"})  # a rewrite replaces its old size
    assert store.results_bytes == _result_bytes(store)
    again = JobStore(str(tmp_path), max_results=100, max_bytes=1000)  # recomputed, and pruned, at start
    assert again.results_bytes == _result_bytes(again) <= 1000
    assert "r9.json" in os.listdir(again.results_dir)


def test_the_newest_result_stays_even_alone_over_the_budget(tmp_path):
    store = JobStore(str(tmp_path), max_results=10, max_bytes=100)
    store.store_result("a", {"pad": "y" * 500})
    store.store_result("b", {"pad": "z" * 500})
    assert os.listdir(store.results_dir) == ["b.json"] and store.result("b") is not None


def test_engine_cache_refuses_an_entry_far_larger_than_its_model(tmp_path, monkeypatch):
    assert engine_cache.ENTRY_FLOOR_BYTES == 64 * MB and engine_cache.ENTRY_RATIO == 16
    monkeypatch.setattr(engine_cache, "ENTRY_FLOOR_BYTES", 1000)
    cache = EngineCache(str(tmp_path), max_bytes=10000)
    key = {"backend": "onnxruntime"}
    assert cache.put("tiny", key, b"p" * 2000, model_bytes=10) is False  # 9 KB -> 513 MB, scaled down
    assert cache.get("tiny", key) is None and os.listdir(str(tmp_path)) == []
    assert cache.put("small", key, b"p" * 1500, model_bytes=100) is True  # within 16x
    assert cache.put("big", key, b"q" * 20000, model_bytes=5000) is False  # larger than the whole budget
    assert cache.put("unknown", key, b"r" * 5000) is True  # model size unknown: only the budget bounds it
    for i in range(6):
        assert cache.put(f"m{i}", key, b"s" * 1500, model_bytes=1000)
    assert sum(size for _, size, _ in cache.entries()) <= 10000


# --------------------------------------------------------------------------------------------------
# The real child, with ONNX Runtime
# --------------------------------------------------------------------------------------------------
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "t", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model.SerializeToString()


def _small_model():
    w = np.random.RandomState(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    return _model([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                  [numpy_helper.from_array(w, "W")])


def _huge_model(count=1000 * 1000 * 1000):
    """A few hundred bytes that ask for a 4 GB tensor when run."""
    shape = numpy_helper.from_array(np.array([count], dtype=np.int64), "shape")
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    return _model([helper.make_node("ConstantOfShape", ["shape"], ["c"], value=value),
                   helper.make_node("Add", ["x", "c"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [count])], [shape])


def _spool(tmp_path, job_id, model, bench):
    path = tmp_path / "spool" / (job_id + ".job")
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(encode_job(job_id, model, bench=bench))
    return str(path)


def _limits(pid, name):
    with open(f"/proc/{pid}/limits") as handle:
        for line in handle:
            if line.startswith(name):
                return line.split()[len(name.split()):][:2]
    raise AssertionError(name)


@pytest.fixture
def client(tmp_path):
    runner = RunnerClient({"backend": "onnxruntime", "cache_dir": str(tmp_path / "engines"), "cache_max_mb": 64,
                           "work_dir": str(tmp_path / "work"), "memory_mb": 1024, "log_level": "warning"})
    runner.start()
    yield runner
    runner.stop()


def test_each_job_runs_in_an_empty_private_directory_that_is_removed(client, tmp_path):
    seen = []

    def look(message):
        if message.get("activity") == "benchmarking" and not seen:
            cwd = os.readlink(f"/proc/{client.pid()}/cwd")
            seen.append((cwd, os.listdir(cwd), stat.S_IMODE(os.stat(cwd).st_mode)))

    result = client.run(_spool(tmp_path, "cwd-1", _small_model(), SLOW), 120, look)
    assert result["status"] == "ok", result
    ((cwd, listing, mode),) = seen
    work = str(tmp_path / "work")
    assert os.path.dirname(cwd) == work and os.path.basename(cwd).startswith("job-")
    # Only ONNX Runtime's ".ses" (its session id file, which it writes into the working directory):
    # the optimised model went through tempfile into this directory too, and is gone already.
    assert set(listing) <= {".ses"} and mode == 0o700
    assert not os.path.exists(cwd) and os.listdir(work) == []
    assert os.readlink(f"/proc/{client.pid()}/cwd") == work
    assert stat.S_IMODE(os.stat(work).st_mode) == 0o700


def test_the_memory_limit_is_applied_and_a_job_past_it_is_an_error(client, tmp_path):
    assert client.run(_spool(tmp_path, "ok-1", _small_model(), QUICK), 120, lambda m: None)["status"] == "ok"
    assert _limits(client.pid(), "Max address space") == [str(1024 * MB)] * 2
    pid = client.pid()
    result = client.run(_spool(tmp_path, "huge-1", _huge_model(), QUICK), 120, lambda m: None)
    assert result["status"] == "error" and result["code"] == ErrorCode.OVERSIZE, result
    assert "ran out of its 1024 MB memory limit" in result["message"]
    again = client.run(_spool(tmp_path, "ok-2", _small_model(), QUICK), 120, lambda m: None)
    assert again["status"] == "ok", again
    assert client.pid() == pid  # the child survived its failed allocation
    assert os.listdir(str(tmp_path / "work")) == []


def test_a_child_killed_mid_job_is_restarted_for_the_next(client, tmp_path):
    def kill(message):
        if message.get("activity") == "benchmarking":
            os.kill(client.pid(), signal.SIGKILL)

    result = client.run(_spool(tmp_path, "oom-1", _small_model(), SLOW), 120, kill)
    assert result["code"] == ErrorCode.OVERSIZE and "out-of-memory killer" in result["message"]
    again = client.run(_spool(tmp_path, "ok-3", _small_model(), QUICK), 120, lambda m: None)
    assert again["status"] == "ok", again
    assert os.listdir(str(tmp_path / "work")) == []  # the killed job's directory was swept


def test_automatic_limit_for_onnxruntime_is_below_the_available_memory(tmp_path):
    before = available_memory_bytes()
    runner = RunnerClient({"backend": "onnxruntime", "cache_dir": str(tmp_path / "engines"),
                           "log_level": "warning"})  # no work_dir: a private temp directory
    runner.start()
    try:
        assert runner.run(_spool(tmp_path, "auto-1", _small_model(), QUICK), 120, lambda m: None)["status"] == "ok"
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        soft, hard = (int(value) for value in _limits(runner.pid(), "Max address space"))
        assert soft == hard and soft % MB == 0 and soft <= physical
        # 75% of MemAvailable when the child started (which moves a little between the two reads), or the floor.
        assert soft == 1024 * MB or 0.6 * before <= soft <= 0.75 * physical
        cwd = os.readlink(f"/proc/{runner.pid()}/cwd")
        assert os.path.basename(cwd).startswith("edge-evolver-work-") and os.listdir(cwd) == []
    finally:
        runner.stop()
    assert not os.path.exists(cwd)
