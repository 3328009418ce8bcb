"""The models of bench/pareto.py besides ours: the converged generation 0 (cached on disk), Torch-Pruning L1 at
a MAC target, fine-tuning with the project's own training loop, and one model's row (accuracy, size, fp16 ONNX).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from pareto_rules import ratio_grid, solve_ratio
from torch import nn

from host_trainer.config import EvolveConfig
from host_trainer.loop.training import TrainConfig, train
from host_trainer.method.export import to_onnx_bytes
from host_trainer.method.masks import dense_masks
from host_trainer.method.restriction import restrict
from host_trainer.method.size import size_metrics
from host_trainer.models.registry import build_model, fixed_layers
from host_trainer.tasks.base import Task

PRECISION = "fp16"  # every model is restricted to it before evaluation and export
GEN0_FILE, GEN0_INFO = "gen0.pt", "gen0.json"
FINETUNE_SEED = 1000  # fine-tuning order differs from any generation's but is fixed per seed (as bench/peers.py)
_STARTED = time.perf_counter()


def say(message: str) -> None:
    """A progress line with the minutes and seconds since the bench started (where the time goes)."""
    elapsed = int(time.perf_counter() - _STARTED)
    print(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {message}", flush=True)


def converge(model: nn.Module, data: Any, train_split: Any, task: Task, cfg: EvolveConfig, seed: int,
             cap: int, patience: int) -> list[float]:
    """Train one epoch at a time until validation accuracy has not improved for `patience` epochs (at most `cap`);
    the model keeps the best epoch's weights. Returns the validation accuracy after every epoch.

    Each call of the loop's train() is one warm-up + cosine cycle over one epoch (a warm restart, as in SGDR),
    so every evaluated state sits at the end of a decay, where it is comparable with the others."""
    masks, history = dense_masks(model), []
    best, best_acc, since = None, -math.inf, 0
    for epoch in range(cap):
        train(model, masks, train_split, TrainConfig(epochs=1, seed=seed + epoch, batch_size=cfg.batch_size,
                                                     lr=cfg.lr), task)
        history.append(task.evaluate(model, data.val).accuracy)
        say(f"  gen 0 epoch {epoch + 1}: validation {history[-1] * 100:.2f}")
        if history[-1] > best_acc:
            best, best_acc, since = copy.deepcopy(model.state_dict()), history[-1], 0
            continue
        since += 1
        if since >= patience:
            break
    model.load_state_dict(best)
    return history


def generation_zero(folder: Path, plan: dict, data: Any, train_split: Any, cfg: EvolveConfig,
                    make_task: Callable[[nn.Module], Task], fresh: bool) -> tuple[nn.Module, dict, bool]:
    """The converged, fp16-restricted dense model: read from folder/gen0.pt when it was made with the same `plan`
    (unless `fresh`), else trained and written there. Returns (model, its info, whether it is new)."""
    path, info_path = folder / GEN0_FILE, folder / GEN0_INFO
    if not fresh and path.is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("plan") == plan:
            model = build_model(cfg.model, data.num_classes, data.input_shape)
            model.load_state_dict(torch.load(path, weights_only=True))
            say(f"  reusing {path} (--fresh trains it again)")
            return model, info, False
    torch.manual_seed(plan["seed"])
    model = build_model(cfg.model, data.num_classes, data.input_shape)
    started = time.perf_counter()
    history = converge(model, data, train_split, make_task(model), cfg, plan["seed"], plan["cap"], plan["patience"])
    # Restricted before saving: ours restricts generation 0 again (a no-op), so both start from the same values.
    restrict(model, PRECISION)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    info = {"plan": plan, "val_history": history, "epochs": len(history),
            "best_epoch": history.index(max(history)) + 1, "wall_s": time.perf_counter() - started}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return model, info, True


def prune(model: nn.Module, example: torch.Tensor, ratio: float, round_to: int | None) -> nn.Module:
    """Torch-Pruning L1: MagnitudeImportance(p=1), the same ratio in every layer (global_pruning=False); the
    task's output layers stay whole. A copy; eval mode, so tracing leaves BatchNorm's statistics alone."""
    pruned = copy.deepcopy(model).eval()
    tp.pruner.MetaPruner(pruned, example, importance=tp.importance.MagnitudeImportance(p=1), global_pruning=False,
                         pruning_ratio=ratio, ignored_layers=fixed_layers(pruned), round_to=round_to).step()
    return pruned


def solve_ratios(model: nn.Module, example: torch.Tensor, points: tuple[float, ...],
                 round_tos: tuple[int | None, ...]) -> dict[tuple[float, int | None], tuple[float, float]]:
    """{(point, round_to): (ratio, achieved MAC factor)}. With a uniform ratio the channel counts, hence the MACs,
    do not depend on the weights, so one model's answer holds for every seed."""
    dense = tp.utils.count_ops_and_params(model.eval(), example)[0]
    out = {}
    for round_to in round_tos:
        memo: dict[float, float] = {}

        def factor(ratio: float, round_to: int | None = round_to, memo: dict = memo) -> float:
            if ratio not in memo:
                memo[ratio] = dense / tp.utils.count_ops_and_params(prune(model, example, ratio, round_to),
                                                                    example)[0]
            return memo[ratio]

        for point in points:
            out[(point, round_to)] = solve_ratio(factor, point, ratio_grid())
    return out


def finetune(model: nn.Module, train_split: Any, task: Task, cfg: EvolveConfig, epochs: float,
             seed: int) -> nn.Module:
    """The project's training loop for `epochs` (all synapses kept), then the fp16 restriction; in place."""
    if epochs > 0:
        train(model, dense_masks(model), train_split,
              TrainConfig(epochs=epochs, seed=seed + FINETUNE_SEED, batch_size=cfg.batch_size, lr=cfg.lr), task)
    return restrict(model, PRECISION)


def onnx_of(model: nn.Module, data: Any, task: Task) -> bytes:
    return to_onnx_bytes(model, data.input_shape, PRECISION, task.output_name)


def describe(model: nn.Module, data: Any, task: Task) -> tuple[dict, bytes]:
    """Test accuracy (mAP@0.5 for a detector), size and the fp16 ONNX of a restricted model."""
    size = size_metrics(model, data.input_shape)
    row = {"accuracy": task.evaluate(model, data.test).accuracy, "macs": size.macs, "params": size.params,
           "synapses": size.synapses}
    return row, onnx_of(model, data, task)
