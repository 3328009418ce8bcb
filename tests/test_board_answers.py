"""What a board puts in its answers so that a host can bind them (docs/security.md), and what it re-checks.

In-process EdgeDaemon with its publishes captured, no broker: refusals of frames the board could not open are
marked ``unopened`` and name the digest of the frame itself; a verified job's refusal and result echo its key
id and sequence number; spooled jobs are verified again at start-up; ids are matched whole; a result never
leaves above MAX_RESULT_BYTES and a result the broker keeps refusing is trimmed, then dropped, never wedging.
"""

import os

import pytest

from edge_evolver.daemon.config import ServeConfig
from edge_evolver.daemon.outbox import DROP_AFTER, TRIM_AFTER, Outbox, fit
from edge_evolver.daemon.service import EdgeDaemon
from edge_evolver.job import encode_job
from edge_evolver.protocol import MAX_RESULT_BYTES, dumps, encode_frame, sha256_hex, valid_device_id, valid_job_id
from edge_evolver.trust.jobs import JobSigner
from edge_evolver.trust.keys import add_trusted, ensure_signing_key, generate_key
from edge_evolver.trust.results import check_result, sign_result

QUICK = {"min_iterations": 5, "min_seconds": 0.0, "warmup_s": 0.0}
MODEL = b"not really onnx, never run here"


@pytest.fixture()
def board(tmp_path):
    config = ServeConfig(state_dir=str(tmp_path), device_id="b1", max_payload_mb=0.01)
    host = generate_key()
    add_trusted(config.resolved_trusted_keys(), host.public, "test host")
    daemon = EdgeDaemon(config, {}, None, lambda: {}, lambda: {})
    sent = []
    daemon.outbox.publish = lambda body, reply_to=None: sent.append((body, reply_to))  # type: ignore[method-assign]
    daemon.jobs.put = lambda job_id: sent.append(("queued", job_id))  # type: ignore[method-assign]
    return daemon, JobSigner(host), sent


def test_an_oversize_unsigned_frame_is_refused_unopened_naming_its_own_digest(board):
    daemon, _, sent = board
    planted = encode_job("run1.g001.a0.b1", MODEL + b"\0" * 20000, QUICK, reply_to="edge-evolver/runs/run1/results",
                         run_id="run1")
    daemon._intake(planted)
    ((body, reply_to),) = sent
    assert body["code"] == "OVERSIZE" and body["refusal"] is True and body["unopened"] is True
    assert body["payload_sha256"] == sha256_hex(planted) and "job_auth" not in body
    assert reply_to is None  # an unverified header never chooses where the board speaks


def test_a_verified_job_s_refusal_echoes_its_key_and_sequence(board):
    daemon, signer, sent = board
    payload = encode_job("rt-1", MODEL, QUICK, signer=signer, target={"device": "b1"},
                         reply_to="edge-evolver/devices/victim/results")
    daemon._intake(payload)
    ((body, _),) = sent
    assert body["code"] == "BAD_INPUT" and body["refusal"] is True and body["unopened"] is False
    assert body["job_auth"]["key_id"] == signer.key.key_id and isinstance(body["job_auth"]["seq"], int)
    assert body["payload_sha256"] == sha256_hex(payload)


def test_a_finished_job_s_answer_is_bound_to_its_payload(board):
    daemon, signer, sent = board
    payload = encode_job("ok-1", MODEL, QUICK, signer=signer, target={"device": "b1"})
    daemon._intake(payload)
    assert sent == [("queued", "ok-1")]
    daemon.outbox.send = lambda job_id, body: sent.append((body, None))  # type: ignore[method-assign]
    daemon._finish("ok-1", {"status": "ok", "fps": 5.0}, {}, daemon._header_of(daemon._read_spool("ok-1")))
    body = sent[-1][0]
    assert body["payload_sha256"] == sha256_hex(payload) and body["model_sha256"] == sha256_hex(MODEL)
    assert body["job_auth"]["key_id"] == signer.key.key_id and "refusal" not in body


def test_spooled_jobs_are_verified_again_at_start_up(board):
    daemon, signer, sent = board
    good = encode_job("sp-good", MODEL, QUICK, signer=signer, target={"device": "b1"})
    foreign = encode_job("sp-foreign", MODEL, QUICK, signer=JobSigner(generate_key()), target={"device": "b1"})
    tampered = bytearray(encode_job("sp-tampered", MODEL, QUICK, signer=signer, target={"device": "b1"}))
    tampered[-3] ^= 1  # a byte of the model: the signed body digest no longer matches
    renamed = encode_job("sp-other", MODEL, QUICK, signer=signer, target={"device": "b1"})
    for job_id, payload in (("sp-good", good), ("sp-foreign", foreign), ("sp-tampered", bytes(tampered)),
                            ("sp-renamed", renamed), ("sp-unsigned", encode_job("sp-unsigned", MODEL, QUICK))):
        daemon.store.spool(job_id, payload)
    daemon._recover()
    assert [item for item in sent if item[0] == "queued"] == [("queued", "sp-good")]
    codes = {body["job_id"]: body["code"] for body, _ in sent if body != "queued"}
    assert codes == {"sp-foreign": "UNKNOWN_KEY", "sp-tampered": "BAD_SIGNATURE", "sp-renamed": "INVALID_FRAME",
                     "sp-unsigned": "UNSIGNED"}
    assert daemon.store.pending() == ["sp-good"]


