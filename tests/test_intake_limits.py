"""Intake limits (edge_evolver/daemon/intake.py): unauthenticated refusals are paced by a token bucket, the
rest counted and summarised; a trusted host's jobs and authenticated refusals never wait for a token.

The daemon tests run EdgeDaemon._intake in-process (no broker, no worker): its answers are caught at the
outbox, an accepted job is seen in the spool and the worker's queue.
"""

import os

import pytest

from edge_evolver.daemon.intake import UNAUTHENTICATED, RefusalLimiter, TokenBucket
from edge_evolver.errors import ErrorCode
from edge_evolver.job import encode_job
from edge_evolver.trust.jobs import JobSigner
from edge_evolver.trust.keys import PublicKey, ensure_signing_key, generate_key

from .mqtt_support import enrol

DEVICE = "lim1"
MODEL = b"not parsed at intake: the worker checks the model"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Later:
    """A stand-in for the limiter's timer: keeps what it was asked to run, runs it on demand."""

    def __init__(self) -> None:
        self.pending = []

    def __call__(self, delay_s, action) -> None:
        self.pending.append((delay_s, action))

    def run(self) -> None:
        pending, self.pending = self.pending, []
        for _delay, action in pending:
            action()


# ------------------------------------------------------------------ the token bucket
def test_the_bucket_gives_its_burst_then_refills_at_its_rate():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token at 2 a second
    assert [bucket.take() for _ in range(2)] == [True, False]
    clock.now += 60.0  # a long quiet spell refills up to the burst, no further
    assert sum(bucket.take() for _ in range(10)) == 3


def test_a_clock_that_steps_back_adds_nothing_and_breaks_nothing():
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=1, clock=clock)
    assert bucket.take()
    clock.now -= 100.0
    assert not bucket.take()
    clock.now += 1.0  # one second after the step back: one token
    assert bucket.take()


def test_a_bucket_that_could_never_answer_is_refused():
    with pytest.raises(ValueError):
        TokenBucket(rate=1.0, burst=0)
    with pytest.raises(ValueError):
        TokenBucket(rate=-1.0, burst=5)


# ------------------------------------------------------------------ the policy
def test_unauthenticated_refusals_beyond_the_burst_are_counted_and_summarised_once_per_window():
    clock, later, reports = Clock(), Later(), []
    limiter = RefusalLimiter(reports.append, rate=0.0, burst=2, interval_s=10.0, clock=clock, schedule=later)
    codes = [ErrorCode.BAD_SIGNATURE] * 4 + [ErrorCode.UNKNOWN_KEY, ErrorCode.UNSIGNED]
    assert [limiter.answer(c) for c in codes] == [True, True, False, False, False, False]
    assert (limiter.answered, limiter.suppressed) == (2, 4)
    assert len(later.pending) == 1 and later.pending[0][0] == 10.0  # one timer per window, not one per refusal
    clock.now += 10.0
    later.run()
    assert reports == [{"suppressed": 4, "codes": {"BAD_SIGNATURE": 2, "UNKNOWN_KEY": 1, "UNSIGNED": 1},
                        "window_s": 10.0}]
    assert limiter.flush() is None and len(reports) == 1  # an empty window says nothing
    assert not limiter.answer(ErrorCode.OVERSIZE) and len(later.pending) == 1  # the next window arms a new timer


def test_refusals_after_a_valid_signature_are_always_answered():
    limiter = RefusalLimiter(lambda summary: None, rate=0.0, burst=1, schedule=Later())
    assert limiter.answer(ErrorCode.BAD_SIGNATURE) and not limiter.answer(ErrorCode.BAD_SIGNATURE)  # empty now
    for code in (ErrorCode.EXPIRED, ErrorCode.WRONG_TARGET, ErrorCode.REPLAYED, ErrorCode.QUEUE_FULL,
                 ErrorCode.BAD_INPUT, ErrorCode.INTERNAL):
        assert code not in UNAUTHENTICATED and limiter.answer(code)
    assert limiter.suppressed == 1


# ------------------------------------------------------------------ the daemon's intake
@pytest.fixture
def daemon(tmp_path):
    """A signed board (trusting one host key) whose answers land in ``daemon.sent``; its refusal bucket
    holds one token and never refills."""
    from edge_evolver.daemon.config import ServeConfig
    from edge_evolver.daemon.service import EdgeDaemon

    host_keys, state = str(tmp_path / "host-keys"), str(tmp_path / "state")
    keys_dir = enrol(host_keys, state, DEVICE)[-1]
    board = EdgeDaemon(ServeConfig(state_dir=state, device_id=DEVICE, keys_dir=keys_dir), {}, None,
                       lambda: {}, lambda: {})
    board.sent = []
    board.outbox.publish = lambda body, reply_to=None: board.sent.append(body)
    board.later, board.reports = Later(), []
    board.refusals = RefusalLimiter(board.reports.append, rate=0.0, burst=1, schedule=board.later)
    board.host = JobSigner(ensure_signing_key(os.path.join(host_keys, "host.key"))[0])
    return board


def forged(host: JobSigner, job_id: str) -> bytes:
    """The trusted host's key id over another key's signature."""
    forger = JobSigner(generate_key())
    payload = encode_job(job_id, MODEL, signer=forger, target={"device": DEVICE})
    return payload.replace(forger.key.key_id.encode(), host.key.key_id.encode(), 1)


def test_an_unknown_key_is_refused_without_a_signature_check(daemon, monkeypatch):
    def no_verify(*_args):
        raise AssertionError("an Ed25519 check ran for a key this board does not know")

    monkeypatch.setattr(PublicKey, "verify", no_verify)
    daemon._intake(encode_job("stranger-1", MODEL, signer=JobSigner(generate_key()), target={"device": DEVICE}))
    assert [(a["job_id"], a["code"]) for a in daemon.sent] == [("stranger-1", "UNKNOWN_KEY")]


def test_a_flood_of_forged_jobs_gets_one_answer_and_one_summary(daemon):
    for i in range(5):
        daemon._intake(forged(daemon.host, f"flood-{i}"))
    assert [(a["job_id"], a["code"]) for a in daemon.sent] == [("flood-0", "BAD_SIGNATURE")]
    assert (daemon.refusals.answered, daemon.refusals.suppressed) == (1, 4)
    daemon.later.run()
    assert [(r["suppressed"], r["codes"]) for r in daemon.reports] == [(4, {"BAD_SIGNATURE": 4})]
    assert daemon.jobs.empty() and daemon.store.pending() == []  # nothing forged is stored or queued


def test_a_good_job_is_taken_while_the_bucket_is_empty(daemon):
    for i in range(3):
        daemon._intake(forged(daemon.host, f"flood-{i}"))
    assert daemon.refusals.bucket.tokens < 1
    daemon._intake(encode_job("good-1", MODEL, signer=daemon.host, target={"device": DEVICE}))
    assert daemon.jobs.get_nowait() == "good-1" and daemon.store.is_spooled("good-1")
    assert [a["job_id"] for a in daemon.sent] == ["flood-0"]  # accepted: no answer until it has run


def test_a_trusted_hosts_refused_job_is_answered_while_the_bucket_is_empty(daemon):
    for i in range(3):
        daemon._intake(forged(daemon.host, f"flood-{i}"))
    daemon._intake(encode_job("elsewhere-1", MODEL, signer=daemon.host, target={"device": "another-board"}))
    assert [(a["job_id"], a["code"]) for a in daemon.sent] == [("flood-0", "BAD_SIGNATURE"),
                                                                ("elsewhere-1", "WRONG_TARGET")]
