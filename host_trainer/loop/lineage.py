"""The lineage's members in memory, and what makes them: the seeds, generation 0's network, a resumed parent.

Each offspring is a pure function of (parent checkpoint, config, generation, attempt): its seed comes from numpy's
SeedSequence([seed, generation, attempt]) (plus the offspring index k when `--offspring` K > 1), so `--resume`
reproduces exactly what an uninterrupted run computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from host_trainer.config import EvolveConfig
from host_trainer.errors import UserError
from host_trainer.loop import checkpoint as ckpt
from host_trainer.models.input_fit import InputCheck, check_input_fit
from host_trainer.models.registry import build_model
from host_trainer.models.weights import check_unchanged, load_weights, read_state_dict
from host_trainer.record import GenerationRecord
from host_trainer.rundir import RunDir


def derive_seed(seed: int, generation: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, generation, attempt]).generate_state(1)[0])


def offspring_seed(seed: int, generation: int, attempt: int, k: int, count: int) -> int:
    """One offspring's seed; with K = 1 exactly the single-offspring seed (runs stay comparable)."""
    if count == 1:
        return derive_seed(seed, generation, attempt)
    return int(np.random.SeedSequence([seed, generation, attempt, k]).generate_state(1)[0])


@dataclass
class Member:
    """One network of the lineage, in memory."""

    generation: int
    model: nn.Module
    masks: dict[str, torch.Tensor]
    val_accuracy: float


@dataclass
class Candidate:
    """An offspring on its way through export and measurement."""

    member: Member
    record: GenerationRecord
    seed: int
    onnx: bytes = b""


def dense_model(cfg: EvolveConfig, data: Any, load: bool = True) -> nn.Module:
    """Generation 0's network, built with the run's generation-0 seed (so its initial weights are the run's), with
    --weights loaded into it (unless `load` is False: a follower, or a resumed run past generation 0)."""
    torch.manual_seed(derive_seed(cfg.seed, 0, 0))
    model = build_model(cfg.model, data.num_classes, data.input_shape)
    if cfg.weights and load:
        check_unchanged(cfg.weights, cfg.weights_sha256)
        state = read_state_dict(cfg.weights)
        check_input_fit(model, state, InputCheck.for_run(cfg, data))  # channels and size first: what to set
        load_weights(model, cfg.weights, cfg.model, state)
    return model


def resume_member(run: RunDir, records: list[GenerationRecord]) -> Member:
    last = records[-1]
    folder = run.gen_dir(last.generation)
    try:
        checkpoint = ckpt.read_checkpoint(folder)
    except UserError:
        raise
    except Exception as exc:  # a damaged or hand-edited checkpoint: say which, in one line
        raise UserError(f"cannot read checkpoint {folder}: {type(exc).__name__}: {exc}") from None
    return Member(last.generation, checkpoint.model, checkpoint.masks, float(last.val_accuracy or 0.0))
