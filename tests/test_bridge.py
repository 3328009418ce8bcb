"""A fleet behind a bridged broker: deploy/mosquitto/bridge.conf between two real Mosquittos.

The CENTRAL broker is the host's; the SITE broker runs the shipped bridge.conf (its `address` pointed at
the central broker's loopback port, nothing else changed) and the signed daemons connect to it. Proven here:
- every topic of the protocol crosses in its direction: a signed device job and a group job published on
  central are run on the site and their signed results come back; a job whose reply_to is the run's
  results topic answers there; every board's retained status and its telemetry reach central; the
  run progress topic published retained on central is held retained on the site; the Last Will of a board
  killed with SIGKILL turns its status "offline" on central;
- a restart of the site broker (SIGTERM, persistence on) while jobs are in flight loses no job and no
  result; the test says which mechanism got each job answered, and counts duplicates;
- a real `host-trainer evolve --broker <central>` run measures on the site's boards (needs torch).

Only edge_evolver is needed except for the evolve test, so this file runs in the oldest library set too.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_evolver.job import encode_job
from edge_evolver.protocol import Topics
from edge_evolver.trust.jobs import JobSigner
from edge_evolver.trust.keys import ensure_signing_key, read_trusted
from edge_evolver.trust.results import check_result

from .mqtt_support import Broker, Collector, Daemon, enrol, status_is

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

BRIDGE_CONF = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "bridge.conf"
TOPICS = Topics()
QUICK = {"min_iterations": 20, "min_seconds": 0.0, "warmup_s": 0.0}
BOARDS = ("site-a", "site-b")
RUN = "bridge-run"
# The shipped file names its own client id; the link's state is published under it on both brokers.
LINK_STATE = "$SYS/broker/connection/edge-evolver-bridge-site-a/state"


def bridge_section(central_port: int) -> str:
    """The shipped bridge.conf without comments, its `address` pointed at the central test broker."""
    lines = []
    for line in BRIDGE_CONF.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("address "):
            line = f"address 127.0.0.1:{central_port}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def conv_model(channels=8):
    w = np.random.RandomState(channels).standard_normal((channels, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])], "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model.SerializeToString()


def link_is(state: bytes):
    return lambda m: m["topic"] == LINK_STATE and m["raw"] == state


class Fleet:
    """Central and site brokers bridged, two signed daemons on the site, a collector on central."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.host_keys = str(workdir / "host-keys")
        self.central = Broker(str(workdir / "central"))
        self.site = Broker(str(workdir / "site"))
        with open(self.site.conf, "a") as conf:
            conf.write(bridge_section(self.central.port))
        self.central.start()
        # Everything the host would see, plus the link's state: all on CENTRAL.
        self.watch = Collector(self.central.url, ["edge-evolver/#", LINK_STATE])
        self.site.start()
        self.watch.wait_for(link_is(b"1"), timeout=60)
        self.daemons = {}
        for name in BOARDS:
            state = str(workdir / ("state-" + name))
            self.daemons[name] = Daemon(self.site.url, state, name, *enrol(self.host_keys, state, name),
                                        "--group", "site").start()
        for name in BOARDS:
            self.watch.wait_for(lambda m, n=name: m["topic"] == TOPICS.status(n) and status_is("online")(m), 90)
        self.signer = JobSigner(ensure_signing_key(os.path.join(self.host_keys, "host.key"))[0])
        self.model = conv_model()

    def job(self, job_id, device=None, **extra):
        target = {"device": device} if device else {"group": "*"}
        return encode_job(job_id, self.model, QUICK, signer=self.signer, target=target, **extra)

    def board_keys(self, device_id):
        path = os.path.join(self.host_keys, "boards", device_id + ".pub")
        return [key for key, _ in read_trusted(path).entries] if os.path.exists(path) else []

    def close(self) -> None:
        for daemon in self.daemons.values():
            daemon.kill()
        self.watch.close()
        self.site.stop()
        self.central.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("bridge"))
    yield f
    f.close()


def results_for(watch, job_id):
    return watch.matching(lambda m: m["topic"].endswith("/results") and (m["data"] or {}).get("job_id") == job_id)


