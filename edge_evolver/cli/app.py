"""`edge-evolver` command line: measure a model on this board, report what the board has.

Written in typer's classic style (defaults via ``typer.Option``, no ``Annotated``) so it runs
with typer 0.10 / click 8.0 on Python 3.6 as well as with current releases. Errors print one
line, ``error: <CODE>: <message>``, on stderr and exit with status 2; stdout carries only
the report (or exactly one JSON object with ``--json``).
"""

import json
import os
import platform
from typing import Any, Dict, Optional

import structlog
import typer

from .. import __version__
from ..backends import available_backends, resolve_backend
from ..errors import EdgeError, ErrorCode
from ..logs import configure_logging
from ..measure.benchmark import BenchSettings
from ..measure.engine_cache import EngineCache
from ..measure.pipeline import MeasureRequest, MeasureResult, measure_model
from .keys import keys_app
from .mqtt_commands import register as register_mqtt_commands
from .support import fail as _fail
from .support import run_app, version_option

# add_completion: typer's --install-completion and --show-completion (bash, zsh, fish, PowerShell).
app = typer.Typer(help="Measure ONNX models on the device they will run on.")
log = structlog.get_logger("edge_evolver.cli")


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = version_option("edge-evolver", __version__),
    log_level: Optional[str] = typer.Option(
        None, "--log-level", envvar="EDGE_EVOLVER_LOG_LEVEL",
        help="debug, info, warning, error or critical (default: info; with serve --config, the file's log_level).",
    ),
) -> None:
    """Measure ONNX models on the device they will run on."""
    # `serve --config` applies the file's log_level unless this option (or its variable) was given.
    ctx.obj = {"log_level_given": log_level is not None}
    try:
        configure_logging(log_level or "info")
    except EdgeError as exc:
        _fail(exc.code, exc.message)


def _read_model(path: str) -> bytes:
    if os.path.isdir(path):
        raise EdgeError(ErrorCode.BAD_INPUT, f"model path '{path}' is a directory")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise EdgeError(
            ErrorCode.BAD_INPUT, f"cannot read model file '{path}': {exc.strerror or exc}"
        ) from None


def _meter(name: str) -> Any:
    from ..power import MeterUnavailable, resolve_meter

    try:
        return resolve_meter(name)[0]
    except (MeterUnavailable, ValueError) as exc:
        _fail(ErrorCode.BAD_INPUT, str(exc))


def _print_table(model: str, result: MeasureResult) -> None:
    bench = result.bench
    rows = [
        ("model", f"{model} (sha256 {result.model_sha256[:12]})"),
        ("backend", f"{result.backend} {result.backend_version} (threads {result.threads})"),
        ("engine", f"{'cache hit' if result.cache_hit else 'built'} in {result.load_seconds or 0.0:.3f} s, "
                   f"precision {result.precision}"),
    ]
    if bench is not None:
        rows += [
            (
                "throughput",
                f"{bench.fps:.1f} inferences/s "
                f"(batch {bench.batch}, {bench.iterations} iterations in {bench.seconds:.2f} s)",
            ),
            (
                "latency ms",
                f"mean {bench.mean:.3f}  p50 {bench.p50:.3f}  p90 {bench.p90:.3f}  "
                f"p99 {bench.p99:.3f}  min {bench.min:.3f}  max {bench.max:.3f}",
            ),
            ("power", _power_text(result)),
        ]
    for key, value in rows:
        typer.echo(f"{key:<11} {value}")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _print_profile(result: MeasureResult) -> None:
    """The per-layer table: one row per layer/kernel in execution order."""
    if result.profile is None:
        typer.echo(f"{'profile':<11} not measured: {result.profile_error or 'switched off'}")
        return
    typer.echo(f"{'profile':<11} {len(result.profile)} layers, mean of {result.profile_runs} runs "
               "(a separate pass after the timed window)")
    typer.echo(f"  {'ms':>9}  {'share':>6}  {'op':<18} {'name':<50} first ONNX node")
    for entry in result.profile:
        first = entry.nodes[0] if entry.nodes else "-"
        more = f" (+{len(entry.nodes) - 1})" if len(entry.nodes) > 1 else ""
        typer.echo(f"  {entry.ms:9.4f}  {entry.share * 100:5.1f}%  {_cut(entry.op, 18):<18} "
                   f"{_cut(entry.name, 50):<50} {first}{more}")


def _power_text(result: MeasureResult) -> str:
    fields = result.power_fields()
    if fields["power_w_mean"] is None:
        return f"not measured: {fields['power_reason']}"
    energy = fields["energy_mj_per_inference"]
    return "{:.2f} W mean on {} ({}), {} mJ per inference".format(
        fields["power_w_mean"], fields["power_rail"], fields["power_meter"],
        "-" if energy is None else f"{energy:.3f}")


def _log_summary(model: str, result: MeasureResult) -> None:
    fields = result.to_dict()
    keep = (
        "status",
        "code",
        "backend",
        "threads",
        "batch",
        "fps",
        "latency_ms_p50",
        "latency_ms_p99",
        "iterations",
        "cache_hit",
        "power_w_mean",
    )
    # Rounded: the log line is for people and grep; the JSON result keeps full precision.
    summary = {k: round(v, 3) if isinstance(v, float) else v for k, v in ((k, fields[k]) for k in keep)}
    log.info("bench", model=os.path.basename(model), sha256=result.model_sha256[:12], **summary)


