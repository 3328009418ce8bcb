"""The board's trust file as a live file: revocation by any edit, a broken file refuses every signed job,
SIGHUP re-reads it at once. A real Gate from a ServeConfig, real files, real signed jobs.
"""

import os
import threading

import numpy as np
import pytest

from edge_evolver.daemon import gate as gate_module
from edge_evolver.daemon.config import ServeConfig
from edge_evolver.daemon.gate import Gate
from edge_evolver.errors import EdgeError, ErrorCode
from edge_evolver.job import decode_job, encode_job
from edge_evolver.protocol import FrameError
from edge_evolver.trust.jobs import JobSigner
from edge_evolver.trust.keys import generate_key

DEVICE = "trust1"
OLD, NEW = generate_key(), generate_key()


class Events:
    """Stands in for the gate's logger: the events it logged, by level."""

    def __init__(self):
        self.seen = []

    def __getattr__(self, level):
        return lambda event, **fields: self.seen.append((level, event, fields))

    def named(self, event):
        return [fields for _, name, fields in self.seen if name == event]


@pytest.fixture
def events(monkeypatch):
    recorder = Events()
    monkeypatch.setattr(gate_module, "log", recorder)
    return recorder


def make_gate(tmp_path, keys=(OLD,), **config):
    """A gate whose trust file holds ``keys``, each line with a comment of the same length."""
    gate = Gate(ServeConfig(state_dir=str(tmp_path), device_id=DEVICE, **config))
    if keys is not None:
        write(gate.trusted_path, keys)
    return gate


