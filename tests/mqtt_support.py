"""Test support: a real Mosquitto on a free loopback port, a collecting client, the daemon as a subprocess.

Imported by the daemon tests only; it needs nothing beyond edge_evolver's own dependencies, so
it runs in both the current and the oldest (JetPack 4.6) library sets.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

import pytest

from edge_evolver.local_broker import LocalBroker, find_mosquitto, free_port, wait_port  # noqa: F401
from edge_evolver.mqtt import MqttConnection, parse_broker_url
from edge_evolver.protocol import loads

MOSQUITTO = find_mosquitto()


def require_mosquitto() -> str:
    if MOSQUITTO is None:
        # Not a skip: `make test` installs it, and a skipped daemon suite would hide a broken setup.
        pytest.fail("mosquitto is not installed; `make test` installs it (apt-get install mosquitto mosquitto-clients)")
    return MOSQUITTO


class Broker(LocalBroker):
    """The product's LocalBroker, failing the test (not skipping it) when mosquitto is missing."""

    def start(self) -> "Broker":
        require_mosquitto()
        super().start()
        return self


class Collector:
    """Subscribes and keeps every message; wait_for() blocks until a predicate matches."""

    def __init__(self, url: str, topics: List[str], mqtt_version: str = "3.1.1") -> None:
        self.messages: List[Dict[str, Any]] = []
        self._cond = threading.Condition()
        self.conn = MqttConnection(parse_broker_url(url), f"test-{uuid.uuid4().hex[:8]}", mqtt_version,
                                   persistent=False)
        self._subacks = 0
        self.conn.on_message = self._on_message
        self.conn.on_connect = lambda _present: self._on_connect(topics)
        self.conn.client.on_subscribe = self._on_subscribe  # paho 1.x and 2.x differ after `mid`
        self.conn.start(first_delay=0.2)
        # The test publishes only once the broker has every subscription (60 s: a bound for a stuck broker).
        with self._cond:
            if not self._cond.wait_for(lambda: self._subacks >= len(topics) and self.conn.connected.is_set(), 60):
                raise TimeoutError("collector got no CONNACK or SUBACK")

    def _on_connect(self, topics: List[str]) -> None:
        for topic in topics:
            self.conn.subscribe(topic, 1)
        with self._cond:  # a publisher-only collector (no topics) waits for this alone
            self._cond.notify_all()

    def _on_subscribe(self, *_args: Any) -> None:
        with self._cond:
            self._subacks += 1
            self._cond.notify_all()

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            data: Any = loads(payload)
        except ValueError:
            data = None
        with self._cond:
            self.messages.append({"topic": topic, "data": data, "raw": payload, "at": time.monotonic()})
            self._cond.notify_all()

    def mark(self) -> int:
        """Position to pass as ``after`` so wait_for ignores what already arrived."""
        with self._cond:
            return len(self.messages)

    def wait_for(self, predicate: Callable[[Dict[str, Any]], bool], timeout: float = 30.0,
                 after: int = 0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self.messages[after:]:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(m["topic"], (m["data"] or {}).get("state") or (m["data"] or {}).get("job_id"))
                            for m in self.messages[-10:]]
                    raise TimeoutError(f"no matching message within {timeout} s; last seen: {seen}")
                self._cond.wait(remaining)

    def matching(self, predicate: Callable[[Dict[str, Any]], bool]) -> List[Dict[str, Any]]:
        with self._cond:
            return [m for m in self.messages if predicate(m)]

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.conn.publish(topic, payload, qos=qos).wait_for_publish()

    def close(self) -> None:
        self.conn.stop()


def result_for(job_id: Optional[str]) -> Callable[[Dict[str, Any]], bool]:
    return lambda m: m["topic"].endswith("/results") and (m["data"] or {}).get("job_id") == job_id


def status_is(state: str) -> Callable[[Dict[str, Any]], bool]:
    return lambda m: m["topic"].endswith("/status") and (m["data"] or {}).get("state") == state


def enrol(host_keys: str, state_dir: str, device_id: str) -> List[str]:
    """Keys for a signed fleet of one host and this board, as the two `keys` commands make them: the
    board trusts the host key, the host enrols the board key. Returns the daemon's extra arguments."""
    from edge_evolver.trust.keys import add_trusted, ensure_signing_key

    host, _ = ensure_signing_key(os.path.join(host_keys, "host.key"))
    board_keys = os.path.join(state_dir, "keys")
    board, _ = ensure_signing_key(os.path.join(board_keys, "board.key"))
    add_trusted(os.path.join(board_keys, "trusted-hosts"), host.public, "test host")
    add_trusted(os.path.join(host_keys, "boards", device_id + ".pub"), board.public, device_id)
    return ["--require-signed", "--keys-dir", board_keys]


class Daemon:
    """`python -m edge_evolver serve` as a real process, logging JSON lines to a file.

    It takes unsigned jobs (``--allow-unsigned``), as most daemon tests are about other things;
    ``--require-signed`` in ``extra`` (see ``enrol``) turns that off, as on a real board.
    """

    def __init__(self, broker_url: str, state_dir: str, device_id: str = "dev1", *extra: str) -> None:
        self.args = [sys.executable, "-m", "edge_evolver", "serve", "--broker", broker_url, "--device-id", device_id,
                     "--state-dir", state_dir, "--backend", "onnxruntime", "--power", "none",
                     "--idle-telemetry-interval-s", "0.5", "--telemetry-interval-s", "0.3", "--allow-unsigned",
                     *extra]
        self.log_path = os.path.join(state_dir, f"daemon-{device_id}.log")
        os.makedirs(state_dir, exist_ok=True)
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Daemon":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        return self

    def log(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def rss_kb(self) -> int:
        """Resident memory of the daemon and its measuring child."""
        assert self.proc is not None
        total = 0
        for pid in [self.proc.pid] + children(self.proc.pid):
            try:
                with open(f"/proc/{pid}/status") as handle:
                    total += next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                pass
        return total


def children(pid: int) -> List[int]:
    """Its child processes, started by any of its threads (a restarted measuring process comes from the worker)."""
    found: List[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
        except OSError:
            pass
    return found


def measuring_child(daemon: Daemon, timeout: float = 60.0) -> int:
    """The pid of the daemon's measuring process (multiprocessing's spawned child, not its resource tracker).
    Waits for it: it is spawned as the daemon starts (60 s: a bound for a stuck daemon, not a timing)."""
    assert daemon.proc is not None
    deadline = time.monotonic() + timeout
    while True:
        for pid in children(daemon.proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if b"spawn_main" in handle.read():
                        return pid
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no measuring process under the daemon (pid {daemon.proc.pid})")
        time.sleep(0.05)


def hold(pid: int) -> int:
    """Stop a process (SIGSTOP): a job handed to a held measuring process waits, unfinished, for as long as the
    test needs, whatever the machine's load. Returns the pid, for ``end_held``."""
    os.kill(pid, signal.SIGSTOP)
    return pid


def end_held(pid: int) -> None:
    """Kill a process ``hold`` stopped, if it is still there and still stopped: a stopped process never ends by
    itself, not even when its daemon is gone (for the end of a test, failed or not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stopped = handle.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return
    if stopped:
        os.kill(pid, signal.SIGKILL)

