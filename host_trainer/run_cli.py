"""`host-trainer report`, `export` and `watch`: what is done with a run directory, or with runs on a broker."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from host_trainer.cli_support import env_name, fail
from host_trainer.config import WATCH_BROKER, default_of
from host_trainer.errors import UserError


def report(run: Path = typer.Argument(..., help="A run directory made by `host-trainer evolve`.")) -> None:
    """Draw the run's figures (PNG) and write report.md."""
    from host_trainer.report.writer import write_report

    try:
        outputs = write_report(run)
    except UserError as exc:
        raise fail(str(exc)) from None
    for path in outputs:
        typer.echo(str(path))


def export(
    run: Path = typer.Argument(..., help="A run directory made by `host-trainer evolve`."),
    out: Path = typer.Option(..., "--out", help="Write the folder here (an earlier export there is replaced)."),
    generation: Optional[int] = typer.Option(None, "--generation", help="This generation \\[default: the last "
                                             "accepted one]."),
    pick: Optional[tuple[str, float]] = typer.Option(None, "--pick", metavar="fastest-within DROP",
                                                     help="From the Pareto front: the fastest generation within DROP "
                                                          "accuracy points of the front's best."),
) -> None:
    """Write one generation as a deployable folder: model.onnx, model.safetensors, architecture.json,
    preprocess.json, README.md (docs/deploy.md)."""
    from host_trainer.deploy import PICKS
    from host_trainer.loop.result import export as export_result

    try:
        if pick is not None and pick[0] not in PICKS:
            raise UserError(f"--pick takes {' or '.join(PICKS)} DROP, got {pick[0]!r}")
        folder = export_result(run, out, generation, None if pick is None else pick[1])
    except UserError as exc:
        raise fail(str(exc)) from None
    typer.echo(str(folder))


def watch(
    broker: str = typer.Option(WATCH_BROKER, "--broker", envvar=env_name("broker"),
                               help="mqtt://host:port (the embedded run prints its own)."),
    prefix: str = typer.Option(default_of("prefix"), "--prefix", envvar=env_name("prefix"), help="MQTT topic prefix."),
    run: Optional[str] = typer.Option(None, "--run", envvar=env_name("run"),
                                      help="Only this run id (its directory name)."),
    duration: Optional[float] = typer.Option(None, "--duration", envvar=env_name("duration"),
                                             help="Watch this long, print once, exit."),
    json_out: bool = typer.Option(False, "--json", envvar=env_name("json"),
                                  help="JSON: one object per update (live), or one snapshot with --duration."),
    ca_file: str = typer.Option("", "--ca-file", envvar=env_name("ca_file"), help="mqtts://: the broker's CA."),
    cert_file: str = typer.Option("", "--cert-file", envvar=env_name("cert_file"),
                                  help="mqtts://: client certificate."),
    key_file: str = typer.Option("", "--key-file", envvar=env_name("key_file"), help="mqtts://: its private key."),
) -> None:
    """Runs (generation, synapses, α, accuracy, fps) and devices (fps, power): a live table on a TTY,
    one line per update elsewhere."""
    from host_trainer.fleet.watch import watch as run_watch

    try:
        from edge_evolver.mqtt import TlsFiles

        tls = TlsFiles(ca_file, cert_file, key_file)
        raise typer.Exit(code=run_watch(broker, prefix, run, duration, json_out, tls))
    except (ValueError, ConnectionError) as exc:
        raise fail(str(exc)) from None
