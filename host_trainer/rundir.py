"""The run directory: every name in it, and writes that survive any kill (SIGKILL included).

    <run>/config.json           the EvolveConfig, written once (loop/session.py)
    <run>/dataset.json          what the data set says about feeding the model: input shape, channels, class names,
                                normalisation (deploy/preprocess.py `dataset_facts`; loop/session.py)
    <run>/generations.jsonl     one GenerationRecord per offspring attempt, accepted or rejected (loop/evolve.py)
    <run>/events.jsonl          the structured event log, appended (host_trainer/events.py)
    <run>/pareto.json           the Pareto front of the measured offspring (loop/evolve.py)
    <run>/gen-003/              generation 3: checkpoint.json and weights.npz (loop/checkpoint.py), model.onnx
    <run>/results/              every device result the fleet kept, <job id>.json (fleet/jobs.py)
    <run>/board-keys/           the enrolled keys of the boards that signed them (fleet/trust.py, `keys verify`)
    <run>/latency/              one latency model per device, <device>.json (latency/store.py)
    <run>/embedded/             the embedded fleet (fleet/local_fleet.py, fleet/trust.py):
        broker/                 the Mosquitto's configuration and state
        edge/                   the local daemon's --state-dir (spool, results, engine cache: the board's names)
        edge.log                the local daemon's output
        pids.json               the broker's and the daemon's process ids, to stop them after a SIGKILL
        host-keys/              this run's host key and the board keys it enrolled
        edge-keys/              the local daemon's --keys-dir (board.key, trusted-hosts: the board's names)
    <run>/final/                the deployable result of the last accepted generation, written when the run ends
                                (loop/result.py; its layout: deploy/final.py, docs/deploy.md)
    <run>/report.md, *.png      `host-trainer report` (report/)

Nothing else spells these names. Every write is atomic, so a kill at any instant leaves only complete
files and complete generation folders behind: a generation folder is built under a temporary name and
renamed into place; the jsonl is rewritten whole through a temporary file and os.replace. The folder
lands before its rows, so on resume a folder without an accepted row is left over from a kill and is
redone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from host_trainer.errors import UserError
from host_trainer.files import atomic_write_bytes, atomic_write_json
from host_trainer.record import SCHEMA_VERSION, GenerationRecord

CONFIG, GENERATIONS, EVENTS, PARETO = "config.json", "generations.jsonl", "events.jsonl", "pareto.json"
RESULTS, BOARD_KEYS, LATENCY, EMBEDDED = "results", "board-keys", "latency", "embedded"
DATASET, FINAL = "dataset.json", "final"
# Inside embedded/: the broker, the daemon's state and log, their process ids, the two sides' keys.
EMBEDDED_BROKER, EMBEDDED_STATE, EMBEDDED_LOG, EMBEDDED_PIDS = "broker", "edge", "edge.log", "pids.json"
EMBEDDED_HOST_KEYS, EMBEDDED_BOARD_KEYS = "host-keys", "edge-keys"
GENERATION = "gen-"  # + the generation number in three digits: gen-003
MODEL, CHECKPOINT, WEIGHTS = "model.onnx", "checkpoint.json", "weights.npz"  # in a generation folder
REPORT, SYNAPSES_PNG, PRECISION_PNG = "report.md", "synapses_fps.png", "precision_recall.png"
PARETO_PNG, DEVICES_PNG = "pareto.png", "fps_per_device.png"
# Temporary names a killed run leaves: generation folders and atomic writes (`.tmp-`), and the atomic
# writes of 0.1 (`.<file name>.<random>`).
TEMPORARY = (f".{GENERATION}", ".tmp-", f".{CONFIG}.", f".{GENERATIONS}.", f".{PARETO}.")


def run_name(model: str, dataset: str, seed: int, when: float | None = None) -> str:
    """A new run directory's name: `<date>-<time>-<model>-<data set>-s<seed>` (a model file by its stem)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(model.split(':')[0]).stem}-{dataset.split(':')[0]}")
    return f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}-{name}-s{seed}"


def generation_name(generation: int) -> str:
    return f"{GENERATION}{generation:03d}"


def onnx_path(generation: int) -> str:
    """The generation's model, relative to the run directory, as its record names it."""
    return f"{generation_name(generation)}/{MODEL}"


def read_records(path: Path) -> list[GenerationRecord]:
    """Every record of a generations.jsonl; a line that is not one is a UserError naming it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read: {exc}") from None
    return [_parse(path, n, line) for n, line in enumerate(lines, start=1) if line.strip()]


def _parse(path: Path, number: int, line: str) -> GenerationRecord:
    try:
        record = GenerationRecord.from_json(json.loads(line))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} line {number} is not valid JSON: {exc.msg}") from None
    except ValueError as exc:
        raise UserError(f"{path} line {number} is not a generation record: {exc}") from None
    if record.schema > SCHEMA_VERSION:
        raise UserError(f"{path} line {number} has record schema {record.schema}; this host-trainer reads up to "
                        f"{SCHEMA_VERSION}: update it")
    return record


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object")
    return data


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    def gen_dir(self, generation: int) -> Path:
        return self.path / generation_name(generation)

    def read_config(self) -> dict:
        return _json_object(self.path / CONFIG)

    def write_config(self, config: dict) -> None:
        atomic_write_json(self.path / CONFIG, config)

    def read_dataset(self) -> dict | None:
        """dataset.json, or None for a run from before it existed (0.2 and older)."""
        path = self.path / DATASET
        return _json_object(path) if path.is_file() else None

    def write_dataset(self, facts: dict) -> None:
        atomic_write_json(self.path / DATASET, facts)

    def read_pareto(self) -> dict | None:
        """pareto.json, or None when the run has none (yet)."""
        path = self.path / PARETO
        return _json_object(path) if path.is_file() else None

    def records(self) -> list[GenerationRecord]:
        return read_records(self.path / GENERATIONS)

    def write_records(self, records: list[GenerationRecord]) -> None:
        text = "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in records)
        atomic_write_bytes(self.path / GENERATIONS, text.encode())

    def write_pareto(self, front: Any) -> None:
        atomic_write_json(self.path / PARETO, front)

    def commit_generation(self, generation: int, fill: Callable[[Path], None]) -> Path:
        """Let `fill` write a complete folder under a temporary name, then rename it into place."""
        final = self.gen_dir(generation)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.path))
        try:
            fill(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def completed_records(self) -> list[GenerationRecord]:
        """Records up to the last accepted generation whose folder exists; later ones are discarded."""
        records = self.records()
        last = -1
        for i, record in enumerate(records):
            if record.accepted and self.gen_dir(record.generation).is_dir():
                last = i
        return records[: last + 1]

    def clean_partial(self, last_generation: int) -> None:
        """Remove temporary folders and generation folders beyond the last completed one."""
        for child in self.path.iterdir():
            temporary = child.name.startswith(TEMPORARY)
            number = child.name[len(GENERATION):]
            if temporary and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            elif temporary:
                child.unlink(missing_ok=True)
            elif (child.name.startswith(GENERATION) and number.isdigit() and child.is_dir()
                  and int(number) > last_generation):
                shutil.rmtree(child)
