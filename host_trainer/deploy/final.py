"""final/: one generation as a deployable folder (docs/deploy.md). Every name inside it is spelled here.

    model.onnx          the generation's model exactly as measured (the run's gen-NNN/model.onnx, same bytes)
    model.safetensors   the compact network's state_dict, fp32 (holding the values the run restricted to fp16)
    architecture.json   what rebuilds that network (deploy/architecture.py), with a format and version
    preprocess.json     how to feed it and read its output (deploy/preprocess.py, deploy/outputs.py)
    README.md           how to run it: ONNX Runtime, trtexec, edge-evolver bench, PyTorch (deploy/readme.py)
    <factory>.py        a model built by the user's `file.py:factory`: a copy of that file, so final/ rebuilds alone

The folder is written under a temporary name beside its place and renamed into it, so a kill leaves the old
folder or the new one. An existing folder is replaced only when it is an earlier export (it holds a
preprocess.json of ours): `--out` never empties a folder of the user's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from host_trainer.deploy.preprocess import FORMAT as PREPROCESS_FORMAT
from host_trainer.deploy.readme import render
from host_trainer.errors import UserError

MODEL, WEIGHTS, ARCHITECTURE = "model.onnx", "model.safetensors", "architecture.json"
PREPROCESS, README = "preprocess.json", "README.md"
FILES = (MODEL, WEIGHTS, ARCHITECTURE, PREPROCESS, README)
ARCH_FORMAT, ARCH_VERSION = "edge-evolver-architecture", 1
WEIGHTS_FORMAT = "edge-evolver-weights/1"  # in the safetensors header's metadata


@dataclass(frozen=True)
class Result:
    """One generation, ready to be written: its measured ONNX, its network (fp32), and what describes them."""

    onnx: bytes
    model: nn.Module
    architecture: dict  # deploy/architecture.py's dict, as the checkpoint holds it
    preprocess: dict    # preprocess.json's content
    factory_file: Path | None = None  # the user's model file, when the model is `file.py:factory`


def write_final(out: Path, result: Result) -> Path:
    """Write `result` as the folder `out` (replacing an earlier export there); `out`."""
    out = Path(out)
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    try:
        _fill(tmp, result)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a result meant to be shared
        _replace(out, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_target(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out} exists and is not a folder: choose another --out")
    if any(out.iterdir()) and not _is_export(out):
        raise UserError(f"{out} is a folder with other files in it, not an earlier export: choose another --out")


def _is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / PREPROCESS).read_text(encoding="utf-8")).get("format") == PREPROCESS_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _replace(out: Path, tmp: Path) -> None:
    """Move the finished folder into place; the earlier one, if any, aside first and then away."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fill(folder: Path, result: Result) -> None:
    (folder / MODEL).write_bytes(result.onnx)
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": WEIGHTS_FORMAT})
    arch = {"format": ARCH_FORMAT, "version": ARCH_VERSION, **result.architecture}
    if result.factory_file is not None:  # rebuilt from the copy beside it (deploy/loading.py)
        shutil.copyfile(result.factory_file, folder / result.factory_file.name)
        arch["factory"] = f"{result.factory_file.name}:{str(result.architecture['model']).rpartition(':')[2]}"
    _write_json(folder / ARCHITECTURE, arch)
    _write_json(folder / PREPROCESS, result.preprocess)
    (folder / README).write_text(render(result.preprocess), encoding="utf-8")
    for child in folder.iterdir():
        os.chmod(child, 0o644)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
