"""A board that requires signed jobs, attacked over a real Mosquitto: what runs, what is refused, with which code.

Every refused job must not run (no measurement, no stored result); every answer the board sends is signed
with its own key; a replayed job never runs twice, across a restart too.
"""

import json
import os
import time

import numpy as np
import pytest

from edge_evolver.job import encode_job
from edge_evolver.protocol import Topics, sha256_hex
from edge_evolver.trust.jobs import JobSigner
from edge_evolver.trust.keys import ensure_signing_key, generate_key, read_trusted
from edge_evolver.trust.results import check_result

from .mqtt_support import Broker, Collector, Daemon, enrol, result_for, status_is

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

TOPICS = Topics()
QUICK = {"min_iterations": 20, "min_seconds": 0.0, "warmup_s": 0.0}
DEVICE = "sec1"


def small_model(scale=2.0):
    node = helper.make_node("Mul", ["x", "s"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                              [numpy_helper.from_array(np.full((1, 8), scale, np.float32), "s")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def external_data_model(location):
    """A model whose only output is a weight read from a file: the file-read attack."""
    tensor = TensorProto()
    tensor.name, tensor.data_type = "w", TensorProto.UINT8
    tensor.dims.extend([16])
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "leak", [],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [16])], [tensor])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    broker = Broker(str(root / "broker")).start()
    host_keys, state = str(root / "host-keys"), str(root / "state")
    daemon_args = enrol(host_keys, state, DEVICE)
    daemon = Daemon(broker.url, state, DEVICE, *daemon_args).start()
    watcher = Collector(broker.url, ["edge-evolver/devices/+/+", "edge-evolver/runs/+/results"])
    watcher.wait_for(status_is("online"), timeout=60)
    host, _ = ensure_signing_key(os.path.join(host_keys, "host.key"))
    ctx = {"broker": broker, "daemon": daemon, "daemon_args": daemon_args, "watcher": watcher, "host": host,
           "state": state,
           "board_keys": [k for k, _ in read_trusted(os.path.join(host_keys, "boards", DEVICE + ".pub")).entries]}
    yield ctx
    ctx["daemon"].kill()
    watcher.close()
    broker.stop()


def signed(ctx, job_id, model=None, key=None, target=None, clock=time.time, **extra):
    signer = JobSigner(key or ctx["host"], ttl_s=600.0, clock=clock)
    return encode_job(job_id, model or small_model(), QUICK, signer=signer,
                      target=target or {"device": DEVICE}, **extra)


def send(ctx, payload, job_id, retain=False, timeout=60.0):
    watcher = ctx["watcher"]
    mark = watcher.mark()
    watcher.conn.publish(TOPICS.jobs(DEVICE), payload, qos=1, retain=retain).wait_for_publish()
    return watcher.wait_for(result_for(job_id), timeout=timeout, after=mark)


def ran(ctx, job_id):
    """Whether the board measured this job: its stored result, or a `job` event in its log."""
    stored = os.path.exists(os.path.join(ctx["state"], "results", job_id + ".json"))
    return stored or f'"job_id": "{job_id}"' in "".join(
        line for line in ctx["daemon"].log().splitlines() if '"event": "job"' in line)


def verified(ctx, result):
    return check_result(result, lambda device: ctx["board_keys"] if device == DEVICE else []) is None


def test_a_signed_job_runs_and_its_result_is_signed_by_the_board(board):
    answer = send(board, signed(board, "good-1", meta={"generation": 1}), "good-1")["data"]
    assert answer["status"] == "ok" and answer["meta"] == {"generation": 1}
    assert verified(board, answer) and answer["job_auth"]["key_id"] == board["host"].key_id
    assert not verified(board, dict(answer, fps=answer["fps"] * 10))  # a forged fitness is caught


