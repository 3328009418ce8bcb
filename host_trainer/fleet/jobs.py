"""The host's side of the MQTT loop: each offspring goes out as a job, device results come back.

Protocol and fields: docs/protocol.md. Job ids are stable (`<run>.g<gen>.a<attempt>[.k<k>][.carry].<device or "any">`,
`.r<n>` for a retry), and every result is also kept in the run directory (`results/<job_id>.json`), so
after a host crash `--resume` reuses what was measured instead of measuring again. An answer counts only
when it is bound to the job sent (binding.py). Faults:
- no result within `job_timeout_s`: the job is sent again, up to `job_retries` times;
- the device is offline when a job is sent: the job goes to another online board of the run (a --device,
  else one whose key is enrolled); status is unsigned, so it never ends a wait nor names a new board;
- no device connected: wait up to `device_timeout_s`, then stop with FleetError (the run
  directory stays resumable, the current generation is simply not committed).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from edge_evolver.job import encode_job
from edge_evolver.mqtt import MqttConnection, TlsFiles, parse_broker_url
from edge_evolver.protocol import RUN_PROGRESS_QOS, Topics, dumps, loads, sha256_hex, valid_device_id, valid_job_id
from edge_evolver.trust.jobs import sealed_auth
from host_trainer.config import default_of
from host_trainer.errors import UserError
from host_trainer.files import atomic_write_json
from host_trainer.fleet.binding import ANY, TRANSIENT_CODES, SentJob, Verdict, is_refusal, unbound, verdict
from host_trainer.fleet.trust import HostTrust
from host_trainer.progress import NULL, Progress, Step
from host_trainer.record import GenerationRecord

log = structlog.get_logger("host_trainer.fleet")
__all__ = ["ANY", "TRANSIENT_CODES", "Fleet", "FleetConfig", "FleetError"]

# A board's retained status names how long it lets a job run (`job_timeout_s`); the host waits that long
# plus this margin for the board's queue and the transfer. Status is unsigned, so it may only lengthen a
# wait, and never past the bound.
BOARD_LIMIT_MARGIN_S = 300.0
BOARD_LIMIT_MARGIN_MIN_S = 10.0
BOARD_LIMIT_MAX_WAIT_S = 4 * 3600.0


class FleetError(UserError):
    """The fleet cannot measure (no device, no answer): a one-line error; the run resumes later."""


@dataclass
class FleetConfig:
    broker: str
    devices: list[str] = field(default_factory=list)  # measure on each of these
    any_device: bool = False  # or on whichever board of a shared-subscription group takes it
    # The run's defaults (config.py), for a Fleet made outside a run (the bench scripts, tests).
    prefix: str = default_of("prefix")
    job_timeout_s: float = default_of("job_timeout_s")
    job_retries: int = default_of("job_retries")
    device_timeout_s: float = default_of("device_timeout_s")
    bench: dict = field(default_factory=dict)


class Fleet:
    def __init__(self, cfg: FleetConfig, run_id: str, results_dir: Path | None = None,
                 progress: Progress = NULL, trust: HostTrust | None = None, tls: TlsFiles | None = None) -> None:
        if not valid_job_id(f"{run_id}.g000.a0.k0.carry.{ANY}.r9"):
            raise UserError(f"run id {run_id!r} cannot name MQTT jobs: use letters, digits and . _ : - "
                            "(and keep it under about 100 characters)")
        self.cfg, self.run_id, self.results_dir, self.progress = cfg, run_id, results_dir, progress
        self.trust = trust or HostTrust(None, None)  # None: unsigned jobs, unchecked results (--insecure)
        self._cancelled = False
        self.topics = Topics(cfg.prefix)
        try:
            url = parse_broker_url(cfg.broker)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        # A persistent session per run: results published while the host is cut off wait at the broker.
        try:
            self.conn = MqttConnection(url, f"host-trainer-{run_id}", persistent=True, tls=tls)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self.status: dict[str, dict] = {}  # unsigned: it may make the host wait, never send elsewhere
        self.results: dict[str, dict] = {}
        self.sent: dict[str, SentJob] = {}  # job id -> what was published under it (binding.py)
        self._by_payload: dict[str, str] = {}  # payload sha256 -> job id: refusals are found by digest
        self.refused: dict[str, dict] = {}  # job id -> the addressed board's proof the job can never run
        self.bounced: dict[str, dict] = {}  # job id -> the addressed board could not open our payload
        self._limits_warned: set[str] = set()  # boards whose longer job limit was logged (once each)
        self._cond = threading.Condition()
        self.conn.on_connect = self._on_connect
        self.conn.on_message = self._on_message

    # ---- connection --------------------------------------------------------------------------
    def start(self) -> Fleet:
        if not self.conn.start(first_delay=0.5, max_delay=5.0, give_up_after=self.cfg.device_timeout_s):
            raise FleetError(f"cannot reach the broker at {self.conn.broker.display()} "
                             f"within {self.cfg.device_timeout_s:g} s")
        return self

    def close(self) -> None:
        self.conn.stop()

    def _on_connect(self, _session_present: bool) -> None:
        for kind in ("status", "results"):
            self.conn.subscribe(self.topics.all_devices(kind), 1)

    def _on_message(self, topic: str, payload: bytes) -> None:
        """paho's thread: anything a message holds must end here, never in that thread (it would stop)."""
        parsed = self.topics.parse(topic)
        if parsed is None or not valid_device_id(parsed[0]):
            return
        try:
            data = loads(payload)
        except (ValueError, RecursionError):  # not JSON, or absurdly nested
            return
        with self._cond:
            try:
                if parsed[1] == "status":
                    self.status[parsed[0]] = data
                elif parsed[1] == "results":
                    self._receive(parsed[0], data)
            except Exception:
                log.exception("message_unusable", topic=topic, bytes=len(payload))
            self._cond.notify_all()

    def _receive(self, device: str, data: dict) -> None:
        """Keep an answer only when its board signed it and it answers a job we sent there (caller holds _cond)."""
        job_id = self._by_payload.get(str(data.get("payload_sha256"))) if is_refusal(data) else data.get("job_id")
        sent = self.sent.get(job_id) if isinstance(job_id, str) else None
        if sent is None:
            return  # other runs' traffic, or answers to nothing we asked: not ours to judge or log
        problem = self.trust.check(data) or unbound(data, device, sent, self._in_group)
        if problem is not None:
            log.warning("answer_ignored", job_id=sent.job_id, device=device, reason=problem,
                        hint="enrol a board's key from the board itself (`edge-evolver keys show`), never from "
                             "a message" if "enrolled" in problem else None)
            return
        what, why = verdict(data)
        log.debug("answer_bound", job_id=sent.job_id, device=device, verdict=what.value, reason=why)
        if what is Verdict.STOP:
            self.refused[sent.job_id] = data
        elif what is Verdict.BOUNCE:
            self.bounced[sent.job_id] = data
        else:
            self.results[sent.job_id] = data

    def _enrolled(self, device: str) -> bool:
        return not self.trust.insecure and bool(self.trust.board_keys(device))

    def _in_group(self, device: str) -> bool:
        """May this board answer a group job: one of the run's --device boards, else any enrolled board."""
        if self.cfg.devices:
            return device in self.cfg.devices
        return self.trust.insecure or self._enrolled(device)

    def publish_progress(self, record: GenerationRecord) -> None:
        """One generation's record (without bulky fields) on the run's retained progress topic."""
        body = {k: v for k, v in record.to_json().items() if k not in ("devices",)}
        body.update(protocol=1, run_id=self.run_id, published_at=time.time())
        self.conn.publish(self.topics.run_generations(self.run_id), dumps(body), qos=RUN_PROGRESS_QOS, retain=True)

    def online(self) -> list[str]:
        with self._cond:
            return sorted(d for d, s in self.status.items() if s.get("state") == "online")

    # ---- measuring ---------------------------------------------------------------------------
    def destinations(self) -> list[str]:
        """Where every offspring goes: each --device, or ANY board of a shared-subscription group."""
        return [ANY] if self.cfg.any_device or not self.cfg.devices else list(self.cfg.devices)

    def measure(self, name: str, model: bytes, inputs: dict[str, np.ndarray], reference: list[np.ndarray],
                meta: dict, check: dict | None = None, bench: dict | None = None,
                options: dict | None = None) -> dict[str, dict]:
        """{destination: result} for every destination; results may carry a (final) status "error". `bench` and
        `options` replace the run's benchmark settings and add backend options for this job (a probe's)."""
        out = {}
        digest = sha256_hex(model)
        for destination in self.destinations():
            base = f"{self.run_id}.{name}.{destination}"
            payload = lambda job_id, device: encode_job(  # noqa: E731
                job_id, model, self.cfg.bench if bench is None else bench, inputs, reference, meta=meta,
                timeout_s=self.cfg.job_timeout_s, check=check, run_id=self.run_id, options=options,
                signer=self.trust.signer, target=self.trust.target(device, ANY))
            out[destination] = self._measure_one(destination, base, payload, digest)
        return out

    def _measure_one(self, destination: str, base: str, payload: Any, digest: str) -> dict:
        """Try ids base, base.r1, base.r2 ...: a transient error (timeout, full queue, a crash) is stored
        by the daemon as that id's final answer, so a retry needs a new id; resume walks the same ids."""
        last = None
        for attempt in range(self.cfg.job_retries + 1):
            job_id = base if attempt == 0 else f"{base}.r{attempt}"
            result = self._stored(job_id, digest)
            if result is None:
                device = self._pick(destination)
                topic = self.topics.group_jobs() if device == ANY else self.topics.jobs(device)
                data = payload(job_id, device)
                self._remember(SentJob(job_id, device, sha256_hex(data), digest, **(sealed_auth(data) or {})))
                self.conn.publish(topic, data, qos=1)
                log.info("job_sent", job_id=job_id, device=device, attempt=attempt)
                with self.progress.step(f"{job_id}: waiting for device {device!r}") as bar:
                    result = self._wait(job_id, device, bar)
            if result is not None and result.get("code") not in TRANSIENT_CODES:
                return result
            last = result or last
            log.warning("job_retry", job_id=job_id, code=(result or {}).get("code", "no result"))
        if last is not None:  # the device kept failing on this model (a crash, say): unfit, not a stop
            return last
        bounce = self.bounced.get(job_id)
        why = (f"board {bounce.get('device_id')!r} could not open it: {bounce.get('code')}: {bounce.get('message')}"
               if bounce else f"timeouts of {self.cfg.job_timeout_s:g} s, or transient device errors")
        raise FleetError(f"no usable result for job {base} after {self.cfg.job_retries + 1} tries ({why}); "
                         "resume the run with --resume once the devices answer")

    def _remember(self, sent: SentJob) -> None:
        with self._cond:
            self.sent[sent.job_id] = sent
            self._by_payload[sent.payload_sha256] = sent.job_id

    def _stored(self, job_id: str, digest: str) -> dict | None:
        """A result this run already received (before a host crash): never measured twice."""
        path = self.results_dir / f"{job_id}.json" if self.results_dir else None
        if path is None or not path.exists():
            return None
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(result, dict):  # damaged by hand: measure again
            return None
        return result if result.get("model_sha256") in (digest, None) else None

    def _keep(self, job_id: str, result: dict) -> None:
        if self.results_dir is not None:
            self.results_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.results_dir / f"{job_id}.json", result)
            self.trust.snapshot(str(result.get("device_id")), self.results_dir.parent)

    def cancel(self) -> None:
        """Make every waiting measurement give up at once (Ctrl-C, an error elsewhere)."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def _check_cancelled(self) -> None:
        if self._cancelled:
            raise FleetError("measurement cancelled")

    def _pick(self, destination: str) -> str:
        """The device to send to: the destination while online, else another online device of the run."""
        device = self._online_choice(destination)
        if device is not None:
            return device
        timeout = self.cfg.device_timeout_s
        started, warned = time.monotonic(), False
        with self.progress.step(f"waiting for device {destination!r} to come online") as bar:
            while device is None:
                waited = time.monotonic() - started
                if waited > timeout:
                    raise FleetError(f"no device online for {destination!r} within {timeout:g} s "
                                     f"(seen: {self._seen()}); resume the run with --resume when one is back")
                if waited > 5.0 and not warned:  # quiet at first: a daemon just started needs a moment
                    log.warning("waiting_for_device", device=destination, timeout_s=timeout, seen=self._seen())
                    warned = True
                bar.update(waited, timeout, f"{waited:.0f} s of {timeout:g}; seen: {self._seen()}")
                with self._cond:
                    self._check_cancelled()
                    self._cond.wait(1.0)
                device = self._online_choice(destination)
        return device

    def _online_choice(self, destination: str) -> str | None:
        online = self.online()
        if destination == ANY and online:
            return ANY
        if destination in online:
            return destination
        # Another device of the run, else another board whose key is enrolled here: never a board that only
        # says it is online (status is unsigned), so a forged status can make the host wait, not leak a job.
        wanted = [d for d in self.cfg.devices if d in online] or [d for d in online if self._enrolled(d)]
        if wanted:
            log.warning("device_offline_failover", device=destination, instead=wanted[0])
            return wanted[0]
        return None

    def _seen(self) -> str:
        with self._cond:
            return ", ".join(f"{d}={s.get('state')}" for d, s in sorted(self.status.items())) or "none"

    def job_timeout_for(self, device: str) -> float:
        """How long to wait for an answer from ``device`` (ANY: any board that may answer a group job):
        job_timeout_s, or the board's own job limit from its status plus a margin for its queue (a quarter of the
        limit, between 10 s and BOARD_LIMIT_MARGIN_S) when that is longer, never more than BOARD_LIMIT_MAX_WAIT_S
        on the status's word."""
        with self._cond:
            boards = [d for d in self.status if self._in_group(d)] if device == ANY else [device]
            read = {d: _board_limit(self.status.get(d)) for d in boards}
        limits = {d: limit for d, limit in read.items() if limit is not None}
        if not limits:
            return self.cfg.job_timeout_s
        board = max(limits, key=limits.__getitem__)
        # The margin is for the board's queue and the transfer: a quarter of its limit, 10 s to 300 s.
        margin = min(BOARD_LIMIT_MARGIN_S, max(BOARD_LIMIT_MARGIN_MIN_S, 0.25 * limits[board]))
        wait = max(self.cfg.job_timeout_s, min(limits[board] + margin, BOARD_LIMIT_MAX_WAIT_S))
        if wait > self.cfg.job_timeout_s and board not in self._limits_warned:
            self._limits_warned.add(board)
            log.warning("board_job_limit_longer", device=board, board_job_timeout_s=limits[board],
                        job_timeout_s=self.cfg.job_timeout_s, waiting_s=wait,
                        hint="raise --job-timeout-s to at least the board's limit plus a margin for its queue")
        return wait

    def _wait(self, job_id: str, device: str, bar: Step) -> dict | None:
        """The bound result, or None on timeout or an unopened bounce of our payload (the caller resends).

        A device's retained status saying "offline" is unsigned: it is logged, and never ends the wait."""
        started, lost, timeout = time.monotonic(), False, self.cfg.job_timeout_s
        with self._cond:
            while True:
                timeout = max(timeout, self.job_timeout_for(device))  # a status arriving now can only lengthen it
                bar.update(time.monotonic() - started, timeout, f"{time.monotonic() - started:.0f} s")
                self._check_cancelled()
                refusal = self.refused.pop(job_id, None)
                if refusal is not None:
                    raise FleetError(f"board {refusal.get('device_id')!r} refused job {job_id}: "
                                     f"{refusal.get('code')}: {refusal.get('message')}")
                result = self.results.pop(job_id, None)
                if result is not None:
                    self._keep(job_id, result)
                    return result
                if job_id in self.bounced:  # our payload, unopened by its board: resend, never keep
                    return None
                if device != ANY and self.status.get(device, {}).get("state") != "online" and not lost:
                    lost = True  # unsigned news: logged, and the job's own timeout still decides
                    log.warning("device_reported_offline", job_id=job_id, device=device)
                remaining = started + timeout - time.monotonic()
                if remaining <= 0:
                    log.warning("job_timeout", job_id=job_id, device=device, timeout_s=timeout)
                    return None
                self._cond.wait(min(remaining, 1.0))


def _board_limit(status: Any) -> float | None:
    """A status's job_timeout_s when it is a usable number of seconds (status is unsigned: anything goes)."""
    value = status.get("job_timeout_s") if isinstance(status, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        return None
    return float(value)
