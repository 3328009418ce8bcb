"""Load: a signed board under a flood of forged jobs still serves good ones, and stays small.

A real Mosquitto on a free loopback port and one signed daemon (bench/security.py's Board). First the
baseline: good signed jobs one after another, each timed from publish to result (the host's view). Then
the flood: --flood forged jobs (the trusted key's id over another key's signature, so each costs the
board a failed Ed25519 check) in rounds of --every, each round published as fast as the client can and
followed at once by a good job, timed the same way. By default a round starts when the previous good job is
answered, as in the baseline, so the ratio is the price of the forged jobs alone; --all-at-once publishes
every round without waiting, and the good jobs then also wait for each other (``queue``: the worker
runs one job at a time), which is what the ratio measured before the rounds were paced.

Reported: the good jobs' median latency under flood against the baseline as a ratio, and where the time
goes (the board's own clock: to the board, waiting for the worker, on the worker, back to the host); of the
forged jobs, how many were answered with a code, suppressed (the board's rate limit on unauthenticated
refusals, from its ``refusals_suppressed`` log summaries), lost before the board (the broker drops
deliveries beyond its queue limit) and run (must be none), and with --all-at-once how many the board took
per second; good jobs lost before the board; the daemon's resident memory (with its measuring process)
before and after.

    .venv/bin/python bench/load.py [--flood 2000] [--every 100] [--good 20] [--all-at-once]

Writes bench/out/load.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid

from common import markdown, save  # also puts the repository on sys.path
from security import DEVICE, QUICK, TOPICS, Board, conv_model

from edge_evolver.job import encode_job
from edge_evolver.protocol import sha256_hex
from edge_evolver.trust.jobs import JobSigner
from edge_evolver.trust.keys import ensure_signing_key, generate_key
from tests.mqtt_support import Broker

SUMMARY_WAIT_S = 15.0  # the board logs suppressed refusals once per 10 s window (daemon/intake.py)
PHASES = ("to_board", "queue", "worker", "to_host")
LOST_AFTER_S = 60.0  # a good job unanswered this long after it was sent was dropped by the broker


def good_job(board: Board, signer: JobSigner, model: bytes) -> tuple[str, bytes]:
    job_id = f"good-{uuid.uuid4().hex[:10]}"
    return job_id, encode_job(job_id, model, QUICK, signer=signer, target={"device": board.device})


def answered(board: Board, job_id: str, mark: int, timeout: float = 300.0) -> dict:
    return board.watcher.wait_for(lambda m: m["topic"] == TOPICS.results(board.device)
                                  and (m["data"] or {}).get("job_id") == job_id, timeout=timeout, after=mark)


def timed(message: dict, sent_wall: float, sent: float) -> dict:
    """Publish -> result in seconds, and its phases from the result's own times (one clock: same machine)."""
    data, arrived_wall = message["data"], message["at"] - sent + sent_wall
    return {"latency_s": message["at"] - sent, "to_board": data["received_at"] - sent_wall,
            "queue": data["started_at"] - data["received_at"], "worker": data["finished_at"] - data["started_at"],
            "to_host": arrived_wall - data["finished_at"]}


def send_good(board: Board, signer: JobSigner, model: bytes) -> tuple[str, float, float]:
    job_id, payload = good_job(board, signer, model)
    sent_wall, sent = time.time(), time.monotonic()
    board.watcher.conn.publish(TOPICS.jobs(board.device), payload, qos=1)
    return job_id, sent_wall, sent


def baseline(board: Board, signer: JobSigner, model: bytes, count: int) -> list[dict]:
    """Good jobs sent one at a time on an idle board."""
    runs = []
    for _ in range(count):
        mark = board.watcher.mark()
        job_id, sent_wall, sent = send_good(board, signer, model)
        runs.append(timed(answered(board, job_id, mark), sent_wall, sent))
    return runs


def forged_jobs(board: Board, signer: JobSigner, model: bytes, count: int) -> list[bytes]:
    """The trusted host's key id over another key's signature: the most a board spends on a refusal (the
    Ed25519 check runs and fails), and what anyone can send."""
    forger = JobSigner(generate_key())
    claimed = (forger.key.key_id.encode(), signer.key.key_id.encode())
    return [encode_job(f"flood-{i}", model, QUICK, signer=forger, target={"device": board.device})
            .replace(*claimed, 1) for i in range(count)]


def flood(board: Board, signer: JobSigner, model: bytes, count: int, every: int, paced: bool) -> dict:
    """Rounds of ``every`` forged jobs, each followed by a good one; a final good job closes the flood."""
    bad = forged_jobs(board, signer, model, count)
    mark, log_mark, good = board.watcher.mark(), len(board.log_events()), []
    started = time.time()
    for start in range(0, count, every):
        for payload in bad[start:start + every]:
            board.watcher.conn.publish(TOPICS.jobs(board.device), payload, qos=1)
        good.append(send_good(board, signer, model))
        if paced:
            answer_within(board, good[-1][0], mark, LOST_AFTER_S)
    close_flood(board, signer, model, mark)
    answers = [(answer_within(board, job_id, mark, 0.0), sent_wall, sent) for job_id, sent_wall, sent in good]
    runs = [timed(m, sent_wall, sent) for m, sent_wall, sent in answers if m]
    fate = refusals(board, {sha256_hex(p) for p in bad}, mark, log_mark)
    # Until the last job the board is known to have taken: the closing job may have waited for a resend.
    last = max([m["data"]["received_at"] for m, _, _ in answers if m] + [fate.pop("last_received_at")])
    return {"flood": count, "every": every, "paced": paced, "good": runs, "good_lost": len(good) - len(runs),
            "taken_s": last - started, **fate}


