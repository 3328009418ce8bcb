"""The host believes only answers bound to its own jobs (host_trainer/fleet/binding.py, docs/security.md).

Forged answers of every kind are delivered through the Fleet's MQTT callback, exactly as paho would hand
them over: a wrong board, a wrong sequence number, a refusal of another payload, a refusal with a null
digest, an unopened-frame refusal, a cross-board result signed with another enrolled board's key. None
changes what the run keeps; a Hypothesis fuzz of 10,000 hostile answers checks the rule against an
oracle written independently of the implementation.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_evolver.job import encode_job
from edge_evolver.protocol import dumps, sha256_hex
from edge_evolver.trust.jobs import sealed_auth
from edge_evolver.trust.keys import ensure_signing_key, generate_key
from edge_evolver.trust.results import sign_result
from host_trainer.fleet.binding import ANY, SentJob
from host_trainer.fleet.jobs import Fleet, FleetConfig, FleetError
from host_trainer.fleet.trust import embedded_trust, enroll

RUN = "run1"
MODEL = b"\x08\x07onnx model bytes"
JOB = "run1.g001.a0.tx1-a"


class _Bar:
    def update(self, *args, **kwargs):
        pass


@pytest.fixture()
def setup(tmp_path):
    """A fleet for boards tx1-a and tx1-b (both enrolled), and one job sent to tx1-a."""
    trust, board_dir = embedded_trust(tmp_path / "emb", "tx1-a", 60.0)
    board_a, _ = ensure_signing_key(str(board_dir / "board.key"))
    board_b = generate_key()
    enroll(trust.keys_dir, "tx1-b", board_b.public)
    cfg = FleetConfig(broker="mqtt://127.0.0.1:1", devices=["tx1-a", "tx1-b"], job_timeout_s=0.2, job_retries=0)
    fleet = Fleet(cfg, RUN, results_dir=tmp_path / "run" / "results", trust=trust)
    payload = encode_job(JOB, MODEL, signer=trust.signer, target={"device": "tx1-a"})
    auth = sealed_auth(payload)
    sent = SentJob(JOB, "tx1-a", sha256_hex(payload), sha256_hex(MODEL), auth["key_id"], auth["seq"])
    fleet._remember(sent)
    return fleet, sent, board_a, board_b


def _result(sent: SentJob, **fields) -> dict:
    body = {"job_id": sent.job_id, "device_id": "tx1-a", "status": "ok", "fps": 100.0,
            "model_sha256": sent.model_sha256, "payload_sha256": sent.payload_sha256,
            "job_auth": {"key_id": sent.key_id, "seq": sent.seq}}
    body.update(fields)
    return body


def _refusal(sent: SentJob, code: str, **fields) -> dict:
    body = {"job_id": sent.job_id, "device_id": "tx1-a", "status": "error", "code": code, "message": code,
            "refusal": True, "unopened": False, "payload_sha256": sent.payload_sha256, "model_sha256": None}
    body.update(fields)
    return body


def _deliver(fleet, body, topic_device="tx1-a"):
    fleet._on_message(f"edge-evolver/devices/{topic_device}/results", dumps(body))


def _kept(fleet) -> dict:
    return {"results": dict(fleet.results), "refused": dict(fleet.refused), "bounced": dict(fleet.bounced)}


EMPTY = {"results": {}, "refused": {}, "bounced": {}}


def test_a_bound_result_is_kept(setup):
    fleet, sent, board_a, _ = setup
    _deliver(fleet, sign_result(_result(sent), board_a))
    assert fleet.results[JOB]["fps"] == 100.0
    assert fleet._wait(JOB, "tx1-a", _Bar())["fps"] == 100.0


@pytest.mark.parametrize("forge", [
    "wrong_board", "other_board_key", "wrong_sequence", "no_job_auth", "another_host_key", "another_model",
    "refusal_of_another_payload", "refusal_with_null_digest", "unsigned", "other_topic", "other_job_id",
])
def test_forged_answers_change_nothing(setup, forge):
    fleet, sent, board_a, board_b = setup
    forged = {
        # tx1-b's own, correctly signed result for a job the host sent to tx1-a
        "wrong_board": (sign_result(_result(sent, device_id="tx1-b"), board_b), "tx1-b"),
        # a result naming tx1-a but signed with tx1-b's (enrolled) key
        "other_board_key": (sign_result(_result(sent), board_b), "tx1-a"),
        "wrong_sequence": (sign_result(_result(sent, job_auth={"key_id": sent.key_id, "seq": sent.seq - 1}),
                                       board_a), "tx1-a"),
        "no_job_auth": (sign_result(_result(sent, job_auth=None), board_a), "tx1-a"),
        "another_host_key": (sign_result(_result(sent, job_auth={"key_id": "0" * 16, "seq": sent.seq}), board_a),
                             "tx1-a"),
        "another_model": (sign_result(_result(sent, model_sha256="f" * 64), board_a), "tx1-a"),
        "refusal_of_another_payload": (sign_result(_refusal(sent, "OVERSIZE", payload_sha256="e" * 64), board_a),
                                       "tx1-a"),
        "refusal_with_null_digest": (sign_result(_refusal(sent, "WRONG_TARGET", payload_sha256=None), board_a),
                                     "tx1-a"),
        "unsigned": (_result(sent), "tx1-a"),
        "other_topic": (sign_result(_result(sent), board_a), "tx1-b"),
        "other_job_id": (sign_result(_result(sent, job_id="run1.g001.a1.tx1-a"), board_a), "tx1-a"),
    }[forge]
    _deliver(fleet, *forged)
    assert _kept(fleet) == EMPTY
    assert fleet._wait(JOB, "tx1-a", _Bar()) is None  # times out: nothing stops or steers the run


def test_an_unopened_refusal_is_never_kept_and_never_stops_the_run(setup):
    fleet, sent, board_a, _ = setup
    # The attack: an unsigned frame over the size limit under our job id. The board can only quote that id.
    planted = _refusal(sent, "OVERSIZE", unopened=True, payload_sha256=sha256_hex(b"attacker's frame"))
    _deliver(fleet, sign_result(planted, board_a))
    assert _kept(fleet) == EMPTY
    # Our own payload, which the board could not open: the wait ends (a resend follows), nothing is stored.
    _deliver(fleet, sign_result(_refusal(sent, "UNKNOWN_KEY", unopened=True), board_a))
    assert fleet.results == {} and fleet.refused == {} and JOB in fleet.bounced
    assert fleet._wait(JOB, "tx1-a", _Bar()) is None


def test_only_the_addressed_board_can_stop_the_run(setup):
    fleet, sent, board_a, board_b = setup
    # Our job forwarded to tx1-b draws WRONG_TARGET naming our very payload: tx1-b was not asked. Ignored.
    _deliver(fleet, sign_result(_refusal(sent, "WRONG_TARGET", device_id="tx1-b"), board_b), "tx1-b")
    assert _kept(fleet) == EMPTY
    _deliver(fleet, sign_result(_refusal(sent, "WRONG_TARGET"), board_a))
    with pytest.raises(FleetError, match="refused job .*WRONG_TARGET"):
        fleet._wait(JOB, "tx1-a", _Bar())


def test_a_bound_refusal_of_the_model_is_its_final_answer(setup):
    fleet, sent, board_a, _ = setup
    _deliver(fleet, sign_result(_refusal(sent, "INVALID_MODEL"), board_a))
    assert fleet._wait(JOB, "tx1-a", _Bar())["code"] == "INVALID_MODEL"


def test_a_repeated_answer_binds_by_model_and_host_key(setup):
    """A resumed run sends the same id again with a new sequence number; the board answers from its store."""
    fleet, sent, board_a, _ = setup
    old = _result(sent, job_auth={"key_id": sent.key_id, "seq": sent.seq - 5}, repeated=True)
    _deliver(fleet, sign_result(old, board_a))
    assert fleet.results[JOB]["repeated"] is True


def test_a_group_job_binds_to_a_board_of_the_group(tmp_path, setup):
    fleet, sent, board_a, board_b = setup
    group = SentJob("run1.g002.a0.any", ANY, "d" * 64, sent.model_sha256, sent.key_id, sent.seq + 1)
    fleet._remember(group)
    stranger = generate_key()
    enroll(fleet.trust.keys_dir, "tx2-z", stranger.public)  # enrolled, but not one of the run's --device boards
    _deliver(fleet, sign_result(_result(group, device_id="tx2-z"), stranger), "tx2-z")
    assert _kept(fleet) == EMPTY
    _deliver(fleet, sign_result(_result(group, device_id="tx1-b"), board_b), "tx1-b")
    assert fleet.results[group.job_id]["device_id"] == "tx1-b"


def test_status_never_sends_a_job_to_an_unknown_board(setup):
    fleet, _, _, _ = setup
    fleet.cfg.devices = ["tx1-a"]
    fleet._on_message("edge-evolver/devices/tx1-a/status", dumps({"state": "offline"}))
    fleet._on_message("edge-evolver/devices/evil/status", dumps({"state": "online", "public_key": "ed25519:x"}))
    assert fleet._online_choice("tx1-a") is None  # wait: never the board that only says it is online
    fleet._on_message("edge-evolver/devices/tx1-b/status", dumps({"state": "online"}))
    assert fleet._online_choice("tx1-a") == "tx1-b"  # another board whose key is enrolled here


# ---- fuzz -----------------------------------------------------------------------------------------------

def _oracle(body: dict, topic: str, signer: str, sent: SentJob) -> bool:
    """Written from docs/security.md, not from binding.py: must this answer change a record?"""
    if signer != "a" or body.get("device_id") != "tx1-a" or topic != "tx1-a":
        return False
    if body.get("refusal") is True:
        return body.get("payload_sha256") == sent.payload_sha256
    auth = body.get("job_auth")
    seq_ok = isinstance(auth, dict) and auth.get("key_id") == sent.key_id and (
        body.get("repeated") is True or (auth.get("seq") == sent.seq and not isinstance(auth.get("seq"), bool)))
    return body.get("job_id") == sent.job_id and body.get("model_sha256") == sent.model_sha256 and seq_ok


HOSTILE = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=8),
                    st.sampled_from(["tx1-a", "tx1-b", JOB, "a" * 64, "OVERSIZE", "WRONG_TARGET"]),
                    st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
FIELDS = ["job_id", "device_id", "status", "code", "refusal", "unopened", "repeated", "payload_sha256",
          "model_sha256", "job_auth", "fps"]


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(base=st.sampled_from(["result", "refusal", "stop", "bounce"]),
       changes=st.dictionaries(st.sampled_from(FIELDS), HOSTILE, max_size=3),
       seq_shift=st.sampled_from([0, 0, 1, -1]), signer=st.sampled_from(["a", "a", "b", "stranger", "none"]),
       topic=st.sampled_from(["tx1-a", "tx1-a", "tx1-b", "+", "tx1-a/x"]))
def test_fuzz_no_unbound_answer_changes_a_record(fuzz_fleet, base, changes, seq_shift, signer, topic):
    fleet, sent, keys = fuzz_fleet
    fleet.results.clear(), fleet.refused.clear(), fleet.bounced.clear()
    body = {"result": lambda: _result(sent, job_auth={"key_id": sent.key_id, "seq": sent.seq + seq_shift}),
            "refusal": lambda: _refusal(sent, "INVALID_MODEL"), "stop": lambda: _refusal(sent, "EXPIRED"),
            "bounce": lambda: _refusal(sent, "UNSIGNED", unopened=True)}[base]()
    body.update(changes)
    signed = body if signer == "none" else sign_result(body, keys[signer])
    _deliver(fleet, signed, topic)
    changed = _kept(fleet) != EMPTY
    assert changed == _oracle(body, topic, signer, sent), (body, topic, signer)


@pytest.fixture(scope="module")
def fuzz_fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    trust, board_dir = embedded_trust(tmp / "emb", "tx1-a", 60.0)
    keys = {"a": ensure_signing_key(str(board_dir / "board.key"))[0], "b": generate_key(), "stranger": generate_key()}
    enroll(trust.keys_dir, "tx1-b", keys["b"].public)
    fleet = Fleet(FleetConfig(broker="mqtt://127.0.0.1:1", devices=["tx1-a"]), RUN, trust=trust)
    payload = encode_job(JOB, MODEL, signer=trust.signer, target={"device": "tx1-a"})
    auth = sealed_auth(payload)
    sent = SentJob(JOB, "tx1-a", sha256_hex(payload), sha256_hex(MODEL), auth["key_id"], auth["seq"])
    fleet._remember(sent)
    return fleet, sent, keys
