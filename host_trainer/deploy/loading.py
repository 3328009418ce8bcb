"""`Deployed`: a compact network with its weights and its preprocessing, and reading one back from final/.

`host_trainer.load` (docs/api.md) returns a `Deployed`, from a run's generation (loop/result.py) or from a final/
folder (`load_final`, here): the network is rebuilt from architecture.json and its fp32 weights loaded from
model.safetensors, strictly (every tensor present, each of the right shape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from host_trainer.deploy.architecture import build_architecture, checked_architecture
from host_trainer.deploy.final import ARCH_FORMAT, ARCH_VERSION, ARCHITECTURE, PREPROCESS, WEIGHTS
from host_trainer.deploy.preprocess import ImageLike, check_spec, prepare
from host_trainer.errors import UserError


@dataclass(frozen=True)
class Deployed:
    """One generation, ready to use in PyTorch.

    `model`: the compact network, fp32, in eval mode, on the CPU. `preprocess`: preprocess.json's content (the
    schema of docs/api.md). `generation`: which generation of its run it is. `architecture`: what rebuilt it."""

    model: nn.Module
    preprocess: dict
    generation: int
    architecture: dict

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of the model's outputs."""
        return list(self.preprocess["classes"])

    def prepare(self, image: ImageLike) -> np.ndarray:
        """An image (a path or a PIL image) as a batch of one for `model`: (1, C, H, W) float32, preprocessed as
        preprocess.json says (`torch.from_numpy` it to call the model)."""
        return prepare(self.preprocess, image)[None]


def rebuild(arch: dict, state: dict[str, Any], source: str) -> nn.Module:
    """The network of `arch` holding `state`, fp32, in eval mode; what goes wrong is a one-line UserError."""
    try:
        model = build_architecture(arch)
        model.load_state_dict(state, strict=True)
    except UserError:
        raise
    except Exception as exc:  # a damaged or hand-edited file: widths that do not fit, tensors missing
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"cannot rebuild the model from {source}: {type(exc).__name__}: {message}") from None
    return model.float().eval()


def load_final(folder: Path) -> Deployed:
    """A final/ folder (deploy/final.py) read back: the same network the run measured, in fp32."""
    folder = Path(folder)
    spec = check_spec(_json(folder / PREPROCESS), str(folder / PREPROCESS))
    arch = _architecture(folder)
    try:
        state = load_file(str(folder / WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise UserError(f"cannot read {folder / WEIGHTS}: {exc}") from None
    model = rebuild(arch, state, str(folder / ARCHITECTURE))
    return Deployed(model, spec, int(spec.get("source", {}).get("generation", -1)), arch)


def _architecture(folder: Path) -> dict:
    """architecture.json, checked; a copied model factory is found beside it."""
    path = folder / ARCHITECTURE
    arch = checked_architecture(_json(path), str(path))
    if arch.get("format") != ARCH_FORMAT or not isinstance(arch.get("version"), int) or arch["version"] > ARCH_VERSION:
        raise UserError(f"{path}: not an architecture this host-trainer reads (format {arch.get('format')!r}, "
                        f"version {arch.get('version')!r})")
    factory = arch.get("factory")
    if isinstance(factory, str):
        arch = {**arch, "model": str(folder / factory)}
    return arch


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: not an exported model folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read as JSON: {exc}") from None
