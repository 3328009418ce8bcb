"""Fleet: 8 signed boards behind one Mosquitto, 200 small jobs, the broker restarted once midway.

A real Mosquitto on a free loopback port (persistence on: tests/mqtt_support.Broker, autosave every second)
and --boards `edge-evolver serve --require-signed --threads 1` daemons, each its own device id, with the
daemon's default telemetry intervals (1 s while a job runs, 10 s idle). A host-like publisher sends --jobs
signed jobs of a tiny conv model (bench/security.py's, QUICK bench settings) to the boards' DEVICE topics,
round-robin, keeping at most --window jobs outstanding per board (a host waiting on one generation's
offspring, not a flood; group jobs would spread the same way over $share, but would hide which board
lost what). Once half the jobs are answered the broker is stopped (SIGTERM: it saves its database, queued
QoS 1 messages included) and started again --down-s later on the same port; the daemons and the publisher
reconnect by themselves (persistent sessions). The publisher keeps publishing while the broker is away
(paho holds those messages and sends them after the reconnect), and like a real host it resends a job
that has no result --resend-after-s after it was last sent, under the same job id and signature: a board
that already ran it answers from its stored result ("repeated": true), one that never got it runs it.

Reported: jobs per second (first publish to last first result), p50 and p99 latency from first publish to
first result (the host's view, resends included), jobs lost (no result at the end), jobs answered twice
(result messages per job id beyond the first: same bytes = one result message sent again, by a daemon's
outbox after a reconnect or a broker's QoS 1 redelivery; "repeated" = an answer to a resent job), resends,
publishes the broker had not acknowledged when it went down; and the protocol's cost per job: the signed
job's size, the result's, and the status and telemetry messages and bytes per job, payloads and an
estimate of the MQTT framing (docs/scaling.md uses them).

    .venv/bin/python bench/fleet.py [--boards 8] [--jobs 200] [--window 2] [--down-s 2] [--resend-after-s 20]

Writes bench/out/fleet.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict

from common import markdown, save  # also puts the repository on sys.path
from security import QUICK, conv_model

from edge_evolver.job import encode_job
from edge_evolver.mqtt import MqttConnection, parse_broker_url
from edge_evolver.protocol import Topics, loads
from edge_evolver.trust.jobs import JobSigner
from edge_evolver.trust.keys import ensure_signing_key
from tests.mqtt_support import Broker, Collector, Daemon, enrol, status_is

TOPICS = Topics()
# The daemon's own defaults (docs/protocol.md "Telemetry"), not the test helper's fast ones.
TELEMETRY = {"--telemetry-interval-s": "1.0", "--idle-telemetry-interval-s": "10.0"}


def mqtt_bytes(topic: str, payload: int, qos: int, v5: bool) -> int:
    """Bytes of one PUBLISH on the wire (fixed header, topic, packet id, MQTT 5 property length, payload)
    plus its PUBACK at QoS 1 (4 bytes). An estimate: no TLS, no TCP/IP headers."""
    body = 2 + len(topic.encode()) + (2 if qos else 0) + (1 if v5 else 0) + payload
    length = 1 + next(n for n in (1, 2, 3, 4) if body < 128 ** n)
    return length + body + (4 if qos else 0)


class Host:
    """The publisher: a persistent session like host-trainer's, results/status/telemetry counted."""

    def __init__(self, url: str) -> None:
        self.results: dict[str, list[dict]] = defaultdict(list)
        self.kinds: Counter = Counter()  # messages per topic kind
        self.payload_bytes: Counter = Counter()
        self.wire_bytes: Counter = Counter()
        self.online: set[str] = set()
        self.cond = threading.Condition()
        self.conn = MqttConnection(parse_broker_url(url), "fleet-bench-host", persistent=True)
        self.conn.on_connect = lambda _present: [self.conn.subscribe(TOPICS.all_devices(kind), 1)
                                                 for kind in ("status", "results", "telemetry")]
        self.conn.on_message = self._on_message
        self.conn.start(first_delay=0.2, max_delay=2.0)
        if not self.conn.connected.wait(10):
            raise TimeoutError("the bench host could not connect")

    def _on_message(self, topic: str, payload: bytes) -> None:
        parsed = TOPICS.parse(topic)
        if parsed is None:
            return
        device, kind = parsed
        try:
            data = loads(payload)
        except ValueError:
            data = {}
        with self.cond:
            self.kinds[kind] += 1
            self.payload_bytes[kind] += len(payload)
            self.wire_bytes[kind] += mqtt_bytes(topic, len(payload), 0 if kind == "telemetry" else 1, v5=True)
            if kind == "results" and isinstance(data.get("job_id"), str):
                self.results[data["job_id"]].append({"at": time.monotonic(), "raw": payload, "data": data})
            elif kind == "status":
                (self.online.add if data.get("state") == "online" else self.online.discard)(device)
            self.cond.notify_all()

    def publish(self, device: str, payload: bytes):
        return self.conn.publish(TOPICS.jobs(device), payload, qos=1)

    def close(self) -> None:
        self.conn.stop()


