"""Starting and resuming a run: checks every input before anything is written, then drives
`Evolution`. Bad input raises UserError while the run directory does not exist yet."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from torch import nn

from edge_evolver.mqtt import TlsFiles
from host_trainer import distributed, events
from host_trainer.config import EvolveConfig
from host_trainer.data import splits
from host_trainer.data.options import data_options
from host_trainer.data.stream import load_data
from host_trainer.deploy import dataset_facts
from host_trainer.errors import UserError
from host_trainer.fleet.jobs import Fleet, FleetConfig
from host_trainer.fleet.local_fleet import LOCAL_DEVICE, LocalFleet
from host_trainer.fleet.measurers import FleetMeasurer, LocalMeasurer, Measurer
from host_trainer.fleet.trust import open_trust
from host_trainer.loop import checkpoint as ckpt
from host_trainer.loop import result
from host_trainer.loop.evolve import Evolution
from host_trainer.loop.lineage import dense_model, resume_member
from host_trainer.loop.training import TrainConfig, train, train_until_plateau
from host_trainer.models.weights import file_sha256
from host_trainer.progress import NULL, RunView
from host_trainer.record import GenerationRecord
from host_trainer.rundir import CONFIG, EMBEDDED, EVENTS, RESULTS, RunDir
from host_trainer.tasks.base import Task
from host_trainer.tasks.registry import make_task
from host_trainer.torch_device import resolve, use

log = structlog.get_logger("host_trainer")


@dataclass
class Finished:
    """A run that ended normally: where it is, and every record it holds."""

    path: Path
    records: list[GenerationRecord]


@dataclass
class Prepared:
    """What a rank needs before it writes anything: the data, generation 0's network, the task, the device."""

    data: Any
    dense: nn.Module
    task: Task
    device: torch.device


def _prepare(cfg: EvolveConfig, view: RunView, load: bool = True, per_channel: bool = True) -> Prepared:
    """Resolve where this rank trains, load the data, build generation 0's network (loop/evolve.py's
    `dense_model`; with --weights loaded unless not `load`) and the task once, so that bad input (a CUDA device
    torch cannot see, too) fails before any write. The normalisation used goes into `cfg` (config.json), one
    value per channel: what --resume, the other ranks and the export read instead of computing it again."""
    world = distributed.world()
    device = use(resolve(cfg.train_device, world.local_rank, world.local_size))
    torch.use_deterministic_algorithms(True, warn_only=True)
    given = bool(cfg.mean)
    data = load_data(cfg.task, cfg.dataset, seed=cfg.seed, image_size=cfg.input_size(), progress=view,
                     options=data_options(cfg, per_channel))
    cfg.mean, cfg.std = [float(v) for v in data.mean], [float(v) for v in data.std]
    log.info("normalisation", mean=cfg.mean, std=cfg.std,
             source="given" if given else "training split" if per_channel else "training split, one for all")
    dense = dense_model(cfg, data, load)
    return Prepared(data, dense, make_task(cfg.task, data, dense, cfg.distill, model_name=cfg.model), device)


def start_run(cfg: EvolveConfig, parent_dir: Path, run_id: str, view: RunView = NULL) -> Finished:
    if cfg.weights:  # an absolute path and the file's sha256 in config.json: a resumed run reads the same bytes
        cfg.weights = str(Path(cfg.weights).expanduser().resolve())
    if cfg.broker and not cfg.no_mqtt:
        open_trust(cfg.keys_dir, cfg.insecure, 3600.0)  # a missing host key fails before any write
    # Hashed before it is read, so the recorded sha256 is that of the bytes generation 0 starts from (dense_model
    # checks them against it); a missing file is load_weights' one-line error.
    cfg.weights_sha256 = file_sha256(cfg.weights) if cfg.weights and Path(cfg.weights).is_file() else ""
    ready = _prepare(cfg, view)
    cfg.world_size = distributed.world().size
    distributed.send(distributed.Setup(cfg.to_dict()))  # under torchrun: the other ranks load the data
    path = Path(parent_dir) / run_id
    suffix = 1
    while path.exists():
        path, suffix = Path(parent_dir) / f"{run_id}-{suffix}", suffix + 1
    path.mkdir(parents=True)
    events.attach_run_log(path / EVENTS)
    run = RunDir(path)
    run.write_config(cfg.to_dict())
    run.write_dataset(dataset_facts(ready.data, cfg.task))  # the class names and normalisation: final/ needs them
    log.info("run started", run_dir=str(path), model=cfg.model, dataset=cfg.dataset,
             generations=cfg.generations, threads=torch.get_num_threads(), pid=os.getpid(),
             train_device=str(ready.device))
    view.note(f"run directory: {path}")
    with measuring(cfg, path, ready.task, view) as measurer:
        evolution = Evolution(cfg, ready.data, run, measurer, ready.task, view, ready.device, ready.dense)
        records = evolution.run_all()
    return _finished(path, records, view)


