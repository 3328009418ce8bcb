"""edge_evolver/trust: keys, signed jobs (every refusal code), the replay ledger and signed results.

Runs on the oldest library set too (cryptography 40.0.2, the last release for Python 3.6).
"""

import base64
import json
import os
import stat
import struct

import numpy as np
import pytest

from edge_evolver.errors import EdgeError, ErrorCode
from edge_evolver.job import decode_job, encode_job, unwrap
from edge_evolver.protocol import FrameError, dumps, loads
from edge_evolver.trust.jobs import JobSigner, VerifyPolicy, open_job
from edge_evolver.trust.keys import (
    TrustedKeys,
    add_trusted,
    ensure_signing_key,
    generate_key,
    load_signing_key,
    parse_public_key,
    read_trusted,
    remove_trusted,
)
from edge_evolver.trust.replay import ReplayLedger
from edge_evolver.trust.results import check_result, sign_result

HOST = generate_key()
OTHER = generate_key()
NOW = 1_800_000_000.0


def policy(**changes):
    values = dict(trusted=TrustedKeys([(HOST.public, "host")]), device_id="tx1-a", group="lab")
    values.update(changes)
    return VerifyPolicy(**values)


def signed(job_id="j1", key=HOST, target=None, ttl_s=3600.0, clock=lambda: NOW, **extra):
    signer = JobSigner(key, ttl_s=ttl_s, clock=clock)
    return encode_job(job_id, b"model-bytes", {"batch": 1}, {"x": np.ones((1, 3), np.float32)},
                      signer=signer, target=target or {"device": "tx1-a"}, **extra)


def code_of(payload, pol=None, now=NOW):
    with pytest.raises(FrameError) as info:
        open_job(payload, pol or policy(), now=now)
    return info.value.code


def test_a_signed_job_opens_and_decodes_as_sent():
    frame, auth = open_job(signed(meta={"generation": 3}), policy(), now=NOW + 1)
    job = decode_job(frame, 1 << 20)
    assert (job.job_id, job.model, job.meta) == ("j1", b"model-bytes", {"generation": 3})
    assert auth.key_id == HOST.key_id and auth.expires_at == NOW + 3600
    assert decode_job(signed(), 1 << 20).job_id == "j1"  # the spool path: unwrapped, verified at intake


def test_every_refusal_has_its_code():
    assert code_of(encode_job("u", b"m")) == ErrorCode.UNSIGNED
    assert code_of(signed(key=OTHER)) == ErrorCode.UNKNOWN_KEY
    assert code_of(signed(), policy(trusted=TrustedKeys())) == ErrorCode.UNKNOWN_KEY
    assert code_of(signed(), now=NOW + 3601) == ErrorCode.EXPIRED
    assert code_of(signed(clock=lambda: NOW + 301)) == ErrorCode.EXPIRED  # from the future, past the skew
    assert code_of(signed(ttl_s=8 * 24 * 3600.0)) == ErrorCode.EXPIRED  # valid longer than allowed
    assert code_of(signed(target={"device": "tx1-b"})) == ErrorCode.WRONG_TARGET
    assert code_of(signed(target={"group": "other"})) == ErrorCode.WRONG_TARGET
    open_job(signed(target={"group": "lab"}), policy(), now=NOW)
    open_job(signed(target={"group": "*"}), policy(), now=NOW)
    open_job(encode_job("u", b"m"), policy(allow_unsigned=True), now=NOW)


def test_tampering_anywhere_is_a_bad_signature():
    payload = signed()
    block_end = 6 + struct.unpack(">H", payload[4:6])[0]
    header_at = block_end + 8
    for index in (header_at + 20, len(payload) - 1, len(payload) - 14):  # header, tensor, model bytes
        tampered = bytearray(payload)
        tampered[index] ^= 0x01
        assert code_of(bytes(tampered)) in (ErrorCode.BAD_SIGNATURE,), index
    block = json.loads(payload[6:block_end])
    sig = bytearray(base64.b64decode(block["sig"]))
    sig[0] ^= 1
    block["sig"] = base64.b64encode(bytes(sig)).decode()
    raw = json.dumps(block).encode()
    assert code_of(b"EES1" + struct.pack(">H", len(raw)) + raw + payload[block_end:]) == ErrorCode.BAD_SIGNATURE


def test_malformed_envelopes_are_refused_with_a_code():
    payload = signed()
    for bad in (b"EES1", b"EES1\xff\xff", payload[:30], b"EES1\x00\x02{}" + payload[6:], b"EES1\x00\x00"):
        assert code_of(bad) in (ErrorCode.BAD_SIGNATURE, ErrorCode.INVALID_FRAME)


