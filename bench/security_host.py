"""Attacks on what the host believes, and on wedging a board: real Mosquitto, real signed daemons, a real Fleet.

Part of `bench/security.py` (which calls `run` and prints this table after its own); runnable alone too.
Two boards, sec-a and sec-b, both enrolled on the host; the host (an in-process Fleet, as `host-trainer evolve`
makes it) measures a small model on sec-a, `--rounds` times per class, while an attacker who can read and
write every topic (no host key; for some classes, sec-b's board key) does one thing:

- planted refusal: an unsigned frame one byte over sec-a's size limit, under the job id the host sends next;
- cross-board result: on seeing the host's job, a result with fps 1e9 signed with sec-b's key, on sec-b's topic
  and on sec-a's, echoing the job's id and sequence number;
- abort by forwarding: the host's job, copied to sec-b, whose WRONG_TARGET names the host's very payload;
- steering by status: a retained "offline" for sec-a and "online" for a board "evil" no one enrolled;
- trailing-newline ids: a signed job whose job id ends in "\\n" (and a run id / reply_to that does);
- bounded results: a signed job asking for raw samples of 200,000 iterations;
- spool tampering: an unsigned job written into sec-b's spool while it is stopped;
- trust-file swap: the host key in sec-b's trust file replaced by another of the same length, mtime kept.

Per class: rounds, ignored or refused, steered (a forged figure reached the host's result, or a job went
to a board the host has no key for), stopped (the run ended on a forged answer), and whether the board kept
serving (a good job answered afterwards).

    .venv/bin/python bench/security_host.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from common import markdown, save  # also puts the repository on sys.path

from edge_evolver.job import encode_job
from edge_evolver.protocol import MAX_RESULT_BYTES, Topics, dumps, encode_frame, sha256_hex
from edge_evolver.trust.jobs import JobSigner, sealed_auth
from edge_evolver.trust.keys import add_trusted, ensure_signing_key, generate_key
from edge_evolver.trust.results import sign_result
from host_trainer.fleet.jobs import Fleet, FleetConfig, FleetError
from host_trainer.fleet.trust import open_trust
from tests.mqtt_support import Broker, Collector, Daemon, enrol, status_is

TOPICS = Topics()
QUICK = {"min_iterations": 20, "min_seconds": 0.0, "warmup_s": 0.0}
LIMIT_MB = 1


def _answer(job_id: str) -> Callable[[dict], bool]:
    """A board's answer to ``job_id`` (telemetry names the running job too)."""
    return lambda m: m["topic"].endswith("/results") and (m["data"] or {}).get("job_id") == job_id


def _model() -> bytes:
    from security import conv_model  # the same 2 KB conv model the job classes use

    return conv_model()