@app.command()
def bench(
    model: str = typer.Argument(..., metavar="MODEL.onnx", help="ONNX model file to measure."),
    backend: str = typer.Option(
        "auto", "--backend", envvar="EDGE_EVOLVER_BACKEND", help="auto, tensorrt or onnxruntime."
    ),
    threads: int = typer.Option(1, "--threads", envvar="EDGE_EVOLVER_THREADS", help="Intra-op CPU threads."),
    batch: int = typer.Option(
        1, "--batch", envvar="EDGE_EVOLVER_BATCH", help="Batch size for dynamic inputs."
    ),
    min_iterations: int = typer.Option(
        200, "--min-iterations", envvar="EDGE_EVOLVER_MIN_ITERATIONS", help="Timed runs, at least."
    ),
    min_seconds: float = typer.Option(
        1.0, "--min-seconds", envvar="EDGE_EVOLVER_MIN_SECONDS", help="Timed window, at least."
    ),
    max_seconds: float = typer.Option(
        30.0, "--max-seconds", envvar="EDGE_EVOLVER_MAX_SECONDS", help="Timed window, at most."
    ),
    warmup_s: float = typer.Option(
        0.2, "--warmup-s", envvar="EDGE_EVOLVER_WARMUP_S", help="Discarded warm-up seconds."
    ),
    seed: int = typer.Option(0, "--seed", envvar="EDGE_EVOLVER_SEED", help="Seed of the synthetic inputs."),
    power: str = typer.Option(
        "auto", "--power", envvar="EDGE_EVOLVER_POWER", help="auto, jtop, ina3221, nvml, rapl or none."
    ),
    cache_dir: Optional[str] = typer.Option(
        None, "--cache-dir", envvar="EDGE_EVOLVER_CACHE_DIR", help="Reuse/keep built engines here."
    ),
    profile: bool = typer.Option(
        False, "--profile", envvar="EDGE_EVOLVER_PROFILE",
        help="Also time every layer, in a separate pass after the timed window, and show the breakdown.",
    ),
    json_out: bool = typer.Option(False, "--json", envvar="EDGE_EVOLVER_JSON", help="Print one JSON object."),
) -> None:
    """Measure one model locally, as the daemon would a job (warm-up, then a timed window).

    With --profile, a per-layer profiling pass follows (the daemon runs it for every job); its
    table is printed, or with --json the result's "profile" list.
    """
    settings = BenchSettings(
        batch=batch,
        warmup_s=warmup_s,
        min_iterations=min_iterations,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
    )
    try:
        model_bytes = _read_model(model)
    except EdgeError as exc:
        # Nothing was measured, so no job log line: stderr carries only the error line.
        result = MeasureResult(status="error", code=exc.code, message=exc.message)
    else:
        request = MeasureRequest(backend=backend, settings=settings, options={"threads": threads, "profile": profile},
                                 seed=seed, meter=_meter(power), cache=EngineCache(cache_dir) if cache_dir else None)
        result = measure_model(model_bytes, request=request)
        _log_summary(model, result)
    if json_out:
        typer.echo(json.dumps(result.to_dict(), sort_keys=True))
    elif result.ok:
        _print_table(model, result)
        if profile:
            _print_profile(result)
    if not result.ok:
        _fail(result.code or ErrorCode.INTERNAL, result.message)


def _auto_backend() -> Optional[str]:
    try:
        return resolve_backend("auto").name
    except EdgeError:
        return None


def _meters(root: str) -> Dict[str, Any]:
    from ..power import AUTO_ORDER, MeterUnavailable, meter_class, resolve_meter

    out: Dict[str, Any] = {}
    for name in AUTO_ORDER:
        try:
            meter = meter_class(name).probe(root)
            out[name] = {"available": True, "detail": f"rail {meter.rail}"}
            meter.close()
        except MeterUnavailable as exc:
            out[name] = {"available": False, "detail": exc.reason}
        except Exception as exc:  # a probe bug must not break `info`
            out[name] = {"available": False, "detail": f"{type(exc).__name__}: {exc}"}
    chosen, reason = resolve_meter("auto", root)
    chosen.close()
    return {"meters": out, "auto_meter": chosen.name, "auto_meter_reason": reason}


def collect_info(root: str = "/") -> Dict[str, Any]:
    """What this machine offers: board, L4T/JetPack, power mode, clocks, backends, power meters."""
    from .. import devicefacts

    data: Dict[str, Any] = {"edge_evolver": __version__, "platform": platform.platform()}
    data.update(devicefacts.collect_facts(root))
    data["backends"] = {
        name: {"available": ok, "detail": detail} for name, (ok, detail) in available_backends().items()
    }
    data["auto_backend"] = _auto_backend()
    data.update(_meters(root))
    return data


@app.command()
def info(
    json_out: bool = typer.Option(False, "--json", envvar="EDGE_EVOLVER_JSON", help="Print one JSON object."),
    root: str = typer.Option("/", "--root", envvar="EDGE_EVOLVER_SYSROOT", hidden=True,
                             help="Read /sys, /proc and /etc under this directory (tests use board fixtures)."),
) -> None:
    """Show what this device offers (board, JetPack, power mode, backends, power meters)."""
    data = collect_info(root)
    if json_out:
        typer.echo(json.dumps(data, sort_keys=True))
        return
    for key, value in data.items():
        if key in ("backends", "meters"):
            continue
        typer.echo("{:<17} {}".format(key, "-" if value is None or value == {} else value))
    for kind in ("backends", "meters"):
        for name, entry in data[kind].items():
            state = "available" if entry["available"] else "unavailable"
            typer.echo("{:<17} {}: {} ({})".format(kind[:-1], name, state, entry["detail"]))


register_mqtt_commands(app)
app.add_typer(keys_app, name="keys")


def main() -> None:
    run_app(app, "edge-evolver")


if __name__ == "__main__":
    main()
