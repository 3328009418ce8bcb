"""`edge-evolver serve`, `monitor` and `pack`: the MQTT side of the command line.

Registered onto the app in cli/app.py. The options of `serve` and `monitor` (but `--duration`) read
EDGE_EVOLVER_* environment variables; `pack` reads none. Serve options left unset fall back to the
config file and then to ServeConfig's defaults.
"""

import json
import os
import queue
import signal
import sys
import threading
import uuid
from typing import Any, Dict, Optional

import typer

from ..backends import resolve_backend
from ..errors import EdgeError, ErrorCode
from ..logs import configure_logging
from ..mqtt import MqttConnection, TlsFiles, parse_broker_url
from ..protocol import DEFAULT_PREFIX, Topics
from .monitor import MonitorState, changed_rows, render_table, row_json, row_line, subscriptions, tick_until
from .support import fail as _fail


def _board_state() -> Dict[str, Any]:
    from .. import devicefacts

    return {"power_mode": devicefacts.power_mode(), "clocks_locked": devicefacts.clocks_locked()}


def _temperatures() -> Dict[str, float]:
    from .. import devicefacts

    return devicefacts.temperatures()


def _gauges() -> Dict[str, Any]:
    from .. import devicefacts

    return devicefacts.gauges()


def daemon_facts(config: Any) -> Dict[str, Any]:
    """Static facts for the retained status; raises EdgeError when an explicit choice is unusable."""
    from .. import devicefacts
    from ..power import MeterUnavailable, resolve_meter

    runtime = resolve_backend(config.backend)
    try:
        meter, reason = resolve_meter(config.power)
    except (MeterUnavailable, ValueError) as exc:
        raise EdgeError(ErrorCode.BACKEND_UNAVAILABLE, f"power meter '{config.power}': {exc}") from None
    facts = devicefacts.collect_facts()
    facts.pop("temperatures", None)  # live values belong in telemetry, not in a retained status
    facts.update(
        backend=runtime.name,
        backend_version=runtime.version(),
        power_meter=meter.name,
        power_rail=meter.rail,
        power_reason=reason,
        group=config.group or None,
        prefix=config.prefix,
        max_payload_bytes=config.max_payload_bytes,
        job_timeout_s=config.job_timeout_s,  # a host waits at least this long for this board's answers
    )
    return {"facts": facts, "meter": meter}