def test_the_whole_protocol_crosses_the_bridge(fleet):
    watch = fleet.watch
    # Status (retained) of both site boards is on central, as a late subscriber sees it.
    late = Collector(fleet.central.url, ["edge-evolver/devices/+/status"])
    try:
        for name in BOARDS:
            seen = late.wait_for(lambda m, n=name: m["topic"] == TOPICS.status(n), timeout=60)
            assert seen["data"]["state"] == "online" and seen["data"]["signed_jobs"] == "required"
    finally:
        late.close()
    # Telemetry (QoS 0) of both boards.
    for name in BOARDS:
        watch.wait_for(lambda m, n=name: m["topic"] == TOPICS.telemetry(n), timeout=60)

    # A signed device job: central -> site -> board, and its signed result back to central.
    mark = watch.mark()
    watch.publish(TOPICS.jobs("site-a"), fleet.job("bridge-dev-1", "site-a"))
    result = watch.wait_for(lambda m: m["topic"] == TOPICS.results("site-a")
                            and (m["data"] or {}).get("job_id") == "bridge-dev-1", timeout=60, after=mark)["data"]
    assert result["status"] == "ok" and result["device_id"] == "site-a" and result["job_auth"]["seq"] > 0
    assert check_result(result, fleet.board_keys) is None  # the board's signature survived the link

    # A group job: central's <prefix>/jobs -> the site's $share/site/<prefix>/jobs, run by exactly one board.
    mark = watch.mark()
    watch.publish(TOPICS.group_jobs(), fleet.job("bridge-group-1"))
    result = watch.wait_for(lambda m: m["topic"].endswith("/results")
                            and (m["data"] or {}).get("job_id") == "bridge-group-1", timeout=60, after=mark)["data"]
    assert result["status"] == "ok" and result["device_id"] in BOARDS
    assert check_result(result, fleet.board_keys) is None

    # reply_to = the run's results topic: answered there, on central.
    mark = watch.mark()
    watch.publish(TOPICS.jobs("site-b"), fleet.job("bridge-run-1", "site-b", run_id=RUN,
                                                     reply_to=TOPICS.run_results(RUN)))
    result = watch.wait_for(lambda m: m["topic"] == TOPICS.run_results(RUN)
                            and (m["data"] or {}).get("job_id") == "bridge-run-1", timeout=60, after=mark)["data"]
    assert result["status"] == "ok" and result["device_id"] == "site-b"
    time.sleep(0.5)
    assert len(results_for(watch, "bridge-dev-1")) == 1 and len(results_for(watch, "bridge-group-1")) == 1

    # Run progress: retained on central, seen live on the site and then held there as retained.
    on_site = Collector(fleet.site.url, [TOPICS.run_generations(RUN)])
    try:
        # (Collector.publish cannot set retain: publish with its connection, as the host's Fleet does.)
        watch.conn.publish(TOPICS.run_generations(RUN), b'{"protocol": 1, "run_id": "bridge-run", "generation": 4}',
                           qos=1, retain=True).wait_for_publish()
        on_site.wait_for(lambda m: (m["data"] or {}).get("generation") == 4, timeout=60)
    finally:
        on_site.close()
    late_site = Collector(fleet.site.url, [TOPICS.run_generations(RUN)])
    try:
        assert late_site.wait_for(lambda m: True, timeout=60)["data"]["generation"] == 4  # retained on the site
    finally:
        late_site.close()


