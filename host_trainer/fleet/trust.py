"""The host's side of trust: its signing key, the board keys it enrolled, and the checks on results.

    <keys dir>/host.key            the host's private key (0600); its public key goes onto every board
    <keys dir>/boards/<id>.pub     the keys enrolled for board <id>, one per line (two while rotating)

The keys dir is `--keys-dir`, by default ~/.config/edge-evolver/host. The embedded default run makes
a run-local pair of keys (host and board) in its own folder, so it is signed with no set-up.
A result counts only when a key enrolled for the device it names signed it (edge_evolver/trust), and only when
it answers a job this host sent there (binding.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from edge_evolver.errors import EdgeError
from edge_evolver.files import atomic_write
from edge_evolver.protocol import valid_device_id
from edge_evolver.trust.jobs import ANY_GROUP, JobSigner
from edge_evolver.trust.keys import PublicKey, add_trusted, ensure_signing_key, load_signing_key, read_trusted
from edge_evolver.trust.results import check_result
from host_trainer.errors import UserError
from host_trainer.rundir import BOARD_KEYS, EMBEDDED_BOARD_KEYS, EMBEDDED_HOST_KEYS

log = structlog.get_logger("host_trainer.trust")

HOST_KEY = "host.key"
BOARDS = "boards"


def default_keys_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "edge-evolver" / "host"


def board_file(keys_dir: Path, device_id: str) -> Path:
    if not valid_device_id(device_id):
        raise UserError(f"device id {device_id!r} must be 1-64 chars of [A-Za-z0-9._-]")
    return Path(keys_dir) / BOARDS / f"{device_id}.pub"


def enroll(keys_dir: Path, device_id: str, key: PublicKey) -> bool:
    """Trust ``key`` for results of ``device_id``; False when it already was."""
    return add_trusted(str(board_file(keys_dir, device_id)), key, device_id)


@dataclass
class HostTrust:
    """What a run signs jobs with and which board keys its results must carry.

    ``signer`` None is the insecure mode (--insecure): jobs go unsigned and results are not checked,
    which only boards started with --allow-unsigned accept.
    """

    signer: JobSigner | None
    keys_dir: Path | None
    _cache: dict = field(default_factory=dict)

    @property
    def insecure(self) -> bool:
        return self.signer is None

    def board_keys(self, device_id: str) -> list[PublicKey]:
        if self.keys_dir is None or not valid_device_id(device_id):
            return []
        path = board_file(self.keys_dir, device_id)
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return []
        cached = self._cache.get(device_id)
        if cached is None or cached[0] != stamp:  # enrolment during a run is picked up
            try:
                cached = (stamp, [key for key, _ in read_trusted(str(path)).entries])
            except EdgeError:
                cached = (stamp, [])
            self._cache[device_id] = cached
        return list(cached[1])

    def check(self, result: dict) -> str | None:
        """None when the result may be used, else why it may not."""
        return None if self.insecure else check_result(result, self.board_keys)

    def snapshot(self, device_id: str, run_dir: Path) -> None:
        """Copy the device's enrolled keys into the run (board-keys/), so that `host-trainer keys verify`
        checks its results later without this host's keys dir."""
        if self.keys_dir is None or not valid_device_id(device_id):
            return
        source, target = board_file(self.keys_dir, device_id), Path(run_dir) / BOARD_KEYS / f"{device_id}.pub"
        try:
            data = source.read_bytes()
            if not target.exists() or target.read_bytes() != data:
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(str(target), data, fsync=False, mode=0o644)
        except OSError as exc:
            log.warning("board_key_snapshot_failed", device=device_id, error=str(exc))

    @staticmethod
    def target(device: str, any_device: str) -> dict:
        return {"group": ANY_GROUP} if device == any_device else {"device": device}


def open_trust(keys_dir: str, insecure: bool, ttl_s: float) -> HostTrust:
    """The run's trust from a keys dir; UserError with the set-up steps when the host key is missing."""
    if insecure:
        return HostTrust(None, None)
    folder = Path(keys_dir).expanduser() if keys_dir else default_keys_dir()
    path = folder / HOST_KEY
    if not path.exists():
        raise UserError(f"no host key at {path}: make one with `host-trainer keys init`, trust its public key on "
                        "each board (`edge-evolver keys trust <key>`) and enrol each board's key here "
                        "(`host-trainer keys enroll <device-id> <key>`); docs/security.md. Boards started with "
                        "--allow-unsigned also take jobs from `--insecure`")
    try:
        return HostTrust(JobSigner(load_signing_key(str(path)), ttl_s=ttl_s), folder)
    except EdgeError as exc:
        raise UserError(exc.message) from None


def embedded_trust(workdir: Path, device_id: str, ttl_s: float) -> tuple[HostTrust, Path]:
    """Run-local keys for the embedded default: (the host's trust, the board's keys dir).

    The board's key and its trust file are written before the daemon starts, so nothing is
    exchanged at run time; a resumed run finds and keeps the same keys.
    """
    host_dir, board_dir = Path(workdir) / EMBEDDED_HOST_KEYS, Path(workdir) / EMBEDDED_BOARD_KEYS
    host_key, _ = ensure_signing_key(str(host_dir / HOST_KEY))
    board_key, _ = ensure_signing_key(str(board_dir / "board.key"))
    add_trusted(str(board_dir / "trusted-hosts"), host_key.public, "this run's host")
    enroll(host_dir, device_id, board_key.public)
    return HostTrust(JobSigner(host_key, ttl_s=ttl_s), host_dir), board_dir