def serve(
    ctx: typer.Context,
    broker: Optional[str] = typer.Option(None, "--broker", envvar="EDGE_EVOLVER_BROKER",
                                         help="mqtt://[user@]host:port (default mqtt://localhost:1883)."),
    device_id: Optional[str] = typer.Option(None, "--device-id", envvar="EDGE_EVOLVER_DEVICE_ID",
                                            help="This board's id in topics (default: host name)."),
    group: Optional[str] = typer.Option(None, "--group", envvar="EDGE_EVOLVER_GROUP",
                                        help="Also take jobs from $share/<group>/<prefix>/jobs."),
    backend: Optional[str] = typer.Option(None, "--backend", envvar="EDGE_EVOLVER_BACKEND",
                                          help="auto, tensorrt or onnxruntime."),
    power: Optional[str] = typer.Option(None, "--power", envvar="EDGE_EVOLVER_POWER",
                                        help="auto, jtop, ina3221, nvml, rapl or none."),
    config_file: Optional[str] = typer.Option(None, "--config", envvar="EDGE_EVOLVER_CONFIG",
                                              help="TOML file with the same keys as these options (default: "
                                                   "/etc/edge-evolver/config.toml when it exists; '' for none)."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", envvar="EDGE_EVOLVER_CACHE_DIR",
                                            help="Engine cache (default <state-dir>/engines)."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", envvar="EDGE_EVOLVER_STATE_DIR",
                                            help="Job spool and results."),
    prefix: Optional[str] = typer.Option(None, "--prefix", envvar="EDGE_EVOLVER_PREFIX", help="Topic prefix."),
    mqtt_version: Optional[str] = typer.Option(None, "--mqtt-version", envvar="EDGE_EVOLVER_MQTT_VERSION",
                                               help="5 (default) or 3.1.1."),
    max_payload_mb: Optional[float] = typer.Option(None, "--max-payload-mb", envvar="EDGE_EVOLVER_MAX_PAYLOAD_MB"),
    job_timeout_s: Optional[float] = typer.Option(None, "--job-timeout-s", envvar="EDGE_EVOLVER_JOB_TIMEOUT_S"),
    telemetry_interval_s: Optional[float] = typer.Option(None, "--telemetry-interval-s",
                                                         envvar="EDGE_EVOLVER_TELEMETRY_INTERVAL_S"),
    idle_telemetry_interval_s: Optional[float] = typer.Option(None, "--idle-telemetry-interval-s",
                                                              envvar="EDGE_EVOLVER_IDLE_TELEMETRY_INTERVAL_S"),
    threads: Optional[int] = typer.Option(None, "--threads", envvar="EDGE_EVOLVER_THREADS",
                                          help="ONNX Runtime intra-op threads."),
    max_queue: Optional[int] = typer.Option(None, "--max-queue", envvar="EDGE_EVOLVER_MAX_QUEUE",
                                            help="Jobs waiting at most; more get QUEUE_FULL."),
    username: Optional[str] = typer.Option(None, "--username", envvar="EDGE_EVOLVER_USERNAME", help="Broker user."),
    password_file: Optional[str] = typer.Option(None, "--password-file", envvar="EDGE_EVOLVER_PASSWORD_FILE",
                                                help="File holding the broker password."),
    ca_file: Optional[str] = typer.Option(None, "--ca-file", envvar="EDGE_EVOLVER_CA_FILE",
                                          help="mqtts://: verify the broker against this CA (default: system CAs)."),
    cert_file: Optional[str] = typer.Option(None, "--cert-file", envvar="EDGE_EVOLVER_CERT_FILE",
                                            help="mqtts://: this board's client certificate."),
    key_file: Optional[str] = typer.Option(None, "--key-file", envvar="EDGE_EVOLVER_KEY_FILE",
                                           help="mqtts://: the client certificate's private key."),
    keys_dir: Optional[str] = typer.Option(None, "--keys-dir", envvar="EDGE_EVOLVER_KEYS_DIR",
                                           help="Board key pair (default <state-dir>/keys)."),
    trusted_keys: Optional[str] = typer.Option(None, "--trusted-keys", envvar="EDGE_EVOLVER_TRUSTED_KEYS",
                                               help="Host public keys to trust (default <keys-dir>/trusted-hosts)."),
    allow_unsigned: Optional[bool] = typer.Option(None, "--allow-unsigned/--require-signed",
                                                  envvar="EDGE_EVOLVER_ALLOW_UNSIGNED",
                                                  help="Also run unsigned jobs (isolated test benches only)."),
    max_job_age_s: Optional[float] = typer.Option(None, "--max-job-age-s", envvar="EDGE_EVOLVER_MAX_JOB_AGE_S",
                                                  help="Longest validity a signed job may claim."),
    clock_skew_s: Optional[float] = typer.Option(None, "--clock-skew-s", envvar="EDGE_EVOLVER_CLOCK_SKEW_S",
                                                 help="How far ahead the host's clock may be."),
    max_results: Optional[int] = typer.Option(None, "--max-results", envvar="EDGE_EVOLVER_MAX_RESULTS",
                                              help="Stored results kept at most (oldest pruned)."),
    max_results_mb: Optional[float] = typer.Option(None, "--max-results-mb", envvar="EDGE_EVOLVER_MAX_RESULTS_MB",
                                                   help="Disk the stored results may use."),
    cache_max_mb: Optional[float] = typer.Option(None, "--cache-max-mb", envvar="EDGE_EVOLVER_CACHE_MAX_MB",
                                                 help="Disk the engine cache may use."),
    child_memory_mb: Optional[float] = typer.Option(None, "--child-memory-mb", envvar="EDGE_EVOLVER_CHILD_MEMORY_MB",
                                                    help="Memory limit of the measuring process (0: automatic)."),
) -> None:
    """Serve measurement jobs from an MQTT broker until SIGTERM."""
    from ..daemon.config import build_config, default_config_file
    from ..daemon.service import EdgeDaemon

    overrides = dict(broker=broker, device_id=device_id, group=group, backend=backend, power=power,
                     cache_dir=cache_dir, state_dir=state_dir, prefix=prefix, mqtt_version=mqtt_version,
                     max_payload_mb=max_payload_mb, job_timeout_s=job_timeout_s, threads=threads,
                     max_queue=max_queue, username=username, password_file=password_file,
                     telemetry_interval_s=telemetry_interval_s, idle_telemetry_interval_s=idle_telemetry_interval_s,
                     ca_file=ca_file, cert_file=cert_file, key_file=key_file, keys_dir=keys_dir,
                     trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, max_job_age_s=max_job_age_s,
                     clock_skew_s=clock_skew_s, max_results=max_results, max_results_mb=max_results_mb,
                     cache_max_mb=cache_max_mb, child_memory_mb=child_memory_mb)
    # Without --config an installed board's own file counts, as it does for `edge-evolver keys`.
    config_file = default_config_file(config_file)
    try:
        config = build_config(config_file, overrides)
        if config_file and not (ctx.obj or {}).get("log_level_given"):
            configure_logging(config.log_level)
        found = daemon_facts(config)
        daemon = EdgeDaemon(config, found["facts"], found["meter"], _board_state, _temperatures, _gauges)
    except EdgeError as exc:
        _fail(exc.code, exc.message)
    except ValueError as exc:  # TLS files that cannot be used
        _fail(ErrorCode.BAD_INPUT, str(exc))
    except OSError as exc:
        _fail(ErrorCode.BAD_INPUT, f"cannot prepare the state directory: {exc}")
    signal.signal(signal.SIGTERM, daemon.stop)
    signal.signal(signal.SIGINT, daemon.stop)
    # SIGHUP (`systemctl reload`) re-reads the trust file now. On a helper thread, as daemon.stop does: the
    # handler runs on the main thread, which may be inside a lock (the event's, logging's) the re-read needs.
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=daemon.gate.reload, name="reload",
                                                             daemon=True).start())
    raise typer.Exit(code=daemon.run())


