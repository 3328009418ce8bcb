"""The host's side of trust: `host-trainer keys`, and a Fleet that keeps only results signed by an enrolled
board key and stops at once on a board's refusal of its very payload (and only then). Every binding rule, with forged
answers of each kind and a fuzz: tests/test_result_binding.py."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edge_evolver.protocol import dumps, sha256_hex
from edge_evolver.trust.keys import ensure_signing_key, generate_key, load_signing_key, parse_public_key
from edge_evolver.trust.results import sign_result
from host_trainer.cli import app
from host_trainer.errors import UserError
from host_trainer.fleet.binding import SentJob
from host_trainer.fleet.jobs import Fleet, FleetConfig, FleetError
from host_trainer.fleet.trust import HostTrust, embedded_trust, enroll, open_trust

RUNNER = CliRunner()
RUN = "run1"


def test_keys_commands(tmp_path):
    keys = str(tmp_path / "k")
    made = RUNNER.invoke(app, ["keys", "init", "--keys-dir", keys])
    assert made.exit_code == 0
    public = made.stdout.strip().splitlines()[-1]
    assert parse_public_key(public) == load_signing_key(f"{keys}/host.key").public
    assert RUNNER.invoke(app, ["keys", "init", "--keys-dir", keys]).stdout.strip().splitlines()[-1] == public
    assert RUNNER.invoke(app, ["keys", "show", "--keys-dir", keys]).stdout.strip() == public
    board = generate_key().public.text
    enrolled = RUNNER.invoke(app, ["keys", "enroll", "tx1-a", board, "--keys-dir", keys])
    assert enrolled.exit_code == 0 and "enrolled" in enrolled.stdout
    assert (tmp_path / "k" / "boards" / "tx1-a.pub").read_text().startswith(board)
    for bad in (["keys", "enroll", "../x", board], ["keys", "enroll", "tx1-a", "ed25519:nope"],
                ["keys", "show", "--keys-dir", str(tmp_path / "none")]):
        result = RUNNER.invoke(app, bad + (["--keys-dir", keys] if "--keys-dir" not in bad else []))
        assert result.exit_code == 2 and result.output.count("error:") == 1, result.output


def test_open_trust_explains_the_set_up(tmp_path):
    with pytest.raises(UserError, match="host-trainer keys init"):
        open_trust(str(tmp_path), insecure=False, ttl_s=60)
    assert open_trust(str(tmp_path), insecure=True, ttl_s=60).insecure


def _fleet(tmp_path, trust: HostTrust) -> Fleet:
    cfg = FleetConfig(broker="mqtt://127.0.0.1:1", devices=["tx1-a"], job_timeout_s=5, job_retries=0)
    return Fleet(cfg, RUN, results_dir=tmp_path / "run" / "results", trust=trust)


def _result(job_id="run1.g001.a0.tx1-a", **fields):
    body = {"job_id": job_id, "device_id": "tx1-a", "status": "ok", "fps": 100.0, "model_sha256": "m" * 64}
    body.update(fields)
    return body


@pytest.fixture()
def fleet(tmp_path):
    trust, board_dir = embedded_trust(tmp_path / "emb", "tx1-a", 60.0)
    board, _ = ensure_signing_key(str(board_dir / "board.key"))
    fleet = _fleet(tmp_path, trust)
    fleet.board = board  # type: ignore[attr-defined]
    return fleet


def _sent(fleet, job_id="run1.g001.a0.tx1-a", payload=b"our payload"):
    """Record a job as sent; the result that answers it echoes its key id and sequence number."""
    fleet._remember(SentJob(job_id, "tx1-a", sha256_hex(payload), "m" * 64, fleet.trust.signer.key.key_id, 7))
    return {"job_auth": {"key_id": fleet.trust.signer.key.key_id, "seq": 7}}


def _deliver(fleet, body, device="tx1-a"):
    fleet._on_message(f"edge-evolver/devices/{device}/results", dumps(body))


def test_only_results_signed_by_the_enrolled_key_count(fleet):
    good = sign_result(_result(**_sent(fleet)), fleet.board)
    _deliver(fleet, sign_result(_result(fps=1e9), generate_key()))  # a stranger's key
    _deliver(fleet, _result(fps=1e9))  # unsigned
    _deliver(fleet, dict(good, fps=1e9))  # altered after signing
    _deliver(fleet, sign_result(_result(device_id="tx1-b"), fleet.board), device="tx1-a")  # names another board
    assert fleet.results == {}
    _deliver(fleet, good)
    assert fleet.results[good["job_id"]]["fps"] == 100.0


def test_a_refusal_of_our_payload_stops_at_once_and_a_planted_one_is_ignored(fleet):
    job_id = "run1.g002.a0.tx1-a"
    _sent(fleet, job_id)
    planted = sign_result(_result(job_id, status="error", code="WRONG_TARGET", message="not me", refusal=True,
                                  payload_sha256=sha256_hex(b"someone else's")), fleet.board)
    _deliver(fleet, planted)
    assert job_id not in fleet.refused and job_id not in fleet.results
    ours = sign_result(_result(job_id, status="error", code="EXPIRED", message="expired 5 s ago", refusal=True,
                               payload_sha256=sha256_hex(b"our payload")), fleet.board)
    _deliver(fleet, ours)
    fleet.status["tx1-a"] = {"state": "online"}
    with pytest.raises(FleetError, match="refused job .*EXPIRED"):
        fleet._wait(job_id, "tx1-a", _NullBar())


def test_kept_results_carry_their_signature_and_the_run_keeps_the_board_key(fleet, tmp_path):
    good = sign_result(_result(), fleet.board)
    fleet._keep(good["job_id"], good)
    kept = json.loads((tmp_path / "run" / "results" / f"{good['job_id']}.json").read_text())
    assert kept["signature"]["key_id"] == fleet.board.key_id
    assert (tmp_path / "run" / "board-keys" / "tx1-a.pub").read_text().startswith(fleet.board.public.text)
    verify = RUNNER.invoke(app, ["keys", "verify", str(tmp_path / "run")])
    assert verify.exit_code == 0 and "1 of 1 results verified" in verify.stdout
    kept["fps"] = 1e9
    (tmp_path / "run" / "results" / f"{good['job_id']}.json").write_text(json.dumps(kept))
    verify = RUNNER.invoke(app, ["keys", "verify", str(tmp_path / "run")])
    assert verify.exit_code == 1 and "FAILED" in verify.stdout


def test_enrolment_during_a_run_is_picked_up(tmp_path):
    host, _ = ensure_signing_key(str(tmp_path / "h" / "host.key"))
    trust = open_trust(str(tmp_path / "h"), insecure=False, ttl_s=60)
    board = generate_key()
    body = sign_result(_result(), board)
    assert "no key is enrolled" in trust.check(body)
    enroll(tmp_path / "h", "tx1-a", board.public)
    assert trust.check(body) is None


class _NullBar:
    def update(self, *args, **kwargs):
        pass



def test_hostile_result_messages_never_reach_paho_s_thread(fleet):
    """Anything on a results topic ends in _on_message: deep nesting, odd types, a non-string key id."""
    job_id = "run1.g003.a0.tx1-a"
    _sent(fleet, job_id)
    for payload in (b"[" * 100000 + b"]" * 100000, b'{"job_id": ["run1.x"]}', b"\xff\xfe",
                    dumps(_result(job_id, signature={"key_id": ["x"], "sig": 5})),
                    dumps(_result(job_id, signature={"key_id": fleet.board.key_id, "sig": None})),
                    dumps(_result(job_id, signature="nope")), dumps(_result(job_id, device_id=None))):
        fleet._on_message("edge-evolver/devices/tx1-a/results", payload)
    assert fleet.results == {}
