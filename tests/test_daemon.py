"""`edge-evolver serve` against a real Mosquitto on a free loopback port, as real processes.

Round trip with status, telemetry, Last Will, repeat and cache hit; every kind of bad job; a
daemon killed mid-job; a broker restart; SIGTERM; shared subscriptions; MQTT 5; the documented
mosquitto_pub/mosquitto_sub commands; `monitor`.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edge_evolver.job import encode_job
from edge_evolver.protocol import Topics, encode_frame

from .mqtt_support import Broker, Collector, Daemon, children, free_port, result_for, status_is

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytestmark = pytest.mark.slow
TOPICS = Topics()
QUICK = {"min_iterations": 20, "min_seconds": 0.0, "warmup_s": 0.0}


def _model(nodes, inputs, outputs, inits=(), opset=13):
    graph = helper.make_graph(nodes, "t", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model.SerializeToString()


def conv_model(channels=16):
    w = np.random.RandomState(channels).standard_normal((channels, 3, 3, 3)).astype(np.float32)
    return _model([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                   helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels])],
                  [numpy_helper.from_array(w, "W")])


def conv_reference(model_bytes, x):
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(str(tmp_path_factory.mktemp("broker"))).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def served(broker, tmp_path_factory):
    """One daemon for the round-trip and bad-job tests, and a collector watching everything."""
    state = str(tmp_path_factory.mktemp("state"))
    watcher = Collector(broker.url, ["edge-evolver/devices/+/+", "edge-evolver/runs/+/results"])
    daemon = Daemon(broker.url, state, "dev1", "--max-payload-mb", "1").start()
    watcher.wait_for(status_is("online"), timeout=60)
    yield daemon, watcher
    daemon.kill()
    watcher.close()


def submit(watcher, job_id, model, device="dev1", **kwargs):
    kwargs.setdefault("bench", QUICK)
    mark = watcher.mark()
    watcher.publish(TOPICS.jobs(device), encode_job(job_id, model, **kwargs))
    return watcher.wait_for(result_for(job_id), timeout=60, after=mark)["data"]


def test_status_is_retained_and_describes_the_device(served, broker):
    late = Collector(broker.url, [TOPICS.status("dev1")])  # subscribes after the fact: retained
    status = late.wait_for(status_is("online"), timeout=10)["data"]
    late.close()
    assert status["device_id"] == "dev1" and status["backend"] == "onnxruntime"
    for key in ("board", "l4t", "jetpack", "power_meter", "power_rail", "power_mode", "clocks_locked",
                "edge_evolver_version", "backend_version"):
        assert key in status
    assert status["power_meter"] == "none" and status["power_reason"]


def test_round_trip_repeat_and_cache_hit(served):
    daemon, watcher = served
    model = conv_model()
    x = np.random.RandomState(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ref = conv_reference(model, x)
    first = submit(watcher, "rt-1", model, bench=dict(QUICK, batch=4), inputs={"x": x}, reference=ref,
                   meta={"generation": 2})
    assert first["status"] == "ok", first
    assert first["model_sha256"] == hashlib.sha256(model).hexdigest()
    assert first["cache_hit"] is False and first["engine_bytes"] > 0 and first["engine_build_s"] > 0
    assert first["fps"] > 0 and first["iterations"] >= 20 and first["batch"] == 4
    for key in ("latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_min",
                "latency_ms_max", "seconds"):
        assert first[key] is not None
    assert first["power_w_mean"] is None and first["energy_mj_per_inference"] is None and first["power_reason"]
    assert first["agreement"]["max_abs_error"] < 1e-4 and first["agreement"]["top1_agreement"] == 1.0
    assert first["meta"] == {"generation": 2} and first["queue_s"] >= 0
    # The per-layer pass ran after the window; the unnamed Conv is listed by its output "c".
    assert first["profile_runs"] >= 20 and first["profile"][0]["nodes"] == ["c"] and "profile_error" not in first
    again = submit(watcher, "rt-1", b"different bytes entirely")  # a repeated id returns the stored result
    assert again["repeated"] is True and again["fps"] == first["fps"]
    cached = submit(watcher, "rt-2", model, options={"profile": False})
    assert cached["status"] == "ok" and cached["cache_hit"] is True
    assert not {"profile", "profile_runs", "profile_error"} & set(cached)  # switched off by the job
    assert '"event": "job"' in daemon.log() or '"event":"job"' in daemon.log()


def test_telemetry_reports_live_fps_while_benchmarking(served):
    daemon, watcher = served
    submit(watcher, "tel-1", conv_model(32), bench={"min_iterations": 10, "min_seconds": 2.5, "warmup_s": 0.0})
    live = watcher.matching(lambda m: m["topic"].endswith("/telemetry") and (m["data"] or {}).get("job_id") == "tel-1"
                            and (m["data"] or {}).get("fps") is not None)
    assert live, "no telemetry with live fps during a 2.5 s benchmark"
    assert live[-1]["data"]["activity"] == "benchmarking" and live[-1]["data"]["latency_ms_p50"] > 0
    idle = watcher.wait_for(lambda m: m["topic"].endswith("/telemetry") and m["data"]["activity"] == "idle", 10)
    assert "temperatures" in idle["data"]


def _io(name, shape):
    return [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)]


def _unsupported():
    return _model([helper.make_node("FooBar", ["x"], ["y"])], _io("x", [1]), _io("y", [1]))


def _checker_fails():
    # Conv without its weight input: the bytes parse, the checker refuses the node.
    return _model([helper.make_node("Conv", ["x"], ["y"])], _io("x", [1, 1, 4, 4]), _io("y", [1, 1, 4, 4]))


def _absurd_shape():
    huge = [1, 100000, 100000]
    return _model([helper.make_node("Relu", ["x"], ["y"])], _io("x", huge), _io("y", huge))


def _build_fails():
    # Passes the checker (no shape inference there); ORT's session build rejects the MatMul.
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"])], _io("x", [1, 6]), _io("y", [1, 3]),
                  [numpy_helper.from_array(np.ones((4, 3), np.float32), "W")])


def test_every_bad_job_gets_a_coded_error_and_the_daemon_keeps_serving(served):
    daemon, watcher = served
    assert submit(watcher, "warm-0", conv_model())["status"] == "ok"  # the child has loaded its runtime
    rss_before = daemon.rss_kb()
    good = encode_job("sha-1", conv_model())
    tampered = good[:-1] + bytes([good[-1] ^ 0xFF])
    cases = [
        (None, b"\x00garbage that is no frame", "INVALID_FRAME"),
        ("hdr-1", encode_frame({"protocol": 1, "job_id": "hdr-1", "model": "x"}, [b""]), "INVALID_FRAME"),
        ("sha-1", tampered, "SHA_MISMATCH"),
        ("big-1", encode_job("big-1", os.urandom(2 * 1024 * 1024)), "OVERSIZE"),
        ("junk-1", encode_job("junk-1", os.urandom(5000), bench=QUICK), "INVALID_MODEL"),
        ("chk-1", encode_job("chk-1", _checker_fails(), bench=QUICK), "INVALID_MODEL"),
        ("op-1", encode_job("op-1", _unsupported(), bench=QUICK), "UNSUPPORTED_OP"),
        ("shape-1", encode_job("shape-1", _absurd_shape(), bench=QUICK), "BAD_SHAPE"),
        ("build-1", encode_job("build-1", _build_fails(), bench=QUICK), "BUILD_FAILED"),
        ("reply-1", encode_job("reply-1", conv_model(), reply_to="elsewhere/x"), "BAD_INPUT"),
        ("reply-2", encode_job("reply-2", conv_model(), reply_to=TOPICS.status("dev1")), "BAD_INPUT"),
        ("reply-3", encode_job("reply-3", conv_model(), reply_to=TOPICS.results("other")), "BAD_INPUT"),
        ("reply-4", encode_job("reply-4", conv_model(), reply_to=TOPICS.run_results("r2"), run_id="r1"), "BAD_INPUT"),
        ("nan-1", encode_frame({"protocol": 1, "job_id": "nan-1", "bench": {"max_seconds": float("nan")},
                                "model": {"size": 0, "sha256": hashlib.sha256(b"").hexdigest()}}, [b""]), "BAD_INPUT"),
    ]
    for job_id, payload, code in cases:
        mark = watcher.mark()
        watcher.publish(TOPICS.jobs("dev1"), payload)
        result = watcher.wait_for(result_for(job_id), timeout=60, after=mark)["data"]
        assert (result["status"], result["code"]) == ("error", code), (job_id, result)
        assert result["message"] and "\n" not in result["message"]
    # A refused job still answers on the topic it asked for.
    mark = watcher.mark()
    host_topic = TOPICS.run_results("run-1")
    watcher.publish(TOPICS.jobs("dev1"),
                    encode_job("sha-2", conv_model(), reply_to=host_topic, run_id="run-1")[:-1] + b"\0")
    answer = watcher.wait_for(result_for("sha-2"), timeout=60, after=mark)
    assert answer["topic"] == host_topic and answer["data"]["code"] == "SHA_MISMATCH"
    assert submit(watcher, "after-bad", conv_model())["status"] == "ok"
    assert daemon.proc.poll() is None
    # Bounded memory: twenty more bad jobs do not grow the daemon (a loose bound, not a timing).
    for i in range(20):
        watcher.publish(TOPICS.jobs("dev1"), encode_job(f"junk-{i + 2}", os.urandom(50000), bench=QUICK))
    watcher.wait_for(result_for("junk-21"), timeout=60)
    assert daemon.rss_kb() < rss_before + 60 * 1024


def test_sigterm_publishes_stopped_and_exits_cleanly(broker, tmp_path):
    watcher = Collector(broker.url, [TOPICS.status("term1")])
    daemon = Daemon(broker.url, str(tmp_path), "term1").start()
    watcher.wait_for(status_is("online"), timeout=60)
    assert daemon.terminate() == 0
    watcher.wait_for(status_is("stopped"), timeout=10)
    watcher.close()
    assert '"serve_stop"' in daemon.log()


def test_sigterm_while_the_broker_is_unreachable(tmp_path):
    daemon = Daemon(f"mqtt://127.0.0.1:{free_port()}", str(tmp_path), "lonely").start()
    time.sleep(2.0)  # it is retrying its first connection with back-off
    assert daemon.terminate(timeout=15) == 0
    assert '"mqtt_connect_failed"' in daemon.log() and '"serve_stop"' in daemon.log()


def _mid_benchmark(broker, tmp_path, device, job_id):
    """A daemon busy benchmarking a 4-second job, and a collector watching it."""
    watcher = Collector(broker.url, [f"edge-evolver/devices/{device}/+"])
    daemon = Daemon(broker.url, str(tmp_path), device).start()
    watcher.wait_for(status_is("online"), timeout=60)
    job = encode_job(job_id, conv_model(), bench={"min_iterations": 10, "min_seconds": 4.0, "warmup_s": 0.0})
    watcher.publish(TOPICS.jobs(device), job)
    watcher.wait_for(lambda m: m["topic"].endswith("/telemetry") and m["data"].get("activity") == "benchmarking", 60)
    return daemon, watcher


def test_service_stop_mid_job_keeps_the_job_for_the_next_start(broker, tmp_path):
    """systemd's stop signals the whole cgroup: the measuring child may die first. The job must
    stay spooled (not end as an INTERNAL error) and run after the restart."""
    daemon, watcher = _mid_benchmark(broker, tmp_path, "stop1", "stop-1")
    for pid in children(daemon.proc.pid) + [daemon.proc.pid]:
        os.kill(pid, signal.SIGTERM)
    assert daemon.proc.wait(30) == 0
    watcher.wait_for(status_is("stopped"), timeout=10)
    assert not watcher.matching(result_for("stop-1"))
    assert os.listdir(os.path.join(str(tmp_path), "spool")) == ["stop-1.job"]
    daemon.start()
    assert watcher.wait_for(result_for("stop-1"), timeout=90)["data"]["status"] == "ok"
    daemon.kill()
    watcher.close()


def test_last_will_and_restart_mid_job_finishes_the_job(broker, tmp_path):
    daemon, watcher = _mid_benchmark(broker, tmp_path, "kill1", "slow-1")
    daemon.kill()  # SIGKILL mid-benchmark: no clean disconnect, so the broker sends the Last Will
    watcher.wait_for(status_is("offline"), timeout=15)
    assert os.listdir(os.path.join(str(tmp_path), "spool")) == ["slow-1.job"]
    daemon.start()
    result = watcher.wait_for(result_for("slow-1"), timeout=90)["data"]
    assert result["status"] == "ok" and result["seconds"] >= 4.0
    deadline = time.monotonic() + 5  # the spool file goes right after the publish
    while os.listdir(os.path.join(str(tmp_path), "spool")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(os.path.join(str(tmp_path), "spool")) == []
    daemon.kill()
    watcher.close()


def wait_until(condition, timeout: float) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass (a bound for a stuck daemon, not a timing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_broker_restart_reconnects_and_keeps_the_session(tmp_path):
    broker = Broker(str(tmp_path / "b")).start()
    daemon = Daemon(broker.url, str(tmp_path / "s"), "br1").start()
    try:
        watcher = Collector(broker.url, ["edge-evolver/devices/br1/+"])
        watcher.wait_for(status_is("online"), timeout=60)
        watcher.close()
        broker.stop()
        time.sleep(1.0)
        broker.start()
        watcher = Collector(broker.url, ["edge-evolver/devices/br1/+"])
        # Published right away: the persistent session queues it even if the daemon is still backing off.
        assert submit(watcher, "after-restart", conv_model(), device="br1")["status"] == "ok"
        assert '"mqtt_disconnected"' in daemon.log()
        # A job that finishes while the broker is away: its result is sent once the broker is back,
        # and its spool file stays until the broker has confirmed it.
        watcher.publish(TOPICS.jobs("br1"), encode_job("during-outage", conv_model(),
                                                        bench={"min_iterations": 10, "min_seconds": 2.0}))
        watcher.wait_for(lambda m: m["topic"].endswith("/telemetry") and m["data"]["activity"] == "benchmarking", 30)
        watcher.close()
        broker.stop()
        state = str(tmp_path / "s")
        # The job finishes while the broker is away (its result is stored before it is published) ...
        assert wait_until(lambda: os.path.exists(os.path.join(state, "results", "during-outage.json")), 120)
        # ... and its spool file stays, since no broker has confirmed the result yet.
        assert os.path.exists(os.path.join(state, "spool", "during-outage.job"))
        broker.start()
        watcher = Collector(broker.url, ["edge-evolver/devices/br1/+"])
        assert watcher.wait_for(result_for("during-outage"), timeout=60)["data"]["status"] == "ok"
        watcher.close()
    finally:
        daemon.kill()
        broker.stop()


def test_shared_subscription_gives_each_job_to_one_board(broker, tmp_path):
    daemons = [Daemon(broker.url, str(tmp_path / name), name, "--group", "lab").start() for name in ("g1", "g2")]
    watcher = Collector(broker.url, ["edge-evolver/devices/+/+"])
    try:
        for name in ("g1", "g2"):
            watcher.wait_for(lambda m, n=name: m["topic"] == TOPICS.status(n) and m["data"]["state"] == "online", 60)
        time.sleep(0.5)
        for i in range(6):
            watcher.publish(TOPICS.group_jobs(), encode_job(f"grp-{i}", conv_model(), bench=QUICK))
        results = [watcher.wait_for(result_for(f"grp-{i}"), timeout=60) for i in range(6)]
        time.sleep(1.0)
        for i in range(6):
            assert len(watcher.matching(result_for(f"grp-{i}"))) == 1
        assert {r["data"]["device_id"] for r in results} <= {"g1", "g2"}
    finally:
        for d in daemons:
            d.kill()
        watcher.close()


def big_model(rows=1536, cols=1024):
    """About 6 MB of fp32 weights: multi-MB models must go through the broker and the framing."""
    w = np.random.RandomState(0).standard_normal((rows, cols)).astype(np.float32)
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"])], _io("x", ["N", rows]), _io("y", ["N", cols]),
                  [numpy_helper.from_array(w, "W")])


def test_mqtt5_round_trip_with_a_multi_megabyte_model(broker, tmp_path):
    daemon = Daemon(broker.url, str(tmp_path), "v5dev", "--mqtt-version", "5").start()
    watcher = Collector(broker.url, ["edge-evolver/devices/v5dev/+"], mqtt_version="5")
    try:
        watcher.wait_for(status_is("online"), timeout=60)
        assert submit(watcher, "v5-1", conv_model(), device="v5dev")["status"] == "ok"
        model = big_model()
        assert len(model) > 6 * 1024 * 1024
        result = submit(watcher, "v5-big", model, device="v5dev")
        assert result["status"] == "ok", result
        assert result["model_sha256"] == hashlib.sha256(model).hexdigest()
    finally:
        daemon.kill()
        watcher.close()


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients is not installed")
def test_documented_mosquitto_commands(served, broker, tmp_path):
    """The docs/protocol.md recipe: pack a job, mosquitto_pub it, mosquitto_sub the result."""
    (tmp_path / "m.onnx").write_bytes(conv_model(8))
    packed = tmp_path / "job.bin"
    subprocess.run([sys.executable, "-m", "edge_evolver", "pack", str(tmp_path / "m.onnx"), "-o", str(packed),
                    "--job-id", "cli-1", "--min-iterations", "20", "--min-seconds", "0"], check=True)
    port = str(broker.port)
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-t", TOPICS.results("dev1"), "-C", "1",
                            "-W", "60"], stdout=subprocess.PIPE)
    time.sleep(0.5)
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-t", TOPICS.jobs("dev1"),
                    "-f", str(packed)], check=True)
    out, _ = sub.communicate(timeout=70)
    result = json.loads(out.decode().splitlines()[0])
    assert (result["job_id"], result["status"]) == ("cli-1", "ok")


def test_monitor_gives_up_on_an_unreachable_broker():
    out = subprocess.run([sys.executable, "-m", "edge_evolver", "monitor", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                          "--duration", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert out.returncode == 2
    assert out.stderr.decode().strip().splitlines()[-1].startswith("error: BROKER_UNREACHABLE: ")


def test_monitor_shows_every_device(served, broker):
    out = subprocess.run([sys.executable, "-m", "edge_evolver", "monitor", "--broker", broker.url, "--duration", "2",
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {row["device_id"]: row for row in json.loads(out.stdout.decode().strip().splitlines()[-1])}
    assert rows["dev1"]["status"]["state"] == "online"
    table = subprocess.run([sys.executable, "-m", "edge_evolver", "monitor", "--broker", broker.url, "--duration",
                            "1.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60).stdout.decode()
    assert "dev1" in table and "online" in table and "onnxruntime" in table


def test_job_timeout_restarts_the_measuring_process(broker, tmp_path):
    # 5 s: the second job (a small conv, default benchmark) must fit in it even on a loaded machine.
    daemon = Daemon(broker.url, str(tmp_path), "slow1", "--job-timeout-s", "5").start()
    watcher = Collector(broker.url, ["edge-evolver/devices/slow1/+"])
    try:
        watcher.wait_for(status_is("online"), timeout=60)
        late = submit(watcher, "too-long", conv_model(), device="slow1",
                      bench={"min_iterations": 10, "min_seconds": 20.0, "max_seconds": 30.0, "warmup_s": 0.0})
        assert (late["status"], late["code"]) == ("error", "TIMEOUT") and "5 s" in late["message"]
        assert submit(watcher, "next-one", conv_model(), device="slow1")["status"] == "ok"
    finally:
        daemon.kill()
        watcher.close()
