"""The wire protocol and the daemon's building blocks, without a broker.

Framing round trips and every way a payload can be refused; topics; config precedence and
credentials; the job store; the engine cache; output agreement; the monitor table.
"""

import hashlib
import json
import os
import queue

import numpy as np
import pytest

from edge_evolver.cli.monitor import MonitorState, changed_rows, render_table, row_json, row_line
from edge_evolver.daemon.config import broker_with_credentials, build_config
from edge_evolver.daemon.jobstore import JobStore
from edge_evolver.errors import EdgeError, ErrorCode
from edge_evolver.job import decode_job, encode_job
from edge_evolver.measure.agreement import compare_outputs
from edge_evolver.measure.engine_cache import EngineCache, cache_digest
from edge_evolver.mqtt import parse_broker_url
from edge_evolver.protocol import HEADER_OFFSET, MAGIC, FrameError, Topics, dumps, encode_frame, loads

MB = 1024 * 1024


def test_job_round_trip_with_tensors():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    ref = [np.ones((3, 10), np.float16), np.array([1, 2, 3], np.int64)]
    payload = encode_job("gen-3:child-1", b"model-bytes", {"batch": 3, "min_iterations": 7}, {"x": x}, ref,
                         reply_to="edge-evolver/host/results", meta={"generation": 3}, timeout_s=60, seed=9,
                         options={"profile": False})
    assert payload[:4] == MAGIC
    job = decode_job(payload, max_bytes=MB)
    assert job.options == {"profile": False}
    assert (job.job_id, job.model, job.reply_to, job.meta, job.timeout_s, job.seed) == (
        "gen-3:child-1", b"model-bytes", "edge-evolver/host/results", {"generation": 3}, 60, 9)
    assert job.model_sha256 == hashlib.sha256(b"model-bytes").hexdigest()
    assert (job.settings.batch, job.settings.min_iterations, job.settings.min_seconds) == (3, 7, 1.0)
    np.testing.assert_array_equal(job.inputs["x"], x)
    assert [r.dtype for r in job.reference] == [np.float16, np.int64]
    np.testing.assert_array_equal(job.reference[1], ref[1])


def test_multi_megabyte_model_frames_exactly():
    model = os.urandom(8 * MB)
    job = decode_job(encode_job("big", model), max_bytes=64 * MB)
    assert job.model == model


def _header_frame(header, body=b""):
    return encode_frame(header, [body])


def _good_header(model=b"m", **extra):
    header = {"protocol": 1, "job_id": "j1", "model": {"size": len(model), "sha256": hashlib.sha256(model).hexdigest()}}
    header.update(extra)
    return header


@pytest.mark.parametrize("payload, code, job_id", [
    (b"", ErrorCode.INVALID_FRAME, None),
    (b"not a job at all", ErrorCode.INVALID_FRAME, None),
    (MAGIC + b"\xff\xff\xff\xff{}", ErrorCode.INVALID_FRAME, None),
    (MAGIC + (5).to_bytes(4, "big") + b"{nope", ErrorCode.INVALID_FRAME, None),
    (_header_frame([1, 2]), ErrorCode.INVALID_FRAME, None),
    (_header_frame({"protocol": 1, "job_id": "../etc", "model": {}}), ErrorCode.INVALID_FRAME, None),
    (_header_frame(_good_header(protocol=2), b"m"), ErrorCode.INVALID_FRAME, "j1"),
    (_header_frame(_good_header(), b"x"), ErrorCode.SHA_MISMATCH, "j1"),
    (_header_frame(_good_header(), b""), ErrorCode.INVALID_FRAME, "j1"),
    (_header_frame(_good_header(), b"m-trailing"), ErrorCode.INVALID_FRAME, "j1"),
    (_header_frame(_good_header(bench={"batch": 0}), b"m"), ErrorCode.BAD_INPUT, "j1"),
    (_header_frame(_good_header(bench={"batchsize": 2}), b"m"), ErrorCode.BAD_INPUT, "j1"),
    (_header_frame(_good_header(options={"turbo": True}), b"m"), ErrorCode.BAD_INPUT, "j1"),
    (_header_frame(_good_header(options={"profile": "off"}), b"m"), ErrorCode.BAD_INPUT, "j1"),
    (_header_frame(_good_header(tensors=[{"role": "input", "name": "x", "dtype": "object", "shape": [1], "size": 8}]),
                   b"m" + b"\0" * 8), ErrorCode.INVALID_FRAME, "j1"),
    (_header_frame(_good_header(tensors=[{"role": "input", "name": "x", "dtype": "float32", "shape": [4], "size": 8}]),
                   b"m" + b"\0" * 8), ErrorCode.INVALID_FRAME, "j1"),
    (_header_frame(_good_header(tensors=[{"role": "input", "name": "x", "dtype": "float32", "shape": [4], "size": 16}]),
                   b"m" + b"\0" * 8), ErrorCode.INVALID_FRAME, "j1"),
    (_header_frame(_good_header(bench={"batch": 2.0}), b"m"), ErrorCode.BAD_INPUT, "j1"),
    (encode_frame({"protocol": 1, "job_id": "j1", "bench": {"max_seconds": float("nan")}, "model":
                   {"size": 1, "sha256": hashlib.sha256(b"m").hexdigest()}}, [b"m"]), ErrorCode.BAD_INPUT, "j1"),
    (_header_frame(_good_header(bench={"max_seconds": 1e400}), b"m"), ErrorCode.BAD_INPUT, "j1"),
    (_header_frame(_good_header(tensors=[{"role": "input", "name": "x", "dtype": "float32", "shape": [2 ** 62, 4],
                                          "size": 0}]), b"m"), ErrorCode.BAD_SHAPE, "j1"),
    (_header_frame(_good_header(meta=[1]), b"m"), ErrorCode.INVALID_FRAME, "j1"),
    (MAGIC + (200001).to_bytes(4, "big") + b"[" * 100000 + b"]" * 100000 + b"!", ErrorCode.INVALID_FRAME, None),
], ids=["empty", "no-magic", "header-length", "header-not-json", "header-not-object", "bad-job-id", "protocol",
        "sha-mismatch", "short-body", "trailing-bytes", "bad-bench", "unknown-bench", "unknown-option",
        "profile-not-bool", "tensor-dtype", "tensor-size", "tensor-past-end", "float-batch", "nan-seconds",
        "inf-seconds", "overflowing-shape", "meta-not-object", "deeply-nested-header"])
