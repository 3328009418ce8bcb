"""The generation loop: synthesis → compaction → training → restriction → export → measurement.

Each offspring is a pure function of (parent checkpoint, config, generation, attempt): its seed
comes from numpy's SeedSequence([seed, generation, attempt]), so `--resume` reproduces exactly
what an uninterrupted run computes.
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from torch import nn

from host_trainer import checkpoint as ckpt
from host_trainer.compaction import cluster_groups, compact, dense_masks
from host_trainer.config import EvolveConfig
from host_trainer.controller import Controller, Targets, speed_pressure
from host_trainer.data import Dataset
from host_trainer.det_data import DetDataset
from host_trainer.display import Display
from host_trainer.errors import UserError
from host_trainer.export import sha256, to_onnx_bytes
from host_trainer.measuring import AGREEMENT_SAMPLES, DeviceError, LocalMeasurer
from host_trainer.metrics import size_metrics
from host_trainer.models import build_model, fixed_layers
from host_trainer.precision import restrict
from host_trainer.runstore import RunDir, atomic_write_json
from host_trainer.selection import pareto_front, select
from host_trainer.synthesis import SynthesisConfig, plan_offspring
from host_trainer.tasks import Task, make_task
from host_trainer.training import TrainConfig, apply_masks, train

PARITY_SAMPLES = 256
SUMMARY_KEYS = ("generation", "attempt", "alpha_c", "synapses", "params", "macs", "accuracy", "val_accuracy",
                "fps", "latency_ms_p50", "model_sha256", "accepted", "reject_reason")
PARETO = "pareto.json"
log = structlog.get_logger("host_trainer")


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


class Evolution:
    def __init__(self, cfg: EvolveConfig, data: Dataset | DetDataset, run: RunDir, display: Display,
                 measurer: Any = None, task: Task | None = None):
        self.cfg, self.data, self.run, self.display = cfg, data, run, display
        self.measurer = measurer if measurer is not None else LocalMeasurer(cfg)
        self.example = torch.zeros((1, *data.input_shape))
        self.targets = Targets(cfg.target_fps, cfg.target_latency_ms, cfg.max_power_w)
        self.controller = Controller(cfg.alpha_c, cfg.alpha_s, cfg.max_accuracy_drop / 100.0, self.targets)
        if task is None:
            task = make_task(cfg.task, data, build_model(cfg.model, data.num_classes, data.input_shape))
        self.task = task
        self.rows: list[dict] = []
        self.train_split = data.train.take(cfg.train_subset) if cfg.train_subset else data.train

    # ---- the run -------------------------------------------------------------------------
    def run_all(self, parent: Member | None = None) -> list[dict]:
        if parent is None:
            parent = self.generation_zero()
        baseline = float(self.rows[0]["val_accuracy"])
        for generation in range(parent.generation + 1, self.cfg.generations + 1):
            if self._targets_held():
                log.info("targets_met", generation=parent.generation, hold=self.cfg.hold)
                print(f"targets met for {self.cfg.hold} generations in a row: stopping after generation "
                      f"{parent.generation}", flush=True)
                break
            parent = self.next_generation(parent, generation, baseline)
        return self.rows

    def _targets_held(self) -> bool:
        accepted = [r for r in self.rows if r["accepted"] and r["generation"] > 0]
        recent = accepted[-self.cfg.hold:]
        return self.targets.any() and len(recent) == self.cfg.hold and all(self.targets.met(r) for r in recent)

    def _parent_row(self, generation: int) -> dict:
        return next(r for r in reversed(self.rows) if r["accepted"] and r["generation"] == generation)

    def generation_zero(self) -> Member:
        seed = derive_seed(self.cfg.seed, 0, 0)
        torch.manual_seed(seed)
        model = build_model(self.cfg.model, self.data.num_classes, self.data.input_shape)
        masks = dense_masks(model)
        tcfg = self._train_config(self.cfg.gen0_epochs, seed)
        loss = train(model, masks, self.train_split, tcfg, progress=self.display.progress(0, tcfg.epochs),
                     task=self.task)
        member, row = self._finish(model, masks, generation=0, parent=None, seed=seed, alpha=None, loss=loss)
        self._commit(member, row, seed=seed, parent=None)
        return member

    def next_generation(self, parent: Member, generation: int, baseline: float) -> Member:
        fitness = self._parent_row(parent.generation)
        for attempt in range(self.cfg.max_attempts):
            alpha = self.controller.alpha(baseline, parent.val_accuracy, attempt, fitness)
            survivors = []
            for k in range(self.cfg.offspring):
                seed = offspring_seed(self.cfg.seed, generation, attempt, k, self.cfg.offspring)
                child, masks, loss = self._offspring(parent, generation, seed, alpha)
                member, row = self._finish(child, masks, generation, parent.generation, seed, alpha, loss, attempt)
                row.update(offspring=k, speed_pressure=speed_pressure(self.targets, fitness),
                           target_gap=self.targets.gap(fitness))
                reason = self.controller.verdict(baseline, member.val_accuracy, loss)
                if reason is None:
                    survivors.append((member, row, seed))
                else:
                    self._reject(row, reason)
            best = self._select(self._measure_all(survivors))
            if best is not None:
                member, row, seed, onnx_bytes = best
                self._land(member, row, onnx_bytes, seed, parent.generation)
                return member
        return self._carry_over(parent, generation)

    def _measure_all(self, survivors: list) -> list:
        """Export and measure every survivor; on devices in parallel (K jobs in flight at once)."""
        exported = [(m, r, s, self._export(m, r)) for m, r, s in survivors]
        parallel = getattr(self.measurer, "parallel", False) and len(exported) > 1
        started = time.perf_counter()
        if parallel:
            pool = ThreadPoolExecutor(max_workers=len(exported))
            try:
                outcomes = list(pool.map(lambda e: self._measure_row(e[0], e[1], e[3]), exported))
            except BaseException:  # Ctrl-C or a FleetError: stop the other waits now, not after their timeouts
                getattr(self.measurer, "cancel", lambda: None)()
                pool.shutdown(wait=False)
                raise
            pool.shutdown()
        else:
            outcomes = [self._measure_row(m, r, b) for m, r, _, b in exported]
        for _, row, _, _ in exported:  # wall time to measure the whole batch of K (bench/loop.py)
            row["measure_batch_seconds"] = time.perf_counter() - started
        measured = []
        for (member, row, seed, onnx_bytes), error in zip(exported, outcomes):
            if error is None:
                measured.append((member, row, seed, onnx_bytes))
            else:  # e.g. a build failure on the device: unfit there
                self._reject(row, f"device error: {error}")
        return measured

    def _select(self, measured: list):
        if not measured:
            return None
        winner = select([row for _, row, _, _ in measured], self.targets)
        for i, (_, row, _, _) in enumerate(measured):
            if i != winner:
                self._reject(row, f"not the fittest of {self.cfg.offspring} offspring")
        return measured[winner]

    def _reject(self, row: dict, reason: str) -> None:
        self.rows.append({**row, "accepted": False, "reject_reason": reason})
        self.display.rejected(self.rows[-1])
        log.info("generation", **{k: self.rows[-1].get(k) for k in SUMMARY_KEYS})

    # ---- one offspring ---------------------------------------------------------------------
    def _offspring(self, parent: Member, generation: int, seed: int, alpha: tuple[float, float]):
        cfg = self.cfg
        scfg = SynthesisConfig(alpha[0], alpha[1], cfg.tau, cfg.probability_model, cfg.channel_multiple)
        groups = cluster_groups(parent.model, self.example, fixed_layers(parent.model))
        plan = plan_offspring(parent.model, groups, parent.masks, scfg, np.random.default_rng(seed))
        child, masks = compact(parent.model, plan.masks, groups, plan.keep, self.example)
        if cfg.init == "reinit":
            torch.manual_seed(seed)
            child = ckpt.build_architecture(self._architecture(child))
        apply_masks(child, masks)
        teacher = parent.model if cfg.distill > 0 else None
        tcfg = self._train_config(cfg.epochs, seed)
        loss = train(child, masks, self.train_split, tcfg, teacher, self.display.progress(generation, tcfg.epochs),
                     self.task)
        return child, masks, loss

    def _finish(self, model: nn.Module, masks: dict[str, torch.Tensor], generation: int, parent: int | None,
                seed: int, alpha: tuple[float, float] | None, loss: float, attempt: int = 0):
        """Restrict precision, evaluate before and after, and build the generation's row."""
        before = self.task.evaluate(model, self.data.test)
        restrict(model, self.cfg.precision)
        apply_masks(model, masks)
        test = self.task.evaluate(model, self.data.test)
        val = self.task.evaluate(model, self.data.val)
        row: dict[str, Any] = {
            "generation": generation, "parent": parent, "attempt": attempt, "seed": seed,
            "alpha": list(alpha) if alpha else None, "alpha_c": alpha[0] if alpha else None,
            "alpha_s": alpha[1] if alpha else None, "precision_format": self.cfg.precision,
            **size_metrics(model, self.data.input_shape).to_dict(), **test.to_dict(),
            "task": self.task.name, "val_accuracy": val.accuracy, "train_loss": loss,
            "accuracy_before_restriction": before.accuracy, "accepted": True, "reject_reason": None,
        }
        return Member(generation, model, masks, val.accuracy), row

    # ---- persistence -----------------------------------------------------------------------
    def _commit(self, member: Member, row: dict, seed: int, parent: int | None) -> None:
        """Export, measure and land one member (generation 0, a carried-over parent)."""
        onnx_bytes = self._export(member, row)
        error = self._measure_row(member, row, onnx_bytes)
        if error is not None:
            raise UserError(f"generation {member.generation} could not be measured: {error}")
        self._land(member, row, onnx_bytes, seed, parent)

    def _export(self, member: Member, row: dict) -> bytes:
        started = time.perf_counter()
        onnx_bytes = to_onnx_bytes(member.model, self.data.input_shape, self.cfg.precision, self.task.output_name)
        parity = self.task.parity(onnx_bytes, member.model, self.data.test.x[:PARITY_SAMPLES])
        if not parity.ok:
            raise RuntimeError(f"generation {member.generation}: ONNX disagrees with torch (max abs err "
                               f"{parity.max_abs_err:.4g}, {parity.metric} agreement {parity.top1_agreement:.4f})")
        row.update({"onnx_bytes": len(onnx_bytes), "model_sha256": sha256(onnx_bytes), **parity.to_dict(),
                    "export_seconds": time.perf_counter() - started})
        return onnx_bytes

    def _measure_row(self, member: Member, row: dict, onnx_bytes: bytes) -> str | None:
        """Measure into ``row``; the device's error message when it could not (None when fine)."""
        name = f"g{member.generation:03d}.a{row.get('attempt', 0)}"
        name += f".k{row['offspring']}" if row.get("offspring") else ""
        name += ".carry" if row.get("carried_over") else ""
        started = time.perf_counter()
        try:
            row.update(self.measurer.measure(name, onnx_bytes, self.data.test.x[:AGREEMENT_SAMPLES],
                                             {"generation": member.generation, "attempt": row.get("attempt", 0)}))
        except DeviceError as exc:
            return str(exc)
        finally:
            row["measure_seconds"] = time.perf_counter() - started  # publish -> result, or the local benchmark
        return None

    def _land(self, member: Member, row: dict, onnx_bytes: bytes, seed: int, parent: int | None) -> None:
        """Write the generation folder, then its row (folder first), the Pareto front, the progress."""
        row["onnx_path"] = f"gen-{member.generation:03d}/model.onnx"
        meta = {"generation": member.generation, "parent": parent, "seed": seed,
                "architecture": self._architecture(member.model), "config": self.cfg.to_dict(),
                "metrics": {k: row[k] for k in ("synapses", "clusters", "params", "macs", "accuracy")}}

        def fill(folder: Path) -> None:
            ckpt.write_checkpoint(folder, member.model, member.masks, meta)
            (folder / "model.onnx").write_bytes(onnx_bytes)

        self.run.commit_generation(member.generation, fill)
        self.rows.append(row)
        self.run.write_rows(self.rows)
        atomic_write_json(self.run.path / PARETO, pareto_front([r for r in self.rows if r.get("fps") is not None]))
        self.display.generation(row)
        self.measurer.progress(row)
        log.info("generation", **{k: row.get(k) for k in SUMMARY_KEYS})

    def _carry_over(self, parent: Member, generation: int) -> Member:
        """No offspring survived: the parent lives on as this generation, recorded as such."""
        carried = Member(generation, copy.deepcopy(parent.model), dict(parent.masks), parent.val_accuracy)
        last = next(r for r in reversed(self.rows) if r["accepted"] and r["generation"] == parent.generation)
        row = {**last, "generation": generation, "parent": parent.generation, "attempt": self.cfg.max_attempts,
               "carried_over": True, "accepted": True, "reject_reason": None}
        self._commit(carried, row, seed=int(last["seed"]), parent=parent.generation)
        return carried

    def _architecture(self, model: nn.Module) -> dict:
        return ckpt.architecture(model, self.cfg.model, self.data.num_classes, self.data.input_shape)

    def _train_config(self, epochs: float, seed: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, seed=seed, batch_size=self.cfg.batch_size, lr=self.cfg.lr,
                           distill=self.cfg.distill)


def resume_member(run: RunDir, rows: list[dict]) -> Member:
    last = rows[-1]
    folder = run.gen_dir(int(last["generation"]))
    try:
        checkpoint = ckpt.read_checkpoint(folder)
    except UserError:
        raise
    except Exception as exc:  # a damaged or hand-edited checkpoint: say which, in one line
        raise UserError(f"cannot read checkpoint {folder}: {type(exc).__name__}: {exc}") from None
    return Member(int(last["generation"]), checkpoint.model, checkpoint.masks, float(last["val_accuracy"]))
