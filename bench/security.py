"""Bad jobs against a real signed board: every class refused, nothing run, and what verification costs.

A real Mosquitto on a free loopback port and `edge-evolver serve --require-signed` (keys made as
`keys` commands make them: tests/mqtt_support.enrol). Each class of bad job is sent N times; after
each class a good signed "sentinel" job follows on the same topic, and since the board takes jobs in
order and runs them one at a time, the sentinel's result means every earlier job has been answered or
dropped for good: no fixed waits. Per class: sent, refused with a code (which), reached the worker (a
"job" log event), ran (a measurement happened: status ok), answered with a stored result (repeated),
and no answer.

Classes: unsigned; forged (an unknown key); tampered body / header (a byte flipped after signing);
expired; wrong board; external data (a validly signed job whose ONNX initializer points at a secret
file: its contents must appear in no published message); oversized; hostile reply_to (another board's
results topic; a run topic that is not the job's run_id: nothing may be published there); replayed
after its stored result was deleted (pruning), and again after a daemon restart; retained (published
with retain=True: no answer, nothing run) while the board is online, on an MQTT 5 board (the default) and an
MQTT 3.1.1 one, and left on the broker while the board restarts (--retained-restarts rounds per board, one
restart each). Then bench/security_host.py's attacks on what the host believes and on wedging a board
(forged, cross-board and forwarded answers, status steering, newline ids, huge results, spool tampering,
a trust-file swap), against a real Fleet, its own table.

Verification cost: open_job (signature over the header + SHA-256 of the body) timed in-process for a
small conv model and a ~10 MB model, against the same jobs' time on the board (received_at ->
finished_at of their results). Goals: 100 % refused, 0 run, verification < 1 ms for the small model.

    .venv/bin/python bench/security.py [-n 20] [--retained-restarts N] [--reps 2000]

Writes bench/out/security.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter

import numpy as np
import security_host
from common import markdown, save  # also puts the repository on sys.path

from edge_evolver.job import encode_job
from edge_evolver.protocol import Topics, sha256_hex
from edge_evolver.trust.jobs import JobSigner, VerifyPolicy, open_job
from edge_evolver.trust.keys import TrustedKeys, ensure_signing_key, generate_key
from tests.mqtt_support import Broker, Collector, Daemon, enrol, status_is

TOPICS = Topics()
DEVICE, DEVICE3, OTHER = "sec1", "sec3", "sec-other"  # sec1 runs the default (MQTT 5), sec3 MQTT 3.1.1
QUICK = {"min_iterations": 20, "min_seconds": 0.0, "warmup_s": 0.0}
MAX_PAYLOAD_MB = 16


# ------------------------------------------------------------------ models
def conv_model(channels: int = 16, external: str | None = None) -> bytes:
    """tests/test_daemon.py's conv model (~2 KB); with ``external``, its weight lives in that file."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.RandomState(channels).standard_normal((channels, 3, 3, 3))
                                .astype(np.float32), "W")
    if external is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", str(channels * 27 * 4))):
            entry = w.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])], "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model.SerializeToString()


