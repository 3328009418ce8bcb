"""The embedded default: a Mosquitto broker on a free loopback port plus one local edge daemon.

`host-trainer evolve` without `--broker` runs the whole loop on this machine over real MQTT: the
daemon is `edge-evolver serve` itself (ONNX Runtime backend), started as a subprocess, so the
path a Jetson takes is the path exercised here. Its state (spool, stored results, engine cache)
lives in the run directory, so `--resume` reuses what it already measured.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import structlog

from edge_evolver.local_broker import INSTALL_HINT, LocalBroker, find_mosquitto
from host_trainer.errors import UserError

log = structlog.get_logger("host_trainer.embedded")
LOCAL_DEVICE = "local"


class EmbeddedEdge:
    def __init__(self, workdir: Path, threads: int = 1, prefix: str = "edge-evolver") -> None:
        self.workdir = Path(workdir)
        self.threads, self.prefix = threads, prefix
        self.broker: LocalBroker | None = None
        self.daemon: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        assert self.broker is not None
        return self.broker.url

    def start(self) -> EmbeddedEdge:
        if find_mosquitto() is None:
            raise UserError("no --broker given and the embedded broker (mosquitto) is not installed; "
                            + INSTALL_HINT + ", or pass --broker mqtt://host:port")
        (self.workdir / "broker").mkdir(parents=True, exist_ok=True)
        self.broker = LocalBroker(str(self.workdir / "broker")).start()
        cmd = [sys.executable, "-m", "edge_evolver", "serve", "--broker", self.broker.url,
               "--device-id", LOCAL_DEVICE, "--backend", "onnxruntime", "--power", "auto", "--prefix", self.prefix,
               "--state-dir", str(self.workdir / "edge"), "--threads", str(self.threads)]
        with open(self.workdir / "edge.log", "ab") as out:
            self.daemon = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        port = self.broker.port
        print(f"embedded broker: {self.broker.url} (local edge daemon '{LOCAL_DEVICE}', log {self.workdir}/edge.log)",
              flush=True)
        print(f"watch it:  mosquitto_sub -h 127.0.0.1 -p {port} -t '{self.prefix}/#' -v", flush=True)
        log.info("embedded_started", broker=self.broker.url, daemon_pid=self.daemon.pid)
        return self

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(5)
        self.daemon = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
