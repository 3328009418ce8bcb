"""`--train-device`: where the host trains (host_trainer/torch_device.py), on a machine without a GPU.

What runs here: the option and its environment variable end to end on the CPU (`cpu` and `auto` write the same
bytes), the one-line refusals (a CUDA device torch cannot see; a torch device name given to `--device`), the
resolution rules against a faked device count, and synthesis, export, checkpoints and Taylor scoring on tensors
that refuse `.numpy()` as a CUDA tensor does. What needs a GPU (kernels, copies, NCCL, TF32) is bench/gpu.py's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from host_trainer import config
from host_trainer.cli import app
from host_trainer.config import EvolveConfig
from host_trainer.errors import UserError
from host_trainer.loop.checkpoint import to_bytes
from host_trainer.method.compaction import cluster_groups
from host_trainer.method.export import onnx_and_torch, to_onnx_bytes
from host_trainer.method.importance import taylor_importance
from host_trainer.method.masks import apply_masks, dense_masks, prunable_layers
from host_trainer.method.synthesis import SynthesisConfig, cluster_strength, plan_offspring
from host_trainer.models.registry import build_model, fixed_layers
from host_trainer.torch_device import CPU, device_of, on_cpu, placed, resolve

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: nothing to refuse")
# The cheapest complete run: mlp on a 256-image subset of digits, one offspring generation, measured in-process.
TINY = ["--model", "mlp", "--dataset", "digits", "--train-subset", "256", "--gen0-epochs", "1", "--epochs", "0.5",
        "--generations", "1", "--final-epochs", "0", "--env-factor", "0.7", "--max-accuracy-drop", "100",
        "--allocation", "magnitude", "--no-mqtt", "--quiet", "--bench-min-seconds", "0.05",
        "--bench-min-iterations", "10"]


def _evolve(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "host_trainer.cli", "evolve", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def _hashes(run: Path) -> dict[str, str]:
    found = sorted(run.glob("gen-*/model.onnx")) + sorted(run.glob("gen-*/weights.npz"))
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in found}


def _one_error_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


# ---- end to end on this machine ----------------------------------------------------------------------------
def test_cpu_and_auto_write_the_same_bytes(tmp_path):
    """`--train-device cpu` (the flag) and `auto` (its environment variable) both complete, and on a machine
    without CUDA they are the same run: identical ONNX files and weights, generation by generation."""
    runs = {}
    for name, args, env in (("cpu", ["--train-device", "cpu"], None),
                            ("auto", [], {"HOST_TRAINER_TRAIN_DEVICE": "auto"})):
        parent = tmp_path / name
        done = _evolve([*TINY, *args, "--run-dir", str(parent)], cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        (runs[name],) = [p for p in parent.iterdir() if p.is_dir()]
    hashes = {name: _hashes(run) for name, run in runs.items()}
    assert len(hashes["cpu"]) == 4 and hashes["cpu"] == hashes["auto"]
    assert json.loads((runs["auto"] / "config.json").read_text())["train_device"] == "auto"
    events = [json.loads(line) for line in (runs["auto"] / "events.jsonl").read_text().splitlines()]
    started = next(e for e in events if e.get("event") == "run started")
    assert started["train_device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")


@NO_CUDA
@pytest.mark.parametrize("args,env", [(["--train-device", "cuda"], {}), (["--train-device", "cuda:1"], {}),
                                      ([], {"HOST_TRAINER_TRAIN_DEVICE": "cuda"})])
def test_cuda_asked_for_and_absent_is_one_line_exit_2(args, env, tmp_path):
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["evolve", "--model", "mlp", "--dataset", "digits", "--run-dir", str(runs),
                                      *args], env=env)
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert re.search(r"--train-device cuda(:1)?: torch \S+ sees no CUDA device", line), line
    assert not runs.exists()


def test_an_unknown_train_device_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["evolve", "--train-device", "gpu", "--run-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "--train-device must be auto, cpu, cuda or cuda:N, got 'gpu'" in _one_error_line(result.output)


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:0", "mps"])
@pytest.mark.parametrize("fleet", [[], ["--broker", "mqtt://127.0.0.1:1"]])
def test_a_torch_device_given_to_device_is_one_line_pointing_to_train_device(name, fleet, tmp_path):
    """`--device` names a board: a torch device there stops at once (no broker is contacted, no board awaited),
    with one line naming --train-device."""
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["evolve", "--device", name, *fleet, "--device-timeout", "600",
                                      "--run-dir", str(runs)])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert f"--device {name} names a board" in line and "--train-device" in line, line
    assert not runs.exists()


def test_the_option_is_documented_with_its_default():
    assert config.default_text("train_device") == "auto" and EvolveConfig().train_device == "auto"
    page = (ROOT / "docs" / "options.md").read_text()
    rows = dict(re.findall(r"^\| `(--[a-z0-9-]+)`[^|]* \| [^|]* \| ([^|]*) \|", page, re.M))
    assert rows["--train-device"].strip() == "auto"
    shown = CliRunner().invoke(app, ["evolve", "--help"], env={"COLUMNS": "400", "TERM": "dumb"}).output
    assert "--train-device" in shown and "[default: auto]" in " ".join(shown.split())


def test_an_old_config_without_the_field_resumes_on_the_cpu_where_it_trained():
    """A run from before --train-device trained on the CPU; resumed on a GPU machine it must not move to CUDA (not
    bit-identical): only --train-device given to --resume moves it."""
    assert EvolveConfig.from_dict({"model": "mlp"}).train_device == "cpu"
    assert EvolveConfig.from_dict({"model": "mlp", "train_device": "auto"}).train_device == "auto"


# ---- resolution ---------------------------------------------------------------------------------------------
def _fake_cuda(monkeypatch, count: int) -> None:
    """torch.cuda reports `count` devices. Only the resolution rules run: nothing touches a device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_resolution_rules(monkeypatch):
    _fake_cuda(monkeypatch, 0)
    assert resolve("auto") == CPU and resolve(" CPU ") == CPU
    _fake_cuda(monkeypatch, 2)
    assert resolve("auto") == torch.device("cuda", 0) and resolve("cpu") == CPU
    assert resolve("cuda:1") == torch.device("cuda", 1)
    assert resolve("cuda", local_rank=1, local_size=2) == torch.device("cuda", 1)  # torchrun: cuda:LOCAL_RANK
    assert resolve("auto", local_rank=1, local_size=2) == torch.device("cuda", 1)
    for spec, rank, size, says in (("cuda:2", 0, 1, "sees 2 CUDA device(s)"), ("cuda", 2, 3, "LOCAL_RANK 2"),
                                   ("cuda:0", 0, 2, "each rank takes cuda:LOCAL_RANK"), ("tpu", 0, 1, "must be")):
        with pytest.raises(UserError, match=re.escape(says)):
            resolve(spec, rank, size)


