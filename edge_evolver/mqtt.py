"""A thin layer over paho-mqtt that works with 1.6 (the last for Python 3.6) and 2.x.

paho 2.0 versioned its callbacks: with CallbackAPIVersion.VERSION2 on_connect and
on_disconnect get (flags, reason_code, properties) for both MQTT 3.1.1 and 5, while 1.x passes
(flags, rc) or (rc) and adds properties only for MQTT 5. ``MqttConnection`` hides that behind
two plain callbacks, ``on_connect(session_present)`` and ``on_disconnect(rc)``, and chooses
the API by feature (``hasattr(mqtt, "CallbackAPIVersion")``), never by version string.

It also owns the first connection: paho's loop thread retries lost connections with the
back-off of ``reconnect_delay_set``, but gives up if the very first connect fails, and a board
often boots before its broker is reachable.
"""

import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import unquote, urlsplit

import structlog

log = structlog.get_logger("edge_evolver.mqtt")

MQTT_VERSIONS = ("3.1.1", "5")
SESSION_EXPIRY_S = 7 * 24 * 3600  # MQTT 5: keep a board's queued jobs a week, like the broker config


@dataclass
class BrokerURL:
    host: str
    port: int
    tls: bool = False
    username: Optional[str] = None
    password: Optional[str] = None

    def display(self) -> str:
        """The URL without the password, for logs and status."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


@dataclass
class TlsFiles:
    """A private CA to verify the broker against, and this client's certificate and key.

    All empty: ``mqtts://`` verifies the broker against the system CA store and presents no
    client certificate. See docs in deploy/mosquitto/README.md for the fleet set-up.
    """

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def any(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.key_file)


def _check_readable(role: str, path: str) -> None:
    """A one-line ValueError naming the file, instead of an ssl/paho traceback at connect time."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"TLS {role} {path!r} cannot be read: {exc.strerror or exc}") from None


def _no_passphrase() -> str:
    # Without a callback, OpenSSL prompts on the terminal for an encrypted key: a daemon under
    # systemd would hang there instead of failing. An empty passphrase makes the load fail instead
    # (raising here works on 3.7+, but Python 3.6's ssl turns it into a SystemError).
    return ""


