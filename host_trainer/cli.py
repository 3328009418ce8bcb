"""`host-trainer`: evolve compact networks (`evolve`), draw a run's figures (`report`), watch runs (`watch`).

Every option also reads an environment variable (HOST_TRAINER_<OPTION>); `evolve --config FILE` reads them from a
file too (host_trainer/config_file.py: command line > environment > file > defaults). Defaults and choices come
from host_trainer/config.py and are shown in the help; docs/options.md is generated from this command
(host_trainer/options_doc.py). Bad input ends with a one-line `error: …` on stderr and exit code 2, before
anything is written. Logging is configured here, once (host_trainer/events.py).
"""

from __future__ import annotations

import os
import re
import sys
import time
import typing
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from edge_evolver.cli.support import run_app, version_option
from host_trainer.cli_support import env_name as _env
from host_trainer.cli_support import fail as _fail
from host_trainer.config import (
    ALLOCATIONS,
    INITS,
    PRECISION_FORMATS,
    PROBABILITY_MODELS,
    TASKS,
    default_of,
    default_text,
)
from host_trainer.errors import UserError
from host_trainer.version import __version__

if TYPE_CHECKING:
    from host_trainer.config import EvolveConfig
    from host_trainer.terminal import Terminal

# add_completion: typer's --install-completion and --show-completion (bash, zsh, fish, PowerShell).
app = typer.Typer(no_args_is_help=True, help="Evolutionary synthesis with synaptic precision restriction (host side).")


def _opt(name: str, flag: str, text: str, default_from: str | None = None, envvar: str | None = None):  # noqa: ANN202
    """An option whose default lives in config.py: None here, "[default: …]" in the help."""
    shown = default_text(default_from or name)
    # The backslash keeps rich (typer's help renderer) from reading "[default: …]" as markup.
    return typer.Option(None, flag, envvar=_env(envvar or name), show_default=False,
                        help=f"{text} \\[default: {shown}]")


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """config.py's choices as an Enum: typer checks a value against them, lists them in the help and offers them
    to shell completion (an Enum works with every typer version this project supports)."""
    return Enum(name, {value: value for value in values}, type=str)  # type: ignore[return-value]


if TYPE_CHECKING:  # built at run time from config.py's tuples, which a type checker cannot follow
    Task = Enum
    Precision = Enum
    ProbabilityModel = Enum
    Init = Enum
    Allocation = Enum
else:
    Task = _choices("Task", TASKS)
    Precision = _choices("Precision", PRECISION_FORMATS)
    ProbabilityModel = _choices("ProbabilityModel", PROBABILITY_MODELS)
    Init = _choices("Init", INITS)
    Allocation = _choices("Allocation", ALLOCATIONS)


@app.callback()
def _root(version: bool = version_option("host-trainer", __version__)) -> None:
    pass


def _load_config(ctx: typer.Context, path: Optional[Path]) -> Optional[Path]:
    """--config: the file's values become the defaults of the options given neither on the command line nor in the
    environment (click's default_map; host_trainer/config_file.py checks them first)."""
    if path is not None:
        from host_trainer.config_file import read_options

        hints = typing.get_type_hints(evolve)  # each option's type, as typer read it
        options = {p.name: (hints[p.name], tuple(p.opts)) for p in ctx.command.params if p.name in hints}
        try:
            ctx.default_map = {**(ctx.default_map or {}), **read_options(path, options, RENAMED)}
        except UserError as exc:
            raise _fail(str(exc)) from None
    return path