class Fleetside:
    """Broker, boards sec-a and sec-b, an attacker's connection and the host's Fleet."""

    def __init__(self, workdir: str) -> None:
        self.workdir, self.host_keys = workdir, os.path.join(workdir, "host-keys")
        self.broker = Broker(os.path.join(workdir, "broker")).start()
        self.attacker = Collector(self.broker.url, ["edge-evolver/#"])
        self.daemons = {d: self._daemon(d) for d in ("sec-a", "sec-b")}
        self.host, _ = ensure_signing_key(os.path.join(self.host_keys, "host.key"))
        self.board_b, _ = ensure_signing_key(os.path.join(workdir, "state-sec-b", "keys", "board.key"))
        cfg = FleetConfig(broker=self.broker.url, devices=["sec-a"], job_timeout_s=30, job_retries=1,
                          device_timeout_s=20, bench=QUICK)
        self.run_id = "bench-" + uuid.uuid4().hex[:6]
        self.fleet = Fleet(cfg, self.run_id, Path(workdir) / "run" / "results",
                           trust=open_trust(self.host_keys, insecure=False, ttl_s=600)).start()
        self.counter = 0

    def _daemon(self, device: str) -> Daemon:
        state = os.path.join(self.workdir, "state-" + device)
        args = [*enrol(self.host_keys, state, device), "--max-payload-mb", str(LIMIT_MB)]
        daemon = Daemon(self.broker.url, state, device, *args)
        self.start(device, daemon)
        return daemon

    def start(self, device: str, daemon: Daemon) -> None:
        mark = self.attacker.mark()
        daemon.start()
        self.attacker.wait_for(lambda m: m["topic"] == TOPICS.status(device) and status_is("online")(m), 90, mark)

    def measure(self) -> tuple[dict | None, str | None]:
        """One host measurement on sec-a: (its result, or None with the FleetError that stopped it)."""
        self.counter += 1
        try:
            out = self.fleet.measure(f"g{self.counter:03d}.a0", _model(), {}, [], meta={})
        except FleetError as exc:
            return None, str(exc)
        return out["sec-a"], None

    def next_job_id(self) -> str:
        return f"{self.run_id}.g{self.counter + 1:03d}.a0.sec-a"

    def on_next_job(self, act: Callable[[dict], None]) -> Callable[[], None]:
        """Run ``act(message)`` from the attacker's thread when the host's next job appears on sec-a's topic."""
        import threading

        mark = self.attacker.mark()

        def watch() -> None:
            with contextlib.suppress(TimeoutError):
                act(self.attacker.wait_for(lambda m: m["topic"] == TOPICS.jobs("sec-a"), 60, mark))

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        return lambda: thread.join(70)

    def serves(self, device: str) -> bool:
        """Whether the board answers a good job now."""
        job_id = "probe-" + uuid.uuid4().hex[:8]
        mark = self.attacker.mark()
        self.attacker.conn.publish(TOPICS.jobs(device), encode_job(job_id, _model(), QUICK, signer=JobSigner(
            self.host), target={"device": device}), qos=1).wait_for_publish()
        try:
            answer = self.attacker.wait_for(_answer(job_id), 120, mark)
        except TimeoutError:
            return False
        return answer["data"].get("status") == "ok"

    def close(self) -> None:
        self.fleet.close()
        for daemon in self.daemons.values():
            daemon.kill()
        self.attacker.close()
        self.broker.stop()


def _row(name: str, rounds: int, ignored: int, steered: int, stopped: int, serves: bool, note: str) -> dict:
    return {"class": name, "rounds": rounds, "ignored": ignored, "steered": steered, "stopped": stopped,
            "serves": "yes" if serves else "NO", "note": note,
            "goal": "yes" if ignored == rounds and not steered and not stopped and serves else "NO"}


def planted_refusal(f: Fleetside, rounds: int) -> dict:
    ignored = steered = stopped = 0
    for _ in range(rounds):
        frame = encode_frame({"protocol": 1, "job_id": f.next_job_id()}, [b"\0" * (LIMIT_MB * 1024 * 1024)])
        f.attacker.conn.publish(TOPICS.jobs("sec-a"), frame, qos=1).wait_for_publish()
        result, stop = f.measure()
        stopped += stop is not None
        steered += bool(result and result.get("code") == "OVERSIZE")
        ignored += bool(result and result.get("status") == "ok")
    return _row("planted refusal (oversize unsigned frame, predicted job id)", rounds, ignored, steered, stopped,
                f.serves("sec-a"), "the board refuses it unopened; the host binds refusals by payload digest")


def cross_board(f: Fleetside, rounds: int) -> dict:
    ignored = steered = stopped = 0
    for _ in range(rounds):
        def forge(message: dict) -> None:
            auth = sealed_auth(message["raw"])
            for device, topic in (("sec-b", "sec-b"), ("sec-a", "sec-b"), ("sec-a", "sec-a")):
                body = {"job_id": f.next_job_id(), "device_id": device, "status": "ok", "fps": 1e9,
                        "model_sha256": sha256_hex(_model()), "payload_sha256": sha256_hex(message["raw"]),
                        "job_auth": auth, "refusal": False}
                f.attacker.conn.publish(TOPICS.results(topic), dumps(sign_result(body, f.board_b)), qos=1)

        done = f.on_next_job(forge)
        result, stop = f.measure()
        done()
        stopped += stop is not None
        steered += bool(result and result.get("fps") == 1e9)
        ignored += bool(result and result.get("status") == "ok" and result.get("fps") != 1e9)
    return _row("result for another board's job (signed with sec-b's key)", rounds, ignored, steered, stopped,
                f.serves("sec-a"), "bound to the board the job was sent to")


