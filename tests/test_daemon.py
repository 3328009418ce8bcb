"""`edge-evolver serve` against a real Mosquitto on a free loopback port, as real processes.

Round trip with status, telemetry, Last Will, repeat and cache hit; every kind of bad job; a
daemon killed mid-job; a broker restart; SIGTERM; shared subscriptions; MQTT 5; the documented
mosquitto_pub/mosquitto_sub commands; `monitor`.
"""

import hashlib
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edge_evolver.job import encode_job
from edge_evolver.protocol import Topics, encode_frame

from .mqtt_support import (
    Broker,
    Collector,
    Daemon,
    children,
    end_held,
    free_port,
    hold,
    measuring_child,
    result_for,
    status_is,
)

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
    status = late.wait_for(status_is("online"), timeout=60)["data"]
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
    # A benchmark of 60 s, which the test ends (SIGKILL of the measuring process) once it has seen a live number:
    # the verdict waits for the telemetry instead of racing a fixed benchmark length on a loaded machine.
    mark = watcher.mark()
    watcher.publish(TOPICS.jobs("dev1"), encode_job("tel-1", conv_model(32), bench={
        "min_iterations": 10, "min_seconds": 60.0, "max_seconds": 60.0, "warmup_s": 0.0}))
    live = watcher.wait_for(lambda m: m["topic"].endswith("/telemetry") and (m["data"] or {}).get("job_id") == "tel-1"
                            and (m["data"] or {}).get("fps") is not None, timeout=60, after=mark)["data"]
    assert live["activity"] == "benchmarking" and live["latency_ms_p50"] > 0
    os.kill(measuring_child(daemon), signal.SIGKILL)  # the daemon answers the job and starts a new process
    assert watcher.wait_for(result_for("tel-1"), timeout=60, after=mark)["data"]["status"] == "error"
    done = watcher.mark()
    idle = watcher.wait_for(lambda m: m["topic"].endswith("/telemetry") and m["data"]["activity"] == "idle", 60,
                            after=done)
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
    assert daemon.terminate(timeout=60) == 0
    watcher.wait_for(status_is("stopped"), timeout=60)
    watcher.close()
    assert '"serve_stop"' in daemon.log()


def test_sigterm_while_the_broker_is_unreachable(tmp_path):
    daemon = Daemon(f"mqtt://127.0.0.1:{free_port()}", str(tmp_path), "lonely").start()
    # It is retrying its first connection with back-off once it has logged a failed one.
    assert wait_until(lambda: '"mqtt_connect_failed"' in daemon.log(), 60), daemon.log()[-2000:]
    assert daemon.terminate(timeout=60) == 0
    assert '"mqtt_connect_failed"' in daemon.log() and '"serve_stop"' in daemon.log()


def wait_until(condition, timeout: float) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass (a bound for a stuck daemon, not a timing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _telemetry_of(job_id):
    return lambda m: m["topic"].endswith("/telemetry") and (m["data"] or {}).get("job_id") == job_id


def _mid_job(broker, tmp_path, device, job_id):
    """A daemon in the middle of a job that cannot end before the test acts: its measuring process is held
    (SIGSTOP) before the job arrives, so no benchmark length has to outlast the test's reaction on a loaded
    machine. Returns the daemon, a collector watching it and the held process (see `end_held`)."""
    watcher = Collector(broker.url, [f"edge-evolver/devices/{device}/+"])
    daemon = Daemon(broker.url, str(tmp_path), device).start()
    watcher.wait_for(status_is("online"), timeout=60)
    child = hold(measuring_child(daemon))
    job = encode_job(job_id, conv_model(), bench={"min_iterations": 10, "min_seconds": 2.0, "warmup_s": 0.0})
    watcher.publish(TOPICS.jobs(device), job)  # acknowledged once spooled
    watcher.wait_for(_telemetry_of(job_id), 60)  # the worker has taken it: the job is running
    return daemon, watcher, child


def test_service_stop_mid_job_keeps_the_job_for_the_next_start(broker, tmp_path):
    """systemd's stop signals the whole cgroup: the measuring child may die first. The job must
    stay spooled (not end as an INTERNAL error) and run after the restart."""
    daemon, watcher, child = _mid_job(broker, tmp_path, "stop1", "stop-1")
    try:
        os.kill(child, signal.SIGTERM)
        os.kill(child, signal.SIGCONT)  # a stopped process takes its SIGTERM once continued: it dies first
        for pid in [p for p in children(daemon.proc.pid) if p != child] + [daemon.proc.pid]:
            os.kill(pid, signal.SIGTERM)
        assert daemon.proc.wait(60) == 0
        watcher.wait_for(status_is("stopped"), timeout=60)
        assert not watcher.matching(result_for("stop-1"))
        assert os.listdir(os.path.join(str(tmp_path), "spool")) == ["stop-1.job"]
        daemon.start()
        assert watcher.wait_for(result_for("stop-1"), timeout=90)["data"]["status"] == "ok"
    finally:
        end_held(child)
        daemon.kill()
        watcher.close()


def test_last_will_and_restart_mid_job_finishes_the_job(broker, tmp_path):
    daemon, watcher, child = _mid_job(broker, tmp_path, "kill1", "slow-1")
    try:
        daemon.kill()  # SIGKILL mid-job: no clean disconnect, so the broker sends the Last Will
        end_held(child)  # orphaned (a running one notices and quits; a stopped one cannot)
        watcher.wait_for(status_is("offline"), timeout=60)
        assert os.listdir(os.path.join(str(tmp_path), "spool")) == ["slow-1.job"]
        daemon.start()
        result = watcher.wait_for(result_for("slow-1"), timeout=90)["data"]
        assert result["status"] == "ok" and result["seconds"] >= 2.0
        # The spool file goes once the broker has acknowledged the result.
        assert wait_until(lambda: os.listdir(os.path.join(str(tmp_path), "spool")) == [], 60)
    finally:
        end_held(child)
        daemon.kill()
        watcher.close()


def test_broker_restart_reconnects_and_keeps_the_session(tmp_path):
    broker = Broker(str(tmp_path / "b")).start()
    daemon = Daemon(broker.url, str(tmp_path / "s"), "br1").start()
    child = None
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
        # Held (SIGSTOP) until the broker is gone, the measuring process cannot finish the job before.
        child = hold(measuring_child(daemon))
        watcher.publish(TOPICS.jobs("br1"), encode_job("during-outage", conv_model(), bench=QUICK))
        watcher.wait_for(_telemetry_of("during-outage"), 60)  # the worker has taken it
        watcher.close()
        broker.stop()
        os.kill(child, signal.SIGCONT)
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
        if child is not None:
            end_held(child)
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
    # -d (debug lines, line-buffered by stdbuf) says when the subscription is in place: the job goes only then.
    sub = subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "-d", "-h", "127.0.0.1", "-p", port,
                            "-t", TOPICS.results("dev1"), "-C", "1", "-W", "120"], stdout=subprocess.PIPE)
    seen = []
    while not seen or b"received SUBACK" not in seen[-1]:
        seen.append(sub.stdout.readline())
        assert seen[-1], f"mosquitto_sub ended before subscribing: {seen}"  # EOF (-W bounds a stuck broker)
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-t", TOPICS.jobs("dev1"),
                    "-f", str(packed)], check=True)
    out, _ = sub.communicate(timeout=150)
    (line,) = [x for x in out.decode().splitlines() if x.startswith("{")]  # the one message, between debug lines
    result = json.loads(line)
    assert (result["job_id"], result["status"]) == ("cli-1", "ok")