@app.command()
def evolve(
    config: Optional[Path] = typer.Option(None, "--config", envvar=_env("config"), is_eager=True,
                                          callback=_load_config, help="Options from a TOML file, or a run's "
                                          "config.json (repeats that run); the command line and HOST_TRAINER_* "
                                          "variables override it (docs/options.md)."),
    task: Optional[Task] = _opt("task", "--task", "What the network does (detect: docs/detection.md)."),
    model: Optional[str] = _opt("model", "--model", "Built-in (mlp, lenet5, vgg-small, resnet-small; det-small for "
                                "detect) or path/to/file.py:factory."),
    dataset: Optional[str] = _opt("dataset", "--dataset", "digits, glyphs or imagefolder:PATH; for detect "
                                  "shapes-det, coco:PATH or yolo:PATH."),
    image_size: Optional[int] = _opt("image_size", "--image-size", "Input side in pixels."),
    split: Optional[str] = _opt("split", "--split", "Re-split the data set: train/val/test percentages, e.g. "
                                "70/15/15 (none: its own train/val/test folders when it has them, else 70/15/15; "
                                "imagefolder:, coco:, yolo: only)."),
    mean: Optional[str] = _opt("mean", "--mean", "Normalisation mean per channel, for pixels in [0, 1], e.g. "
                               "0.485,0.456,0.406 (one value: every channel; none: computed on the training split)."),
    std: Optional[str] = _opt("std", "--std", "Normalisation std per channel, e.g. 0.229,0.224,0.225 (with --mean)."),
    generations: Optional[int] = _opt("generations", "--generations",
                                      "Offspring generations after the dense generation 0."),
    epochs: Optional[float] = _opt("epochs", "--epochs", "Training epochs per offspring (fractions allowed)."),
    gen0_epochs: Optional[str] = _opt("gen0_epochs", "--gen0-epochs", "Training epochs of generation 0, or auto "
                                      "(until validation accuracy stops improving; the best epoch is kept)."),
    weights: Optional[Path] = _opt("weights", "--weights", "Start generation 0 from these trained weights: a "
                                   "state_dict saved with torch.save, or a safetensors file."),
    final_epochs: Optional[float] = _opt("final_epochs", "--final-epochs", "A final fine-tune of the last accepted "
                                         "generation, in epochs (0 = none)."),
    precision: Optional[Precision] = _opt("precision", "--precision", "Number format the weights are restricted to "
                                    "(fp32: no restriction).", default_from="precision_format"),
    env_factor: Optional[str] = _opt("env_factor", "--env-factor", "Environmental factor α, or α_c,α_s "
                                     "(fraction inherited per generation)."),
    probability_model: Optional[ProbabilityModel] = _opt("probability_model", "--probability-model",
                                                         "How keep probabilities follow importance: calibrated "
                                                         "(mean = α) or darwin (the papers')."),
    tau: Optional[float] = _opt("tau", "--tau", "Heredity sharpness τ (1 = the papers')."),
    channel_multiple: Optional[int] = _opt("channel_multiple", "--channel-multiple", "Round surviving channels to "
                                           "a multiple (16 suits ONNX Runtime on x86, 8 TensorRT fp16)."),
    init: Optional[Init] = _opt("init", "--init", "An offspring inherits its parent's weights, or starts anew "
                               "(reinit)."),
    seed: Optional[int] = _opt("seed", "--seed", "Seed of everything random in the run."),
    batch_size: Optional[int] = _opt("batch_size", "--batch-size", "Training images per optimiser step (over every "
                                     "process under torchrun)."),
    lr: Optional[float] = _opt("lr", "--lr", "Peak learning rate of generation 0; offspring and the final "
                               "fine-tune scale it (docs/method.md, \"Training\")."),
    run_dir: Path = typer.Option(Path("runs"), "--run-dir", envvar=_env("run_dir"),
                                 help="Folder under which a new run directory is made."),
    resume: Optional[Path] = typer.Option(None, "--resume", envvar=_env("resume"),
                                          help="Continue this run directory from its last completed generation."),
    max_accuracy_drop: Optional[float] = _opt("max_accuracy_drop", "--max-accuracy-drop",
                                              "Largest validation-accuracy drop vs generation 0, in points."),
    max_attempts: Optional[int] = _opt("max_attempts", "--max-attempts", "Tries per generation (each with a milder "
                                       "α) before the parent trains again without a cut or is carried over."),
    distill: Optional[float] = _opt("distill", "--distill", "Weight of distillation from generation 0's outputs "
                                    "(0 = off)."),
    train_subset: Optional[int] = _opt("train_subset", "--train-subset",
                                       "Train on the first N training images only (0 = all)."),
    bench_threads: Optional[int] = _opt("bench_threads", "--bench-threads",
                                        "ONNX Runtime intra-op threads of the measuring daemon or benchmark."),
    bench_min_seconds: Optional[float] = _opt("bench_min_seconds", "--bench-min-seconds",
                                              "Shortest timed window of each measurement."),
    bench_min_iterations: Optional[int] = _opt("bench_min_iterations", "--bench-min-iterations",
                                               "Fewest timed inferences of each measurement."),
    broker: Optional[str] = _opt("broker", "--broker", "mqtt://host:port of the fleet; without it, an embedded "
                                 "broker and a local daemon."),
    device: Optional[List[str]] = typer.Option(None, "--device", envvar=_env("device"),
                                               help="Measure on this board: its device id (repeat for several). "
                                                    "Where training runs is --train-device."),
    any_device: bool = typer.Option(False, "--any-device", envvar=_env("any_device"),
                                    help="Send jobs to <prefix>/jobs: one board of each shared-subscription group."),
    prefix: Optional[str] = _opt("prefix", "--prefix", "MQTT topic prefix."),
    train_device: Optional[str] = _opt("train_device", "--train-device", "Where training runs: auto (CUDA when "
                                       "torch sees it, else the CPU), cpu, cuda or cuda:N; under torchrun cuda is "
                                       "cuda:LOCAL_RANK. With --resume, replaces the run's."),
    no_mqtt: bool = typer.Option(False, "--no-mqtt", envvar=_env("no_mqtt"),
                                 help="Measure in this process instead (no devices, no power)."),
    job_timeout_s: Optional[float] = _opt("job_timeout_s", "--job-timeout-s",
                                          "How long to wait for one device result before sending again."),
    job_retries: Optional[int] = _opt("job_retries", "--job-retries", "Resends of a job without a usable result."),
    device_timeout_s: Optional[float] = _opt("device_timeout_s", "--device-timeout", "How long to wait for a "
                                             "device to be online before giving up.", envvar="device_timeout"),
    target_fps: Optional[float] = _opt("target_fps", "--target-fps", "Speed goal in fps (0 = none)."),
    target_latency_ms: Optional[float] = _opt("target_latency_ms", "--target-latency-ms",
                                              "Latency goal, p50 in ms (0 = none)."),
    max_power_w: Optional[float] = _opt("max_power_w", "--max-power-w", "Power budget in W (0 = none)."),
    offspring: Optional[int] = _opt("offspring", "--offspring",
                                    "K offspring per generation, measured in parallel; the fittest is kept."),
    hold: Optional[int] = _opt("hold", "--hold", "Stop once the goals are met for this many generations in a row."),
    patience: Optional[int] = _opt("patience", "--patience", "Stop once this many generations in a row cut nothing "
                                   "(then the final fine-tune; 0 = run every generation)."),
    allocation: Optional[Allocation] = _opt("allocation", "--allocation", "How the cut is spread over layers: "
                                            "device = by the board's measured per-layer latency, magnitude = by "
                                            "weight magnitude alone."),
    latency_model: Optional[Path] = _opt("latency_model", "--latency-model", "a board latency model (JSON) to start "
                                         "from; by default the run directory's own"),
    no_probes: bool = typer.Option(False, "--no-probes", envvar=_env("no_probes"),
                                   help="No probe jobs: learn the board's channel steps from profiles alone "
                                        "(docs/latency.md)."),
    keys_dir: Optional[Path] = _opt("keys_dir", "--keys-dir", "The host's signing key and enrolled board keys "
                                    "(docs/security.md); none = ~/.config/edge-evolver/host."),
    insecure: bool = typer.Option(False, "--insecure", envvar=_env("insecure"),
                                  help="Unsigned jobs and unchecked results, for boards run with --allow-unsigned."),
    ca_file: Optional[Path] = _opt("ca_file", "--ca-file", "mqtts://: verify the broker against this CA."),
    cert_file: Optional[Path] = _opt("cert_file", "--cert-file", "mqtts://: the host's client certificate."),
    key_file: Optional[Path] = _opt("key_file", "--key-file", "mqtts://: the client certificate's private key."),
    quiet: bool = typer.Option(False, "--quiet", "-q", envvar=_env("quiet"),
                               help="Show only warnings, errors and the final line (the run directory still "
                                    "gets everything)."),
    log_level: str = typer.Option("info", "--log-level", envvar=_env("log_level"),
                                  help="Lowest level of the event log (debug, info, warning, error or critical)."),
    nproc_per_node: Optional[int] = _opt("nproc_per_node", "--nproc-per-node", "Train on N processes of this "
                                         "machine: the same command under torchrun --standalone "
                                         "(docs/distributed.md; 1 = one process)."),
    dist_timeout_s: Optional[float] = _opt("dist_timeout_s", "--dist-timeout-s", "Under torchrun: how long a rank "
                                           "waits for the others before the run stops with an error."),
) -> None:
    """Evolve generations of ever smaller offspring; write everything to a run directory."""
    given = _given(locals())  # first: only the options are bound yet
    nproc = default_of("nproc_per_node") if nproc_per_node is None else nproc_per_node
    timeout_s = default_of("dist_timeout_s") if dist_timeout_s is None else dist_timeout_s
    if nproc < 1 or not timeout_s > 0:
        raise _fail("--nproc-per-node must be >= 1 and --dist-timeout-s > 0")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # not under torchrun yet: start it, with N copies of this
        from host_trainer.distributed.launcher import launch

        raise typer.Exit(code=launch(nproc, _without_nproc(sys.argv)))
    _run_evolve(task and task.value, env_factor, given, run_dir, resume, quiet, log_level, timeout_s)


