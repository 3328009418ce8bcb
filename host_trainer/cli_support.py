"""What every `host-trainer` command file shares: the environment variable of an option, and the one-line failure."""

from __future__ import annotations

import typer


def env_name(name: str) -> str:
    """The environment variable that sets an option: HOST_TRAINER_<OPTION>."""
    return "HOST_TRAINER_" + name.upper().replace("-", "_")


def fail(message: str) -> typer.Exit:
    """`error: message` on stderr; raise the returned Exit (code 2, before anything is written)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)
