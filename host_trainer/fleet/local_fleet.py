"""A fleet of one on this machine, the embedded default: a Mosquitto broker on a free loopback port
plus one local edge daemon.

`host-trainer evolve` without `--broker` runs the whole loop on this machine over real MQTT: the
daemon is `edge-evolver serve` itself (ONNX Runtime backend), started as a subprocess, so the
path a Jetson takes is the path exercised here. Its state (spool, stored results, engine cache)
lives in the run directory (`embedded/`), so `--resume` reuses what it already measured.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import structlog

from edge_evolver.local_broker import INSTALL_HINT, LocalBroker, find_mosquitto, stop_process
from host_trainer.errors import UserError
from host_trainer.files import atomic_write_json
from host_trainer.fleet.trust import HostTrust, embedded_trust
from host_trainer.progress import NULL, Progress
from host_trainer.rundir import EMBEDDED_BROKER, EMBEDDED_LOG, EMBEDDED_PIDS, EMBEDDED_STATE

log = structlog.get_logger("host_trainer.local_fleet")
LOCAL_DEVICE = "local"


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:
        return b"zombie"


class LocalFleet:
    """Start with `start()`, stop with `stop()`; `url` is the broker's while it runs."""

    def __init__(self, workdir: Path, threads: int = 1, prefix: str = "edge-evolver", progress: Progress = NULL):
        self.workdir = Path(workdir)
        self.threads, self.prefix, self.progress = threads, prefix, progress
        self.broker: LocalBroker | None = None
        self.daemon: subprocess.Popen | None = None
        self._trust: HostTrust | None = None
        self._board_keys: Path | None = None

    def trust(self, ttl_s: float = 3600.0) -> HostTrust:
        """The run-local host key that signs this run's jobs, with the local board's key enrolled."""
        if self._trust is None:
            self._trust, self._board_keys = embedded_trust(self.workdir, LOCAL_DEVICE, ttl_s)
        if self._trust.signer is not None:
            self._trust.signer.ttl_s = ttl_s
        return self._trust

    @property
    def url(self) -> str:
        if self.broker is None:
            raise RuntimeError("the local fleet is not running: call start() first")
        return self.broker.url

    def start(self) -> LocalFleet:
        if find_mosquitto() is None:
            raise UserError("no --broker given and the embedded broker (mosquitto) is not installed; "
                            + INSTALL_HINT + ", or pass --broker mqtt://host:port")
        (self.workdir / EMBEDDED_BROKER).mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        self.broker = LocalBroker(str(self.workdir / EMBEDDED_BROKER)).start()
        self.trust()  # the keys exist before the daemon reads them
        cmd = [sys.executable, "-m", "edge_evolver", "serve", "--broker", self.broker.url,
               "--device-id", LOCAL_DEVICE, "--backend", "onnxruntime", "--power", "auto", "--prefix", self.prefix,
               "--state-dir", str(self.workdir / EMBEDDED_STATE), "--threads", str(self.threads),
               "--keys-dir", str(self._board_keys), "--require-signed"]
        with open(self.workdir / EMBEDDED_LOG, "ab") as out:
            # Own session, like the broker: Ctrl-C reaches the host, which then stops both in order.
            self.daemon = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
        broker_pid = self.broker.proc.pid if self.broker.proc is not None else None
        atomic_write_json(self.workdir / EMBEDDED_PIDS, {"broker": broker_pid, "daemon": self.daemon.pid})
        port = self.broker.port
        self.progress.note(f"embedded broker: {self.broker.url} (local edge daemon '{LOCAL_DEVICE}', "
                           f"log {self.workdir / EMBEDDED_LOG})")
        self.progress.note(f"watch it:  mosquitto_sub -h 127.0.0.1 -p {port} -t '{self.prefix}/#' -v")
        log.info("embedded_started", broker=self.broker.url, daemon_pid=self.daemon.pid)
        return self

    def _stop_stale(self) -> None:
        """A host killed with SIGKILL leaves its broker and daemon running on this run's state: stop them
        before a resume starts new ones on the same folders."""
        try:
            pids = json.loads((self.workdir / EMBEDDED_PIDS).read_text())
        except (OSError, ValueError):
            return
        for name, pid in pids.items():
            try:
                cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if b"mosquitto" in cmdline or b"edge_evolver" in cmdline:
                log.warning("embedded_stale_process", process=name, pid=pid)
                os.kill(int(pid), signal.SIGTERM)
                for _ in range(100):
                    if not Path(f"/proc/{int(pid)}").exists() or b"zombie" in _state(int(pid)):
                        break
                    time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.daemon, 30.0)  # the daemon publishes "stopped" and leaves its spool intact
        self.daemon = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
