"""Self-describing checkpoints: JSON metadata plus a numpy `.npz` of tensors, no pickled objects.

`checkpoint.json` holds the architecture (the model reference, the data shape, the width of every
Conv/Linear layer and any residual blocks removed whole), the generation, the parent and the seed.
`weights.npz` holds the state
dict and the synapse masks (`mask:<layer>`). Loading rebuilds the dense model, cuts each coupling
group to its stored width with the dependency graph, then loads the stored values exactly.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# The architecture lives with the deployable result (final/'s architecture.json); re-exported here, where the
# loop and the bench scripts have always found it.
from host_trainer.deploy.architecture import architecture, build_architecture
from host_trainer.rundir import CHECKPOINT, WEIGHTS

FORMAT = "edge-evolver-checkpoint/1"
MASK_PREFIX = "mask:"
__all__ = ["FORMAT", "Checkpoint", "architecture", "build_architecture", "read_checkpoint", "to_bytes",
           "write_checkpoint"]


@dataclass
class Checkpoint:
    model: nn.Module
    masks: dict[str, torch.Tensor]
    meta: dict[str, Any]


def to_bytes(model: nn.Module, masks: dict[str, torch.Tensor]) -> bytes:
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    arrays.update({MASK_PREFIX + k: v.cpu().numpy().astype(bool) for k, v in masks.items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_checkpoint(folder: Path, model: nn.Module, masks: dict[str, torch.Tensor], meta: dict) -> None:
    """Write into `folder`, which the caller makes visible atomically (RunDir.commit_generation)."""
    (folder / WEIGHTS).write_bytes(to_bytes(model, masks))
    (folder / CHECKPOINT).write_text(json.dumps({"format": FORMAT, **meta}, indent=2) + "\n")


def read_checkpoint(folder: Path) -> Checkpoint:
    meta = json.loads((folder / CHECKPOINT).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder}: not an edge-evolver checkpoint ({meta.get('format')!r})")
    model = build_architecture(meta["architecture"])
    with np.load(folder / WEIGHTS, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    masks = {k[len(MASK_PREFIX):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(MASK_PREFIX)}
    state = {k: torch.from_numpy(v) for k, v in arrays.items() if not k.startswith(MASK_PREFIX)}
    model.load_state_dict(state, strict=True)
    return Checkpoint(model=model, masks=masks, meta=meta)