def test_bad_frames_are_refused_with_a_code(payload, code, job_id):
    with pytest.raises(FrameError) as info:
        decode_job(payload, max_bytes=MB)
    assert (info.value.code, info.value.job_id) == (code, job_id)
    assert info.value.message and "\n" not in info.value.message


def test_oversize_is_refused_but_names_the_job_and_its_reply_topic():
    payload = encode_job("huge", os.urandom(4096), reply_to="edge-evolver/host/r")
    with pytest.raises(FrameError) as info:
        decode_job(payload, max_bytes=1024)
    assert (info.value.code, info.value.job_id) == (ErrorCode.OVERSIZE, "huge")
    assert info.value.reply_to == "edge-evolver/host/r"
    tampered = encode_job("tam", b"model", reply_to="edge-evolver/host/r")[:-1] + b"X"
    with pytest.raises(FrameError) as info:
        decode_job(tampered, max_bytes=1024)
    assert (info.value.code, info.value.reply_to) == (ErrorCode.SHA_MISMATCH, "edge-evolver/host/r")
    assert len(payload) > HEADER_OFFSET


def test_topics_prefix_in_one_place():
    topics = Topics("lab/ee")
    assert topics.status("tx1-a") == "lab/ee/devices/tx1-a/status"
    assert topics.shared_jobs("tx1") == "$share/tx1/lab/ee/jobs"
    assert topics.all_devices("telemetry") == "lab/ee/devices/+/telemetry"
    assert topics.parse("lab/ee/devices/tx1-a/results") == ("tx1-a", "results")
    assert topics.parse("lab/ee/devices/tx1-a/nope") is None and topics.parse("other/x") is None
    # A board answers on its own results topic, or on the results topic of the run the job names: nowhere else.
    assert topics.reply_allowed("lab/ee/devices/tx1-a/results", "tx1-a")
    assert topics.reply_allowed("lab/ee/runs/r1/results", "tx1-a", run_id="r1")
    assert not topics.reply_allowed("lab/ee/runs/r1/results", "tx1-a", run_id="r2")
    assert not topics.reply_allowed("lab/ee/runs/r1/results", "tx1-a")
    assert not topics.reply_allowed("lab/ee/devices/tx1-b/results", "tx1-a")  # another board's results
    for bad in ("lab/ee/host/r1", "elsewhere/r1", "lab/ee/#", "lab/ee/devices/tx1-a/status", "lab/ee/jobs",
                "lab/ee/runs/+/results", "lab/ee/runs/r1/generations"):
        assert not topics.reply_allowed(bad, "tx1-a", run_id="r1"), bad
    assert topics.is_reply_topic("lab/ee/runs/r1/results", "tx1-a")
    assert not topics.is_reply_topic("lab/ee/runs/../results", "tx1-a")
    for bad in ("", "a/#", "$SYS", "/x", "x/"):
        with pytest.raises(ValueError):
            Topics(bad)