@pytest.mark.parametrize("case, code", [
    ("unsigned", "UNSIGNED"), ("forged", "UNKNOWN_KEY"), ("tampered-body", "BAD_SIGNATURE"),
    ("tampered-header", "BAD_SIGNATURE"), ("expired", "EXPIRED"), ("future", "EXPIRED"),
    ("wrong-board", "WRONG_TARGET"), ("wrong-group", "WRONG_TARGET"),
])
def test_bad_jobs_are_refused_with_a_code_and_never_run(board, case, code):
    job_id = "bad-" + case
    payloads = {
        "unsigned": lambda: encode_job(job_id, small_model(), QUICK),
        "forged": lambda: signed(board, job_id, key=generate_key()),
        "tampered-body": lambda: _flip(signed(board, job_id), -3),  # a weight of the model
        "tampered-header": lambda: _flip_after(signed(board, job_id), b'"min_iterations":20'),
        "expired": lambda: signed(board, job_id, clock=lambda: time.time() - 3600),
        "future": lambda: signed(board, job_id, clock=lambda: time.time() + 3600),
        "wrong-board": lambda: signed(board, job_id, target={"device": "someone-else"}),
        "wrong-group": lambda: signed(board, job_id, target={"group": "other-lab"}),
    }
    payload = payloads[case]()
    answer = send(board, payload, job_id)
    data = answer["data"]
    assert (data["status"], data["code"]) == ("error", code), data
    assert answer["topic"] == TOPICS.results(DEVICE) and verified(board, data)
    assert data["payload_sha256"] == sha256_hex(payload) and "\n" not in data["message"]
    assert not ran(board, job_id)


def _flip(payload, index):
    data = bytearray(payload)
    data[index] ^= 0x01
    return bytes(data)


def _flip_after(payload, marker):
    """Change a digit inside the signed header: 20 iterations become 30."""
    return _flip(payload, payload.index(marker) + len(marker) - 2)


def test_a_replayed_job_gets_the_stored_answer_then_a_refusal_and_never_runs_twice(board):
    payload = signed(board, "replay-1")
    first = send(board, payload, "replay-1")["data"]
    again = send(board, payload, "replay-1")["data"]
    assert again["repeated"] and again["fps"] == first["fps"] and verified(board, again)
    spooled = os.path.join(board["state"], "spool", "replay-1.job")
    deadline = time.monotonic() + 120  # a bound for a stuck daemon, not a timing
    while os.path.exists(spooled):  # gone once the broker has confirmed the result
        assert time.monotonic() < deadline, "the spool file of an answered job stayed"
        time.sleep(0.1)
    os.remove(os.path.join(board["state"], "results", "replay-1.json"))  # pruned, as an old result is
    refused = send(board, payload, "replay-1")["data"]
    assert refused["code"] == "REPLAYED" and not os.path.exists(os.path.join(board["state"], "results",
                                                                             "replay-1.json"))
    _restart(board)  # the ledger is on disk: a restarted board still refuses it
    assert send(board, payload, "replay-1")["data"]["code"] == "REPLAYED"
    assert sum('"event": "job"' in line and '"replay-1"' in line for line in _logs(board)) == 1


def _restart(board):
    board["daemon"].terminate()
    mark = board["watcher"].mark()
    board["daemon"] = Daemon(board["broker"].url, board["state"], DEVICE, *board["daemon_args"]).start()
    board["watcher"].wait_for(lambda m: m["topic"] == TOPICS.status(DEVICE) and m["data"]["state"] == "online",
                              timeout=60, after=mark)


def _logs(board):
    """Every log line of the board since the test module started, across restarts (one log file)."""
    return board["daemon"].log().splitlines()


def test_external_data_never_reaches_a_runtime(board):
    secret = b"TOPSECRET-0123456789abcdef"
    os.makedirs(os.path.join(board["state"], "leak"), exist_ok=True)
    with open(os.path.join(board["state"], "leak", "secret.bin"), "wb") as handle:
        handle.write(secret)
    for location in ("leak/secret.bin", os.path.join(board["state"], "leak", "secret.bin"), "../../etc/hostname"):
        job_id = "ext-" + sha256_hex(location.encode())[:8]
        answer = send(board, signed(board, job_id, model=external_data_model(location)), job_id)
        assert answer["data"]["code"] == "EXTERNAL_DATA", answer["data"]
        raw = answer["raw"]
        assert secret not in raw and b"TOPSECRET" not in raw and str(list(secret[:8]))[1:-1].encode() not in raw


def test_reply_to_names_only_the_board_own_topic_or_the_signed_run(board):
    answer = send(board, signed(board, "rt-1", reply_to=TOPICS.results("victim")), "rt-1")
    assert answer["data"]["code"] == "BAD_INPUT" and answer["topic"] == TOPICS.results(DEVICE)
    answer = send(board, signed(board, "rt-2", reply_to=TOPICS.run_results("r9"), run_id="r8"), "rt-2")
    assert answer["data"]["code"] == "BAD_INPUT" and answer["topic"] == TOPICS.results(DEVICE)
    answer = send(board, signed(board, "rt-3", reply_to=TOPICS.run_results("r9"), run_id="r9"), "rt-3")
    assert answer["data"]["status"] == "ok" and answer["topic"] == TOPICS.run_results("r9")