def test_monitor_gives_up_on_an_unreachable_broker():
    out = subprocess.run([sys.executable, "-m", "edge_evolver", "monitor", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                          "--duration", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert out.returncode == 2
    assert out.stderr.decode().strip().splitlines()[-1].startswith("error: BROKER_UNREACHABLE: ")


def _monitor_until(args, shown, timeout=120.0):
    """`edge-evolver monitor` on a terminal (a pty), read until `shown(output)` holds, then stopped with Ctrl-C:
    the test waits for what it shows, where a --duration would have to outlast its start on a loaded machine.
    Returns (exit code, output). `timeout` bounds a stuck monitor only."""
    master, slave = pty.openpty()
    # SIGINT at its default in the child (see tests/test_loop.py, _follow_watch).
    proc = subprocess.Popen([sys.executable, "-m", "edge_evolver", "monitor", *args], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    out, deadline, interrupted = b"", time.monotonic() + timeout, False
    try:
        while True:
            if not interrupted and shown(out.decode(errors="replace")):
                proc.send_signal(signal.SIGINT)
                interrupted = True
            assert time.monotonic() < deadline, out.decode(errors="replace")[-3000:]
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the monitor has closed the terminal
                chunk = b""
            if not chunk:
                break
            out += chunk
        assert interrupted, f"the monitor ended first: {proc.stderr.read().decode(errors='replace')}"
        return proc.wait(60), out.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_monitor_shows_every_device(served, broker):
    def json_rows(text):
        return {row["device_id"]: row for row in (json.loads(line) for line in text.splitlines()
                                                  if line.startswith("{") and line.endswith("}"))}

    def dev1_online(text):
        return (json_rows(text).get("dev1") or {}).get("state") == "online"

    code, out = _monitor_until(["--broker", broker.url, "--json"], dev1_online)  # one JSON object per change
    assert code == 0 and dev1_online(out)

    def table_shows_dev1(text):
        return any("dev1" in line and "online" in line and "onnxruntime" in line for line in text.splitlines())

    # On a terminal: the table every second; with --duration, once more at the end (Ctrl-C ends it early).
    code, out = _monitor_until(["--broker", broker.url, "--duration", "600"], table_shows_dev1)
    before, final = out.rsplit("device  state", 1)  # the last table: the one printed at the end, after no redraw
    assert code == 0 and before.endswith("\n") and table_shows_dev1(final), out[-3000:]


def test_job_timeout_restarts_the_measuring_process(broker, tmp_path):
    # The limit is the lower of the daemon's --job-timeout-s and the job's timeout_s. The first job's 2 s cannot
    # hold its benchmark of at least 20 s on any machine; the second job has the daemon's 120 s, which bounds a
    # stuck daemon only (its time includes starting the new measuring process, seconds on a loaded machine).
    daemon = Daemon(broker.url, str(tmp_path), "slow1", "--job-timeout-s", "120").start()
    watcher = Collector(broker.url, ["edge-evolver/devices/slow1/+"])
    try:
        watcher.wait_for(status_is("online"), timeout=60)
        first = measuring_child(daemon)
        late = submit(watcher, "too-long", conv_model(), device="slow1", timeout_s=2,
                      bench={"min_iterations": 10, "min_seconds": 20.0, "max_seconds": 30.0, "warmup_s": 0.0})
        assert (late["status"], late["code"]) == ("error", "TIMEOUT") and "2 s" in late["message"]
        assert submit(watcher, "next-one", conv_model(), device="slow1")["status"] == "ok"
        assert measuring_child(daemon) != first  # the one that timed out was replaced
    finally:
        daemon.kill()
        watcher.close()