def _without_nproc(argv: list[str]) -> list[str]:
    """This command's arguments from `evolve` on, less --nproc-per-node (torchrun's children run one each)."""
    if "evolve" not in argv:
        raise _fail("--nproc-per-node > 1 works from the command line (host-trainer evolve ...)")
    args, out = argv[argv.index("evolve"):], []
    skip = False
    for arg in args:
        if skip or arg.startswith("--nproc-per-node="):
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        else:
            out.append(arg)
    return out


def _run_evolve(task: str | None, env_factor: str | None, given: dict, run_dir: Path, resume: Path | None,
                quiet: bool, log_level: str, timeout_s: float) -> None:
    """This rank's part of the run (host_trainer/distributed/supervise.py); exits with its code."""
    from host_trainer import distributed
    from host_trainer.loop.session import follow_run

    try:
        code = distributed.run_rank(timeout_s, lambda: _lead(task, env_factor, given, run_dir, resume, quiet,
                                                             log_level), follow_run)
    except UserError as exc:  # the process group could not be joined
        raise _fail(str(exc)) from None
    if code:
        raise typer.Exit(code=code)


def _lead(task: str | None, env_factor: str | None, given: dict, run_dir: Path, resume: Path | None,
          quiet: bool, log_level: str) -> int:
    """Rank 0 (or the one process): the run, with its own one-line report of how it ended; the exit code."""
    from host_trainer import events
    from host_trainer.distributed import LAUNCHER_ENV, DistributedError, Terminated
    from host_trainer.terminal import Terminal

    with Terminal(quiet=quiet) as terminal:
        try:
            _configure_events(terminal, log_level, quiet)
            if resume is not None:
                from host_trainer.loop.session import resume_run

                finished = resume_run(resume, given["generations"], terminal, given["train_device"])
            else:
                from host_trainer.loop.session import start_run

                cfg = new_config(task, env_factor, given)
                finished = start_run(cfg, run_dir, _run_id(cfg), terminal)
        except DistributedError as exc:
            typer.echo(f"error: {exc} (continue with --resume RUN_DIR)", err=True)
            return 3
        except UserError as exc:
            return _fail(str(exc)).exit_code
        except Terminated:
            if not os.environ.get(LAUNCHER_ENV):  # else the launcher names the rank that failed
                several = int(os.environ.get("WORLD_SIZE", "1")) > 1
                why = " (torchrun stops every rank when one fails)" if several else ""
                typer.echo(f"error: stopped by SIGTERM{why}: continue with --resume RUN_DIR", err=True)
            return 143
        except KeyboardInterrupt:
            typer.echo("interrupted: continue with --resume RUN_DIR", err=True)
            return 130
        finally:
            events.close()
    accepted = sum(1 for r in finished.records if r.accepted)
    typer.echo(f"done: {accepted} generations recorded in {finished.path}")
    return 0


