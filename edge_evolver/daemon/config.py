"""ServeConfig: what `edge-evolver serve` runs with.

Precedence, highest first: command-line option, environment variable (typer reads both), the
TOML config file (flat top-level keys named like the options), built-in defaults. `log_level` follows
the same rule: `--log-level`/EDGE_EVOLVER_LOG_LEVEL, else the file's, else info. The broker
password never sits in the config itself: it comes from systemd's credential directory
(``LoadCredential=broker-password:…``), else from ``password_file``, else from the URL.
"""

import os
import socket
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Mapping, Optional

from ..backends.onnxruntime_backend import usable_cores
from ..errors import EdgeError, ErrorCode
from ..mqtt import MQTT_VERSIONS, BrokerURL, parse_broker_url
from ..protocol import DEFAULT_MAX_PAYLOAD_MB, Topics, valid_device_id

CREDENTIAL_NAME = "broker-password"
# The installed service's config (deploy/jetson/install.sh); EDGE_EVOLVER_SYSTEM_CONFIG moves it (tests).
SYSTEM_CONFIG = "/etc/edge-evolver/config.toml"


@dataclass
class ServeConfig:
    broker: str = "mqtt://localhost:1883"
    device_id: str = ""  # empty: the host name
    group: str = ""  # shared-subscription group; empty: device jobs only
    prefix: str = "edge-evolver"
    backend: str = "auto"
    power: str = "auto"
    cache_dir: str = ""  # empty: <state_dir>/engines
    state_dir: str = "~/.local/state/edge-evolver"
    max_payload_mb: float = float(DEFAULT_MAX_PAYLOAD_MB)
    job_timeout_s: float = 900.0
    max_queue: int = 64
    telemetry_interval_s: float = 1.0
    idle_telemetry_interval_s: float = 10.0
    # MQTT 5 by default: only it keeps the retain flag on a live delivery, so a retained job is never run.
    mqtt_version: str = "5"
    username: str = ""
    password_file: str = ""
    threads: int = 1
    log_level: str = "info"
    # TLS to the broker (mqtts://): a private CA and this board's client certificate (docs/security.md).
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # Signed jobs (docs/security.md): this board's key pair and the host keys it trusts.
    keys_dir: str = ""  # empty: <state_dir>/keys
    trusted_keys: str = ""  # empty: <keys_dir>/trusted-hosts
    allow_unsigned: bool = False  # run jobs without a signature: only on an isolated test bench
    max_job_age_s: float = 7 * 24 * 3600.0  # a signed job may be valid this long at most
    clock_skew_s: float = 300.0  # how far the host's clock may run ahead of the board's
    # Disk bounds.
    max_results: int = 5000
    max_results_mb: float = 256.0
    cache_max_mb: float = 2048.0
    # The measuring process's address-space limit (RLIMIT_AS); 0: automatic (see daemon/runner.py).
    child_memory_mb: float = 0.0

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 1024 * 1024)

    def resolved_cache_dir(self) -> str:
        return os.path.expanduser(self.cache_dir or os.path.join(self.state_dir, "engines"))

    def resolved_state_dir(self) -> str:
        return os.path.expanduser(self.state_dir)

    def resolved_keys_dir(self) -> str:
        return os.path.expanduser(self.keys_dir or os.path.join(self.state_dir, "keys"))

    def resolved_trusted_keys(self) -> str:
        return os.path.expanduser(self.trusted_keys or os.path.join(self.resolved_keys_dir(), "trusted-hosts"))

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def read_toml(path: str) -> Dict[str, Any]:
    """A TOML file's table (tomllib, or tomli before Python 3.11). Raises OSError, or ValueError when the file is not
    TOML. `host-trainer evolve --config` reads its TOML files with it too."""
    try:
        import tomllib  # novermin - Python 3.11+
    except ImportError:
        import tomli as tomllib  # type: ignore[no-redef]  # the same parser, packaged for Python < 3.11
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def _load_toml(path: str) -> Dict[str, Any]:
    try:
        return read_toml(path)
    except OSError as exc:
        raise EdgeError(ErrorCode.BAD_INPUT, f"cannot read config file '{path}': {exc.strerror or exc}") from None
    except ValueError as exc:  # TOMLDecodeError subclasses ValueError
        raise EdgeError(ErrorCode.BAD_INPUT, f"config file '{path}' is not valid TOML: {exc}") from None


