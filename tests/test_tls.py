"""TLS with one certificate per board: the shipped mosquitto-tls.conf and acl-tls.example on a real broker.

Certificates come from deploy/mosquitto/make-certs.sh (a fleet CA, and a second, foreign one); the
broker listens on a free loopback port; every client is edge_evolver's MqttConnection with TlsFiles.
Runs with paho 2.x and 1.6.1. Missing mosquitto or openssl fails the tests: `make test` installs them.
"""

import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence

import pytest

from edge_evolver.mqtt import MqttConnection, TlsFiles, parse_broker_url, tls_context
from edge_evolver.protocol import Topics

from .mqtt_support import free_port, require_mosquitto, wait_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "mosquitto"
MAKE_CERTS = DEPLOY / "make-certs.sh"
TLS_CONF = DEPLOY / "mosquitto-tls.conf"
PLAIN_CONF = DEPLOY / "mosquitto.conf"
TLS_ACL = DEPLOY / "acl-tls.example"
# Board names as listed for group jobs in acl-tls.example.
BOARD_A, BOARD_B = "jetson-nano-01", "jetson-nano-02"
HOST, MONITOR, RETIRED = "host-trainer", "monitor", "retired-board"
TOPICS = Topics()


def require_openssl() -> str:
    found = shutil.which("openssl")
    if found is None:
        pytest.fail("openssl is not installed; `make test` installs it (apt-get install openssl)")
    return found