def forwarding(f: Fleetside, rounds: int) -> dict:
    ignored = steered = stopped = 0
    for _ in range(rounds):
        done = f.on_next_job(lambda m: f.attacker.conn.publish(TOPICS.jobs("sec-b"), m["raw"], qos=1))
        result, stop = f.measure()
        done()
        stopped += stop is not None
        ignored += bool(result and result.get("status") == "ok" and result.get("device_id") == "sec-a")
    return _row("abort by forwarding (WRONG_TARGET from sec-b of the host's payload)", rounds, ignored, steered,
                stopped, f.serves("sec-b"), "only the addressed board's refusal can stop a run")


def status_steering(f: Fleetside, rounds: int) -> dict:
    ignored = steered = stopped = 0
    for _ in range(rounds):
        mark = f.attacker.mark()
        forged = {"protocol": 1, "state": "offline", "device_id": "sec-a"}
        f.attacker.conn.publish(TOPICS.status("sec-a"), dumps(forged), qos=1, retain=True).wait_for_publish()
        evil = {"protocol": 1, "state": "online", "device_id": "evil", "public_key": generate_key().public.text}
        f.attacker.conn.publish(TOPICS.status("evil"), dumps(evil), qos=1, retain=True).wait_for_publish()
        time.sleep(0.5)  # the host must have seen both before it sends
        result, stop = f.measure()
        stopped += stop is not None
        steered += any(m["topic"] == TOPICS.jobs("evil") for m in f.attacker.messages[mark:])
        ignored += bool(result and result.get("device_id") in ("sec-a", "sec-b"))
        f.attacker.conn.publish(TOPICS.status("evil"), b"", qos=1, retain=True).wait_for_publish()
        restored = dict(forged, state="online")  # what sec-a said before; it republishes only on reconnect
        f.attacker.conn.publish(TOPICS.status("sec-a"), dumps(restored), qos=1, retain=True).wait_for_publish()
    return _row("steering by status (sec-a 'offline', unenrolled 'evil' online)", rounds, ignored, steered, stopped,
                f.serves("sec-a"), "a job goes only to a --device board or one whose key is enrolled")


def _signed_raw(f: Fleetside, header: dict, device: str) -> bytes:
    model = _model()
    header = dict({"protocol": 1, "model": {"size": len(model), "sha256": sha256_hex(model)}, "bench": QUICK,
                   "tensors": []}, **header)
    return JobSigner(f.host).seal(header, [model], {"device": device})


def newline_ids(f: Fleetside, rounds: int) -> dict:
    refused = 0
    for i in range(rounds):
        for header in ({"job_id": f"nl-{i}\n"}, {"job_id": f"nlr-{i}", "run_id": "r\n",
                                                 "reply_to": TOPICS.run_results("r\n")}):
            mark = f.attacker.mark()
            f.attacker.conn.publish(TOPICS.jobs("sec-a"), _signed_raw(f, header, "sec-a"), qos=1).wait_for_publish()
            answer = f.attacker.wait_for(lambda m: m["topic"] == TOPICS.results("sec-a") and m["data"], 60, mark)
            refused += answer["data"].get("status") == "error"
    return _row("ids ending in a newline (job id; run id in reply_to)", 2 * rounds, refused, 0, 0,
                f.serves("sec-a"), "ids are matched whole; the board answers on its own topic")


def bounded_results(f: Fleetside, rounds: int) -> dict:
    bounded, sizes = 0, []
    for i in range(rounds):
        job_id, mark = f"samples-{i}", f.attacker.mark()
        bench = {"min_iterations": 200_000, "min_seconds": 0.0, "warmup_s": 0.0, "max_seconds": 120}
        f.attacker.conn.publish(TOPICS.jobs("sec-a"), encode_job(job_id, _model(), bench, signer=JobSigner(f.host),
                                target={"device": "sec-a"}, include_samples=True), qos=1).wait_for_publish()
        answer = f.attacker.wait_for(_answer(job_id), 300, mark)
        sizes.append(len(answer["raw"]))
        bounded += len(answer["raw"]) <= MAX_RESULT_BYTES
    return _row("a result of 200,000 raw samples", rounds, bounded, 0, 0, f.serves("sec-a"),
                f"largest result on the wire {max(sizes)} bytes (bound {MAX_RESULT_BYTES})")