def write(path, keys, extra=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:  # in place: the inode stays, as with `cp -p` onto the file
        handle.write(extra + "".join(key.public.text + "  # host\n" for key in keys))


def job(key, job_id="j1"):
    signer = JobSigner(key, ttl_s=600.0)
    return encode_job(job_id, b"model-bytes", {"batch": 1}, {"x": np.ones((1, 3), np.float32)},
                      signer=signer, target={"device": DEVICE})


def opens(gate, payload):
    frame, auth = gate.open(payload)
    return decode_job(frame, 1 << 20).job_id == "j1" and auth is not None


def trust(gate):
    """What the status says of the trust file, checked now (trust_state() alone is the last check's)."""
    facts = gate.facts()
    return {"trust_file": facts["trust_file"], "trusted_host_keys": facts["trusted_host_keys"]}


def refusal(gate, payload):
    with pytest.raises(FrameError) as info:
        gate.open(payload)
    return info.value.code, info.value.message


def test_a_key_swapped_for_one_of_the_same_length_with_the_mtime_kept_is_revoked_at_the_next_job(tmp_path):
    gate = make_gate(tmp_path)
    assert opens(gate, job(OLD))
    before = os.stat(gate.trusted_path)
    write(gate.trusted_path, [NEW])
    os.utime(gate.trusted_path, ns=(before.st_atime_ns, before.st_mtime_ns))  # what `cp -p` and `rsync -a` do
    after = os.stat(gate.trusted_path)
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (before.st_mtime_ns, before.st_size, before.st_ino)
    assert refusal(gate, job(OLD))[0] == ErrorCode.UNKNOWN_KEY
    assert opens(gate, job(NEW))
    assert gate.facts()["trust_file"] == "ok" and gate.facts()["trusted_host_keys"] == 1


def test_a_malformed_trust_file_refuses_every_signed_job_until_it_is_fixed(tmp_path, events):
    gate = make_gate(tmp_path, keys=None)
    changes = []
    gate.on_trust_change = changes.append
    write(gate.trusted_path, [OLD, NEW], extra="c2VjcmV0LXBhc3RlZC1ieS1taXN0YWtl\n")
    for key in (OLD, NEW):
        code, message = refusal(gate, job(key))
        assert code == ErrorCode.UNKNOWN_KEY
        assert f"the trust file {gate.trusted_path} is malformed: line 1" in message
        assert "every signed job is refused until it is fixed" in message
        assert "c2VjcmV0" not in message  # the file's text stays on the board (a pasted line may be a secret)
    facts = gate.facts()
    assert facts["trust_file"].startswith("malformed: line 1 ") and facts["trusted_host_keys"] == 0
    assert changes == [{"trust_file": facts["trust_file"], "trusted_host_keys": 0}]  # once, not per job
    assert len(events.named("trust_file_invalid")) == 1 and "c2VjcmV0" in events.named("trust_file_invalid")[0]["error"]
    write(gate.trusted_path, [OLD, NEW])
    assert opens(gate, job(OLD)) and opens(gate, job(NEW))
    assert gate.facts()["trust_file"] == "ok" and changes[-1] == {"trust_file": "ok", "trusted_host_keys": 2}


def test_a_trust_file_that_cannot_be_read_refuses_too(tmp_path):
    gate = make_gate(tmp_path)
    os.remove(gate.trusted_path)
    os.mkdir(gate.trusted_path)  # unreadable as a file, whoever runs the test (root reads a 0000 file)
    code, message = refusal(gate, job(OLD))
    assert code == ErrorCode.UNKNOWN_KEY and "is unreadable: " in message
    assert trust(gate)["trust_file"].startswith("unreadable: ")
    os.rmdir(gate.trusted_path)
    with open(gate.trusted_path, "wb") as handle:
        handle.write(OLD.public.text.encode("ascii") + b"  # caf\xe9\n")  # Latin-1, not UTF-8
    assert trust(gate) == {"trust_file": "malformed: not UTF-8 text (byte 59)", "trusted_host_keys": 0}
    assert "malformed" in refusal(gate, job(OLD))[1]


def test_unsigned_jobs_on_a_bench_that_allows_them_still_run_while_the_file_is_malformed(tmp_path):
    gate = make_gate(tmp_path, allow_unsigned=True)
    write(gate.trusted_path, [OLD], extra="garbage\n")
    frame, auth = gate.open(encode_job("u1", b"m"))
    assert auth is None and decode_job(frame, 1 << 20).job_id == "u1"
    assert refusal(gate, job(OLD))[0] == ErrorCode.UNKNOWN_KEY


def test_a_malformed_file_at_start_stops_the_daemon_in_one_line(tmp_path):
    """At start it is a setting to fix (`serve` exits 2 with the line, tests/test_keys_cli.py); only a file
    broken while the daemon serves is the refusing state above."""
    path = ServeConfig(state_dir=str(tmp_path), device_id=DEVICE).resolved_trusted_keys()
    write(path, [OLD], extra="garbage\n")
    with pytest.raises(EdgeError) as info:
        Gate(ServeConfig(state_dir=str(tmp_path), device_id=DEVICE))
    assert info.value.code == ErrorCode.BAD_INPUT
    assert info.value.message == f"the trust file {path} is malformed: line 1 is not an ed25519:<base64> public key"


def test_sighup_reload_picks_up_a_change_at_once_on_its_own_thread(tmp_path, events):
    gate = make_gate(tmp_path)
    assert gate.facts()["trusted_host_keys"] == 1
    changes = []
    gate.on_trust_change = changes.append
    write(gate.trusted_path, [OLD, NEW])
    reloader = threading.Thread(target=gate.reload)  # what the SIGHUP handler starts
    reloader.start()
    reloader.join(5.0)
    assert changes == [{"trust_file": "ok", "trusted_host_keys": 2}]
    assert events.named("trust_file_reloaded")[-1] == {"trust_file": gate.trusted_path, "state": "ok", "keys": 2,
                                                       "changed": True}
    assert gate.reload() == {"trust_file": "ok", "trusted_host_keys": 2} and changes == changes[:1]
    assert events.named("trust_file_reloaded")[-1]["changed"] is False


def test_a_deleted_trust_file_trusts_no_key_and_says_missing(tmp_path):
    gate = make_gate(tmp_path)
    assert opens(gate, job(OLD))
    os.remove(gate.trusted_path)
    code, message = refusal(gate, job(OLD))
    assert code == ErrorCode.UNKNOWN_KEY and "trusts no host key" in message
    assert gate.facts()["trust_file"] == "missing" and gate.facts()["trusted_host_keys"] == 0
    write(gate.trusted_path, [OLD])
    assert opens(gate, job(OLD)) and gate.trust_state() == {"trust_file": "ok", "trusted_host_keys": 1}
    assert trust(gate) == gate.trust_state()
