"""The training schedules: the fixed budget, generation 0 until validation stops improving, an offspring's
recovery scaled to its cut, and BatchNorm's statistics estimated again after training."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from host_trainer.loop import training
from host_trainer.loop.training import (
    TrainConfig,
    lr_at,
    recalibrate_batchnorm,
    recovery,
    train,
    train_until_plateau,
)
from host_trainer.method.masks import dense_masks
from host_trainer.tasks.classify import ClassificationTask


def _data(n=256, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32) + y[:, None, None, None].astype(np.float32)
    return SimpleNamespace(x=x, y=y.astype(np.int64))


def _net(classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 64, classes))


def test_recovery_scales_its_peak_and_length_with_the_importance_lost():
    cfg = TrainConfig(epochs=2, seed=0, lr=0.05, batch_size=10)
    assert lr_at(0, 100, cfg) == pytest.approx(0.05 / 5)  # the full schedule warms up over 5 steps
    full = training.LOST_FULL
    mild, deep, none = (recovery(cfg, lost, images=1000) for lost in (0.25 * full, 2 * full, 0.0))
    assert mild.warmup_fraction == 0 and lr_at(0, 100, mild) == pytest.approx(mild.lr)  # no warm-up
    assert mild.lr == pytest.approx(0.05 * 0.25) and deep.lr == pytest.approx(0.05)
    assert none.lr == pytest.approx(0.05 * training.RECOVERY_FLOOR)
    assert deep.epochs == 2 and mild.epochs == none.epochs == 2 * training.MIN_RECOVERY_FRACTION
    assert recovery(cfg, 0.75 * full, images=1000).epochs == pytest.approx(1.5)
    # never fewer than MIN_RECOVERY_STEPS steps (a small set: 5 steps an epoch), nor more than --epochs
    assert recovery(cfg, 0.0, images=50).epochs == 2
    assert recovery(TrainConfig(epochs=8, seed=0, batch_size=10), 0.0, 50).epochs == training.MIN_RECOVERY_STEPS / 5
    assert lr_at(99, 100, mild) < 1e-3 * mild.lr  # still cosine to zero


def test_recalibration_estimates_batchnorm_statistics_and_leaves_weights_alone():
    model, data = _net(), _data()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    model[1].running_mean.fill_(5.0)  # stale statistics, as after a cut
    cfg = TrainConfig(epochs=1, seed=0, batch_size=64)
    recalibrate_batchnorm(model, data, cfg)
    with torch.no_grad():
        conv = model[0](torch.from_numpy(data.x))
    assert torch.allclose(model[1].running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-4)  # all 4 batches, equal weight
    assert model[1].momentum == 0.1 and model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


def test_training_recovers_stale_batchnorm_statistics():
    model, data = _net(), _data()
    task = ClassificationTask(4)
    train(model, dense_masks(model), data, TrainConfig(epochs=2, seed=0, batch_size=64, augment_shift=0), task)
    good = task.evaluate(model, data).accuracy
    model[1].running_var.fill_(100.0)
    train(model, dense_masks(model), data, TrainConfig(epochs=0.01, seed=1, batch_size=64, lr=1e-6), task)
    assert task.evaluate(model, data).accuracy == pytest.approx(good, abs=0.02)


def _scripted(scores):
    """A score function that returns the given scores in turn (the first: before any training)."""
    calls = iter(scores)
    return lambda model: next(calls)


def test_until_plateau_decays_after_patience_and_keeps_the_best_epoch():
    model, data = _net(), _data()
    task, cfg = ClassificationTask(4), TrainConfig(epochs=0, seed=0, batch_size=64)
    lrs = []
    seen = training._plateau_lr

    def spy(*args):
        lrs.append(seen(*args))
        return lrs[-1]

    training._plateau_lr = spy
    try:
        # epochs 1..8: best at 5, three epochs without improvement (6, 7, 8), then 2 decay epochs (round(8/4))
        result = train_until_plateau(model, dense_masks(model), data, cfg, task,
                                     _scripted([0.1, 0.5, 0.6, 0.7, 0.7, 0.8, 0.75, 0.8, 0.79, 0.85, 0.9]))
    finally:
        training._plateau_lr = seen
    assert (result.epochs, result.best_epoch, result.best_score) == (10, 10, 0.9)
    per_epoch = 4
    assert lrs[per_epoch * 8 - 1] == cfg.lr  # held at the peak until the plateau
    assert lrs[per_epoch * 8] == pytest.approx(cfg.lr)  # the decay starts at the peak ...
    assert lrs[-1] < 0.05 * cfg.lr  # ... and ends near zero
    assert len(lrs) == 10 * per_epoch


def test_until_plateau_restores_the_best_weights_and_respects_the_cap():
    model, data = _net(), _data()
    task, cfg = ClassificationTask(4), TrainConfig(epochs=0, seed=0, batch_size=64)
    start = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    # nothing beats the starting weights (a user's trained model): they come back
    result = train_until_plateau(model, dense_masks(model), data, cfg, task, _scripted([0.9] + [0.5] * 10))
    assert result.best_epoch == 0 and result.epochs == 4  # 3 without improvement, then round(3/4) -> 1 decay epoch
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())
    capped = train_until_plateau(_net(), dense_masks(model), data, cfg, task,
                                 _scripted([i / 100 for i in range(100)]), cap=8)
    assert capped.epochs == 8 and capped.best_epoch == 8  # decay began at epoch 6 (6 + round(6/4) >= 8)


def test_until_plateau_stops_on_a_nan_loss():
    model, data = _net(), _data()
    cfg = TrainConfig(epochs=0, seed=0, batch_size=64, lr=1e12)
    result = train_until_plateau(model, dense_masks(model), data, cfg, ClassificationTask(4),
                                 _scripted([0.1] * 100), cap=5)
    assert not math.isfinite(result.loss)


def test_every_epoch_is_reported_with_its_mean_loss():
    """on_epoch: once a whole epoch and once for a last, partial one (after recalibration); the plateau schedule
    hands its validation score, a fixed budget None (loop/epochs.py scores it)."""
    data, task = _data(), ClassificationTask(4)  # 256 images, batches of 64: 4 steps an epoch
    fixed, steps = [], []
    model = _net()
    train(model, dense_masks(model), data, TrainConfig(epochs=2.5, seed=0, batch_size=64), task,
          on_step=lambda step, total, loss, score: steps.append(loss), on_epoch=lambda *e: fixed.append(e))
    assert [(e, s) for e, _, s in fixed] == [(1.0, None), (2.0, None), (2.5, None)]
    assert fixed[0][1] == pytest.approx(sum(steps[:4]) / 4) and fixed[2][1] == pytest.approx(sum(steps[8:]) / 2)
    plateau = []
    train_until_plateau(_net(), dense_masks(model), data, TrainConfig(epochs=0, seed=0, batch_size=64), task,
                        _scripted([0.9] + [0.5] * 10), on_epoch=lambda *e: plateau.append(e))
    assert [(e, s) for e, _, s in plateau] == [(1, 0.5), (2, 0.5), (3, 0.5), (4, 0.5)]


# ---- in the loop -----------------------------------------------------------------------------------------
QUICK = ["--model", "mlp", "--dataset", "digits", "--image-size", "8", "--no-mqtt", "--env-factor", "0.7",
         "--max-accuracy-drop", "100", "--bench-min-seconds", "0.05", "--bench-min-iterations", "10"]


def _rows(run):
    import json

    return [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]


def test_auto_generation_0_and_a_final_fine_tune_are_recorded_and_not_redone(tmp_path):
    from typer.testing import CliRunner

    from host_trainer.cli import app

    runs = tmp_path / "runs"
    args = ["evolve", "--run-dir", str(runs), *QUICK, "--epochs", "0.5", "--generations", "1", "--final-epochs", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = runs.iterdir()
    rows = _rows(run)
    assert rows[0]["epochs_trained"] >= 1 and rows[0]["epochs_trained"] == int(rows[0]["epochs_trained"])
    assert '"generation 0 trained"' in (run / "events.jsonl").read_text()
    final = rows[-1]
    assert final["final_tune"] and final["generation"] == 2 and final["parent"] == 1
    assert final["epochs_trained"] == 1.0 and final["alpha"] is None
    assert final["accepted"] == (final["reject_reason"] is None)
    if final["accepted"]:
        assert (run / "gen-002" / "model.onnx").is_file() and final["val_accuracy"] >= rows[-2]["val_accuracy"]
    # a finished run resumed: an accepted fine-tune is not done again (a rejected one is redone, identically)
    assert CliRunner().invoke(app, ["evolve", "--resume", str(run)]).exit_code == 0
    assert [(r["generation"], r["val_accuracy"]) for r in _rows(run)] == [(r["generation"], r["val_accuracy"])
                                                                          for r in rows]


def test_the_terminal_marks_the_final_fine_tune():
    from host_trainer.record import GenerationRecord
    from host_trainer.terminal import FINAL, plain_row

    assert plain_row(GenerationRecord(generation=14, final_tune=True)).endswith(FINAL)
    assert FINAL not in plain_row(GenerationRecord(generation=13))


def test_a_mobilenet_style_offspring_recovers_only_with_batchnorm_reestimated(monkeypatch):
    """Inverted residuals with BatchNorm (tests/fixtures/mobilenet_v2.py), cut at α 0.8, half an epoch (5 steps):
    with the parent's running statistics the offspring is near chance; re-estimated, it keeps most of it."""
    from host_trainer.data.stream import load_data
    from host_trainer.method.compaction import cluster_groups, compact
    from host_trainer.method.synthesis import SynthesisConfig, plan_offspring
    from host_trainer.models.registry import build_model, fixed_layers

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # depthwise convolutions on 2 busy threads are many times slower
    try:
        data = load_data("classify", "digits", seed=0, image_size=16)
        torch.manual_seed(0)
        factory = f"{Path(__file__).parent / 'fixtures' / 'mobilenet_v2.py'}:build"
        parent = build_model(factory, data.num_classes, data.input_shape)
        task = ClassificationTask(data.num_classes)
        train(parent, dense_masks(parent), data.train, TrainConfig(epochs=5, seed=0), task)
        example = torch.zeros((1, *data.input_shape))
        scores = []
        for reestimate in (False, True):
            groups = cluster_groups(parent, example, fixed_layers(parent))
            plan = plan_offspring(parent, groups, dense_masks(parent), SynthesisConfig(0.8, 0.8, 0.1, "calibrated", 16),
                                  np.random.default_rng(1))
            child, masks = compact(parent, plan.masks, groups, plan.keep, example)
            if not reestimate:
                monkeypatch.setattr(training, "recalibrate_batchnorm", lambda *args, **kw: None)
            train(child, masks, data.train, recovery(TrainConfig(epochs=0.5, seed=1), 0.2, len(data.train.x)),
                  task)
            monkeypatch.undo()
            scores.append(task.evaluate(child, data.val).accuracy)
    finally:
        torch.set_num_threads(threads)
    parent_score = task.evaluate(parent, data.val).accuracy
    assert scores[0] < 0.4 < 0.6 < scores[1] and parent_score - scores[1] < 0.25, (parent_score, scores)


