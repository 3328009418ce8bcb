"""A Mosquitto broker on a free loopback port: the host's embedded default, and the tests' broker.

Mosquitto is the broker we deploy (deploy/mosquitto/), so the embedded loop runs over the same
server the fleet will; Debian packages it (`apt-get install mosquitto`). It listens on 127.0.0.1
only, keeps its persistence file in the given folder, and can be restarted on the same port.
"""

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Optional

INSTALL_HINT = "install it with: apt-get install mosquitto mosquitto-clients"


def find_mosquitto() -> Optional[str]:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if os.path.exists(candidate):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def stop_process(proc: Optional[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_s``; a no-op for None or an exited process."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class LocalBroker:
    """Mosquitto with persistence, bound to 127.0.0.1 only; restartable on the same port."""

    def __init__(self, workdir: str, max_packet_mb: int = 64, port: Optional[int] = None) -> None:
        self.binary = find_mosquitto()
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = os.path.join(workdir, "mosquitto.conf")
        self.log_path = os.path.join(workdir, "mosquitto.log")
        os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
        with open(self.conf, "w") as out:
            # `user`: started as root, mosquitto would switch to user "mosquitto", which cannot write here.
            out.write(f"user {getpass.getuser()}\n")
            out.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                      f"persistence_location {workdir}/data/\nautosave_interval 1\n"
                      f"max_packet_size {max_packet_mb * 1024 * 1024 + 65536}\nmax_queued_messages 1000\n"
                      f"log_dest file {self.log_path}\n")
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "LocalBroker":
        if self.binary is None:
            raise RuntimeError("the mosquitto broker is not installed; " + INSTALL_HINT)
        # Its own session: a Ctrl-C meant for the host must not kill the broker before the host is done.
        self.proc = subprocess.Popen([self.binary, "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start on port {self.port}; see {self.log_path}") from None
        return self

    def stop(self) -> None:
        stop_process(self.proc, 10.0)  # SIGTERM: mosquitto saves its persistence file
        self.proc = None