def close_flood(board: Board, signer: JobSigner, model: bytes, mark: int, tries: int = 5) -> dict:
    """A good job after the flood, answered. The board takes deliveries in order and answers a refusal before it
    takes the next job, so by then every forged job has been refused, answered or not. Sent again when the
    broker dropped it (its queue for the board was full)."""
    for _ in range(tries):
        job_id, _, _ = send_good(board, signer, model)
        message = answer_within(board, job_id, mark, LOST_AFTER_S)
        if message is not None:
            return message
    raise TimeoutError(f"none of {tries} good jobs sent after the flood was answered")


def answer_within(board: Board, job_id: str, mark: int, timeout: float) -> dict | None:
    """A good job's result, or None when none came within ``timeout``: lost before the board."""
    try:
        return answered(board, job_id, mark, timeout=timeout)
    except TimeoutError:
        return None


def refusals(board: Board, digests: set, mark: int, log_mark: int) -> dict:
    """What became of the forged jobs: answered (matched by payload digest), suppressed, lost, run."""
    found = [m["data"] for m in board.watcher.matching(lambda m: True)[mark:]
             if m["topic"] == TOPICS.results(board.device) and (m["data"] or {}).get("payload_sha256") in digests]
    deadline = time.monotonic() + SUMMARY_WAIT_S
    while True:
        events = board.log_events()[log_mark:]
        suppressed = sum(e.get("suppressed", 0) for e in events if e.get("event") == "refusals_suppressed")
        if len(found) + suppressed >= len(digests) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    worker = sum(e.get("event") == "job" and str(e.get("job_id")).startswith("flood-") for e in events)
    return {"answered": len(found), "suppressed": suppressed, "lost": len(digests) - len(found) - suppressed,
            "ran": sum(r.get("status") == "ok" for r in found) + worker,
            "codes": sorted({r.get("code") for r in found}),
            "last_received_at": max((r["received_at"] for r in found), default=0.0)}


def run(flood_n: int, every: int, good_n: int, paced: bool) -> dict:
    model = conv_model()
    with tempfile.TemporaryDirectory(prefix="edge-evolver-load-") as workdir:
        broker = Broker(os.path.join(workdir, "broker")).start()
        host_keys = os.path.join(workdir, "host-keys")
        board = Board(broker, workdir, host_keys, DEVICE)
        try:
            signer = JobSigner(ensure_signing_key(os.path.join(host_keys, "host.key"))[0])
            baseline(board, signer, model, 3)  # warm: engine cache, runtime loaded
            rss_before = board.daemon.rss_kb()
            idle = baseline(board, signer, model, good_n)
            loaded = flood(board, signer, model, flood_n, every, paced)
            rss_after = board.daemon.rss_kb()
            alive = board.daemon.proc is not None and board.daemon.proc.poll() is None
        finally:
            board.stop()
            broker.stop()
    return {"idle": idle, "rss_kb_before": rss_before, "rss_kb_after": rss_after, "daemon_alive": alive, **loaded}


def summary(out: dict) -> dict:
    med = statistics.median
    idle, loaded = med(r["latency_s"] for r in out["idle"]), med(r["latency_s"] for r in out["good"])
    row = {k: out[k] for k in ("flood", "good_lost", "answered", "suppressed", "lost", "ran")}
    row.update(codes=", ".join(out["codes"]) or "-", idle=idle * 1e3, loaded=loaded * 1e3)
    # Only when every round went out at once does the board's pace, not the bench's, set this.
    row["taken"] = None if out["paced"] else (out["flood"] - out["lost"]) / out["taken_s"]
    row.update(ratio=loaded / idle, rss=(out["rss_kb_after"] - out["rss_kb_before"]) / 1024,
               alive="yes" if out["daemon_alive"] else "NO", rounds="paced" if out["paced"] else "all at once")
    phases = [{"run": name, **{p: med(r[p] for r in out[key]) * 1e3 for p in PHASES}}
              for name, key in (("idle", "idle"), ("under flood", "good"))]
    return {"row": row, "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=2000, help="forged jobs in the flood (default 2000)")
    parser.add_argument("--every", type=int, default=100, help="a good job after every N forged ones")
    parser.add_argument("--good", type=int, default=20, help="good jobs in the idle baseline")
    parser.add_argument("--all-at-once", action="store_true", help="publish every round without waiting for "
                        "its good job's answer (the good jobs then queue behind each other too)")
    args = parser.parse_args()
    out = run(args.flood, args.every, args.good, paced=not args.all_at_once)
    result = summary(out)
    table = markdown([result["row"]], [
        ("forged jobs", "flood", "d"), ("rounds", "rounds", "s"), ("answered", "answered", "d"),
        ("suppressed", "suppressed", "d"), ("lost before the board", "lost", "d"), ("ran", "ran", "d"),
        ("codes", "codes", "s"), ("forged jobs taken / s", "taken", ".0f"), ("good job, idle (ms)", "idle", ".0f"),
        ("good job, under flood (ms)", "loaded", ".0f"), ("under flood / idle", "ratio", ".2f"),
        ("good jobs lost", "good_lost", "d"), ("daemon RSS growth (MB)", "rss", ".1f"),
        ("daemon alive", "alive", "s")])
    phases = markdown(result["phases"], [("good jobs, median ms", "run", "s"), ("to the board", "to_board", ".0f"),
                                         ("waiting for the worker", "queue", ".0f"), ("on the worker", "worker", ".0f"),
                                         ("back to the host", "to_host", ".0f")])
    save("load", {**out, **result}, f"### A signed board under a flood of forged jobs\n{table}\n\n{phases}")


if __name__ == "__main__":
    main()
