"""The models of bench/pareto.py besides ours: the converged generation 0 (cached on disk), Torch-Pruning (L1
uniform, Taylor global) solved for a measured speed-up, fine-tuning with the project's own training loop, and one
model's row (accuracy, size, fp16 ONNX).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pareto_rules as rules
import torch
import torch_pruning as tp
from common import interleaved_rounds
from pareto_rules import solve_speedup
from torch import nn

from host_trainer.config import EvolveConfig
from host_trainer.loop.training import Plateau, TrainConfig, train, train_until_plateau
from host_trainer.method.export import to_onnx_bytes
from host_trainer.method.masks import dense_masks
from host_trainer.method.restriction import restrict
from host_trainer.method.size import size_metrics
from host_trainer.models.registry import build_model, fixed_layers
from host_trainer.tasks.base import Task

PRECISION = "fp16"  # every model is restricted to it before evaluation and export
GEN0_FILE, GEN0_INFO = "gen0.pt", "gen0.json"
TAYLOR_BATCHES, TAYLOR_SEED = 8, 2000  # the batches Taylor importance is accumulated over, their order
FINETUNE_SEED = 1000  # fine-tuning order differs from any generation's but is fixed per seed (as bench/peers.py)
_STARTED = time.perf_counter()


def say(message: str) -> None:
    """A progress line with the minutes and seconds since the bench started (where the time goes)."""
    elapsed = int(time.perf_counter() - _STARTED)
    print(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {message}", flush=True)


def converge(model: nn.Module, data: Any, train_split: Any, task: Task, cfg: EvolveConfig, seed: int,
             cap: int, patience: int) -> Plateau:
    """The project's own schedule for a converged generation 0 (loop/training.train_until_plateau): one warm-up,
    the peak learning rate held while validation accuracy improves, a decay once it has not for `patience` epochs,
    at most `cap` epochs, the best weights kept. One schedule, no warm restarts."""
    epochs = [0]

    def score(m: nn.Module) -> float:
        acc = task.evaluate(m, data.val).accuracy
        say(f"  gen 0 epoch {epochs[0]}: validation {acc * 100:.2f}")
        epochs[0] += 1
        return acc

    tcfg = TrainConfig(epochs=cap, seed=seed, batch_size=cfg.batch_size, lr=cfg.lr)
    return train_until_plateau(model, dense_masks(model), train_split, tcfg, task, score, patience=patience, cap=cap)


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
    plateau = converge(model, data, train_split, make_task(model), cfg, plan["seed"], plan["cap"], plan["patience"])
    if not math.isfinite(plateau.loss):
        raise RuntimeError(f"generation 0 diverged (loss {plateau.loss}) at epoch {plateau.epochs}")
    # Restricted before saving: ours restricts generation 0 again (a no-op), so both start from the same values.
    restrict(model, PRECISION)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    info = {"plan": plan, "val_history": list(plateau.history), "epochs": plateau.epochs,
            "best_epoch": plateau.best_epoch, "best_val": plateau.best_score, "wall_s": time.perf_counter() - started}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return model, info, True


def taylor_gradients(model: nn.Module, train_split: Any, task: Task, seed: int, batches: int = TAYLOR_BATCHES,
                     batch_size: int = 64) -> list[torch.Tensor | None]:
    """The loss gradient of every parameter, summed over `batches` fixed training batches (seeded, unshifted),
    in training mode on a copy: what GroupTaylorImportance reads at pruner.step(). Computed once per model."""
    work = copy.deepcopy(model).train()
    x, labels = torch.from_numpy(train_split.x), task.labels(train_split)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + TAYLOR_SEED))
    work.zero_grad(set_to_none=True)
    for i in range(min(batches, math.ceil(len(x) / batch_size))):
        idx = order[i * batch_size: (i + 1) * batch_size]
        task.loss(work(x[idx]), [t[idx] for t in labels], None).backward()
    return [None if p.grad is None else p.grad.detach().clone() for p in work.parameters()]


def prune(model: nn.Module, example: torch.Tensor, variant: tuple[str, int | None], ratio: float,
          grads: list[torch.Tensor | None] | None = None) -> nn.Module:
    """Torch-Pruning at `ratio` (a copy; eval mode, so tracing leaves BatchNorm's statistics alone); the task's
    output layers stay whole. ("l1", round_to): MagnitudeImportance(p=1), the same ratio in every layer
    (global_pruning=False). ("taylor", round_to): GroupTaylorImportance over `grads` (taylor_gradients), one
    global ranking (global_pruning=True)."""
    kind, round_to = variant
    pruned = copy.deepcopy(model).eval()
    if kind == "taylor":
        for param, grad in zip(pruned.parameters(), grads or []):
            param.grad = None if grad is None else grad.clone()
    importance = tp.importance.MagnitudeImportance(p=1) if kind == "l1" else tp.importance.GroupTaylorImportance()
    tp.pruner.MetaPruner(pruned, example, importance=importance, global_pruning=kind == "taylor",
                         pruning_ratio=ratio, ignored_layers=fixed_layers(pruned), round_to=round_to).step()
    pruned.zero_grad(set_to_none=True)
    return pruned


def solve_ratios(model: nn.Module, example: torch.Tensor, points: tuple[float, ...], variant: tuple[str, int | None],
                 export: Callable[[nn.Module], bytes], timing: tuple[int, float, tuple[float, ...], int],
                 grads: list | None = None) -> dict[float, tuple[float, float]]:
    """{point: (ratio, measured speed-up)}: the ratio of `variant` whose measured speed-up over `model` is nearest
    each point (pareto_rules.solve_speedup over `timing` = (rounds, min_seconds, grid, refine)). Each probe is timed
    interleaved with dense (common.interleaved_rounds), its speed-up the median over rounds of dense's per-round p50
    over its own, so the machine's drift between probes does not move the ratio: a guide; the one timing decides
    the table."""
    rounds, min_seconds, grid, refine = timing
    dense = export(model)
    seen: dict[float, float] = {}

    def speedup(ratio: float) -> float:
        onnx = export(prune(model, example, variant, ratio, grads))
        both = interleaved_rounds({"dense": dense, "m": onnx}, rounds, 1, min_seconds)
        value = statistics.median(d / m for d, m in zip(both["dense"], both["m"]))
        say(f"    {rules.tp_name(variant)} ratio {ratio:.4f}: {value:.2f}x")
        return value

    return {point: solve_speedup(speedup, point, grid, seen, refine) for point in points}


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