def _watch(state: MonitorState, changed: "queue.Queue[str]", duration: Optional[float], json_out: bool) -> None:
    """On a terminal, redraw the table every second; elsewhere (unless --duration), one line per change."""
    tty = sys.stdout.isatty() and not json_out
    shown: Dict[str, tuple] = {}

    def tick() -> None:
        rows = changed_rows(state, changed, shown)  # drained on a terminal too, so that the queue never grows
        if tty:
            typer.echo("\x1b[2J\x1b[H" + render_table(state.snapshot()))
            return
        for row in rows:
            if duration is None:
                typer.echo(json.dumps(row_json(row), sort_keys=True) if json_out else row_line(row))

    tick_until(duration, tick)


def monitor(
    broker: str = typer.Option("mqtt://localhost:1883", "--broker", envvar="EDGE_EVOLVER_BROKER",
                               help="mqtt://[user[:password]@]host:port"),
    prefix: str = typer.Option(DEFAULT_PREFIX, "--prefix", envvar="EDGE_EVOLVER_PREFIX", help="Topic prefix."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Watch this many seconds, print once, exit."),
    json_out: bool = typer.Option(False, "--json", envvar="EDGE_EVOLVER_JSON",
                                  help="JSON instead of text: one object per change, or one list with --duration."),
    ca_file: str = typer.Option("", "--ca-file", envvar="EDGE_EVOLVER_CA_FILE", help="mqtts://: the broker's CA."),
    cert_file: str = typer.Option("", "--cert-file", envvar="EDGE_EVOLVER_CERT_FILE",
                                  help="mqtts://: client certificate."),
    key_file: str = typer.Option("", "--key-file", envvar="EDGE_EVOLVER_KEY_FILE", help="mqtts://: its key."),
) -> None:
    """Every device (state, job, fps, latency, power, temperature, GPU load, memory), from the MQTT topics.

    A live table on a terminal; elsewhere one line (or JSON object) per change; with --duration, one table
    (or JSON list) at the end."""
    try:
        url = parse_broker_url(broker)
        topics = Topics(prefix)
    except ValueError as exc:
        _fail(ErrorCode.BAD_INPUT, str(exc))
    state = MonitorState(topics)
    changed: queue.Queue[str] = queue.Queue()
    try:
        conn = MqttConnection(url, f"edge-evolver-monitor-{uuid.uuid4().hex[:8]}", persistent=False,
                              tls=TlsFiles(ca_file, cert_file, key_file))
    except ValueError as exc:
        _fail(ErrorCode.BAD_INPUT, str(exc))

    def on_message(topic: str, payload: bytes) -> None:
        device = state.apply(topic, payload)
        if device is not None:
            changed.put(device)

    conn.on_message = on_message

    def subscribe_all(_session_present: bool) -> None:
        for topic in subscriptions(topics):
            conn.subscribe(topic, 0)

    conn.on_connect = subscribe_all
    try:
        if not conn.start(first_delay=0.5, max_delay=5.0, give_up_after=duration):
            _fail(ErrorCode.BROKER_UNREACHABLE, f"cannot reach the broker at {url.display()}")
        _watch(state, changed, duration, json_out)
    finally:
        conn.stop()
    if duration is not None:
        rows = state.snapshot()
        typer.echo(json.dumps(rows, sort_keys=True) if json_out else render_table(rows))


def pack(
    model: str = typer.Argument(..., metavar="MODEL.onnx", help="ONNX model to wrap."),
    output: str = typer.Option(..., "--output", "-o", help="Where to write the framed job (for mosquitto_pub -f)."),
    job_id: Optional[str] = typer.Option(None, "--job-id", help="Default: a random id."),
    batch: int = typer.Option(1, "--batch"),
    min_iterations: int = typer.Option(200, "--min-iterations"),
    min_seconds: float = typer.Option(1.0, "--min-seconds"),
    warmup_s: float = typer.Option(0.2, "--warmup-s"),
    reply_to: Optional[str] = typer.Option(None, "--reply-to", help="Result topic (under the prefix)."),
    signing_key: Optional[str] = typer.Option(None, "--signing-key",
                                              help="Sign with this private key (host-trainer keys init makes one)."),
    device: Optional[str] = typer.Option(None, "--device", help="Signed jobs: the board it is for."),
    group: Optional[str] = typer.Option(None, "--group", help="Signed jobs: the group it is for ('*': any board)."),
    ttl_s: float = typer.Option(3600.0, "--ttl-s", help="Signed jobs: valid this many seconds."),
) -> None:
    """Write one framed job file, to publish with any MQTT client (see docs/protocol.md).

    Boards run signed jobs only, unless started with --allow-unsigned: give --signing-key and --device or --group."""
    from ..job import encode_job

    try:
        signer, target = _signer(signing_key, device, group, ttl_s)
        with open(model, "rb") as handle:
            data = handle.read()
        payload = encode_job(job_id or f"job-{uuid.uuid4().hex[:12]}", data,
                             {"batch": batch, "min_iterations": min_iterations, "min_seconds": min_seconds,
                              "warmup_s": warmup_s}, reply_to=reply_to, signer=signer, target=target)
        tmp = output + ".tmp"
        with open(tmp, "wb") as out:
            out.write(payload)
        os.replace(tmp, output)
    except OSError as exc:
        _fail(ErrorCode.BAD_INPUT, f"{exc.filename or model}: {exc.strerror or exc}")
    except ValueError as exc:
        _fail(ErrorCode.BAD_INPUT, str(exc))
    except EdgeError as exc:
        _fail(exc.code, exc.message)
    typer.echo(output)


def _signer(key_path: Optional[str], device: Optional[str], group: Optional[str], ttl_s: float) -> Any:
    """(JobSigner, target) for `pack --signing-key`, or (None, None) for an unsigned job."""
    if key_path is None:
        if device or group:
            raise ValueError("--device and --group address a signed job: give --signing-key too")
        return None, None
    if bool(device) == bool(group):
        raise ValueError("a signed job is for one --device or one --group")
    if ttl_s <= 0:
        raise ValueError("--ttl-s must be > 0")
    from ..trust.jobs import JobSigner
    from ..trust.keys import load_signing_key

    target = {"device": device} if device else {"group": group}
    return JobSigner(load_signing_key(key_path), ttl_s=ttl_s), target


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(monitor)
    app.command()(pack)
