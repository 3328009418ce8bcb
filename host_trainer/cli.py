"""`host-trainer`: evolve compact networks (`evolve`) and draw a run's figures (`report`).

Every option also reads an environment variable (HOST_TRAINER_<OPTION>). Bad input ends with a
one-line `error: …` on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import List, Optional

import typer

from edge_evolver.cli_support import run_app
from host_trainer.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Evolutionary synthesis with synaptic precision restriction (host side).")


def _env(name: str) -> str:
    return "HOST_TRAINER_" + name.upper().replace("-", "_")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


@app.command()
def evolve(
    task: str = typer.Option("classify", "--task", envvar=_env("task"),
                             help="classify, or detect (docs/detection.md)."),
    model: Optional[str] = typer.Option(
        None, "--model", envvar=_env("model"),
        help="Built-in (mlp, lenet5, vgg-small, resnet-small; det-small for detect) or path/to/file.py:factory "
             "[default: vgg-small, det-small for detect]."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", envvar=_env("dataset"),
        help="digits, glyphs or imagefolder:PATH; for detect shapes-det, coco:PATH or yolo:PATH "
             "[default: glyphs, shapes-det for detect]."),
    image_size: int = typer.Option(0, "--image-size", envvar=_env("image_size"),
                                   help="Input side in pixels [default: 32, 128 for detect]."),
    generations: Optional[int] = typer.Option(None, "--generations", envvar=_env("generations"),
                                              help="Offspring generations after the dense generation 0 [default: 13]."),
    epochs: Optional[float] = typer.Option(None, "--epochs", envvar=_env("epochs"),
                                           help="Training epochs per offspring [default: 0.75, 1.5 for detect]."),
    gen0_epochs: Optional[float] = typer.Option(None, "--gen0-epochs", envvar=_env("gen0_epochs"),
                                                help="Training epochs of generation 0 [default: 4, 12 for detect]."),
    precision: str = typer.Option("fp16", "--precision", envvar=_env("precision"), help="fp16, bf16 or fp32."),
    env_factor: str = typer.Option("0.8,0.95", "--env-factor", envvar=_env("env_factor"),
                                   help="Environmental factor α, or α_c,α_s (fraction inherited per generation)."),
    probability_model: str = typer.Option("calibrated", "--probability-model", envvar=_env("probability_model"),
                                          help="calibrated or darwin."),
    tau: float = typer.Option(0.1, "--tau", envvar=_env("tau"), help="Heredity sharpness τ (1 = the papers')."),
    channel_multiple: Optional[int] = typer.Option(
        None, "--channel-multiple", envvar=_env("channel_multiple"),
        help="Round surviving channels to a multiple [default: 16 for onnxruntime, 8 for tensorrt]."),
    init: str = typer.Option("inherit", "--init", envvar=_env("init"), help="inherit or reinit."),
    seed: int = typer.Option(0, "--seed", envvar=_env("seed")),
    run_dir: Path = typer.Option(Path("runs"), "--run-dir", envvar=_env("run_dir"),
                                 help="Folder under which a new run directory is made."),
    resume: Optional[Path] = typer.Option(None, "--resume", envvar=_env("resume"),
                                          help="Continue this run directory from its last completed generation."),
    max_accuracy_drop: float = typer.Option(2.0, "--max-accuracy-drop", envvar=_env("max_accuracy_drop"),
                                            help="Largest validation-accuracy drop vs generation 0, in points."),
    distill: float = typer.Option(0.0, "--distill", envvar=_env("distill"),
                                  help="Weight of distillation from the parent's outputs (0 = off)."),
    train_subset: int = typer.Option(0, "--train-subset", envvar=_env("train_subset"),
                                     help="Train on the first N training images only (0 = all)."),
    bench_threads: int = typer.Option(1, "--bench-threads", envvar=_env("bench_threads"),
                                      help="ONNX Runtime intra-op threads for the local benchmark."),
    bench_min_seconds: float = typer.Option(1.0, "--bench-min-seconds", envvar=_env("bench_min_seconds"),
                                            help="Shortest timed window of the local benchmark."),
    bench_min_iterations: int = typer.Option(200, "--bench-min-iterations", envvar=_env("bench_min_iterations"),
                                             help="Fewest timed inferences of the local benchmark."),
    broker: str = typer.Option("", "--broker", envvar=_env("broker"),
                               help="mqtt://host:port of the fleet [default: an embedded broker + local daemon]."),
    device: List[str] = typer.Option([], "--device", envvar=_env("device"),
                                     help="Measure on this device id (repeat for several)."),
    any_device: bool = typer.Option(False, "--any-device", envvar=_env("any_device"),
                                    help="Send jobs to <prefix>/jobs: one board of each shared-subscription group."),
    prefix: str = typer.Option("edge-evolver", "--prefix", envvar=_env("prefix"), help="MQTT topic prefix."),
    no_mqtt: bool = typer.Option(False, "--no-mqtt", envvar=_env("no_mqtt"),
                                 help="Measure in this process instead (no devices, no power)."),
    job_timeout_s: float = typer.Option(600.0, "--job-timeout-s", envvar=_env("job_timeout_s"),
                                        help="How long to wait for one device result before sending again."),
    job_retries: int = typer.Option(2, "--job-retries", envvar=_env("job_retries")),
    device_timeout_s: float = typer.Option(300.0, "--device-timeout", envvar=_env("device_timeout"),
                                           help="How long to wait for a device to be online before giving up."),
    target_fps: float = typer.Option(0.0, "--target-fps", envvar=_env("target_fps"), help="0 = no target."),
    target_latency_ms: float = typer.Option(0.0, "--target-latency-ms", envvar=_env("target_latency_ms")),
    max_power_w: float = typer.Option(0.0, "--max-power-w", envvar=_env("max_power_w")),
    offspring: int = typer.Option(1, "--offspring", envvar=_env("offspring"),
                                  help="K offspring per generation, measured in parallel; the fittest is kept."),
    hold: int = typer.Option(2, "--hold", envvar=_env("hold"),
                             help="Stop once the targets are met for this many generations in a row."),
    log_level: str = typer.Option("info", "--log-level", envvar=_env("log_level")),
) -> None:
    """Evolve generations of ever smaller offspring; write everything to a run directory."""
    from host_trainer.config import CHANNEL_MULTIPLE_BY_BACKEND, TASK_DEFAULTS, EvolveConfig, parse_env_factor
    from host_trainer.session import resume_run, start_run

    _configure_logging(log_level)
    try:
        if resume is not None:
            rows = resume_run(resume, generations)
        else:
            alpha_c, alpha_s = parse_env_factor(env_factor)
            defaults = TASK_DEFAULTS.get(task, TASK_DEFAULTS["classify"])
            cfg = EvolveConfig(
                task=task, image_size=image_size, model=model or str(defaults["model"]),
                dataset=dataset or str(defaults["dataset"]), generations=13 if generations is None else generations,
                epochs=float(defaults["epochs"]) if epochs is None else epochs, batch_size=int(defaults["batch_size"]),
                gen0_epochs=float(defaults["gen0_epochs"]) if gen0_epochs is None else gen0_epochs,
                precision=precision, alpha_c=alpha_c, alpha_s=alpha_s,
                probability_model=probability_model, tau=tau, init=init, seed=seed,
                channel_multiple=channel_multiple or CHANNEL_MULTIPLE_BY_BACKEND["onnxruntime"],
                max_accuracy_drop=max_accuracy_drop, distill=distill, train_subset=train_subset,
                bench_threads=bench_threads, bench_min_seconds=bench_min_seconds,
                bench_min_iterations=bench_min_iterations, broker=broker, devices=list(device),
                any_device=any_device, prefix=prefix, no_mqtt=no_mqtt, job_timeout_s=job_timeout_s,
                job_retries=job_retries, device_timeout_s=device_timeout_s, target_fps=target_fps,
                target_latency_ms=target_latency_ms, max_power_w=max_power_w, hold=hold, offspring=offspring,
            ).validate()
            rows = start_run(cfg, run_dir, _run_id(cfg))
    except UserError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: continue with --resume RUN_DIR", err=True)
        raise typer.Exit(code=130) from None
    typer.echo(f"done: {sum(1 for r in rows if r['accepted'])} generations recorded")


@app.command()
def report(run: Path = typer.Argument(..., help="A run directory made by `host-trainer evolve`.")) -> None:
    """Draw the run's figures (PNG) and write report.md."""
    from host_trainer.report import write_report

    try:
        outputs = write_report(run)
    except UserError as exc:
        raise _fail(str(exc)) from None
    for path in outputs:
        typer.echo(str(path))


@app.command()
def watch(
    broker: str = typer.Option("mqtt://localhost:1883", "--broker", envvar=_env("broker"),
                               help="mqtt://host:port (the embedded run prints its own)."),
    prefix: str = typer.Option("edge-evolver", "--prefix", envvar=_env("prefix")),
    run: Optional[str] = typer.Option(None, "--run", help="Only this run id (its directory name)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Watch this long, print once, exit."),
    json_out: bool = typer.Option(False, "--json", help="With --duration: one JSON object."),
) -> None:
    """A live table of runs (generation, synapses, α, accuracy, fps) and devices (fps, power)."""
    from host_trainer.watch import watch as run_watch

    try:
        raise typer.Exit(code=run_watch(broker, prefix, run, duration, json_out))
    except (ValueError, ConnectionError) as exc:
        raise _fail(str(exc)) from None


def _run_id(cfg) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(cfg.model.split(':')[0]).stem}-{cfg.dataset.split(':')[0]}")
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-s{cfg.seed}"


def _configure_logging(level: str) -> None:
    from edge_evolver.logging_setup import configure_logging

    configure_logging(level)


def main() -> None:
    run_app(app, "host-trainer")


if __name__ == "__main__":
    main()