def test_placed_on_the_cpu_moves_nothing():
    model = build_model("mlp", 10, (1, 8, 8))
    before = [(p, p.data_ptr()) for p in model.parameters()]
    with placed(CPU, model, None):
        assert device_of(model) == CPU
    assert [(p, p.data_ptr()) for p in model.parameters()] == before
    assert on_cpu(model) is model


# ---- tensors that are not on the CPU -------------------------------------------------------------------------
class Elsewhere(torch.Tensor):
    """A fake accelerator tensor: a CPU tensor that, like a CUDA tensor, refuses `.numpy()` until `.cpu()` has
    brought it back (which returns a plain tensor). Operations on it stay Elsewhere, as CUDA ops stay on CUDA.

    Tests with it prove that every path that turns a model's tensors into numpy goes through `.cpu()` first and
    computes the same. They do not prove anything about CUDA itself (kernels, host-to-device copies, pinned
    memory, NCCL, TF32), and the fake does not model a device mismatch between two operands: `.device` is
    truthfully the CPU. bench/gpu.py checks those on a real GPU."""

    cpu_calls = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        if func is torch.Tensor.numpy:
            raise TypeError("can't convert Elsewhere tensor to numpy. Use Tensor.cpu() to copy the tensor to host "
                            "memory first.")
        if func is torch.Tensor.cpu:
            Elsewhere.cpu_calls += 1
            with torch._C.DisableTorchFunctionSubclass():
                return torch.Tensor.as_subclass(args[0], torch.Tensor).clone()
        return super().__torch_function__(func, types, args, kwargs or {})