def test_site_broker_restart_mid_run_loses_no_job_and_no_result(fleet):
    """N/2 signed jobs published on central; the site broker is stopped (SIGTERM: it saves its persistence
    file) once the first result is back; N/2 more are published on central while it is down; it starts again
    a second later on the same port. Every job must get a result on central. Mechanisms, per job:
    - "before": answered before the restart;
    - "sessions": answered after it with no resend: QoS 1 persistent sessions (the bridge's on central, the
      boards' on the site, the bridge's local one for results) and the daemons' spool and outbox;
    - "resent": the host's own retry (a job unanswered RESEND_AFTER_S after its last send is published again
      under the same job id and signature, as a host's job_timeout_s does; a board that already ran it answers
      from its stored result with "repeated": true)."""
    n, resend_after_s = 16, 20.0
    watch = fleet.watch
    mark = watch.mark()
    jobs = {f"restart-{i:02d}": BOARDS[i % 2] for i in range(n)}
    payloads = {job_id: fleet.job(job_id, device) for job_id, device in jobs.items()}
    sent_at = {}

    def send(job_ids):
        for job_id in job_ids:
            watch.publish(TOPICS.jobs(jobs[job_id]), payloads[job_id])
            sent_at[job_id] = time.monotonic()

    def answered(after=mark):
        out = {}
        for m in watch.messages[after:]:
            data = m["data"] or {}
            if m["topic"].endswith("/results") and data.get("job_id") in jobs:
                out.setdefault(data["job_id"], []).append(m)
        return out

    first, second = sorted(jobs)[: n // 2], sorted(jobs)[n // 2:]
    send(first)  # these reach the site before the restart
    watch.wait_for(lambda m: m["topic"].endswith("/results") and (m["data"] or {}).get("job_id") in jobs,
                   timeout=60, after=mark)
    before = set(answered())
    link_mark = watch.mark()
    fleet.site.stop()
    watch.wait_for(link_is(b"0"), timeout=60, after=link_mark)  # the bridge's will on central: link down
    send(second)  # published while the site is away: queued on central in the bridge's persistent session
    time.sleep(1.0)
    fleet.site.start()
    watch.wait_for(link_is(b"1"), timeout=60, after=link_mark)
    restarted_at = time.monotonic()

    resent = set()
    deadline = time.monotonic() + 300  # ends when every job is answered: the bound is for a stuck fleet only
    while time.monotonic() < deadline:
        got = answered()
        if len(got) == n:
            break
        late = [job_id for job_id in jobs if job_id not in got and time.monotonic() - sent_at[job_id] > resend_after_s]
        send(late)
        resent.update(late)
        time.sleep(0.2)
    time.sleep(1.0)  # let late duplicates (an outbox resend after the reconnect) arrive before counting
    got = answered()
    lost = sorted(set(jobs) - set(got))
    duplicates = {job_id: len(ms) - 1 for job_id, ms in got.items() if len(ms) > 1}
    mechanism = {job_id: "before" if job_id in before else "resent" if job_id in resent else "sessions"
                 for job_id in got}
    # A duplicate with the same bytes is a resend of one result message (the daemon's outbox after the reconnect,
    # when the broker died before its PUBACK, or a QoS 1 redelivery by a broker); "repeated": true is a board
    # answering a job sent again from its stored result. Neither measures a second time.
    why = {job_id: "same bytes resent" if len({m["raw"] for m in got[job_id]}) == 1 else
           "answered again from the stored result" for job_id in duplicates}
    counts = {kind: sum(v == kind for v in mechanism.values()) for kind in ("before", "sessions", "resent")}
    print("\nsite broker restart: {} jobs ({} published while the site was down), answered before the restart "
          "{before}, after it by the sessions and spool/outbox {sessions}, after a host resend {resent}; lost {lost}; "
          "duplicate results {dups} ({which}); "
          "last result {last:.1f} s after the restart".format(
              n, len(second), lost=len(lost), dups=sum(duplicates.values()), which=why or "none",
              last=max(ms[0]["at"] for ms in got.values()) - restarted_at, **counts))
    assert not lost, f"jobs without a result on central: {lost}"
    for job_id, messages in got.items():
        data = messages[0]["data"]
        assert data["status"] == "ok" and data["device_id"] == jobs[job_id], data
        assert check_result(data, fleet.board_keys) is None
    # What the host does with duplicates: keeps one result per job_id. They are identical except "repeated".
    for job_id, messages in got.items():
        firsts = {(m["data"]["model_sha256"], m["data"]["finished_at"]) for m in messages}
        assert len(firsts) == 1, f"a job measured twice: {job_id}"


def test_host_trainer_evolve_through_the_bridge(fleet, tmp_path):
    """A real tiny run: the host on central, the boards on the site."""
    pytest.importorskip("torch", reason="host-trainer needs torch (not in the oldest, board-side library set)")
    from .test_loop import TINY

    env = dict(os.environ, PYTHONUNBUFFERED="1", HOST_TRAINER_KEYS_DIR=fleet.host_keys)
    cmd = [sys.executable, "-m", "host_trainer.cli", "evolve", *TINY, "--generations", "1",
           "--run-dir", str(tmp_path / "runs"), "--broker", fleet.central.url, "--device", "site-a",
           "--device", "site-b", "--job-timeout-s", "120"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    kept = list((run / "results").glob("*.json"))
    for board in BOARDS:  # <run>.g<n>.a<k>[...].<device>[.r<n>].json: both boards measured
        assert any(f".{board}." in p.name for p in kept), [p.name for p in kept]
    # The run's progress crossed back to the site (retained), where a site-side watcher reads it.
    on_site = Collector(fleet.site.url, [TOPICS.run_generations(run.name)])
    try:
        assert on_site.wait_for(lambda m: True, timeout=60)["data"]["run_id"] == run.name
    finally:
        on_site.close()


def test_last_will_of_a_killed_board_reaches_central(fleet):
    """SIGKILL: no DISCONNECT, so the site broker publishes the board's Last Will, which the bridge carries."""
    mark = fleet.watch.mark()
    fleet.daemons["site-b"].proc.kill()
    fleet.daemons["site-b"].proc.wait(10)
    fleet.watch.wait_for(lambda m: m["topic"] == TOPICS.status("site-b") and status_is("offline")(m), timeout=60,
                         after=mark)
    late = Collector(fleet.central.url, [TOPICS.status("site-b")])
    try:
        assert late.wait_for(lambda m: True, timeout=60)["data"]["state"] == "offline"  # retained on central
    finally:
        late.close()
