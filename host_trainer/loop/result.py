"""The run's result: one generation read from the run directory and written as a deployable folder (deploy/).

`finish` writes <run>/final/ when a run ends (loop/session.py); `export` writes any generation anywhere
(`host-trainer export`); `load` hands it to Python (`host_trainer.load`). All three read only what the run
directory holds: the generation's checkpoint and ONNX file, config.json, generations.jsonl, pareto.json and
dataset.json. A run from before dataset.json (0.2 and older) has its data set read again for the class names
and the normalisation, which the same files and seed always reproduce (data/stream.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from host_trainer.config import EvolveConfig
from host_trainer.deploy import (
    Choice,
    Deployed,
    Result,
    choose,
    dataset_facts,
    load_final,
    output_spec,
    preprocess_spec,
    write_final,
)
from host_trainer.deploy.architecture import checked_architecture
from host_trainer.deploy.final import ARCHITECTURE
from host_trainer.errors import UserError
from host_trainer.loop import checkpoint as ckpt
from host_trainer.method.export import sha256
from host_trainer.models.registry import BUILTIN_MODELS
from host_trainer.rundir import CHECKPOINT, CONFIG, FINAL, MODEL, RunDir

METRICS = {"classify": "top-1 accuracy", "detect": "mAP@0.5"}


def finish(run_path: Path) -> Path:
    """<run>/final/ from the last accepted generation; its path."""
    return export(run_path, Path(run_path) / FINAL)


def export(run_path: Path, out: Path | None = None, generation: int | None = None,
           within: float | None = None) -> Path:
    """Write the chosen generation (deploy/choose.py) as a final/ folder at `out` (default <run>/final); its path."""
    run = open_run(run_path)
    return write_final(Path(out) if out is not None else run.path / FINAL, _result(run, _choose(run, generation,
                                                                                               within)))


def load(path: Path, generation: int | None = None, within: float | None = None) -> Deployed:
    """A run's generation (the last accepted by default), or a final/ folder, as a `Deployed`."""
    path = Path(path)
    if generation is None and within is None and (path / ARCHITECTURE).is_file() and not (path / CONFIG).is_file():
        return load_final(path)
    run = open_run(path)
    result = _result(run, _choose(run, generation, within))
    return Deployed(result.model.float().eval(), result.preprocess, int(result.preprocess["source"]["generation"]),
                    result.architecture)


def open_run(path: Path) -> RunDir:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    if not (path / CONFIG).is_file():
        raise UserError(f"not a run directory (no {CONFIG}): {path}")
    return RunDir(path)


def _choose(run: RunDir, generation: int | None, within: float | None) -> Choice:
    return choose(run.records(), run.read_pareto(), lambda g: (run.gen_dir(g) / CHECKPOINT).is_file(),
                  generation, within)


def _result(run: RunDir, choice: Choice) -> Result:
    """The chosen generation's files, checked against its record, with its preprocess.json."""
    record, folder = choice.record, run.gen_dir(choice.record.generation)
    onnx = (folder / MODEL).read_bytes()
    if record.model_sha256 and sha256(onnx) != record.model_sha256:
        raise UserError(f"{folder / MODEL} is not the model generation {record.generation} measured (its sha256 "
                        "differs from the record's): the run directory was changed")
    model, arch = _checkpoint(folder)
    config = run.read_config()
    facts = run.read_dataset() or _facts_again(config, str(run.path / CONFIG))
    output = output_spec(str(facts["task"]), int(arch["num_classes"]), list(arch["input_shape"]),
                         getattr(model, "output_stride", None))
    source = {"run": run.path.name, "generation": record.generation, "picked": choice.how,
              "model_sha256": record.model_sha256, "precision": config.get("precision_format",
                                                                           config.get("precision")),
              "metric": METRICS.get(str(facts["task"]), "accuracy"), "test_score": record.accuracy,
              "val_score": record.val_accuracy, "fps": record.fps, "latency_ms_p50": record.latency_ms_p50,
              "device_id": record.device_id, "device_backend": record.device_backend}
    return Result(onnx, model, arch, preprocess_spec(facts, config, output, source), _factory_file(arch["model"]))


def _checkpoint(folder: Path) -> tuple:
    """(the network, its architecture) from a generation's checkpoint; a damaged one is a one-line UserError."""
    path = folder / CHECKPOINT
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc}") from None
    arch = checked_architecture(meta.get("architecture") if isinstance(meta, dict) else None, str(path))
    try:
        model = ckpt.read_checkpoint(folder).model
    except UserError:
        raise
    except Exception as exc:  # damaged weights, or widths that do not fit the model
        raise UserError(f"cannot read checkpoint {folder}: {type(exc).__name__}: {exc}") from None
    return model.float().eval(), arch


def _facts_again(config: dict, source: str) -> dict:
    """A run without dataset.json: its data set, read again (the same files and seed give the same facts)."""
    from host_trainer.data.stream import load_data

    cfg = EvolveConfig.from_dict(config, source)
    data = load_data(cfg.task, cfg.dataset, seed=cfg.seed, image_size=cfg.input_size())
    return dataset_facts(data, cfg.task)


def _factory_file(model_ref: str) -> Path | None:
    """The user's model file (`path/to/file.py:factory`), copied into final/ so that it rebuilds alone."""
    if model_ref in BUILTIN_MODELS or ":" not in model_ref:
        return None
    path = Path(model_ref.rpartition(":")[0])
    return path if path.is_file() else None