def _is_encrypted(path: str) -> bool:
    """A PEM key under a passphrase (PKCS#8 "ENCRYPTED PRIVATE KEY", or the legacy Proc-Type header)."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    return b"ENCRYPTED PRIVATE KEY" in head or b"Proc-Type: 4,ENCRYPTED" in head


def tls_context(tls: TlsFiles, allow_tls13: bool = True) -> ssl.SSLContext:
    """A client context: TLS 1.2 or later, the broker's certificate and host name verified.

    ``ca_file`` replaces the system CA store (a private fleet CA trusts only itself); the client
    certificate and key are presented when given, and must be given together. ``allow_tls13``
    False caps the version at 1.2 (see ``_paho_survives_tls_alerts``).
    """
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ValueError("TLS: cert_file and key_file go together (this client's certificate and its private key)")
    for role, path in (("CA file", tls.ca_file), ("certificate file", tls.cert_file), ("key file", tls.key_file)):
        if path:
            _check_readable(role, path)
    try:
        # CERT_REQUIRED and check_hostname are create_default_context's defaults.
        context = ssl.create_default_context(cafile=tls.ca_file or None)
    except ssl.SSLError as exc:
        raise ValueError(f"TLS CA file {tls.ca_file!r} holds no usable PEM certificate: {exc}") from None
    if tls.cert_file:
        if _is_encrypted(tls.key_file):
            raise ValueError(f"TLS key file {tls.key_file!r} is encrypted: encrypted private keys are not supported "
                             "(a daemon cannot type a passphrase)")
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_passphrase)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"TLS certificate {tls.cert_file!r} with key {tls.key_file!r}: {exc}") from None
    if hasattr(ssl, "TLSVersion"):  # Python 3.7+
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # novermin
        if not allow_tls13:
            context.maximum_version = ssl.TLSVersion.TLSv1_2  # novermin
    else:  # Python 3.6 (JetPack 4.6)
        context.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
        if not allow_tls13:
            context.options |= getattr(ssl, "OP_NO_TLSv1_3", 0)
    return context


def _paho_survives_tls_alerts(mqtt: Any) -> bool:
    """Whether paho's loop thread outlives a TLS alert on a read (2.x does; 1.x, for Python 3.6, not).

    paho 1.6 catches only ConnectionError when it reads, so an ssl.SSLError ends its loop thread
    for good: no reconnection, no callback, a board offline until restarted. Under TLS 1.3 a broker
    refuses a client certificate (revoked, expired, another CA) after the handshake, on that first
    read; under TLS 1.2 within the handshake, in connect(), which ``start`` retries with back-off.
    Hence TLS 1.2 exactly for paho 1.x.
    """
    return hasattr(mqtt, "CallbackAPIVersion")  # paho >= 2.0, as in _make_client


def parse_broker_url(url: str) -> BrokerURL:
    """'mqtt://[user[:pass]@]host[:port]' or mqtts://; ValueError with the reason otherwise."""
    parts = urlsplit(url if "://" in url else "mqtt://" + url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ValueError(f"broker URL {url!r}: the port is not a number in 1-65535") from None
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} has no host")
    if parts.path not in ("", "/"):
        raise ValueError(f"broker URL {url!r}: unexpected path {parts.path!r}")
    return BrokerURL(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def _paho() -> Any:
    import paho.mqtt.client as mqtt

    return mqtt


def _code(rc: Any) -> int:
    """An int from paho 1.x's int or 2.x's ReasonCode."""
    value = getattr(rc, "value", rc)
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _session_present(flags: Any) -> bool:
    if isinstance(flags, dict):
        return bool(flags.get("session present"))
    return bool(getattr(flags, "session_present", False))


def _wait_published(info: Any, timeout: float) -> None:
    """Wait for a QoS>0 message's acknowledgement; paho 1.6's wait_for_publish has no timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if info.is_published():
                return
        except (RuntimeError, ValueError):
            return  # not queued at all (client gone): nothing to wait for
        time.sleep(0.02)


class MqttConnection:
    """One paho client with persistent session, Last Will, back-off and version-proof callbacks."""

    def __init__(self, broker: BrokerURL, client_id: str, mqtt_version: str = "3.1.1",
                 persistent: bool = True, tls: Optional[TlsFiles] = None) -> None:
        if mqtt_version not in MQTT_VERSIONS:
            raise ValueError(f"mqtt_version must be one of {MQTT_VERSIONS}, not {mqtt_version!r}")
        if tls is not None and tls.any() and not broker.tls:
            raise ValueError(f"TLS files were given but the broker URL {broker.display()} is plain MQTT: "
                             "use mqtts://HOST:8883")
        mqtt = _paho()
        # Built before the client, so that a bad file fails here, not on the first connect.
        context = tls_context(tls or TlsFiles(), _paho_survives_tls_alerts(mqtt)) if broker.tls else None
        self.broker = broker
        self.v5 = mqtt_version == "5"
        self.persistent = persistent
        self.on_connect: Callable[[bool], None] = lambda session_present: None
        self.on_disconnect: Callable[[int], None] = lambda rc: None
        self.on_message: Callable[[str, bytes], None] = lambda topic, payload: None
        # Set it to receive retained messages here instead of in on_message (topic, payload size).
        self.on_retained: Optional[Callable[[str, int], None]] = None
        # Set it to receive every other message here instead, with its DUP flag (topic, payload, duplicate):
        # a QoS 1 message the broker delivers again because it never saw the acknowledgement.
        self.on_delivery: Optional[Callable[[str, bytes, bool], None]] = None
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self.client = self._make_client(mqtt, client_id)
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        if context is not None:
            # tls_set_context rather than tls_set: tls_set can only pin one protocol version, not
            # set a minimum, and prompts on the terminal for an encrypted key.
            self.client.tls_set_context(context)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._handle_connect
        self.client.on_disconnect = self._handle_disconnect
        self.client.on_message = self._handle_message

    def _make_client(self, mqtt: Any, client_id: str) -> Any:
        protocol = mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311
        kwargs = {"client_id": client_id, "protocol": protocol, "userdata": None}
        if not self.v5:
            kwargs["clean_session"] = not self.persistent  # MQTT 5 sets clean_start at connect
        if hasattr(mqtt, "CallbackAPIVersion"):  # paho >= 2.0
            return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        return mqtt.Client(**kwargs)

    # paho callbacks: positional shapes differ between 1.x/2.x and 3.1.1/5, hence *args.
    def _handle_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, *rest: Any) -> None:
        code = _code(rc)
        if code != 0:
            log.warning("mqtt_connect_refused", broker=self.broker.display(), code=code, reason=str(rc))
            return
        self.connected.set()
        self.on_connect(_session_present(flags))

    def _handle_disconnect(self, client: Any, userdata: Any, *args: Any) -> None:
        # 1.x: (rc) or (rc, properties); 2.x: (flags, reason_code, properties).
        rc = args[1] if len(args) >= 3 else args[0] if args else 0
        self.connected.clear()
        self.on_disconnect(_code(rc))

    def _handle_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.retain and self.on_retained is not None:
            self.on_retained(message.topic, len(message.payload))
            return
        if self.on_delivery is not None:
            self.on_delivery(message.topic, bytes(message.payload), bool(getattr(message, "dup", False)))
            return
        self.on_message(message.topic, bytes(message.payload))

    def will(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.client.will_set(topic, payload, qos=qos, retain=retain)

    def _connect_once(self, keepalive: int) -> None:
        if not self.v5:
            self.client.connect(self.broker.host, self.broker.port, keepalive)
            return
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S if self.persistent else 0
        self.client.connect(self.broker.host, self.broker.port, keepalive,
                            clean_start=not self.persistent, properties=props)

    def start(self, keepalive: int = 30, first_delay: float = 1.0, max_delay: float = 30.0,
              give_up_after: Optional[float] = None) -> bool:
        """Connect (retrying with doubling back-off until ``stop``), then run paho's loop thread.

        Returns False when stopped, or past ``give_up_after`` seconds, before a connection.
        """
        delay = first_delay
        deadline = None if give_up_after is None else time.monotonic() + give_up_after
        while not self._stopping.is_set():
            if deadline is not None and time.monotonic() > deadline:
                return False
            try:
                self._connect_once(keepalive)
                break
            except (OSError, ValueError) as exc:
                log.warning("mqtt_connect_failed", broker=self.broker.display(), error=str(exc), retry_s=delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, max_delay)
        else:
            return False
        self.client.loop_start()
        return True

    def request_stop(self) -> None:
        """Make ``start`` give up retrying (safe from any thread)."""
        self._stopping.set()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Any:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic: str, qos: int = 1, retain_as_published: bool = False) -> None:
        """``retain_as_published`` (MQTT 5 only) keeps the retain flag on messages delivered live, so
        that a retained message is recognised as such whenever it arrives; MQTT 3.1.1 sets the flag
        only on the stored copy a (re)subscription receives."""
        if self.v5 and retain_as_published:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            self.client.subscribe(topic, options=SubscribeOptions(qos=qos, retainAsPublished=True))
            return
        self.client.subscribe(topic, qos)

    def stop(self, final: Optional[Callable[[], Any]] = None, timeout: float = 5.0) -> None:
        """Optionally publish a last message (waiting for its delivery), then disconnect cleanly.

        A clean DISCONNECT means the broker does not send the Last Will.
        """
        self._stopping.set()
        if final is not None and self.connected.is_set():
            _wait_published(final(), timeout)
        self.client.disconnect()
        self.client.loop_stop()