def big_model(layers: int = 40, width: int = 256) -> bytes:
    """A ~10 MB chain of MatMul + Add (bench/model_guard.py's shape): little compute, many bytes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(0)
    nodes, inits, last = [], [], "x"
    for i in range(layers):
        inits += [numpy_helper.from_array((rng.standard_normal((width, width)) / 16).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        last = f"a{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model.SerializeToString()


# ------------------------------------------------------------------ the board and its answers
class Board:
    """One signed daemon, a collector on everything, and the bookkeeping of what was sent."""

    def __init__(self, broker: Broker, workdir: str, host_keys: str, device: str, *extra: str) -> None:
        self.device = device
        self.state = os.path.join(workdir, "state-" + device)
        self.args = [*enrol(host_keys, self.state, device), "--max-payload-mb", str(MAX_PAYLOAD_MB), *extra]
        self.broker = broker
        self.daemon = Daemon(broker.url, self.state, device, *self.args)
        self.watcher = Collector(broker.url, ["edge-evolver/#"])
        self.start()

    def start(self) -> None:
        mark = self.watcher.mark()
        self.daemon.start()
        self.watcher.wait_for(lambda m: m["topic"] == TOPICS.status(self.device) and status_is("online")(m),
                              timeout=90, after=mark)

    def restart(self) -> None:
        self.daemon.terminate()
        self.start()

    def mark(self) -> tuple[int, int]:
        """Where the messages and the log stand now, for answers that come later."""
        return self.watcher.mark(), len(self.log_events())

    def results(self, since: tuple[int, int] = (0, 0)) -> list[dict]:
        everything = self.watcher.matching(lambda m: True)  # a copy, taken under the collector's lock
        return [m for m in everything[since[0]:] if m["topic"].endswith("/results") and m["data"]]

    def log_events(self) -> list[dict]:
        events = []
        for line in self.daemon.log().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def publish(self, payload: bytes, retain: bool = False) -> None:
        self.watcher.conn.publish(TOPICS.jobs(self.device), payload, qos=1, retain=retain).wait_for_publish()

    def clear_retained(self) -> None:
        self.publish(b"", retain=True)  # an empty retained message deletes the retained one

    def sentinel(self, signer: JobSigner, model: bytes, timeout: float = 180.0) -> dict:
        """A good job; its result means everything sent before it was answered or dropped for good."""
        job_id = f"sentinel-{uuid.uuid4().hex[:10]}"
        mark = self.watcher.mark()
        self.publish(encode_job(job_id, model, QUICK, signer=signer, target={"device": self.device}))
        return self.watcher.wait_for(lambda m: m["topic"] == TOPICS.results(self.device)
                                     and (m["data"] or {}).get("job_id") == job_id, timeout=timeout, after=mark)["data"]

    def stop(self) -> None:
        self.daemon.kill()
        self.watcher.close()


def tally(name: str, sent: list[tuple[str, bytes]], boards: list[Board], note: str = "",
          since: dict | None = None) -> dict:
    """What became of each (job_id, payload): matched by job id or by the refused payload's SHA-256;
    ``since`` ({device: Board.mark()}) counts only what came after."""
    since = since or {}
    results = [m for b in boards for m in b.results(since.get(b.device, (0, 0)))]
    events = [e for b in boards for e in b.log_events()[since.get(b.device, (0, 0))[1]:]]
    worker = {e.get("job_id"): e for e in events if e.get("event") == "job"}
    row = {"class": name, "sent": len(sent), "refused": 0, "reached_worker": 0, "ran": 0, "repeated": 0,
           "no_answer": 0, "codes": Counter(), "note": note}
    for job_id, payload in sent:
        digest = sha256_hex(payload)
        answers = [m["data"] for m in results
                   if m["data"].get("job_id") == job_id or m["data"].get("payload_sha256") == digest]
        if job_id in worker:
            row["reached_worker"] += 1
        ran = any(a.get("status") == "ok" for a in answers) or (worker.get(job_id) or {}).get("status") == "ok"
        if ran:
            row["ran"] += 1
        elif any(a.get("repeated") for a in answers):
            row["repeated"] += 1
        elif answers:
            row["refused"] += 1
            row["codes"].update({a.get("code") for a in answers})
        else:
            row["no_answer"] += 1
    row["codes"] = dict(sorted(row["codes"].items()))
    row["codes_text"] = ", ".join(f"{k} x{v}" for k, v in row["codes"].items()) or "-"
    return row


# ------------------------------------------------------------------ verification cost
def open_cost(payload: bytes, policy: VerifyPolicy, reps: int) -> dict:
    """Median microseconds of open_job, and of its two parts: the Ed25519 check and the body hash."""
    from edge_evolver.trust import jobs as trust_jobs

    now = time.time()
    block, frame = trust_jobs.split_signed(payload)
    head = trust_jobs._raw_header(frame)
    key = policy.trusted.find(block["key_id"])
    body = memoryview(frame)[8 + len(head):]

    def median_us(call) -> float:
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e6

    return {"open_job_us": median_us(lambda: open_job(payload, policy, now=now)),
            "signature_us": median_us(lambda: key.verify(block["sig"], trust_jobs.JOB_CONTEXT + head)),
            "body_hash_us": median_us(lambda: sha256_hex(body)), "payload_bytes": len(payload), "reps": reps}


# ------------------------------------------------------------------ the run
def run(n: int, restarts: int, reps: int, big_runs: int) -> dict:
    small = conv_model()
    big = big_model()
    with tempfile.TemporaryDirectory() as workdir:
        secret_token = f"SECRET-{uuid.uuid4().hex}"
        secret_path = os.path.join(workdir, "secret.txt")
        with open(secret_path, "w") as out:
            out.write((secret_token + "\n") * 64)  # as long as the weight it stands in for
        host_keys = os.path.join(workdir, "host-keys")
        broker = Broker(os.path.join(workdir, "broker")).start()
        boards: list[Board] = []
        try:
            board = Board(broker, workdir, host_keys, DEVICE)
            boards.append(board)
            host, _ = ensure_signing_key(os.path.join(host_keys, "host.key"))
            signer, stranger = JobSigner(host), JobSigner(generate_key())
            expired = JobSigner(host, ttl_s=600.0, clock=lambda: time.time() - 7200.0)

            def job(job_id: str, model: bytes = small, sign: JobSigner | None = signer, target: str = DEVICE,
                    **extra) -> bytes:
                if sign is None:
                    return encode_job(job_id, model, QUICK, **extra)
                return encode_job(job_id, model, QUICK, signer=sign, target={"device": target}, **extra)

            def flip(payload: bytes, at: int) -> bytes:
                data = bytearray(payload)
                data[at] ^= 0x01
                return bytes(data)

            def header_byte(payload: bytes) -> int:  # inside the meta string of the signed header
                return payload.index(b'"note":"') + len(b'"note":"') + 2

            oversized_model = os.urandom(MAX_PAYLOAD_MB * 1024 * 1024 + 4096)
            classes = [
                ("unsigned", lambda i: job(f"uns-{i}", sign=None)),
                ("forged (unknown key)", lambda i: job(f"forged-{i}", sign=stranger)),
                ("tampered body", lambda i: flip(job(f"tamb-{i}"), -10)),
                ("tampered header", lambda i: (lambda p: flip(p, header_byte(p)))(job(f"tamh-{i}",
                                                                                        meta={"note": "abcdef"}))),
                ("expired", lambda i: job(f"exp-{i}", sign=expired)),
                ("wrong board", lambda i: job(f"wrong-{i}", target=OTHER)),
                ("external data", lambda i: job(f"ext-{i}", model=conv_model(  # from <state>/work/job-*/
                    external=secret_path if i % 2 else "../../../secret.txt"))),
                ("oversized", lambda i: job(f"big-{i}", model=oversized_model)),
                ("reply_to: other board", lambda i: job(f"rto-{i}", reply_to=TOPICS.results(OTHER))),
                ("reply_to: run not named", lambda i: job(f"rtr-{i}", reply_to=TOPICS.run_results("evil-run"),
                                                          run_id="run-1")),
            ]
            rows, timings = [], {"small": [], "big": []}
            for name, make in classes:
                sent = []
                for i in range(n):
                    payload = make(i)
                    job_id = f"{name.split()[0]}-{i}"
                    sent.append((_job_id(payload) or job_id, payload))
                    board.publish(payload)
                timings["small"].append(board.sentinel(signer, small))
                rows.append(tally(name, sent, boards))
                print(f"{name}: {rows[-1]['refused']}/{n} refused ({rows[-1]['codes_text']}), {rows[-1]['ran']} ran",
                      flush=True)

            # Replays: good jobs run once; their stored results go (pruning), then the very same payloads again.
            goods = [(f"good-{i}", job(f"good-{i}")) for i in range(n)]
            for job_id, payload in goods:
                mark = board.watcher.mark()
                board.publish(payload)
                timings["small"].append(board.watcher.wait_for(
                    lambda m, j=job_id: (m["data"] or {}).get("job_id") == j, timeout=180, after=mark)["data"])
            board.sentinel(signer, small)  # the last good job is off the worker's books before its replay
            for job_id, _ in goods:
                os.remove(os.path.join(board.state, "results", job_id + ".json"))
            mark = board.mark()
            for _, payload in goods:
                board.publish(payload)
            board.sentinel(signer, small)
            replay_rows = [tally("replayed, result pruned", goods, [board], "answers to the resend only (each "
                                 "ran once before, as it should)", since={board.device: mark})]

            # After a restart: the ledger is on disk. The replays above were answered; count only new answers.
            board.restart()
            mark = board.mark()
            for _, payload in goods:
                board.publish(payload)
            board.sentinel(signer, small)
            replay_rows.append(tally("replayed after restart", goods, [board], "the same payloads once more, after "
                                     "a daemon restart (their results still deleted)", since={board.device: mark}))
            rows += replay_rows

            # Retained while the board is online (3.1.1 delivers them with the flag cleared, MQTT 5 keeps it).
            board3 = Board(broker, workdir, host_keys, DEVICE3, "--mqtt-version", "3.1.1")
            boards.append(board3)
            for label, target in (("retained, online (MQTT 3.1.1 board, opt-in)", board3),
                                  ("retained, online (MQTT 5 board, the default)", board)):
                sent = []
                for i in range(n):
                    payload = encode_job(f"ret-{target.device}-{i}", small, QUICK, signer=signer,
                                         target={"device": target.device})
                    sent.append((f"ret-{target.device}-{i}", payload))
                    target.publish(payload, retain=True)
                target.clear_retained()
                target.sentinel(signer, small)
                rows.append(tally(label, sent, [target]))
                print(f"{label}: {rows[-1]}", flush=True)

            # Retained, still on the broker when the board (re)subscribes: one per restart. Published while the
            # board is offline, so its persistent session queues a copy too, delivered with the flag cleared on
            # MQTT 3.1.1 (an ordinary job then); the retained copy itself comes at the subscription.
            for target in (board3, board):
                sent, before = [], target.mark()
                for i in range(restarts):
                    job_id = f"retr-{target.device}-{i}"
                    payload = encode_job(job_id, small, QUICK, signer=signer, target={"device": target.device})
                    sent.append((job_id, payload))
                    target.daemon.terminate()
                    target.publish(payload, retain=True)
                    target.start()
                    target.sentinel(signer, small)
                    target.clear_retained()
                target.sentinel(signer, small)
                ignored = sum(e.get("event") == "job_retained_ignored" for e in target.log_events()[before[1]:])
                version = "MQTT 3.1.1 board, opt-in" if target is board3 else "MQTT 5 board, the default"
                rows.append(tally(f"retained, at restart ({version})", sent, [target],
                                  f"{restarts} restarts, one retained job each, published while the board was "
                                  f"offline; job_retained_ignored log events: {ignored}",
                                  since={target.device: before}))
                print(f"{rows[-1]['class']}: {rows[-1]}", flush=True)

            # Verification cost: in-process, against the same jobs' time on the board.
            for _ in range(big_runs):
                timings["big"].append(board.sentinel(signer, big))
            policy = VerifyPolicy(TrustedKeys([(host.public, "bench")]), DEVICE)
            cost = []
            for label, model, samples in (("small conv", small, timings["small"]), ("~10 MB MatMul chain", big,
                                                                                      timings["big"])):
                payload = job("cost", model=model)
                entry = open_cost(payload, policy, reps if len(payload) < 1 << 20 else max(20, reps // 50))
                board_s = statistics.median(r["finished_at"] - r["received_at"] for r in samples
                                            if r.get("received_at") and r.get("finished_at"))
                entry.update(model=label, model_bytes=len(model), board_total_s=board_s, jobs=len(samples),
                             ratio=entry["open_job_us"] / 1e6 / board_s)
                cost.append(entry)
            leaked = [m["topic"] for b in boards for m in b.watcher.messages if secret_token.encode() in m["raw"]]
            hostile = [m["topic"] for m in board.watcher.messages
                       if m["topic"] in (TOPICS.results(OTHER), TOPICS.run_results("evil-run"))]
            daemon_log_leak = any(secret_token in b.daemon.log() for b in boards)
        finally:
            for b in boards:
                b.stop()
            broker.stop()
    return {"n": n, "rows": rows, "cost": cost, "secret_in_published_messages": len(leaked),
            "secret_in_daemon_log": daemon_log_leak, "published_on_hostile_topics": len(hostile),
            "max_payload_mb": MAX_PAYLOAD_MB, "settings": QUICK}


def _job_id(payload: bytes) -> str | None:
    from edge_evolver.daemon.gate import job_id_hint

    return job_id_hint(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20, help="jobs per class (default 20)")
    parser.add_argument("--retained-restarts", type=int, default=None,
                        help="daemon restarts per board for the retained-at-restart classes, one job each (default: n)")
    parser.add_argument("--reps", type=int, default=2000, help="open_job repetitions for the small model")
    parser.add_argument("--big-runs", type=int, default=5, help="~10 MB jobs run on the board for the ratio")
    parser.add_argument("--host-rounds", type=int, default=3, help="attempts per class of bench/security_host.py")
    args = parser.parse_args()
    started = time.monotonic()
    restarts = args.n if args.retained_restarts is None else args.retained_restarts
    out = run(args.n, restarts, args.reps, args.big_runs)
    with tempfile.TemporaryDirectory() as workdir:  # what the host believes, and wedging a board
        out["host_rows"] = security_host.run(workdir, args.host_rounds)
    out["wall_s"] = time.monotonic() - started
    rows = out["rows"]
    total = {"class": "all bad jobs", **{k: sum(r[k] for r in rows) for k in
                                          ("sent", "refused", "reached_worker", "ran", "repeated", "no_answer")}}
    total["codes_text"] = ""
    goal = lambda r: "yes" if r["ran"] == 0 and (r["refused"] == r["sent"] or r["class"].startswith("retained")  # noqa: E731
                                                 and r["no_answer"] == r["sent"]) else "NO"
    for r in rows:
        r["goal"] = goal(r)
    tables = [
        f"### Bad jobs against a signed board (N = {out['n']} per class; restarts: {restarts})\n"
        + markdown(rows + [total], [
            ("class", "class", "s"), ("sent", "sent", "d"), ("refused", "refused", "d"), ("codes", "codes_text", "s"),
            ("reached worker", "reached_worker", "d"), ("ran", "ran", "d"), ("stored answer", "repeated", "d"),
            ("no answer", "no_answer", "d"), ("goal met", "goal", "s")]),
        "\n".join(f"- {r['class']}: {r['note']}" for r in rows if r.get("note")),
        f"Secret file contents in published messages: {out['secret_in_published_messages']}; in the daemon log: "
        f"{out['secret_in_daemon_log']}. Messages published on the hostile reply_to topics: "
        f"{out['published_on_hostile_topics']}.",
        "### Verification cost (open_job in-process, medians) against the job's time on the board\n" + markdown(
            out["cost"], [("model", "model", "s"), ("model bytes", "model_bytes", "d"),
                          ("open_job us", "open_job_us", ".1f"), ("signature us", "signature_us", ".1f"),
                          ("body hash us", "body_hash_us", ".1f"), ("board received->finished s", "board_total_s",
                                                                    ".3f"),
                          ("jobs", "jobs", "d"), ("open_job / board", "ratio", ".2e")]),
        security_host.table(out["host_rows"]),
        f"Wall time: {out['wall_s']:.0f} s.",
    ]
    save("security", out, "\n\n".join(tables))


if __name__ == "__main__":
    main()