def _coerce(name: str, value: Any, default: Any, source: str) -> Any:
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or isinstance(value, bool) != isinstance(default, bool):
        raise EdgeError(ErrorCode.BAD_INPUT, f"{source}: '{name}' must be {kind.__name__}, not {value!r}")
    return value


def build_config(file_path: Optional[str], overrides: Mapping[str, Any]) -> ServeConfig:
    """Defaults <- file <- overrides (options given on the command line or in the environment)."""
    defaults = ServeConfig()
    known = {f.name: getattr(defaults, f.name) for f in fields(ServeConfig)}
    values: Dict[str, Any] = {}
    if file_path:
        data = _load_toml(file_path)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise EdgeError(ErrorCode.BAD_INPUT, f"config file '{file_path}': unknown key(s) {unknown}")
        values.update({k: _coerce(k, v, known[k], file_path) for k, v in data.items()})
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = ServeConfig(**values)
    validate(config)
    return config


def validate(config: ServeConfig) -> None:
    """Raise EdgeError(BAD_INPUT) naming the first wrong setting."""
    if not config.device_id:
        config.device_id = socket.gethostname().split(".")[0]
    problems = []
    if not valid_device_id(config.device_id):
        problems.append(f"device_id {config.device_id!r} must be 1-64 chars of [A-Za-z0-9._-]")
    if config.group and not valid_device_id(config.group):
        problems.append(f"group {config.group!r} must be 1-64 chars of [A-Za-z0-9._-]")
    try:
        Topics(config.prefix)
        parse_broker_url(config.broker)
    except ValueError as exc:
        problems.append(str(exc))
    if config.mqtt_version not in MQTT_VERSIONS:
        problems.append(f"mqtt_version must be one of {list(MQTT_VERSIONS)}")
    for name in ("max_payload_mb", "job_timeout_s", "telemetry_interval_s", "idle_telemetry_interval_s",
                 "max_job_age_s", "max_results_mb", "cache_max_mb"):
        if getattr(config, name) <= 0:
            problems.append(f"{name} must be > 0")
    if config.max_queue < 1 or config.threads < 1 or config.max_results < 1:
        problems.append("max_queue, threads and max_results must be >= 1")
    elif config.threads > usable_cores():  # every job without its own "threads" would oversubscribe the board
        problems.append(f"threads {config.threads} is more than this board's {usable_cores()} usable cores")
    if config.clock_skew_s < 0 or config.child_memory_mb < 0:
        problems.append("clock_skew_s and child_memory_mb must be >= 0")
    if bool(config.cert_file) != bool(config.key_file):
        problems.append("cert_file and key_file go together (the client certificate and its private key)")
    if problems:
        raise EdgeError(ErrorCode.BAD_INPUT, "; ".join(problems))


def _read_secret(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read().strip() or None
    except OSError as exc:
        raise EdgeError(ErrorCode.BAD_INPUT, f"cannot read password file '{path}': {exc.strerror or exc}") from None


def broker_with_credentials(config: ServeConfig, environ: Mapping[str, str] = os.environ) -> BrokerURL:
    """The broker URL plus username/password from the credential directory or password_file."""
    broker = parse_broker_url(config.broker)
    if config.username:
        broker.username = config.username
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    secret = None
    if credentials and os.path.exists(os.path.join(credentials, CREDENTIAL_NAME)):
        secret = _read_secret(os.path.join(credentials, CREDENTIAL_NAME))
    elif config.password_file:
        secret = _read_secret(os.path.expanduser(config.password_file))
    if secret:
        broker.password = secret
    return broker


def default_config_file(given: Optional[str], environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The config a command reads: --config (or EDGE_EVOLVER_CONFIG) when given, "" for none, else the
    installed service's file when there is one, so that `keys trust` edits the trust file `serve` reads."""
    if given is not None:
        return given
    path = environ.get("EDGE_EVOLVER_SYSTEM_CONFIG") or SYSTEM_CONFIG
    try:
        os.stat(path)
    except PermissionError:  # there, in a directory only root and the service may enter: reading it says so
        return path
    except OSError:
        return None
    return path
