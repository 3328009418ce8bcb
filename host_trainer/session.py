"""Starting and resuming a run: checks every input before anything is written, then drives
`Evolution`. Bad input raises UserError while the run directory does not exist yet."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import structlog
import torch

from host_trainer.config import EvolveConfig
from host_trainer.data import Dataset, load_dataset
from host_trainer.det_data import DetDataset, load_det_dataset
from host_trainer.display import Display
from host_trainer.embedded import LOCAL_DEVICE, EmbeddedEdge
from host_trainer.errors import UserError
from host_trainer.evolve import Evolution, resume_member
from host_trainer.fleet import Fleet, FleetConfig
from host_trainer.measuring import FleetMeasurer, LocalMeasurer
from host_trainer.models import build_model
from host_trainer.runstore import CONFIG, RunDir
from host_trainer.tasks import Task, make_task

log = structlog.get_logger("host_trainer")


def _prepare(cfg: EvolveConfig) -> tuple[Dataset | DetDataset, Task]:
    """Load the data, build the model and the task once, so that bad input fails before any write."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.task == "detect":
        data: Dataset | DetDataset = load_det_dataset(cfg.dataset, seed=cfg.seed, image_size=cfg.input_size())
    else:
        data = load_dataset(cfg.dataset, seed=cfg.seed, image_size=cfg.input_size())
    model = build_model(cfg.model, data.num_classes, data.input_shape)
    if cfg.task == "classify" and getattr(model, "output_stride", None) is not None:
        raise UserError(f"{cfg.model} is a detector: add --task detect")
    return data, make_task(cfg.task, data, model)


def start_run(cfg: EvolveConfig, parent_dir: Path, run_id: str) -> list[dict]:
    data, task = _prepare(cfg)
    path = Path(parent_dir) / run_id
    suffix = 1
    while path.exists():
        path, suffix = Path(parent_dir) / f"{run_id}-{suffix}", suffix + 1
    path.mkdir(parents=True)
    run = RunDir(path)
    run.write_config(cfg.to_dict())
    log.info("run started", run_dir=str(path), model=cfg.model, dataset=cfg.dataset,
             generations=cfg.generations, threads=torch.get_num_threads(), pid=os.getpid())
    print(f"run directory: {path}", flush=True)
    with measuring(cfg, path, task) as measurer:
        return Evolution(cfg, data, run, Display(), measurer, task).run_all()


def resume_run(path: Path, generations: int | None) -> list[dict]:
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise UserError(f"not a run directory (no {CONFIG}): {path}")
    run = RunDir(path)
    cfg = EvolveConfig.from_dict(run.read_config())
    if generations is not None and generations != cfg.generations:
        cfg.generations = generations
        run.write_config(cfg.to_dict())
    data, task = _prepare(cfg.validate())
    rows = run.completed_rows()
    last = int(rows[-1]["generation"]) if rows else -1
    run.clean_partial(last)
    run.write_rows(rows)
    log.info("run resumed", run_dir=str(path), from_generation=last + 1, generations=cfg.generations)
    print(f"run directory: {path} (resuming after generation {last})", flush=True)
    with measuring(cfg, path, task) as measurer:
        evolution = Evolution(cfg, data, run, Display(), measurer, task)
        evolution.rows = rows
        return evolution.run_all(resume_member(run, rows) if rows else None)


@contextlib.contextmanager
def measuring(cfg: EvolveConfig, run_path: Path, task: Task | None = None) -> Iterator[Any]:
    """The measurer of a run: in-process (--no-mqtt), a fleet behind --broker, or the embedded default."""
    if cfg.no_mqtt:
        yield LocalMeasurer(cfg)
        return
    embedded = None if cfg.broker else EmbeddedEdge(run_path / "embedded", cfg.bench_threads, cfg.prefix).start()
    fleet = None
    try:
        fleet_cfg = FleetConfig(
            broker=cfg.broker or (embedded.url if embedded else ""),
            devices=list(cfg.devices) or ([] if cfg.any_device else [LOCAL_DEVICE]),
            any_device=cfg.any_device, prefix=cfg.prefix, job_timeout_s=cfg.job_timeout_s,
            job_retries=cfg.job_retries, device_timeout_s=cfg.device_timeout_s,
            bench={"batch": 1, "min_iterations": cfg.bench_min_iterations, "min_seconds": cfg.bench_min_seconds})
        fleet = Fleet(fleet_cfg, run_path.name, results_dir=run_path / "results").start()
        yield FleetMeasurer(fleet, task)
    finally:
        if fleet is not None:
            fleet.close()
        if embedded is not None:
            embedded.stop()