def start_boards(broker: Broker, workdir: str, host_keys: str, count: int) -> list[Daemon]:
    watcher = Collector(broker.url, [TOPICS.all_devices("status")])
    daemons = []
    for i in range(count):
        device = f"fleet-{i}"
        state = os.path.join(workdir, "state-" + device)
        daemon = Daemon(broker.url, state, device, *enrol(host_keys, state, device), "--threads", "1")
        for flag, value in TELEMETRY.items():
            daemon.args[daemon.args.index(flag) + 1] = value
        daemons.append(daemon.start())
    for i in range(count):
        watcher.wait_for(lambda m, d=f"fleet-{i}": m["topic"] == TOPICS.status(d) and status_is("online")(m), 180)
    watcher.close()
    return daemons


def run(boards: int, jobs: int, window: int, down_s: float, resend_after_s: float) -> dict:
    model = conv_model()
    with tempfile.TemporaryDirectory(prefix="edge-evolver-fleet-") as workdir:
        broker = Broker(os.path.join(workdir, "broker")).start()
        host_keys = os.path.join(workdir, "host-keys")
        started = time.monotonic()
        daemons = start_boards(broker, workdir, host_keys, boards)
        boot_s = time.monotonic() - started
        signer = JobSigner(ensure_signing_key(os.path.join(host_keys, "host.key"))[0])
        devices = [f"fleet-{i}" for i in range(boards)]
        host = Host(broker.url)
        try:
            # Warm-up: one job per board (engine cache, runtime loaded), not counted.
            for device in devices:
                host.publish(device, encode_job(f"warm-{device}", model, QUICK, signer=signer,
                                                target={"device": device}))
            with host.cond:
                host.cond.wait_for(lambda: all(f"warm-{d}" in host.results for d in devices), 300)
            host.kinds.clear()
            host.payload_bytes.clear()
            host.wire_bytes.clear()
            out = drive(host, broker, signer, model, devices, jobs, window, down_s, resend_after_s)
        finally:
            host.close()
            for daemon in daemons:
                daemon.kill()
            broker.stop()
    out.update(boards=boards, window=window, down_s=down_s, resend_after_s=resend_after_s, boot_s=boot_s,
               bench=QUICK, cpu_count=os.cpu_count(), addressing="device topics, round-robin")
    return out