def test_json_payloads_never_carry_nan():
    assert loads(dumps({"fps": float("nan"), "x": [float("inf")]})) == {"fps": None, "x": [None]}
    with pytest.raises(ValueError):
        loads(b"[1]")


def test_broker_url_parsing():
    url = parse_broker_url("mqtts://ann:s%40cret@broker.lan")
    assert (url.host, url.port, url.tls, url.username, url.password) == ("broker.lan", 8883, True, "ann", "s@cret")
    assert "s@cret" not in url.display()
    assert parse_broker_url("127.0.0.1:1999").port == 1999
    for bad in ("http://x", "mqtt://", "mqtt://h:99999", "mqtt://h/path"):
        with pytest.raises(ValueError):
            parse_broker_url(bad)


def test_config_precedence_and_credentials(tmp_path):
    conf = tmp_path / "config.toml"
    conf.write_text('broker = "mqtt://filehost:1884"\ndevice_id = "from-file"\njob_timeout_s = 60\n'
                    'password_file = "%s"\n' % (tmp_path / "pw"))
    (tmp_path / "pw").write_text("file-secret\n")
    config = build_config(str(conf), {"device_id": "from-cli", "broker": None})
    assert (config.broker, config.device_id, config.job_timeout_s) == ("mqtt://filehost:1884", "from-cli", 60.0)
    assert broker_with_credentials(config, environ={}).password == "file-secret"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "broker-password").write_text("systemd-secret")
    assert broker_with_credentials(config, environ={"CREDENTIALS_DIRECTORY": str(creds)}).password == "systemd-secret"