def test_a_generation_whose_offspring_all_fail_rests_the_parent_instead(tmp_path, monkeypatch):
    """Every offspring rejected (the brake, forced here): the parent trains once more without a cut and lands as the
    generation (`rest`), since that raised its validation accuracy; nothing is carried over."""
    from typer.testing import CliRunner

    from host_trainer.cli import app
    from host_trainer.loop.controller import Controller

    verdict = Controller.verdict
    calls = []

    def reject_every_cut(self, baseline, accuracy, loss):
        calls.append(accuracy)
        return "forced" if len(calls) <= 3 else verdict(self, baseline, accuracy, loss)

    monkeypatch.setattr(Controller, "verdict", reject_every_cut)
    runs = tmp_path / "runs"
    args = ["evolve", "--run-dir", str(runs), *QUICK, "--gen0-epochs", "1", "--epochs", "2", "--generations", "1",
            "--final-epochs", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = runs.iterdir()
    rows = _rows(run)
    assert [(r["generation"], r["accepted"], r["rest"]) for r in rows] == [
        (0, True, False), (1, False, False), (1, False, False), (1, False, False), (1, True, True)]
    rest = rows[-1]
    assert rest["parent"] == 0 and rest["cut"] is None and rest["alpha"] is None and not rest["carried_over"]
    assert rest["attempt"] == 3  # after the 3 attempts: its job id (g001.a3) is none of theirs
    assert rest["epochs_trained"] == 2.0 and rest["val_accuracy"] >= rows[0]["val_accuracy"]
    assert (run / "gen-001" / "model.onnx").is_file()


def test_the_terminal_marks_a_rest():
    from host_trainer.record import GenerationRecord
    from host_trainer.terminal import REST, plain_row

    assert plain_row(GenerationRecord(generation=3, rest=True)).endswith(REST)
