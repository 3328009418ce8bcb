"""`host-trainer keys`: the host's signing key, the board keys it enrols, and checking a run's results.

    host-trainer keys init                          make the host key (once), print its public key
    host-trainer keys show                          print the host's public key (what boards trust)
    host-trainer keys enroll DEVICE 'ed25519:...'   accept results of board DEVICE signed by this key
    host-trainer keys verify RUN_DIR                check the signature of every result a run kept
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from edge_evolver.errors import EdgeError
from edge_evolver.protocol import valid_device_id
from edge_evolver.trust.keys import ensure_signing_key, load_signing_key, parse_public_key, read_trusted
from edge_evolver.trust.results import check_result, result_key_id
from host_trainer.cli_support import fail as _fail
from host_trainer.errors import UserError
from host_trainer.fleet.trust import BOARDS, HOST_KEY, default_keys_dir, enroll
from host_trainer.rundir import BOARD_KEYS, RESULTS

keys_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="The host's signing key and the board keys it enrols (docs/security.md).")
KEYS_DIR = typer.Option(None, "--keys-dir", envvar="HOST_TRAINER_KEYS_DIR",
                        help="Default: ~/.config/edge-evolver/host.")


def _folder(keys_dir: Optional[Path]) -> Path:
    return Path(keys_dir).expanduser() if keys_dir else default_keys_dir()


@keys_app.command("init")
def init(keys_dir: Optional[Path] = KEYS_DIR) -> None:
    """Make the host's key pair (never overwrites one) and print its public key."""
    path = _folder(keys_dir) / HOST_KEY
    try:
        key, created = ensure_signing_key(str(path))
    except (EdgeError, OSError) as exc:
        raise _fail(getattr(exc, "message", None) or f"cannot write {path}: {exc}") from None
    typer.echo(f"{'made' if created else 'kept the existing'} host key {path} (id {key.key_id}); "
               "trust it on each board: edge-evolver keys trust <this line>", err=True)
    typer.echo(key.public.text)


@keys_app.command("show")
def show(keys_dir: Optional[Path] = KEYS_DIR) -> None:
    """Print the host's public key."""
    try:
        typer.echo(load_signing_key(str(_folder(keys_dir) / HOST_KEY)).public.text)
    except EdgeError as exc:
        raise _fail(exc.message + " (make one with: host-trainer keys init)") from None


@keys_app.command("enroll")
def enroll_board(device: str = typer.Argument(..., help="The board's device id."),
                 public_key: str = typer.Argument(..., help="Its key line (edge-evolver keys show on the board)."),
                 keys_dir: Optional[Path] = KEYS_DIR) -> None:
    """Accept results of DEVICE signed by this key (enrol a second one to rotate, then remove the old line)."""
    try:
        key = parse_public_key(public_key)
        added = enroll(_folder(keys_dir), device, key)
    except (ValueError, UserError) as exc:
        raise _fail(str(exc)) from None
    except (EdgeError, OSError) as exc:
        raise _fail(getattr(exc, "message", None) or str(exc)) from None
    typer.echo(f"{'enrolled' if added else 'already enrolled'}: {key.key_id} for {device}")


@keys_app.command("verify")
def verify(run: Path = typer.Argument(..., help="A run directory."),
           keys_dir: Optional[Path] = typer.Option(None, "--keys-dir", envvar="HOST_TRAINER_KEYS_DIR",
                                                   help="Check against these enrolled keys instead of the run's "
                                                        f"own copy ({BOARD_KEYS}/).")) -> None:
    """Check every result the run kept against the board keys: exit 0 when all verify, 1 otherwise."""
    folder = Path(keys_dir).expanduser() / BOARDS if keys_dir else Path(run) / BOARD_KEYS
    files = sorted((Path(run) / RESULTS).glob("*.json"))
    if not files:
        raise _fail(f"no results in {run}/{RESULTS}")
    bad = 0
    for path in files:
        problem = _check_file(path, folder)
        if problem is not None:
            bad += 1
            typer.echo(f"FAILED {path.name}: {problem}")
    typer.echo(f"{len(files) - bad} of {len(files)} results verified against {folder}")
    raise typer.Exit(code=1 if bad else 0)


def _check_file(path: Path, folder: Path) -> str | None:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    if not isinstance(result, dict):
        return "not a result object"

    def keys_of(device: str) -> list:
        if not valid_device_id(device):  # never a path out of the folder
            return []
        try:
            return [key for key, _ in read_trusted(str(folder / f"{device}.pub")).entries]
        except EdgeError:
            return []

    problem = check_result(result, keys_of)
    return None if problem is None else f"{problem} (key {result_key_id(result)})"