def new_config(task: str | None, env_factor: str | None, given: dict) -> EvolveConfig:
    """A new run's configuration from evolve's options (`given`: `_given`'s); a bad value is a UserError."""
    from host_trainer.config import EvolveConfig, parse_env_factor, parse_epochs

    given = dict(given)
    if env_factor is not None:
        given["alpha_c"], given["alpha_s"] = parse_env_factor(env_factor)
    if given["gen0_epochs"] is not None:
        given["gen0_epochs"] = parse_epochs(given["gen0_epochs"])
    from host_trainer.data.options import parse_data_options

    parse_data_options(given)  # --mean/--std as numbers, --split checked: one line if wrong
    return EvolveConfig.for_task(task or "classify", **given).validate()


def _configure_events(terminal: Terminal, log_level: str, quiet: bool) -> None:
    from host_trainer import events

    plain = not terminal.live and not quiet
    try:
        events.configure(log_level, terminal.event, shown_from=log_level if plain else "warning")
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


# `evolve`'s parameters that are not EvolveConfig fields, and those named otherwise there.
NOT_CONFIG = ("task", "env_factor", "run_dir", "resume", "quiet", "log_level", "nproc_per_node", "dist_timeout_s",
              "config")
RENAMED = {"precision": "precision_format", "device": "devices", "no_probes": "probes"}


def _given(options: dict) -> dict:
    """EvolveConfig's fields as the options give them, None where an option was not given (the config's default
    then applies): a flag that is off, an empty --device, a path as text, a choice as its name; --no-probes is
    probes=False."""
    given = {}
    for name, value in options.items():
        if name in NOT_CONFIG:
            continue
        if name == "no_probes":
            value = False if value else None
        elif isinstance(value, bool) or (isinstance(value, list) and not value):
            value = value or None
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, Enum):
            value = value.value
        given[RENAMED.get(name, name)] = list(value) if isinstance(value, list) else value
    return given


def _run_id(cfg) -> str:  # noqa: ANN001
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(cfg.model.split(':')[0]).stem}-{cfg.dataset.split(':')[0]}")
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-s{cfg.seed}"


from host_trainer.keys_cli import keys_app  # noqa: E402  (after app: it registers nothing on it)
from host_trainer.run_cli import export, report, watch  # noqa: E402

app.command()(report)
app.command()(export)
app.command()(watch)
app.add_typer(keys_app, name="keys")


def main() -> None:
    run_app(app, "host-trainer")


if __name__ == "__main__":
    main()