def test_ids_are_matched_whole():
    for bad in ("x\n", "r\n", "a b", "x\r", "dev\n"):
        assert not valid_job_id(bad) and not valid_device_id(bad)
    assert valid_job_id("run1.g001.a0.k0.carry.any.r9") and valid_device_id("tx1-a")


def test_a_job_id_with_a_trailing_newline_is_refused(board):
    daemon, signer, sent = board
    header = {"protocol": 1, "job_id": "x\n", "model": {"size": len(MODEL), "sha256": sha256_hex(MODEL)}}
    daemon.config.allow_unsigned = True
    daemon._intake(encode_frame(header, [MODEL]))
    ((body, _),) = sent
    assert body["status"] == "error" and body["job_id"] is None


# ---- result size -----------------------------------------------------------------------------------------

def _big_result():
    return {"job_id": "big-1", "device_id": "b1", "status": "ok", "fps": 123.0, "latency_ms_p50": 1.5,
            "payload_sha256": "p" * 64, "job_auth": {"key_id": "k" * 16, "seq": 3}, "model_sha256": "m" * 64,
            "latency_samples_ms": [1.25] * 1_000_000, "profile": [{"name": "n" * 200, "ms": 1.0}] * 5000}


def test_a_result_never_leaves_above_the_bound_and_keeps_its_figures(tmp_path):
    key, _ = ensure_signing_key(str(tmp_path / "board.key"))
    outbox = Outbox(_FakeMqtt(), None, "t", lambda _t: True, lambda body: sign_result(body, key))
    data = outbox.encode(_big_result())
    assert len(data) <= MAX_RESULT_BYTES
    import json

    body = json.loads(data)
    assert body["fps"] == 123.0 and body["job_auth"]["seq"] == 3 and "latency_samples_ms" not in body
    assert set(body["trimmed"]) >= {"latency_samples_ms"}
    assert check_result(body, lambda _d: [key.public]) is None  # re-signed after trimming


def test_fit_keeps_essentials_or_says_it_could_not():
    small, dropped = fit({"job_id": "j", "status": "ok", "fps": 1.0, "engine_info": {"x": 1}}, 0)
    assert dropped == ["engine_info"] and small["fps"] == 1.0 and small["trimmed"] == ["engine_info"]
    huge, _ = fit({"job_id": "j", "status": "ok", "message": "m" * (2 * MAX_RESULT_BYTES)}, MAX_RESULT_BYTES)
    assert huge["status"] == "error" and huge["code"] == "INTERNAL" and len(dumps(huge)) < 10_000


class _Info:
    def is_published(self):
        raise RuntimeError("never left")  # what paho says of a publish the broker dropped us for


class _FakeMqtt:
    def __init__(self):
        import threading

        self.connected = threading.Event()
        self.connected.set()
        self.published = []

    def publish(self, topic, data, qos, retain):
        self.published.append(data)
        return _Info()


def test_a_result_the_broker_keeps_refusing_is_trimmed_then_dropped(tmp_path):
    from edge_evolver.daemon.jobstore import JobStore

    store = JobStore(str(tmp_path))
    store.spool("big-1", b"payload")
    body = {"job_id": "big-1", "status": "ok", "fps": 2.0, "engine_info": {"layers": ["x" * 100] * 100}}
    store.store_result("big-1", body)
    mqtt = _FakeMqtt()
    outbox = Outbox(mqtt, store, "t", lambda _t: True)
    outbox.send("big-1", body)
    for _ in range(DROP_AFTER + 2):
        outbox.confirm()
    sizes = [len(d) for d in mqtt.published]
    assert len(sizes) == DROP_AFTER + 1  # the first send and DROP_AFTER resends, then nothing
    assert sizes[TRIM_AFTER + 1] < sizes[0] and b'"trimmed"' in mqtt.published[-1]
    assert outbox.confirm() == 0 and store.pending() == []  # no wedge: the outbox is empty, the spool done
    assert store.result("big-1")["trimmed"] == ["engine_info"]  # what is kept says what went
    assert os.path.exists(store.result_path("big-1"))