def spool_tampering(f: Fleetside, rounds: int) -> dict:
    daemon, spool = f.daemons["sec-b"], os.path.join(f.workdir, "state-sec-b", "spool")
    daemon.terminate()
    ids = [f"planted-{i}" for i in range(rounds)]
    for job_id in ids:
        with open(os.path.join(spool, job_id + ".job"), "wb") as out:
            out.write(encode_job(job_id, _model(), QUICK))
    mark = f.attacker.mark()
    f.start("sec-b", daemon)
    answers = [f.attacker.wait_for(_answer(j), 60, mark)["data"]
               for j in ids]
    refused = sum(a.get("status") == "error" and a.get("code") == "UNSIGNED" for a in answers)
    return _row("unsigned jobs planted in the spool while the board is down", rounds, refused, 0, 0,
                f.serves("sec-b"), "spooled jobs are verified again at start-up")


def trust_swap(f: Fleetside, rounds: int) -> dict:
    path = os.path.join(f.workdir, "state-sec-b", "keys", "trusted-hosts")
    stat = os.stat(path)
    new_host = generate_key()
    os.remove(path)
    add_trusted(path, new_host.public, "test host")  # the same comment: the same length
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    refused = 0
    for i in range(rounds):
        job_id, mark = f"revoked-{i}", f.attacker.mark()
        f.attacker.conn.publish(TOPICS.jobs("sec-b"), encode_job(job_id, _model(), QUICK, signer=JobSigner(f.host),
                                target={"device": "sec-b"}), qos=1).wait_for_publish()
        answer = f.attacker.wait_for(_answer(job_id), 60, mark)["data"]
        refused += answer.get("code") == "UNKNOWN_KEY"
    same = os.stat(path).st_size == stat.st_size and os.stat(path).st_mtime_ns == stat.st_mtime_ns
    job_id, mark = "new-key", f.attacker.mark()
    f.attacker.conn.publish(TOPICS.jobs("sec-b"), encode_job(job_id, _model(), QUICK, signer=JobSigner(new_host),
                            target={"device": "sec-b"}), qos=1).wait_for_publish()
    accepted = f.attacker.wait_for(_answer(job_id), 120, mark)["data"]
    return _row("revoked host key swapped for one of the same length, mtime kept", rounds, refused, 0, 0,
                accepted.get("status") == "ok", f"same size and mtime: {same}; the new key's job ran: "
                f"{accepted.get('status') == 'ok'}")


CLASSES = (planted_refusal, cross_board, forwarding, status_steering, newline_ids, bounded_results,
           spool_tampering, trust_swap)


def run(workdir: str, rounds: int) -> list[dict]:
    f = Fleetside(workdir)
    rows = []
    try:
        for attack in CLASSES:
            rows.append(attack(f, rounds))
            print(f"{rows[-1]['class']}: {rows[-1]}", flush=True)
    finally:
        f.close()
    return rows


COLUMNS = [("class", "class", "s"), ("rounds", "rounds", "d"), ("ignored or refused", "ignored", "d"),
           ("steered", "steered", "d"), ("stopped the run", "stopped", "d"), ("board still serves", "serves", "s"),
           ("goal met", "goal", "s")]


def table(rows: list[dict]) -> str:
    return ("### Attacks on what the host believes, and on wedging a board\n" + markdown(rows, COLUMNS) + "\n\n"
            + "\n".join(f"- {r['class']}: {r['note']}" for r in rows))


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="attempts per class (default 3)")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir:
        rows = run(workdir, args.rounds)
    out: dict[str, Any] = {"rows": rows, "wall_s": time.monotonic() - started}
    save("security_host", out, table(rows) + f"\n\nWall time: {out['wall_s']:.0f} s.")


if __name__ == "__main__":
    main()