class Run:
    def __init__(self, args: Sequence[str]) -> None:
        done = subprocess.run(["sh", str(MAKE_CERTS), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=60)
        self.returncode = done.returncode
        self.stdout, self.stderr = done.stdout.decode(), done.stderr.decode()


def make_certs(directory: Path, *args: str, check: bool = True) -> Run:
    require_openssl()
    run = Run(["-d", str(directory), *args])
    if check:
        assert run.returncode == 0, run.stderr
    return run


def client_files(pki: Path, name: str, ca: Optional[Path] = None) -> TlsFiles:
    return TlsFiles(str(ca or pki / "ca.crt"), str(pki / "clients" / f"{name}.crt"),
                    str(pki / "clients" / f"{name}.key"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """The fleet CA: a broker certificate for 127.0.0.1 only, boards A and B, the host, a monitor."""
    directory = tmp_path_factory.mktemp("pki") / "certs"
    make_certs(directory, "ca")
    make_certs(directory, "server", "127.0.0.1")
    for name in (BOARD_A, BOARD_B, HOST, MONITOR, RETIRED):
        make_certs(directory, "client", name)
    return directory


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> Path:
    """Another CA, with a certificate that claims board A's name."""
    directory = tmp_path_factory.mktemp("foreign") / "certs"
    make_certs(directory, "ca")
    make_certs(directory, "client", BOARD_A)
    return directory


def broker_config(pki: Path, workdir: Path, port: int) -> Path:
    """The shipped TLS config with a loopback port, the test's certificates, ACL and persistence."""
    text = TLS_CONF.read_text()
    for pattern, replacement in ((r"^listener 8883$", f"listener {port} 127.0.0.1"),
                                 (r"/etc/mosquitto/certs/", f"{pki}/"),
                                 (r"^acl_file /etc/mosquitto/acl$", f"acl_file {workdir}/acl"),
                                 (r"^persistence_location .*$", f"persistence_location {workdir}/")):
        text, count = re.subn(pattern, replacement, text, flags=re.M)
        assert count >= 1, f"{pattern!r} not in {TLS_CONF.name}"
    shutil.copy(str(TLS_ACL), str(workdir / "acl"))
    # Started as root, mosquitto would switch to user "mosquitto", which cannot read tmp_path.
    text += f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"
    path = workdir / "mosquitto.conf"
    path.write_text(text)
    return path


class TlsBroker:
    def __init__(self, pki: Path, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "mosquitto.log"
        self.config = broker_config(pki, workdir, self.port)
        self.proc = None  # type: Optional[subprocess.Popen]

    def start(self) -> "TlsBroker":
        with open(str(self.log), "ab") as log:
            self.proc = subprocess.Popen([require_mosquitto(), "-c", str(self.config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_port(self.port, timeout=60)
        except TimeoutError:
            raise AssertionError(f"mosquitto did not start: {self.log.read_text()}") from None
        return self

    def reload(self) -> None:
        """SIGHUP (systemctl reload): re-reads the ACL and the CRL; waits until it has."""
        assert self.proc is not None
        before = self.log.read_text().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while self.log.read_text().count("Reloading config") == before:
            assert time.monotonic() < deadline, "mosquitto did not reload"
            time.sleep(0.02)

    def url(self, host: str = "127.0.0.1", user: str = "") -> str:
        return f"mqtts://{user + '@' if user else ''}{host}:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def broker(pki, tmp_path_factory) -> Iterator[TlsBroker]:
    started = TlsBroker(pki, tmp_path_factory.mktemp("broker")).start()
    yield started
    started.stop()


class Client:
    """A persistent-session-free MqttConnection over TLS that keeps every message it gets."""

    def __init__(self, url: str, files: TlsFiles, topics: Sequence[str] = ()) -> None:
        self.messages = []  # type: List[Any]
        self._cond = threading.Condition()
        self._subacks = 0
        self.conn = MqttConnection(parse_broker_url(url), f"tls-test-{uuid.uuid4().hex[:8]}", persistent=False,
                                   tls=files)
        self.conn.on_message = self._on_message
        self.topics = topics
        self.conn.on_connect = self._subscribe_all
        self.conn.client.on_subscribe = self._on_subscribe  # paho 1.x and 2.x differ after `mid`
        # 60 s: bounds for a stuck broker, not timings.
        self.conn.client.connect_timeout = 60.0
        assert self.conn.start(first_delay=0.2, give_up_after=60), "could not connect"
        assert self.conn.connected.wait(60), "no CONNACK"
        with self._cond:  # the test publishes only once the broker has every subscription
            assert self._cond.wait_for(lambda: self._subacks == len(topics), 60), "no SUBACK"

    def _subscribe_all(self, _session_present: bool) -> None:
        for topic in self.topics:
            self.conn.subscribe(topic, 1)

    def _on_subscribe(self, *args: Any) -> None:
        with self._cond:
            self._subacks += 1
            self._cond.notify_all()

    def _on_message(self, topic: str, payload: bytes) -> None:
        with self._cond:
            self.messages.append((topic, payload))
            self._cond.notify_all()

    def wait_for(self, topic: str, payload: bytes, timeout: float = 60.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: (topic, payload) in self.messages, timeout), \
                f"{(topic, payload)} not received; got {self.messages}"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.conn.publish(topic, payload, qos=1, retain=retain).wait_for_publish()

    def close(self) -> None:
        self.conn.stop()


@pytest.fixture
def clients() -> Iterator:
    made = []  # type: List[Client]

    def make(url: str, files: TlsFiles, *topics: str) -> Client:
        made.append(Client(url, files, topics))
        return made[-1]

    yield make
    for client in made:
        client.close()


def _refusal_noticed(conn: MqttConnection) -> threading.Event:
    """Set at the first sign that this connection is refused: a failed connect (TCP or TLS handshake), or the
    broker closing the link before its CONNACK (a TLS 1.3 server checks the client's certificate after the
    handshake). What a try waits for, instead of a time within which a good connection must succeed."""
    refused = threading.Event()
    connect_once = conn._connect_once

    def attempt(keepalive: int) -> None:
        try:
            connect_once(keepalive)
        except Exception:
            refused.set()
            raise

    conn._connect_once = attempt  # type: ignore[method-assign]
    conn.on_disconnect = lambda _rc: refused.set()
    conn.client.on_connect_fail = lambda *_args: refused.set()
    return refused


def connections(cases: Sequence[Any], bound_s: float = 60.0) -> List[bool]:
    """Whether each (url, TlsFiles) gets an MQTT connection; tried in parallel. Each try ends at its first
    event, a CONNACK or a refusal, so no verdict depends on the machine's speed (`bound_s` bounds a stuck try)."""
    conns = [MqttConnection(parse_broker_url(url), f"tls-try-{uuid.uuid4().hex[:8]}", persistent=False, tls=files)
             for url, files in cases]
    refusals = []
    for conn in conns:
        conn.client.connect_timeout = bound_s  # paho's 5 s would be a timing of the TLS handshake
        refusals.append(_refusal_noticed(conn))
    threads = [threading.Thread(target=conn.start, kwargs={"first_delay": 0.2, "give_up_after": bound_s})
               for conn in conns]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + bound_s
    for conn, refused in zip(conns, refusals):
        while not (conn.connected.is_set() or refused.is_set()):
            assert time.monotonic() < deadline, "a connection was neither accepted nor refused"
            refused.wait(0.05)
    connected = [conn.connected.is_set() for conn in conns]
    for conn, thread in zip(conns, threads):
        conn.request_stop()
        thread.join(10)
        conn.stop(timeout=1)
    return connected


# --------------------------------------------------------------------------------------------------
# A board with its certificate works
# --------------------------------------------------------------------------------------------------
def test_board_with_its_certificate_publishes_status_and_receives_its_jobs(broker, pki, clients):
    host = clients(broker.url(), client_files(pki, HOST), TOPICS.all_devices("status"))
    board = clients(broker.url(), client_files(pki, BOARD_A), TOPICS.jobs(BOARD_A))
    board.publish(TOPICS.status(BOARD_A), b"online", retain=True)
    host.wait_for(TOPICS.status(BOARD_A), b"online")
    host.publish(TOPICS.jobs(BOARD_A), b"job-for-a")
    board.wait_for(TOPICS.jobs(BOARD_A), b"job-for-a")


def test_tls_context_verifies_the_broker_name_and_needs_tls_1_2(broker, pki):
    context = tls_context(client_files(pki, BOARD_A))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    address = ("127.0.0.1", broker.port)
    with socket.create_connection(address, timeout=5) as sock, \
            context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # The broker's certificate names 127.0.0.1 only. Python 3.6 raises CertificateError (a
    # ValueError), 3.7+ SSLCertVerificationError (both).
    with socket.create_connection(address, timeout=5) as sock, \
            pytest.raises((ssl.SSLError, ssl.CertificateError), match="match"):
        context.wrap_socket(sock, server_hostname="localhost")
    # What MqttConnection uses with paho 1.x, whose loop thread would not survive a TLS 1.3 refusal.
    capped = tls_context(client_files(pki, BOARD_A), allow_tls13=False)
    with socket.create_connection(address, timeout=5) as sock, \
            capped.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.2"
    if hasattr(ssl, "TLSVersion"):  # Python 3.7+
        tls12 = ssl.TLSVersion.TLSv1_2  # novermin
        assert context.minimum_version >= tls12
    else:
        assert context.options & ssl.OP_NO_TLSv1 and context.options & ssl.OP_NO_TLSv1_1


# --------------------------------------------------------------------------------------------------
# Who is refused
# --------------------------------------------------------------------------------------------------
# paho 1.x's loop thread dies on a TLS alert it reads (see edge_evolver.mqtt._paho_survives_tls_alerts):
# pytest reports that as this warning, which must fail the refusal tests.
thread_must_survive = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


@thread_must_survive
def test_clients_without_a_valid_fleet_certificate_are_refused(broker, pki, foreign):
    ca = str(pki / "ca.crt")
    cases = [
        (broker.url(), client_files(pki, BOARD_A)),  # control: the same broker, a valid certificate
        (broker.url(), TlsFiles(ca_file=ca)),  # no client certificate
        (broker.url(), client_files(foreign, BOARD_A, ca=pki / "ca.crt")),  # board A's name, foreign CA
        (broker.url(), client_files(pki, BOARD_A, ca=foreign / "ca.crt")),  # the client does not trust the broker
        (broker.url(host="localhost"), client_files(pki, BOARD_A)),  # not a name in the broker's certificate
    ]
    assert connections(cases) == [True, False, False, False, False]


@thread_must_survive
def test_a_revoked_certificate_is_refused_after_a_reload(broker, pki):
    files = client_files(pki, RETIRED)
    assert connections([(broker.url(), files)]) == [True]
    kept = TlsFiles(files.ca_file, str(pki / "retired.crt"), str(pki / "retired.key"))
    shutil.copy(files.cert_file, kept.cert_file)  # revoke moves the board's files aside
    shutil.copy(files.key_file, kept.key_file)
    make_certs(pki, "revoke", RETIRED)
    broker.reload()
    assert connections([(broker.url(), client_files(pki, BOARD_A)), (broker.url(), kept)]) == [True, False]
    assert "certificate verify failed" in broker.log.read_text()


# --------------------------------------------------------------------------------------------------
# What each identity may do (acl-tls.example)
# --------------------------------------------------------------------------------------------------
def test_a_board_can_neither_read_another_boards_jobs_nor_forge_its_results(broker, pki, clients):
    results = TOPICS.all_devices("results")
    host = clients(broker.url(), client_files(pki, HOST), results)
    board_b = clients(broker.url(), client_files(pki, BOARD_B), TOPICS.jobs(BOARD_B))
    # Board A claims to be the host in CONNECT: the broker uses its certificate's CN instead.
    board_a = clients(broker.url(user=HOST), client_files(pki, BOARD_A),
                      TOPICS.jobs(BOARD_A), TOPICS.jobs(BOARD_B), TOPICS.all_devices("jobs"), results)

    host.publish(TOPICS.jobs(BOARD_B), b"job-for-b")
    host.publish(TOPICS.jobs(BOARD_A), b"job-for-a")
    board_b.wait_for(TOPICS.jobs(BOARD_B), b"job-for-b")
    board_a.wait_for(TOPICS.jobs(BOARD_A), b"job-for-a")  # the broker keeps one publisher's order

    board_a.publish(TOPICS.results(BOARD_B), b"forged")
    board_a.publish(TOPICS.results(BOARD_A), b"result-a")
    board_b.publish(TOPICS.results(BOARD_B), b"result-b")
    host.wait_for(TOPICS.results(BOARD_A), b"result-a")
    host.wait_for(TOPICS.results(BOARD_B), b"result-b")
    host.publish(TOPICS.jobs(BOARD_A), b"after-results")  # routed after everything above
    board_a.wait_for(TOPICS.jobs(BOARD_A), b"after-results")

    assert (TOPICS.results(BOARD_B), b"forged") not in host.messages
    assert [m for m in board_a.messages if m[1] not in (b"job-for-a", b"after-results")] == []


def test_the_host_sends_device_and_group_jobs_and_the_monitor_only_reads(broker, pki, clients):
    monitor = clients(broker.url(), client_files(pki, MONITOR), TOPICS.shared_jobs("lab"),
                      TOPICS.all_devices("results"), TOPICS.run_generations("+"))
    board = clients(broker.url(), client_files(pki, BOARD_A), TOPICS.shared_jobs("nano"), TOPICS.jobs(BOARD_A))
    host = clients(broker.url(), client_files(pki, HOST), TOPICS.all_devices("results"))

    monitor.publish(TOPICS.jobs(BOARD_A), b"job-from-monitor")  # dropped: a monitor only reads
    host.publish(TOPICS.group_jobs(), b"group-job")
    board.wait_for(TOPICS.group_jobs(), b"group-job")
    host.publish(TOPICS.run_generations("r1"), b"gen-1", retain=True)
    monitor.wait_for(TOPICS.run_generations("r1"), b"gen-1")
    board.publish(TOPICS.results(BOARD_A), b"result-a")
    host.wait_for(TOPICS.results(BOARD_A), b"result-a")
    monitor.wait_for(TOPICS.results(BOARD_A), b"result-a")

    assert board.messages == [(TOPICS.group_jobs(), b"group-job")]
    # Its own share group, but no read right on the group topic: the job is not delivered to it.
    assert (TOPICS.group_jobs(), b"group-job") not in monitor.messages


# --------------------------------------------------------------------------------------------------
# Configuration errors
# --------------------------------------------------------------------------------------------------
def _config_error(url: str, files: TlsFiles) -> str:
    with pytest.raises(ValueError) as caught:
        MqttConnection(parse_broker_url(url), "tls-misuse", tls=files)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_tls_file_mistakes_are_one_line_value_errors(pki, tmp_path):
    url = "mqtts://127.0.0.1:8883"
    good = client_files(pki, BOARD_A)
    missing = str(tmp_path / "nope.crt")
    assert missing in _config_error(url, TlsFiles(missing, good.cert_file, good.key_file))
    assert missing in _config_error(url, TlsFiles(good.ca_file, missing, good.key_file))
    assert missing in _config_error(url, TlsFiles(good.ca_file, good.cert_file, missing))
    assert "together" in _config_error(url, TlsFiles(good.ca_file, good.cert_file, ""))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    assert str(not_pem) in _config_error(url, TlsFiles(str(not_pem)))
    wrong_key = str(pki / "clients" / f"{BOARD_B}.key")
    assert wrong_key in _config_error(url, TlsFiles(good.ca_file, good.cert_file, wrong_key))
    encrypted = tmp_path / "encrypted.key"  # would make OpenSSL prompt on the terminal
    subprocess.run([require_openssl(), "pkey", "-in", good.key_file, "-aes256", "-passout", "pass:secret",
                    "-out", str(encrypted)], check=True, timeout=30)
    assert "encrypted" in _config_error(url, TlsFiles(good.ca_file, good.cert_file, str(encrypted)))
    message = _config_error("mqtt://127.0.0.1:1883", good)
    assert "mqtts://" in message and "plain" in message
    # No TLS files and mqtt://, or none with mqtts:// (system CA store), stay valid.
    MqttConnection(parse_broker_url("mqtt://127.0.0.1:1883"), "plain", tls=TlsFiles())
    MqttConnection(parse_broker_url(url), "system-ca", tls=None)


# --------------------------------------------------------------------------------------------------
# The shipped files
# --------------------------------------------------------------------------------------------------
def _settings(path: Path) -> List[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def test_tls_config_differs_from_the_plain_one_only_in_listener_and_access():
    access = ("listener", "allow_anonymous", "password_file", "acl_file", "cafile", "certfile", "keyfile",
              "crlfile", "tls_version", "require_certificate", "use_identity_as_username")
    tls = _settings(TLS_CONF)
    shared = [s for s in _settings(PLAIN_CONF) if not s.startswith(access)]
    assert [s for s in tls if not s.startswith(access)] == shared
    for line in ("listener 8883", "require_certificate true", "use_identity_as_username true", "tls_version tlsv1.2",
                 "allow_anonymous false", "acl_file /etc/mosquitto/acl", "crlfile /etc/mosquitto/certs/ca.crl"):
        assert line in tls, line
    assert not any(s.startswith("per_listener_settings") for s in tls)  # one listener: global settings


def test_make_certs_is_idempotent_refuses_bad_names_and_keeps_keys_private(tmp_path):
    directory = tmp_path / "certs dir"  # a space, to check the quoting
    make_certs(directory, "ca")
    make_certs(directory, "client", "nano-01")
    first = (directory / "clients" / "nano-01.crt").read_bytes(), (directory / "ca.crt").read_bytes()
    assert "kept" in make_certs(directory, "client", "nano-01").stdout
    assert "kept" in make_certs(directory, "ca").stdout
    assert first == ((directory / "clients" / "nano-01.crt").read_bytes(), (directory / "ca.crt").read_bytes())
    for key in ("ca.key", "clients/nano-01.key"):
        assert stat.S_IMODE((directory / key).stat().st_mode) == 0o600, key
    for bad in ("../x", "-x", "a/b", "a+b", "#", "", "x" * 65):
        run = make_certs(directory, "client", bad, check=False)
        assert run.returncode != 0 and "bad name" in run.stderr, bad
    assert make_certs(directory, "revoke", "never-made", check=False).returncode != 0
    run = Run([])
    assert run.returncode == 2 and "Usage: make-certs.sh" in run.stderr


# --------------------------------------------------------------------------------------------------
# The whole stack over TLS: `edge-evolver serve` with its certificate, a signed job, a signed result
# --------------------------------------------------------------------------------------------------
def test_serve_over_tls_runs_a_signed_job_from_the_host(broker, pki, clients, tmp_path):
    import json

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from edge_evolver.job import encode_job
    from edge_evolver.trust.jobs import JobSigner
    from edge_evolver.trust.keys import ensure_signing_key, read_trusted
    from edge_evolver.trust.results import check_result

    from .mqtt_support import Daemon, enrol

    files = client_files(pki, BOARD_B)
    state, host_keys = str(tmp_path / "state"), str(tmp_path / "host-keys")
    daemon = Daemon(broker.url(), state, BOARD_B, *enrol(host_keys, state, BOARD_B), "--ca-file", files.ca_file,
                    "--cert-file", files.cert_file, "--key-file", files.key_file).start()
    try:
        host = clients(broker.url(), client_files(pki, HOST), TOPICS.status(BOARD_B), TOPICS.results(BOARD_B))
        deadline = time.monotonic() + 60
        while not any(t == TOPICS.status(BOARD_B) and b'"online"' in p for t, p in host.messages):
            assert time.monotonic() < deadline and daemon.proc.poll() is None, daemon.log()[-2000:]
            time.sleep(0.1)
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
        signer = JobSigner(ensure_signing_key(os.path.join(host_keys, "host.key"))[0])
        host.publish(TOPICS.jobs(BOARD_B), encode_job("tls-1", model, {"min_iterations": 10, "min_seconds": 0.0},
                                                      signer=signer, target={"device": BOARD_B}))
        while not any(t == TOPICS.results(BOARD_B) for t, _ in host.messages):
            assert time.monotonic() < deadline, daemon.log()[-2000:]
            time.sleep(0.1)
        result = json.loads(next(p for t, p in host.messages if t == TOPICS.results(BOARD_B)))
        keys = [k for k, _ in read_trusted(os.path.join(host_keys, "boards", BOARD_B + ".pub")).entries]
        assert result["status"] == "ok" and check_result(result, lambda device: keys) is None
    finally:
        daemon.kill()
