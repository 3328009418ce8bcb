"""Load: a signed board under a flood of bad jobs still serves good ones, and stays small.

A real Mosquitto on a free loopback port and one signed daemon (bench/security.py's Board). First the
baseline: good signed jobs one after another, each timed from publish to result (the host's view). Then
the flood: --flood forged jobs (the trusted key's id over another key's signature, so each costs the
board a failed Ed25519 check), published as fast as the client can, with a good job
after every --every of them; the same good jobs are timed while the flood is being refused. Reported:
the board's refusal rate (refusals per second, first publish to last refusal), every flood job answered
with a code (none run), the good jobs' median latency under flood against the baseline as a ratio, and
the daemon's resident memory (with its measuring process) before and after.

    .venv/bin/python bench/load.py [--flood 2000] [--every 100] [--good 20]

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


def good_job(board: Board, signer: JobSigner, model: bytes) -> tuple[str, bytes]:
    job_id = f"good-{uuid.uuid4().hex[:10]}"
    return job_id, encode_job(job_id, model, QUICK, signer=signer, target={"device": board.device})


def answered(board: Board, job_id: str, mark: int, timeout: float = 300.0) -> dict:
    return board.watcher.wait_for(lambda m: m["topic"] == TOPICS.results(board.device)
                                  and (m["data"] or {}).get("job_id") == job_id, timeout=timeout, after=mark)


def baseline(board: Board, signer: JobSigner, model: bytes, count: int) -> list[float]:
    """Seconds from publish to result of good jobs sent one at a time on an idle board."""
    times = []
    for _ in range(count):
        job_id, payload = good_job(board, signer, model)
        mark, started = board.watcher.mark(), time.monotonic()
        board.publish(payload)
        times.append(answered(board, job_id, mark)["at"] - started)
    return times


def flood(board: Board, signer: JobSigner, model: bytes, count: int, every: int) -> dict:
    """Forged jobs as fast as the client publishes, a good job after every ``every`` of them.

    Each forged job names the trusted host's key id over another key's signature: the most a board
    spends on a refusal (the Ed25519 check runs and fails), and what anyone can send.
    """
    forger = JobSigner(generate_key())
    claimed = (forger.key.key_id.encode(), signer.key.key_id.encode())
    bad = [encode_job(f"flood-{i}", model, QUICK, signer=forger, target={"device": board.device})
           .replace(*claimed, 1) for i in range(count)]
    digests = {sha256_hex(p) for p in bad}
    mark, good, sent_at = board.watcher.mark(), [], {}
    started = time.monotonic()
    for i, payload in enumerate(bad, 1):
        board.watcher.conn.publish(TOPICS.jobs(board.device), payload, qos=1)
        if i % every == 0:
            job_id, job = good_job(board, signer, model)
            sent_at[job_id] = time.monotonic()
            board.watcher.conn.publish(TOPICS.jobs(board.device), job, qos=1)
            good.append(job_id)
    published_s = time.monotonic() - started
    latencies = [answered(board, job_id, mark)["at"] - sent_at[job_id] for job_id in good]
    refusals = _refusals(board, digests, mark, count)
    codes = {r["code"] for r in refusals}
    return {"flood": count, "published_s": published_s, "refused": len(refusals),
            "refusal_s": refusals[-1]["_at"] - started if refusals else None,
            "ran": sum(r.get("status") == "ok" for r in refusals), "codes": sorted(codes), "good_latency_s": latencies}


def _refusals(board: Board, digests: set, mark: int, count: int, timeout: float = 300.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [dict(m["data"], _at=m["at"]) for m in board.watcher.matching(lambda m: True)[mark:]
                 if m["topic"] == TOPICS.results(board.device) and (m["data"] or {}).get("payload_sha256") in digests]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def run(flood_n: int, every: int, good_n: int) -> dict:
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
            loaded = flood(board, signer, model, flood_n, every)
            rss_after = board.daemon.rss_kb()
            alive = board.daemon.proc is not None and board.daemon.proc.poll() is None
        finally:
            board.stop()
            broker.stop()
    return {"idle_latency_s": idle, "rss_kb_before": rss_before, "rss_kb_after": rss_after, "daemon_alive": alive,
            **loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=2000, help="forged jobs in the flood (default 2000)")
    parser.add_argument("--every", type=int, default=100, help="a good job after every N forged ones")
    parser.add_argument("--good", type=int, default=20, help="good jobs in the idle baseline")
    args = parser.parse_args()
    out = run(args.flood, args.every, args.good)
    med = statistics.median
    row = {"flood": out["flood"], "refused": out["refused"], "ran": out["ran"], "codes": ", ".join(out["codes"]),
           "rate": out["refused"] / out["refusal_s"] if out["refusal_s"] else 0.0,
           "idle": med(out["idle_latency_s"]) * 1e3, "loaded": med(out["good_latency_s"]) * 1e3,
           "ratio": med(out["good_latency_s"]) / med(out["idle_latency_s"]),
           "rss": (out["rss_kb_after"] - out["rss_kb_before"]) / 1024, "alive": "yes" if out["daemon_alive"] else "NO"}
    table = markdown([row], [("forged jobs", "flood", "d"), ("refused", "refused", "d"), ("ran", "ran", "d"),
                             ("codes", "codes", "s"), ("refusals / s", "rate", ".0f"),
                             ("good job, idle (ms)", "idle", ".0f"), ("good job, under flood (ms)", "loaded", ".0f"),
                             ("under flood / idle", "ratio", ".2f"), ("daemon RSS growth (MB)", "rss", ".1f"),
                             ("daemon alive", "alive", "s")])
    save("load", out, f"### A signed board under a flood of forged jobs\n{table}")


if __name__ == "__main__":
    main()
