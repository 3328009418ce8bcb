"""`edge-evolver keys`: the board's key pair and the host keys it trusts (docs/security.md).

    edge-evolver keys init                      make the board key (once) and print its public key
    edge-evolver keys show                      print the board's public key
    edge-evolver keys trust 'ed25519:...'       enrol a host key: its signed jobs run here
    edge-evolver keys untrust KEY_ID            remove one (rotation: trust the new key first)
    edge-evolver keys list                      the trusted host keys

Every command finds the files as `serve` does: --keys-dir / --trusted-keys, else the config
file's keys_dir / trusted_keys, else <state_dir>/keys. Without --config the installed service's
/etc/edge-evolver/config.toml is read when it exists, so `sudo edge-evolver keys trust` edits the
file the service reads. Output is the key line alone on stdout, so `edge-evolver keys show > board.pub`
is what the host enrols.
"""

import os
from typing import Any, Dict, Optional

import typer

from ..errors import EdgeError, ErrorCode
from .support import fail as _fail

keys_app = typer.Typer(add_completion=False, help="The board's key pair and the host keys it trusts.")


# The installed service's files are root's (and its own user's): a user's `keys trust` cannot change them.
SUDO_HINT = "the installed service's files are root's: run it with sudo"


def _paths(config_file: Optional[str], state_dir: Optional[str], keys_dir: Optional[str],
           trusted_keys: Optional[str]) -> Dict[str, str]:
    from ..daemon.config import build_config, default_config_file
    from ..daemon.gate import BOARD_KEY

    config_file = default_config_file(config_file)
    _readable(config_file)
    overrides: Dict[str, Any] = dict(state_dir=state_dir, keys_dir=keys_dir, trusted_keys=trusted_keys)
    config = build_config(config_file, overrides)
    return {"key": os.path.join(config.resolved_keys_dir(), BOARD_KEY), "trusted": config.resolved_trusted_keys()}


def _readable(path: Optional[str]) -> None:
    """Refuse, in one line naming sudo, a config this user may not read (the service's, as a plain user)."""
    if not path:
        return
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise EdgeError(ErrorCode.BAD_INPUT, f"cannot read config file '{path}': permission denied ({SUDO_HINT})") \
            from None
    except OSError:
        pass  # build_config says what is wrong with it


def _denied(path: str) -> None:
    _fail(ErrorCode.BAD_INPUT, f"cannot write the trust file '{path}': permission denied ({SUDO_HINT})")


def _options() -> Dict[str, Any]:
    return dict(
        config_file=typer.Option(None, "--config", envvar="EDGE_EVOLVER_CONFIG",
                                  help="The serve config file (default: /etc/edge-evolver/config.toml when it "
                                       "exists, as the installed service reads; '' for none)."),
        state_dir=typer.Option(None, "--state-dir", envvar="EDGE_EVOLVER_STATE_DIR"),
        keys_dir=typer.Option(None, "--keys-dir", envvar="EDGE_EVOLVER_KEYS_DIR"),
        trusted_keys=typer.Option(None, "--trusted-keys", envvar="EDGE_EVOLVER_TRUSTED_KEYS"),
    )


_O = _options()


@keys_app.command("init")
def init(config_file: Optional[str] = _O["config_file"], state_dir: Optional[str] = _O["state_dir"],
         keys_dir: Optional[str] = _O["keys_dir"], trusted_keys: Optional[str] = _O["trusted_keys"]) -> None:
    """Make this board's key pair (never overwrites one) and print its public key."""
    from ..trust.keys import ensure_signing_key

    try:
        path = _paths(config_file, state_dir, keys_dir, trusted_keys)["key"]
        key, created = ensure_signing_key(path)
    except EdgeError as exc:
        _fail(exc.code, exc.message)
    except OSError as exc:
        _fail(ErrorCode.BAD_INPUT, f"cannot write the board key: {exc}")
    typer.echo(f"{'made' if created else 'kept the existing'} board key {path} (id {key.key_id})", err=True)
    typer.echo(key.public.text)


@keys_app.command("show")
def show(config_file: Optional[str] = _O["config_file"], state_dir: Optional[str] = _O["state_dir"],
         keys_dir: Optional[str] = _O["keys_dir"], trusted_keys: Optional[str] = _O["trusted_keys"]) -> None:
    """Print this board's public key (what the host enrols)."""
    from ..trust.keys import load_signing_key

    try:
        key = load_signing_key(_paths(config_file, state_dir, keys_dir, trusted_keys)["key"])
    except EdgeError as exc:
        _fail(exc.code, exc.message + " (make one with: edge-evolver keys init)")
    typer.echo(key.public.text)


@keys_app.command("trust")
def trust(public_key: str = typer.Argument(..., help="The host's key line, ed25519:<base64>."),
          name: str = typer.Option("", "--name", help="A comment to recognise it by, e.g. the host name."),
          config_file: Optional[str] = _O["config_file"], state_dir: Optional[str] = _O["state_dir"],
          keys_dir: Optional[str] = _O["keys_dir"], trusted_keys: Optional[str] = _O["trusted_keys"]) -> None:
    """Enrol a host key: jobs it signs run on this board (the daemon picks it up without a restart)."""
    from ..trust.keys import add_trusted, parse_public_key

    try:
        key = parse_public_key(public_key)
        path = _paths(config_file, state_dir, keys_dir, trusted_keys)["trusted"]
        added = add_trusted(path, key, name)
    except ValueError as exc:
        _fail(ErrorCode.BAD_INPUT, str(exc))
    except EdgeError as exc:
        _fail(exc.code, exc.message)
    except PermissionError:
        _denied(path)
    except OSError as exc:
        _fail(ErrorCode.BAD_INPUT, f"cannot write the trust file: {exc}")
    typer.echo(f"{'trusted' if added else 'already trusted'}: {key.key_id} in {path}")


@keys_app.command("untrust")
def untrust(key_id: str = typer.Argument(..., help="The key id (8 or more of its hex digits)."),
            config_file: Optional[str] = _O["config_file"], state_dir: Optional[str] = _O["state_dir"],
            keys_dir: Optional[str] = _O["keys_dir"], trusted_keys: Optional[str] = _O["trusted_keys"]) -> None:
    """Remove a host key: its jobs are refused from now on."""
    from ..trust.keys import remove_trusted

    try:
        path = _paths(config_file, state_dir, keys_dir, trusted_keys)["trusted"]
        removed = remove_trusted(path, key_id)
    except EdgeError as exc:
        _fail(exc.code, exc.message)
    except PermissionError:
        _denied(path)
    except OSError as exc:
        _fail(ErrorCode.BAD_INPUT, f"cannot write the trust file: {exc}")
    if not removed:
        _fail(ErrorCode.BAD_INPUT, f"no trusted key with id {key_id!r} in {path}")
    typer.echo(f"removed {key_id} from {path}")


@keys_app.command("list")
def list_keys(config_file: Optional[str] = _O["config_file"], state_dir: Optional[str] = _O["state_dir"],
              keys_dir: Optional[str] = _O["keys_dir"], trusted_keys: Optional[str] = _O["trusted_keys"]) -> None:
    """The trusted host keys: id, key, comment."""
    from ..trust.keys import read_trusted

    try:
        path = _paths(config_file, state_dir, keys_dir, trusted_keys)["trusted"]
        trusted = read_trusted(path)
    except EdgeError as exc:
        _fail(exc.code, exc.message)
    for key, comment in trusted.entries:
        typer.echo(f"{key.key_id}  {key.text}  {comment}".rstrip())
    if not len(trusted):
        typer.echo(f"no trusted host keys in {path}", err=True)