def drive(host: Host, broker: Broker, signer: JobSigner, model: bytes, devices: list[str], count: int,
          window: int, down_s: float, resend_after_s: float) -> dict:
    order = [(f"fleet-job-{i:04d}", devices[i % len(devices)]) for i in range(count)]
    payloads = {job_id: encode_job(job_id, model, QUICK, signer=signer, target={"device": device})
                for job_id, device in order}
    first_sent: dict[str, float] = {}
    last_sent: dict[str, float] = {}
    infos: dict[str, list] = defaultdict(list)
    resends: Counter = Counter()
    restart: dict = {}
    device_of = dict(order)
    waiting = {device: [job_id for job_id, d in order if d == device] for device in devices}

    def send(job_id: str, device: str) -> None:
        now = time.monotonic()
        first_sent.setdefault(job_id, now)
        last_sent[job_id] = now
        infos[job_id].append(host.publish(device, payloads[job_id]))

    def restart_broker() -> None:
        with host.cond:
            restart["answered_before"] = sum(1 for job_id in device_of if job_id in host.results)
        restart["at"] = time.monotonic()
        broker.stop()
        # Publishes the broker had not acknowledged when it went: paho sends them again after the reconnect.
        restart["unacked_at_stop"] = sum(1 for sent in list(infos.values()) if not sent[-1].is_published())
        sends_before = sum(len(v) for v in list(infos.values()))
        time.sleep(down_s)
        restart["sent_while_down"] = sum(len(v) for v in list(infos.values())) - sends_before
        broker.start()
        restart["up_at"] = time.monotonic()

    restarter = None
    started = time.monotonic()
    deadline = started + 1800
    while time.monotonic() < deadline:
        with host.cond:
            answered = {job_id for job_id, _ in order if job_id in host.results}
            if len(answered) == count:
                break
        outstanding: dict[str, list[str]] = {device: [] for device in devices}
        for job_id in first_sent:
            if job_id not in answered:
                outstanding[device_of[job_id]].append(job_id)
        for device in devices:  # keep each board's window full
            while waiting[device] and len(outstanding[device]) < window:
                job_id = waiting[device].pop(0)
                send(job_id, device)
                outstanding[device].append(job_id)
        now = time.monotonic()
        for job_id, device in order:  # the host's own retry: same id, same signed payload
            if job_id in first_sent and job_id not in answered and now - last_sent[job_id] > resend_after_s:
                send(job_id, device)
                resends[job_id] += 1
        if restarter is None and len(answered) >= count // 2:
            restarter = threading.Thread(target=restart_broker, daemon=True)
            restarter.start()
        with host.cond:
            host.cond.wait(0.05)
    if restarter is not None:
        restarter.join()
    time.sleep(3.0)  # late duplicates (an outbox resend after the reconnect) still count
    with host.cond:
        results = {job_id: list(host.results.get(job_id, [])) for job_id, _ in order}
        kinds, payload_bytes, wire_bytes = Counter(host.kinds), Counter(host.payload_bytes), Counter(host.wire_bytes)
    answered = {job_id: rs for job_id, rs in results.items() if rs}
    latency = sorted(rs[0]["at"] - first_sent[job_id] for job_id, rs in answered.items())
    last = max(rs[0]["at"] for rs in answered.values()) if answered else started
    twice = {job_id: rs for job_id, rs in answered.items() if len(rs) > 1}
    # An extra answer is either the same result message again (same bytes: a daemon's outbox after a lost
    # PUBACK, or a broker's QoS 1 redelivery of the result) or a second answer to a job delivered twice (the
    # broker redelivering a job whose PUBACK it lost, or a host resend): "repeated": true, from the store.
    repeated = sum(sum(1 for r in rs if r["data"].get("repeated")) for rs in twice.values())
    same_bytes = sum(len(rs) - 1 for rs in twice.values()) - repeated
    # Which fields of a second result differ from the first (none: the same result sent again).
    differ = {job_id: sorted({k for r in rs[1:] for k in set(r["data"]) | set(rs[0]["data"])
                              if r["data"].get(k) != rs[0]["data"].get(k)}) for job_id, rs in twice.items()}
    measured_twice = [job_id for job_id, rs in twice.items()
                      if len({r["data"].get("finished_at") for r in rs}) > 1]
    statuses = Counter(rs[0]["data"].get("status") for rs in answered.values())
    job_sizes = [len(p) for p in payloads.values()]
    job_topic = TOPICS.jobs(devices[0])
    per_job = {
        "job_payload_bytes": statistics.mean(job_sizes),
        "job_wire_bytes": statistics.mean(mqtt_bytes(job_topic, n, 1, v5=True) for n in job_sizes),
        "result_payload_bytes": payload_bytes["results"] / max(kinds["results"], 1),
        "messages": {kind: kinds[kind] / count for kind in ("results", "status", "telemetry")},
        "payload_bytes": {kind: payload_bytes[kind] / count for kind in ("results", "status", "telemetry")},
        "wire_bytes": {kind: wire_bytes[kind] / count for kind in ("results", "status", "telemetry")},
        "telemetry_payload_bytes": payload_bytes["telemetry"] / max(kinds["telemetry"], 1),
        "status_payload_bytes": payload_bytes["status"] / max(kinds["status"], 1),
    }
    return {
        "jobs": count, "answered": len(answered), "lost": count - len(answered),
        "lost_ids": sorted(set(results) - set(answered)),
        "answered_twice": len(twice), "extra_results": sum(len(rs) - 1 for rs in twice.values()),
        "extra_same_bytes": same_bytes, "extra_repeated": repeated, "measured_twice": measured_twice,
        "twice_ids": sorted(twice), "twice_fields_differing": differ, "statuses": dict(statuses),
        "resends": sum(resends.values()), "jobs_resent": len(resends),
        "publishes_total": sum(len(v) for v in infos.values()),
        "seconds": last - started, "jobs_per_s": len(answered) / (last - started) if answered else 0.0,
        "latency_s_p50": latency[len(latency) // 2] if latency else None,
        "latency_s_p99": latency[min(len(latency) - 1, int(len(latency) * 0.99))] if latency else None,
        "latency_s_max": latency[-1] if latency else None,
        "restart": {k: (v - started if k in ("at", "up_at") else v) for k, v in restart.items()},
        "messages": dict(kinds), "payload_bytes": dict(payload_bytes), "per_job": per_job,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boards", type=int, default=8, help="daemons, one device id each (default 8)")
    parser.add_argument("--jobs", type=int, default=200, help="jobs in all (default 200)")
    parser.add_argument("--window", type=int, default=2, help="jobs outstanding per board at most (default 2)")
    parser.add_argument("--down-s", type=float, default=2.0, help="seconds the broker stays down (default 2)")
    parser.add_argument("--resend-after-s", type=float, default=20.0,
                        help="resend a job without a result after this long (default 20)")
    args = parser.parse_args()
    out = run(args.boards, args.jobs, args.window, args.down_s, args.resend_after_s)
    row = {"boards": out["boards"], "jobs": out["jobs"], "rate": out["jobs_per_s"],
           "p50": out["latency_s_p50"] * 1e3, "p99": out["latency_s_p99"] * 1e3, "lost": out["lost"],
           "twice": out["answered_twice"], "resends": out["resends"],
           "unacked": out["restart"].get("unacked_at_stop"), "restart": out["restart"].get("answered_before")}
    table = markdown([row], [("boards", "boards", "d"), ("jobs", "jobs", "d"), ("jobs / s", "rate", ".1f"),
                             ("p50 publish→result (ms)", "p50", ".0f"), ("p99 (ms)", "p99", ".0f"),
                             ("lost", "lost", "d"), ("answered twice", "twice", "d"),
                             ("host resends", "resends", "d"), ("unacked publishes at the stop", "unacked", "d"),
                             ("answered before the restart", "restart", "d")])
    pj = out["per_job"]
    cost_rows = [{"what": "job (signed frame, host → board)", "msgs": 1.0, "payload": pj["job_payload_bytes"],
                  "wire": pj["job_wire_bytes"]}]
    for kind in ("results", "status", "telemetry"):
        cost_rows.append({"what": kind, "msgs": pj["messages"][kind], "payload": pj["payload_bytes"][kind],
                          "wire": pj["wire_bytes"][kind]})
    costs = markdown(cost_rows, [("per job", "what", "s"), ("messages", "msgs", ".2f"),
                                 ("payload bytes", "payload", ".0f"), ("MQTT bytes (est.)", "wire", ".0f")])
    twice = (f"Answered twice: {out['answered_twice']} job(s), {out['extra_results']} extra result message(s): "
             f"{out['extra_same_bytes']} the same bytes again (a daemon's outbox resending a result whose PUBACK "
             f"was lost with the broker, or a QoS 1 redelivery of it), {out['extra_repeated']} second answers, "
             f"from the board's stored result (\"repeated\": true), to a job delivered twice (a QoS 1 redelivery "
             f"of the job after the restart, or a host resend); measured twice: {len(out['measured_twice'])}.")
    save("fleet", out, f"### {out['boards']} signed boards on one Mosquitto, broker restarted once midway "
                       f"({out['cpu_count']} CPU cores, device topics round-robin, window {out['window']})\n"
                       f"{table}\n\n{twice}\n\n### Protocol cost per job\n{costs}")


if __name__ == "__main__":
    main()