def test_a_result_signature_is_not_a_job_signature():
    """Domain separation: bytes a board signed as a result never verify as a job header."""
    result = sign_result({"job_id": "x", "device_id": "tx1-a"}, HOST)
    assert check_result(result, lambda device: [HOST.public]) is None
    frame = encode_job("j2", b"m")
    head = frame[8:8 + struct.unpack(">I", frame[4:8])[0]]
    block = json.dumps({"alg": "ed25519", "key_id": HOST.key_id,
                        "sig": base64.b64encode(HOST.sign(b"edge-evolver signed result v1\n" + head)).decode()})
    forged = b"EES1" + struct.pack(">H", len(block)) + block.encode() + frame
    assert code_of(forged) == ErrorCode.BAD_SIGNATURE


def test_results_verify_after_a_round_trip_and_not_after_a_change():
    body = {"job_id": "j", "device_id": "tx1-a", "fps": 1234.5678901, "latency_ms_p50": 1e-7, "power_w_mean": None,
            "agreement": {"max_abs_error": float("nan")}, "name": "α"}
    sent = loads(dumps(sign_result(body, HOST)))  # what a host receives and stores
    keys = lambda device: [HOST.public] if device == "tx1-a" else []  # noqa: E731
    assert check_result(sent, keys) is None
    assert check_result(json.loads(json.dumps(sent)), keys) is None  # kept in a run directory, read back
    assert "bad signature" in check_result(dict(sent, fps=9999.0), keys)
    assert "enrolled" in check_result(dict(sent, device_id="tx1-b"), keys)
    assert check_result({k: v for k, v in sent.items() if k != "signature"}, keys) == "unsigned"
    assert "not one enrolled" in check_result(loads(dumps(sign_result(body, OTHER))), keys)


def test_replay_ledger_is_durable_and_forgets_expired_jobs(tmp_path):
    ledger = ReplayLedger(str(tmp_path / "replay"), slack_s=10)
    assert ledger.record("k1", 5, expires_at=NOW) and not ledger.record("k1", 5, expires_at=NOW)
    assert ReplayLedger(str(tmp_path / "replay")).seen("k1", 5)  # a restarted daemon remembers
    assert not ledger.seen("k1", 50) and not ledger.seen("k2", 5)
    ledger.record("k1", 6, expires_at=NOW + 1000)
    assert ledger.prune(now=NOW + 12, force=True) == 1 and not ledger.seen("k1", 5) and ledger.seen("k1", 6)
    ledger.forget("k1", 6)
    assert len(ledger) == 0


def test_keys_files(tmp_path):
    path = str(tmp_path / "keys" / "board.key")
    key, made = ensure_signing_key(path)
    again, made_again = ensure_signing_key(path)
    assert made and not made_again and again.public == key.public
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_signing_key(path).sign(b"x") == key.sign(b"x")  # Ed25519 is deterministic
    trust = str(tmp_path / "trusted")
    assert add_trusted(trust, HOST.public, "lab # host") and not add_trusted(trust, HOST.public)
    assert add_trusted(trust, OTHER.public)  # rotation: two keys at once
    assert [k for k, _ in read_trusted(trust).entries] == [HOST.public, OTHER.public]
    assert remove_trusted(trust, HOST.key_id[:8]) and read_trusted(trust).find(HOST.key_id) is None
    assert parse_public_key(" " + HOST.public.text + "  # comment") == HOST.public


@pytest.mark.parametrize("text", ["", "ed25519:", "ed25519:!!!", "rsa:AAAA", "ed25519:" + "A" * 40, "a b"])
def test_bad_public_keys_are_one_line_errors(text):
    with pytest.raises(ValueError):
        parse_public_key(text)


def test_bad_key_and_trust_files_are_coded_errors(tmp_path):
    (tmp_path / "bad.key").write_text("not a key")
    (tmp_path / "trusted").write_text(HOST.public.text + "\ngarbage line\n")
    for call in (lambda: load_signing_key(str(tmp_path / "bad.key")), lambda: load_signing_key(str(tmp_path / "no")),
                 lambda: read_trusted(str(tmp_path / "trusted"))):
        with pytest.raises(EdgeError) as info:
            call()
        assert info.value.code == ErrorCode.BAD_INPUT and "\n" not in info.value.message
    assert len(read_trusted(str(tmp_path / "missing"))) == 0


def test_unwrap_leaves_plain_frames_alone():
    plain = encode_job("p", b"m")
    assert unwrap(plain) == plain and unwrap(signed()).startswith(b"EEJ1")


def test_meta_has_a_size_limit():
    with pytest.raises(FrameError) as info:
        decode_job(encode_job("m", b"m", meta={"blob": "x" * 20000}), 1 << 20)
    assert info.value.code == ErrorCode.OVERSIZE