def _elsewhere(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers are Elsewhere."""
    moved = copy.deepcopy(model)
    for module in moved.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = nn.Parameter(p.detach().clone().as_subclass(Elsewhere), p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = b.clone().as_subclass(Elsewhere)
    return moved


def _pair(name: str = "vgg-small", shape: tuple[int, int, int] = (1, 16, 16)) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    plain = build_model(name, 10, shape)
    fake = _elsewhere(plain)
    assert isinstance(fake.get_parameter(next(n for n, _ in plain.named_parameters())), Elsewhere)
    with pytest.raises(TypeError, match="Use Tensor.cpu"):
        next(fake.parameters()).detach().numpy()  # the fake is not a no-op
    return plain, fake


def test_synthesis_reads_a_model_that_is_not_on_the_cpu():
    plain, fake = _pair()
    example = torch.zeros(1, 1, 16, 16)
    groups = cluster_groups(plain, example, fixed_layers(plain))
    masks = dense_masks(plain)
    fake_masks = {k: v.as_subclass(Elsewhere) for k, v in masks.items()}
    calls = Elsewhere.cpu_calls
    assert np.array_equal(cluster_strength(fake, groups[0]), cluster_strength(plain, groups[0]))
    scfg = SynthesisConfig(0.7, 0.8, 0.1, channel_multiple=4)
    a = plan_offspring(plain, groups, masks, scfg, np.random.default_rng(3))
    b = plan_offspring(fake, groups, fake_masks, scfg, np.random.default_rng(3))
    assert Elsewhere.cpu_calls > calls
    assert all(np.array_equal(a.keep[k], b.keep[k]) for k in a.keep)
    assert all(type(b.masks[k]) is torch.Tensor and torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


def test_export_and_parity_of_a_model_that_is_not_on_the_cpu():
    plain, fake = _pair()
    x = np.random.default_rng(0).normal(size=(8, 1, 16, 16)).astype(np.float32)
    onnx_bytes = to_onnx_bytes(plain, (1, 16, 16), "fp16", "logits")
    assert to_onnx_bytes(fake, (1, 16, 16), "fp16", "logits") == onnx_bytes
    got_plain, ref_plain = onnx_and_torch(onnx_bytes, plain, x)
    got_fake, ref_fake = onnx_and_torch(onnx_bytes, fake, x)  # torch's outputs are Elsewhere: .cpu() first
    assert np.array_equal(got_plain, got_fake) and np.array_equal(ref_plain, ref_fake)


def test_checkpoint_and_taylor_scores_of_a_model_that_is_not_on_the_cpu():
    plain, fake = _pair("mlp", (1, 8, 8))
    masks = dense_masks(plain)
    assert to_bytes(fake, {k: v.as_subclass(Elsewhere) for k, v in masks.items()}) == to_bytes(plain, masks)
    example = torch.zeros(1, 1, 8, 8)
    groups = cluster_groups(plain, example, fixed_layers(plain))
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 1, 8, 8, generator=gen), [torch.randint(0, 10, (16,), generator=gen)])
               for _ in range(2)]

    def loss(outputs: torch.Tensor, labels: list[torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, labels[0])

    a = taylor_importance(plain, groups, example, batches, loss)
    b = taylor_importance(fake, groups, example, batches, loss)
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=1e-12, atol=0) for k in a)


def test_masks_resting_on_the_cpu_apply_to_a_model_elsewhere():
    plain, fake = _pair("mlp", (1, 8, 8))
    masks = {n: torch.rand(m.weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5
             for n, m in prunable_layers(plain).items()}
    apply_masks(plain, masks)
    apply_masks(fake, masks)
    assert all(torch.equal(p.detach().cpu(), q) for p, q in zip(fake.state_dict().values(),
                                                                 plain.state_dict().values()))