@pytest.mark.parametrize("text, fragment", [
    ("colour = 1\n", "unknown key"),
    ("job_timeout_s = 'soon'\n", "must be float"),
    ("device_id = 'a/b'\n", "device_id"),
    ("broker = 'http://x'\n", "scheme"),
    ("this is not toml", "not valid TOML"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, fragment):
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    with pytest.raises(EdgeError) as info:
        build_config(str(conf), {})
    assert info.value.code == ErrorCode.BAD_INPUT and fragment in info.value.message


def test_jobstore_spool_results_and_pruning(tmp_path):
    store = JobStore(str(tmp_path), max_results=3)
    store.spool("a", b"payload-a")
    store.spool("b", b"payload-b")
    (tmp_path / "spool" / ".tmp-half").write_bytes(b"half")
    store = JobStore(str(tmp_path), max_results=3)  # a restart drops half-written temp files
    assert store.pending() == ["a", "b"] and store.read_job("b") == b"payload-b"
    assert not (tmp_path / "spool" / ".tmp-half").exists()
    store.store_result("a", {"job_id": "a", "status": "ok"})
    store.finish("a")
    assert store.pending() == ["b"] and store.result("a")["status"] == "ok"
    for i in range(5):
        store.store_result(f"r{i}", {"job_id": f"r{i}"})
    assert len(os.listdir(store.results_dir)) == 3


def test_engine_cache_keys_and_eviction(tmp_path):
    cache = EngineCache(str(tmp_path), max_bytes=250)
    key = {"backend": "tensorrt", "version": "8.2.1", "device": "NVIDIA Tegra X1", "precision": "fp16"}
    assert cache_digest("abc", key) != cache_digest("abc", dict(key, version="10.3.0"))
    assert cache_digest("abc", key) != cache_digest("abd", key)
    assert cache.get("abc", key) is None
    cache.put("abc", key, b"p" * 100)
    assert cache.get("abc", key) == b"p" * 100
    meta = json.loads((tmp_path / (cache_digest("abc", key) + ".json")).read_text())
    assert meta["build"] == key and meta["bytes"] == 100
    cache.put("def", key, b"q" * 100)
    os.utime(tmp_path / (cache_digest("abc", key) + ".plan"), (1, 1))  # make "abc" the least recent
    cache.put("ghi", key, b"r" * 100)
    assert cache.get("abc", key) is None and cache.get("ghi", key) is not None


def test_agreement_max_error_and_top1():
    ref = [np.array([[0.1, 0.9], [0.8, 0.2]]), np.zeros((2, 3, 4))]
    got = [np.array([[0.2, 0.8], [0.4, 0.6]]), np.full((2, 3, 4), 0.01)]
    out = compare_outputs(got, ref, ["logits", "features"])
    assert out["max_abs_error"] == pytest.approx(0.4)
    assert out["top1_agreement"] == 0.5 and out["outputs_compared"] == 2
    assert "top1_agreement" not in out["per_output"][1]
    assert out["nonfinite"] == 0
    broken = compare_outputs([np.array([[np.nan, 1.0], [0.8, 0.2]]), got[1]], ref, ["logits", "features"])
    assert broken["nonfinite"] == 1 and broken["max_abs_error"] != broken["max_abs_error"]  # NaN, not 0
    assert json.loads(dumps({"a": broken}))["a"]["max_abs_error"] is None
    with pytest.raises(EdgeError):
        compare_outputs(got[:1], ref, ["logits", "features"])
    with pytest.raises(EdgeError):
        compare_outputs([np.zeros((3, 2))], ref[:1], ["logits"])


def test_monitor_folds_topics_into_rows():
    state = MonitorState(Topics())
    state.apply("edge-evolver/devices/nano-1/status", dumps({"state": "online", "backend": "tensorrt"}))
    state.apply("edge-evolver/devices/nano-1/telemetry", dumps({"activity": "benchmarking", "job_id": "j9",
                                                                "fps": 412.5, "latency_ms_p50": 2.4, "power_w": 5.1}))
    state.apply("edge-evolver/devices/tx1-1/results", b"garbage")
    state.apply("unrelated/topic", b"{}")
    rows = state.snapshot()
    assert [r["device_id"] for r in rows] == ["nano-1", "tx1-1"] and rows[1]["bad_payloads"] == 1
    table = render_table(rows)
    assert "nano-1" in table and "412.5" in table and "benchmarking" in table and "tensorrt" in table


def test_monitor_lines_only_for_what_a_line_shows():
    """Off a terminal: one line per device whose state, activity, job or last result changed."""
    state, changed, shown = MonitorState(Topics()), queue.Queue(), {}

    def apply(topic, data):
        device = state.apply("edge-evolver/devices/" + topic, dumps(data))
        if device is not None:
            changed.put(device)

    apply("nano-1/status", {"state": "online"})
    apply("nano-1/telemetry", {"activity": "idle"})
    apply("tx1-1/status", 7)  # JSON, but not an object: nothing a line shows changed, and never a crash
    first = changed_rows(state, changed, shown)
    assert [r["device_id"] for r in first] == ["nano-1"]  # once, though it changed twice
    apply("nano-1/telemetry", {"activity": "idle", "fps": 3.0})  # only the fps: no new line
    assert changed_rows(state, changed, shown) == []
    apply("nano-1/results", {"job_id": "j1", "status": "ok", "fps": 99.5})
    (row,) = changed_rows(state, changed, shown)
    assert 'last_result="j1: 99.5 fps"' in row_line(row) and row_json(row)["last_fps"] == 99.5
    assert "state=? " in row_line(state.row("tx1-1"))


# ---- the detect check (docs/detection.md): decoded boxes of the engine vs the reference -------------
DK = 3


def _detector_output(shift=0.0):
    out = np.full((2, DK + 4, 16, 16), -6.0, np.float32)
    out[:, DK:] = 0.5
    out[0, 1, 5, 5] = out[1, 0, 9, 3] = 3.0
    out[:, DK] += shift  # shift the offsets: the boxes move
    return out


def test_a_detect_check_reports_box_agreement():
    want = _detector_output()
    check = {"kind": "detect", "num_classes": DK, "stride": 4}
    same = compare_outputs([want], [want], ["detections"], check=check)
    assert same["box_agreement"] == 1.0 and same["top1_agreement"] is None
    moved = compare_outputs([_detector_output(shift=3.0)], [want], ["detections"], check=check)
    assert moved["box_agreement"] == 0.0
    with pytest.raises(EdgeError, match="does not fit"):
        compare_outputs([want], [want], ["detections"], check={**check, "num_classes": 5})


@pytest.mark.parametrize("check, ok", [
    ({"kind": "detect", "num_classes": DK, "stride": 4}, True),
    ({"kind": "segment", "num_classes": DK, "stride": 4}, False),
    ({"kind": "detect", "num_classes": 0, "stride": 4}, False),
    ({"kind": "detect", "num_classes": DK, "stride": True}, False),
    ("detect", False),
])
def test_the_job_check_field_is_validated(check, ok):
    payload = encode_job("job-1", b"model", check=check)
    if ok:
        assert decode_job(payload, 1 << 20).check == check
    else:
        with pytest.raises(FrameError) as err:
            decode_job(payload, 1 << 20)
        assert err.value.code == "BAD_INPUT"
