"""The generation loop: synthesis → compaction → training → restriction → export → measurement.

Every offspring, accepted or rejected, becomes one GenerationRecord (host_trainer/record.py) in the run directory;
its seed, and so the whole offspring, depends only on the run's seed, the generation and the attempt
(loop/lineage.py), so `--resume` reproduces what an uninterrupted run computes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
import torch
from torch import nn

from host_trainer import distributed
from host_trainer.config import AUTO, EvolveConfig
from host_trainer.data import splits
from host_trainer.errors import UserError
from host_trainer.fleet.measurers import AGREEMENT_SAMPLES, DeviceError, Measurer
from host_trainer.loop import checkpoint as ckpt
from host_trainer.loop.allocator import DeviceAllocator
from host_trainer.loop.breeding import Breeder, failed_cuts
from host_trainer.loop.controller import Alpha, Controller, Goals, speed_pressure
from host_trainer.loop.epochs import GEN0, OFFSPRING, EpochEvents, bar_reporter, validation_score
from host_trainer.loop.lineage import Candidate, Member, dense_model, derive_seed, offspring_seed
from host_trainer.loop.selection import pareto_front, select
from host_trainer.loop.stopping import goals_held, stalled
from host_trainer.loop.training import (
    CAP_EPOCHS,
    TrainConfig,
    fine_tune,
    recovery,
    train,
    train_until_plateau,
)
from host_trainer.method.export import sha256, to_onnx_bytes
from host_trainer.method.masks import apply_masks, dense_masks
from host_trainer.method.restriction import restrict
from host_trainer.method.size import size_metrics
from host_trainer.progress import NULL, RunView
from host_trainer.record import GenerationRecord
from host_trainer.rundir import MODEL, RunDir, onnx_path
from host_trainer.tasks.base import Task
from host_trainer.torch_device import CPU, placed

PARITY_SAMPLES = 256
SUMMARY_KEYS = ("generation", "attempt", "alpha_c", "synapses", "params", "macs", "accuracy", "val_accuracy",
                "fps", "latency_ms_p50", "model_sha256", "accepted", "reject_reason")
log = structlog.get_logger("host_trainer")


class ParityError(UserError):
    """A generation's exported ONNX computes something else than its torch network: an offspring is rejected
    for it; generation 0 or a carried-over parent ends the run with this one line."""


class Evolution:
    def __init__(self, cfg: EvolveConfig, data: Any, run: RunDir, measurer: Measurer, task: Task,
                 view: RunView = NULL, device: torch.device = CPU, dense: nn.Module | None = None):
        """`device`: where networks train, are scored and evaluated (`--train-device`, resolved by the session);
        between those steps every network rests on the CPU. `dense`: generation 0's network as `dense_model`
        built it (the session builds it once, up front, to check the input); built here when not given."""
        self.device, self._dense = device, dense
        self.cfg, self.data, self.run, self.measurer, self.task, self.view = cfg, data, run, measurer, task, view
        self.example = torch.zeros((1, *data.input_shape))
        self.goals = Goals(cfg.target_fps, cfg.target_latency_ms, cfg.max_power_w)
        self.controller = Controller(cfg.alpha_c, cfg.alpha_s, cfg.max_accuracy_drop / 100.0, self.goals)
        self.records: list[GenerationRecord] = []
        self.train_split = splits.take(data.train, cfg.train_subset) if cfg.train_subset else data.train
        self.allocator = DeviceAllocator(cfg, run.path, measurer, self.example, view)
        self.breeder = Breeder(cfg, self.train_split, task, self.example, self.allocator, device)
        self._gen0: nn.Module | None = None  # the distillation teacher (--distill), loaded when first needed

    # ---- the run -------------------------------------------------------------------------
    def run_all(self, parent: Member | None = None) -> list[GenerationRecord]:
        if parent is None:
            parent = self.generation_zero()
        baseline = float(self.records[0].val_accuracy or 0.0)
        for generation in range(parent.generation + 1, self.cfg.generations + 1):
            if goals_held(self.records, self.goals, self.cfg.hold):
                log.info("targets_met", generation=parent.generation, hold=self.cfg.hold)
                self.view.note(f"targets met for {self.cfg.hold} generations in a row: stopping after generation "
                               f"{parent.generation}")
                break
            if stalled(self.records, self.cfg.patience):
                log.info("lineage_stalled", generation=parent.generation, patience=self.cfg.patience)
                self.view.note(f"no cut for {self.cfg.patience} generations in a row: stopping after generation "
                               f"{parent.generation}")
                break
            parent = self.next_generation(parent, generation, baseline)
        if self.cfg.final_epochs > 0 and parent.generation > 0 and not self._accepted(parent.generation).final_tune:
            self._final_tune(parent, baseline)
        return self.records

    def _final_tune(self, parent: Member, baseline: float) -> None:
        """--final-epochs: train the last accepted generation once more; it lands as the next generation
        (`final_tune`) when its validation accuracy is at least its parent's."""
        generation = parent.generation + 1
        self._retrain(parent, generation, derive_seed(self.cfg.seed, generation, 0), self.cfg.final_epochs,
                      "final_tune", baseline)

    def _retrain(self, parent: Member, generation: int, seed: int, epochs: float, flag: str,
                 baseline: float, attempt: int = 0) -> Member | None:
        """Train a copy of `parent` for `epochs` on the fine-tune schedule (training.fine_tune), no cut; it lands as
        `generation` with `flag` set when within the brake and at least as accurate (validation) as `parent`.
        `attempt` keeps its record, and its measurement job's id, apart from the generation's offspring."""
        model, masks = copy.deepcopy(parent.model), dict(parent.masks)
        loss = self._train(model, masks, generation, epochs, seed, retrain=flag, attempt=attempt)
        candidate = self._finish(model, masks, generation, parent.generation, seed, None, loss)
        candidate.record.update({flag: True, "epochs_trained": epochs, "attempt": attempt})
        reason = self.controller.verdict(baseline, candidate.member.val_accuracy, loss)
        if reason is None and candidate.member.val_accuracy < parent.val_accuracy:
            reason = f"training without a cut lowered validation accuracy ({parent.val_accuracy:.4f} -> " \
                     f"{candidate.member.val_accuracy:.4f})"
        if reason is not None:
            self._reject(candidate.record, reason)
            return None
        self._commit(candidate)
        return candidate.member

    def _accepted(self, generation: int) -> GenerationRecord:
        return next(r for r in reversed(self.records) if r.accepted and r.generation == generation)

    def generation_zero(self) -> Member:
        """The dense ancestor: built (or the user's --weights), trained for --gen0-epochs (a number, 0, or auto:
        until validation accuracy stops improving, the best epoch kept), restricted, measured."""
        cfg, seed = self.cfg, derive_seed(self.cfg.seed, 0, 0)
        model = self._dense if self._dense is not None else dense_model(cfg, self.data)
        self._dense = None  # trained from here on: never handed out twice
        masks, loss, trained = dense_masks(model), float("nan"), 0.0
        if cfg.gen0_epochs == AUTO:
            tcfg = self._train_config(seed)
            with self.view.step("gen 0: training until validation accuracy stops improving") as bar, \
                    self._on_every_rank("plateau", model, masks, tcfg, 0):
                plateau = train_until_plateau(model, masks, self.train_split, tcfg, self.task,
                                              lambda m: self.task.evaluate(m, self.data.val).accuracy,
                                              bar_reporter(bar, CAP_EPOCHS), on_epoch=EpochEvents(GEN0, 0, AUTO))
            log.info("generation 0 trained", epochs=plateau.epochs, best_epoch=plateau.best_epoch,
                     val_accuracy=plateau.best_score, val_history=[round(v, 4) for v in plateau.history])
            loss, trained = plateau.loss, float(plateau.epochs)
        elif float(cfg.gen0_epochs) > 0:
            trained = float(cfg.gen0_epochs)
            loss = self._train(model, masks, 0, trained, seed)
        candidate = self._finish(model, masks, generation=0, parent=None, seed=seed, alpha=None, loss=loss)
        candidate.record.update({"epochs_trained": trained, "weights_sha256": cfg.weights_sha256 or None,
                                 "train_loss": loss if trained > 0 else None})
        self._commit(candidate)
        return candidate.member

    def next_generation(self, parent: Member, generation: int, baseline: float) -> Member:
        fitness = self._accepted(parent.generation)
        for attempt in range(self.cfg.max_attempts):
            alpha = self.controller.alpha(baseline, parent.val_accuracy, attempt, fitness)
            survivors = []
            for k in range(self.cfg.offspring):
                seed = offspring_seed(self.cfg.seed, generation, attempt, k, self.cfg.offspring)
                child, masks, loss, fields = self._offspring(parent, fitness, generation, seed, alpha, k, attempt)
                candidate = self._finish(child, masks, generation, parent.generation, seed, alpha, loss, attempt)
                candidate.record.update({"offspring": k, "speed_pressure": speed_pressure(self.goals, fitness),
                                         "target_gap": self.goals.gap(fitness), **fields})
                reason = self.controller.verdict(baseline, candidate.member.val_accuracy, loss)
                if reason is None:
                    survivors.append(candidate)
                else:
                    self._reject(candidate.record, reason)
            best = self._select(self._measure_all(survivors))
            if best is not None:
                self._land(best)
                return best.member
        return self._rest(parent, generation, baseline) or self._carry_over(parent, generation)

    def _measure_all(self, survivors: list[Candidate]) -> list[Candidate]:
        """Export and measure every survivor; on devices in parallel (K jobs in flight at once)."""
        exported = []
        for candidate in survivors:
            try:
                candidate.onnx = self._export(candidate)
                exported.append(candidate)
            except ParityError as exc:  # its fp16 ONNX is not the network trained: unfit, not the run's end
                self._reject(candidate.record, f"export parity: {exc}")
        survivors = exported
        started = time.perf_counter()
        if self.measurer.parallel and len(survivors) > 1:
            outcomes = self._measure_in_parallel(survivors)
        else:
            outcomes = [self._measure(c) for c in survivors]
        measured = []
        for candidate, error in zip(survivors, outcomes):
            candidate.record.measure_batch_seconds = time.perf_counter() - started  # bench/loop.py reads it
            if error is None:
                measured.append(candidate)
            else:  # e.g. a build failure on the device: unfit there
                self._reject(candidate.record, f"device error: {error}")
        return measured

    def _measure_in_parallel(self, survivors: list[Candidate]) -> list[str | None]:
        pool = ThreadPoolExecutor(max_workers=len(survivors))
        try:
            outcomes = list(pool.map(self._measure, survivors))
        except BaseException:  # Ctrl-C or a FleetError: stop the other waits now, not after their timeouts
            self.measurer.cancel()
            pool.shutdown(wait=False)
            raise
        pool.shutdown()
        return outcomes

    def _select(self, measured: list[Candidate]) -> Candidate | None:
        if not measured:
            return None
        winner = select([c.record for c in measured], measured[0].record.time_target_ms)
        for i, candidate in enumerate(measured):
            if i != winner:
                self._reject(candidate.record, f"not the fittest of {self.cfg.offspring} offspring")
        return measured[winner]

    def _reject(self, record: GenerationRecord, reason: str) -> None:
        record.accepted, record.reject_reason = False, reason
        self.records.append(record)
        self.view.rejected(record)
        log.info("generation", **{k: getattr(record, k) for k in SUMMARY_KEYS})

    # ---- one offspring ---------------------------------------------------------------------
    def _offspring(self, parent: Member, fitness: GenerationRecord, generation: int, seed: int,
                   alpha: Alpha, k: int, attempt: int):
        """Breed (loop/breeding.py) and train one offspring; its record fields besides the metrics."""
        cfg = self.cfg
        bred = self.breeder.breed(parent.model, parent.masks, fitness, seed, alpha, k, attempt,
                                  failed_cuts(self.records, fitness.model_sha256))
        child, masks = bred.model, bred.masks
        if cfg.init == "reinit":
            torch.manual_seed(seed)
            child = ckpt.build_architecture(self._architecture(child))
        apply_masks(child, masks)
        teacher = self._teacher() if cfg.distill > 0 else None
        tcfg = recovery(self._train_config(seed, cfg.epochs), bred.lost, splits.images_in(self.train_split))
        loss = self._train_with(child, masks, generation, tcfg, teacher, OFFSPRING, attempt=attempt, offspring=k)
        target = alpha.c * fitness.latency_ms_p50 if fitness.latency_ms_p50 else None
        fields = {**bred.allocation.to_record(), "parent_sha256": fitness.model_sha256,
                  "importance_lost": bred.lost, "epochs_trained": tcfg.epochs, "time_target_ms": target}
        return child, masks, loss, fields

    def _teacher(self) -> nn.Module:
        """Generation 0, the most accurate network of the lineage, read once (a resumed run reads it back)."""
        if self._gen0 is None:
            self._gen0 = ckpt.read_checkpoint(self.run.gen_dir(0)).model
        return self._gen0

    def _train(self, model: nn.Module, masks: dict[str, torch.Tensor], generation: int, epochs: float, seed: int,
               retrain: str = "", attempt: int = 0) -> float:
        """Train for `epochs` on the full schedule (generation 0 with a number of epochs), or a `retrain` without a
        cut (`rest`, `final_tune`: its record flag) on the fine-tune schedule (loop/training.py)."""
        tcfg = self._train_config(seed, epochs)
        if retrain:
            return self._train_with(model, masks, generation, fine_tune(tcfg), None, retrain, attempt=attempt)
        return self._train_with(model, masks, generation, tcfg, None, GEN0)

    def _train_with(self, model: nn.Module, masks: dict[str, torch.Tensor], generation: int, tcfg: TrainConfig,
                    teacher: nn.Module | None, training: str, **ids: int) -> float:
        """One training on a fixed budget; `training` and `ids` name it in its `epoch` events (loop/epochs.py)."""
        on_epoch = EpochEvents(training, generation, tcfg.epochs, validation_score(self.task, model, self.data.val),
                               **ids)
        with self.view.step(f"gen {generation}: training") as bar, \
                self._on_every_rank("fixed", model, masks, tcfg, generation, teacher):
            return train(model, masks, self.train_split, tcfg, self.task, teacher, bar_reporter(bar, tcfg.epochs),
                         on_epoch)

    def _on_every_rank(self, kind: str, model: nn.Module, masks: dict[str, torch.Tensor], tcfg: TrainConfig,
                       generation: int, teacher: nn.Module | None = None) -> contextlib.AbstractContextManager:
        """Under torchrun, every rank trains this network with rank 0 (host_trainer/distributed/)."""
        return distributed.lead_training(kind, model, masks, dataclasses.asdict(tcfg), generation, self._architecture,
                                         teacher)

    def _train_config(self, seed: int, epochs: float = 0.0) -> TrainConfig:
        return TrainConfig(epochs=epochs, seed=seed, batch_size=self.cfg.batch_size, lr=self.cfg.lr,
                           device=str(self.device))

    def _finish(self, model: nn.Module, masks: dict[str, torch.Tensor], generation: int, parent: int | None,
                seed: int, alpha: Alpha | None, loss: float, attempt: int = 0) -> Candidate:
        """Restrict precision, evaluate before and after, and start the offspring's record."""
        with self.view.step(f"gen {generation}: restricting to {self.cfg.precision_format} and evaluating"), \
                placed(self.device, model):
            before = self.task.evaluate(model, self.data.test)
            restrict(model, self.cfg.precision_format)
            apply_masks(model, masks)
            test = self.task.evaluate(model, self.data.test)
            val = self.task.evaluate(model, self.data.val)
        record = GenerationRecord(
            generation=generation, parent=parent, attempt=attempt, seed=seed, task=self.task.name,
            alpha=list(alpha) if alpha else None, alpha_c=alpha.c if alpha else None,
            alpha_s=alpha.s if alpha else None, precision_format=self.cfg.precision_format,
            val_accuracy=val.accuracy, train_loss=loss, accuracy_before_restriction=before.accuracy)
        record.update(size_metrics(model, self.data.input_shape).to_dict()).update(test.to_dict())
        return Candidate(Member(generation, model, masks, val.accuracy), record, seed)

    # ---- persistence -----------------------------------------------------------------------
    def _commit(self, candidate: Candidate) -> None:
        """Export, measure and land one member (generation 0, a carried-over parent)."""
        candidate.onnx = self._export(candidate)
        error = self._measure(candidate)
        if error is not None:
            raise UserError(f"generation {candidate.member.generation} could not be measured: {error}")
        self._land(candidate)

    def _export(self, candidate: Candidate) -> bytes:
        member, record = candidate.member, candidate.record
        started = time.perf_counter()
        with self.view.step(f"gen {member.generation}: exporting ONNX and checking it against torch"):
            onnx_bytes = to_onnx_bytes(member.model, self.data.input_shape, self.cfg.precision_format,
                                       self.task.output_name)
            parity = self.task.parity(onnx_bytes, member.model, splits.head(self.data.test, PARITY_SAMPLES))
        if not parity.ok:
            raise ParityError(f"generation {member.generation}: ONNX disagrees with torch (max abs err "
                              f"{parity.max_abs_err:.4g}, {parity.metric} agreement {parity.agreement:.4f})")
        record.update({"onnx_bytes": len(onnx_bytes), "model_sha256": sha256(onnx_bytes), **parity.to_dict(),
                       "export_seconds": time.perf_counter() - started})
        return onnx_bytes

    def _measure(self, candidate: Candidate) -> str | None:
        """Measure into the record; the device's error message when it could not (None when fine)."""
        record = candidate.record
        name = f"g{record.generation:03d}.a{record.attempt}"
        name += f".k{record.offspring}" if record.offspring else ""
        name += ".carry" if record.carried_over else ""
        started = time.perf_counter()
        try:
            measured = self.measurer.measure(name, candidate.onnx, splits.head(self.data.test, AGREEMENT_SAMPLES),
                                             {"generation": record.generation, "attempt": record.attempt})
            record.update(measured.fields)
            record.update(self.allocator.observe(record, candidate.member.model, measured.profile))
        except DeviceError as exc:
            return str(exc)
        finally:
            record.measure_seconds = time.perf_counter() - started  # publish -> result, or the local benchmark
        return None

    def _land(self, candidate: Candidate) -> None:
        """Write the generation folder, then its record (folder first), the Pareto front, the progress."""
        member, record = candidate.member, candidate.record
        record.onnx_path = onnx_path(member.generation)
        meta = {"generation": member.generation, "parent": record.parent, "seed": candidate.seed,
                "architecture": self._architecture(member.model), "config": self.cfg.to_dict(),
                "metrics": {k: getattr(record, k) for k in ("synapses", "clusters", "params", "macs", "accuracy")}}

        def fill(folder: Path) -> None:
            ckpt.write_checkpoint(folder, member.model, member.masks, meta)
            (folder / MODEL).write_bytes(candidate.onnx)

        self.run.commit_generation(member.generation, fill)
        self.records.append(record)
        self.run.write_records(self.records)
        self.run.write_pareto(pareto_front([r for r in self.records if r.fps is not None]))
        self.view.generation(record)
        self.measurer.publish(record)
        log.info("generation", **{k: getattr(record, k) for k in SUMMARY_KEYS})

    def _rest(self, parent: Member, generation: int, baseline: float) -> Member | None:
        """No offspring survived: the lineage sits within the noise of the brake, where any cut fails and a
        carried-over parent would meet the same wall next generation. Train the parent once more instead (--epochs,
        the fine-tune schedule, no cut); it lands (`rest`) if that raised its validation accuracy, buying headroom."""
        if self.cfg.epochs <= 0:
            return None
        seed = derive_seed(self.cfg.seed, generation, self.cfg.max_attempts)
        return self._retrain(parent, generation, seed, self.cfg.epochs, "rest", baseline, self.cfg.max_attempts)

    def _carry_over(self, parent: Member, generation: int) -> Member:
        """No offspring survived: the parent lives on as this generation, recorded as such."""
        carried = Member(generation, copy.deepcopy(parent.model), dict(parent.masks), parent.val_accuracy)
        last = self._accepted(parent.generation)
        record = dataclasses.replace(last, generation=generation, parent=parent.generation,
                                     attempt=self.cfg.max_attempts, carried_over=True, accepted=True, rest=False,
                                     reject_reason=None, extra=dict(last.extra))
        self._commit(Candidate(carried, record, seed=int(last.seed or 0)))
        return carried

    def _architecture(self, model: nn.Module) -> dict:
        return ckpt.architecture(model, self.cfg.model, self.data.num_classes, self.data.input_shape)