def test_retained_jobs_are_ignored_live_and_after_a_restart(board):
    """The default board speaks MQTT 5 and subscribes with retain-as-published: a retained job is never run."""
    watcher = board["watcher"]
    watcher.conn.publish(TOPICS.jobs(DEVICE), signed(board, "kept-1"), qos=1, retain=True).wait_for_publish()
    _wait_log(board["daemon"], '"job_retained_ignored"', count=1)
    _restart(board)
    _wait_log(board["daemon"], '"job_retained_ignored"', count=2)
    assert not watcher.matching(result_for("kept-1")) and not ran(board, "kept-1")
    watcher.conn.publish(TOPICS.jobs(DEVICE), b"", qos=1, retain=True).wait_for_publish()  # clear it
    assert send(board, signed(board, "after-kept"), "after-kept")["data"]["status"] == "ok"


def test_a_3_1_1_board_runs_a_live_retained_job_once_and_ignores_it_after(board, tmp_path):
    """MQTT 3.1.1 clears the retain flag on a live delivery: that copy runs (once); the copy a
    resubscription brings back is ignored, and the replay ledger would refuse it anyway."""
    host_keys, state = str(tmp_path / "host-keys"), str(tmp_path / "state")
    args = [*enrol(host_keys, state, "v3sec"), "--mqtt-version", "3.1.1"]
    daemon = Daemon(board["broker"].url, state, "v3sec", *args).start()
    watcher = board["watcher"]
    try:
        watcher.wait_for(lambda m: m["topic"] == TOPICS.status("v3sec") and m["data"]["state"] == "online", 60)
        host, _ = ensure_signing_key(os.path.join(host_keys, "host.key"))
        payload = encode_job("v3-kept", small_model(), QUICK, signer=JobSigner(host), target={"device": "v3sec"})
        watcher.conn.publish(TOPICS.jobs("v3sec"), payload, qos=1, retain=True).wait_for_publish()
        watcher.wait_for(result_for("v3-kept"), timeout=60)
        daemon.terminate()
        mark = watcher.mark()
        daemon = Daemon(board["broker"].url, state, "v3sec", *args).start()
        watcher.wait_for(lambda m: m["topic"] == TOPICS.status("v3sec") and m["data"]["state"] == "online", 60,
                         after=mark)
        _wait_log(daemon, '"job_retained_ignored"', count=1)
        assert sum('"event": "job"' in line and '"v3-kept"' in line for line in daemon.log().splitlines()) == 1
        watcher.conn.publish(TOPICS.jobs("v3sec"), b"", qos=1, retain=True).wait_for_publish()
    finally:
        daemon.kill()


def _wait_log(daemon, text, count, timeout=120.0):
    deadline = time.monotonic() + timeout
    while daemon.log().count(text) < count:
        assert time.monotonic() < deadline, f"{text} seen {daemon.log().count(text)} times, not {count}"
        time.sleep(0.1)


def test_status_names_the_board_key_and_its_policy(board):
    status = board["watcher"].wait_for(status_is("online"), timeout=60)["data"]
    assert status["signed_jobs"] == "required" and status["trusted_host_keys"] == 1
    assert status["public_key"] == board["board_keys"][0].text and status["key_id"] == board["board_keys"][0].key_id
    json.dumps(status)


def test_a_job_the_broker_delivers_again_is_not_answered_again(tmp_path):
    """A QoS 1 redelivery (DUP, after a broker restart lost the board's acknowledgement) of a job whose result
    the broker already acknowledged gets no second answer; a host's deliberate resend (no DUP) does."""
    from edge_evolver.daemon.config import ServeConfig
    from edge_evolver.daemon.service import EdgeDaemon

    config = ServeConfig(state_dir=str(tmp_path), device_id="dup1", allow_unsigned=True)
    daemon = EdgeDaemon(config, {}, None, lambda: {}, lambda: {})
    sent = []
    daemon.outbox.publish = lambda body, reply_to=None: sent.append(body)  # type: ignore[method-assign]
    daemon.store.store_result("dup-1", {"job_id": "dup-1", "status": "ok", "fps": 1.0})
    payload = encode_job("dup-1", small_model(), QUICK)
    daemon._intake(payload, duplicate=True)
    assert sent == []
    daemon._intake(payload, duplicate=False)
    assert len(sent) == 1 and sent[0]["repeated"] and sent[0]["fps"] == 1.0
