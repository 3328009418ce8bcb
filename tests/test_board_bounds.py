"""A board that cannot be wedged or made to overspend (issue #20).

Each test stands for one way a job was found to overspend the board: threads beyond its cores, an ONNX Runtime
profile trace of tens of MiB read whole, a million raw samples in a result, an optimised model far over the
engine cache's limit written to disk before it was refused, a memory limit of all the RAM with the daemon's own
OOM score, and a child handed a path into the state directory. Python 3.6 compatible; the runtime tests need
onnx and onnxruntime.
"""

import os

import pytest

from edge_evolver.backends import onnxruntime_backend as ort_backend
from edge_evolver.backends.profiling import ProfileSettings
from edge_evolver.daemon.config import build_config
from edge_evolver.errors import EdgeError, ErrorCode
from edge_evolver.job import decode_job, encode_job
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