def resume_run(path: Path, generations: int | None, view: RunView = NULL, train_device: str | None = None) -> Finished:
    """Continue a run directory. `train_device` (--train-device, where given) replaces config.json's: a run may
    move to another machine."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise UserError(f"not a run directory (no {CONFIG}): {path}")
    run = RunDir(path)
    cfg = EvolveConfig.from_dict(run.read_config(), str(path / CONFIG))
    size = distributed.world().size
    if size != cfg.world_size:  # the shards change, so the next generations differ from an uninterrupted run
        log.warning("world size changed", was=cfg.world_size, now=size)
    if (generations is not None and generations != cfg.generations) or size != cfg.world_size:
        cfg.generations = cfg.generations if generations is None else generations
        cfg.world_size = size
        run.write_config(cfg.to_dict())
    records = run.completed_records()
    cfg.train_device = cfg.train_device if train_device is None else train_device
    # No mean/std in config.json: a run from before per-channel statistics. Its networks learnt the one mean/std
    # over every channel: computed again as it was, the same numbers, resumed results stay consistent with them.
    old_stats = not cfg.mean
    ready = _prepare(cfg.validate(), view, load=not records, per_channel=not old_stats)  # past gen 0: no weights
    if old_stats:
        view.note(f"{CONFIG} has no mean/std (a run from before per-channel normalisation): its one mean/std over "
                  "every channel is computed again as the run had it, and recorded there")
        run.write_config(cfg.to_dict())
    distributed.send(distributed.Setup(cfg.to_dict()))
    last = records[-1].generation if records else -1
    run.clean_partial(last)
    run.write_records(records)
    if run.read_dataset() is None:  # a run started before dataset.json existed
        run.write_dataset(dataset_facts(ready.data, cfg.task))
    events.attach_run_log(path / EVENTS)
    log.info("run resumed", run_dir=str(path), from_generation=last + 1, generations=cfg.generations,
             train_device=str(ready.device))
    view.note(f"run directory: {path} (resuming after generation {last})")
    with measuring(cfg, path, ready.task, view) as measurer:
        evolution = Evolution(cfg, ready.data, run, measurer, ready.task, view, ready.device, ready.dense)
        evolution.records = records
        records = evolution.run_all(resume_member(run, records) if records else None)
    return _finished(path, records, view)


def _finished(path: Path, records: list[GenerationRecord], view: RunView) -> Finished:
    """The run ended normally: its last accepted generation as <run>/final/ (loop/result.py), then the summary."""
    with view.step("writing final/: the last accepted generation, ready to deploy"):
        final = result.finish(path)
    log.info("final written", path=str(final))
    view.note(f"deployable result: {final}")
    return Finished(path, records)


def follow_run() -> bool:
    """A rank other than 0 under torchrun: load the data rank 0 names, then train every network it sends, with
    it, until it says stop (True) or that the run failed (False). Writes nothing, shows nothing."""
    order = distributed.receive()
    if not isinstance(order, distributed.Setup):
        return isinstance(order, distributed.Stop) and order.ok
    cfg = EvolveConfig.from_dict(order.config)
    ready = _prepare(cfg, NULL, load=False)  # rank 0 sends generation 0's weights
    split = splits.take(ready.data.train, cfg.train_subset) if cfg.train_subset else ready.data.train
    while isinstance(order := distributed.receive(), distributed.Train):
        with distributed.guarded(f"training generation {order.generation}"):
            _follow_training(order, split, ready.task, ready.device)
    return isinstance(order, distributed.Stop) and order.ok


def _follow_training(order: distributed.Train, split: Any, task: Task, device: torch.device) -> None:
    model, masks, teacher = distributed.receive_networks(order, ckpt.build_architecture)
    tcfg = TrainConfig(**{**order.train, "device": str(device)})  # this rank's own device (cuda:LOCAL_RANK)
    if order.kind == "plateau":  # the score is rank 0's (distributed.agree): no need to evaluate here
        train_until_plateau(model, masks, split, tcfg, task, lambda _m: 0.0)
    else:
        train(model, masks, split, tcfg, task, teacher)
    distributed.check_identical(model, masks, f"generation {order.generation}")


@contextlib.contextmanager
def measuring(cfg: EvolveConfig, run_path: Path, task: Task, view: RunView = NULL) -> Iterator[Measurer]:
    """The measurer of a run: in-process (--no-mqtt), a fleet behind --broker, or the local fleet."""
    if cfg.no_mqtt:
        yield LocalMeasurer(cfg, view)
        return
    local = None if cfg.broker else LocalFleet(run_path / EMBEDDED, cfg.bench_threads, cfg.prefix, view).start()
    fleet = None
    ttl_s = max(3600.0, 2 * cfg.job_timeout_s * (cfg.job_retries + 1))  # covers every resend of a job
    trust = local.trust(ttl_s) if local else open_trust(cfg.keys_dir, cfg.insecure, ttl_s)
    tls = TlsFiles(cfg.ca_file, cfg.cert_file, cfg.key_file)
    try:
        fleet_cfg = FleetConfig(
            broker=cfg.broker or (local.url if local else ""),
            devices=list(cfg.devices) or ([] if cfg.any_device else [LOCAL_DEVICE]),
            any_device=cfg.any_device, prefix=cfg.prefix, job_timeout_s=cfg.job_timeout_s,
            job_retries=cfg.job_retries, device_timeout_s=cfg.device_timeout_s,
            bench={"batch": 1, "min_iterations": cfg.bench_min_iterations, "min_seconds": cfg.bench_min_seconds})
        fleet = Fleet(fleet_cfg, run_path.name, results_dir=run_path / RESULTS, progress=view, trust=trust,
                      tls=tls).start()
        yield FleetMeasurer(fleet, task)
    finally:
        if fleet is not None:
            fleet.close()
        if local is not None:
            local.stop()
