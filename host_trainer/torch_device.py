"""Where the host trains (`--train-device`), resolved once to one torch.device, and the moves to and from it.

`resolve` turns auto|cpu|cuda|cuda:N into a torch.device (auto: CUDA when torch sees it, else the CPU; under
torchrun `cuda` is cuda:LOCAL_RANK) and `use` sets what training there needs: fp32 matmuls and convolutions
without TF32, this rank's current CUDA device, deterministic cuBLAS workspaces (docs/method.md, "Training").

Networks rest on the CPU. Training, Taylor scoring, BatchNorm recalibration and evaluation take one to the
device for their duration (`placed`) and feed it batches there (`to_device`); synthesis, compaction, export and
checkpoints read it on the CPU (`.detach().cpu()`, `on_cpu`). On the CPU every move here is a no-op
(`.to(cpu)` of a CPU tensor is the tensor itself), so a CPU run computes exactly what it would with no device
placement at all.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
from collections.abc import Iterator

import torch
from torch import nn

from host_trainer.config import TRAIN_DEVICE, TRAIN_DEVICE_CHOICES
from host_trainer.errors import UserError

CPU = torch.device("cpu")


def resolve(spec: str, local_rank: int = 0, local_size: int = 1) -> torch.device:
    """The device `--train-device spec` names on this rank; a CUDA device torch cannot see is a UserError."""
    text = str(spec).strip().lower()
    if not TRAIN_DEVICE.fullmatch(text):
        raise UserError(f"--train-device must be {TRAIN_DEVICE_CHOICES}, got {spec!r}")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return CPU
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UserError(f"--train-device {text}: torch {torch.__version__} sees no CUDA device (a CPU build of "
                        f"torch, or no driver); install a CUDA build (docs/your-model.md) or use --train-device cpu")
    if ":" in text and local_size > 1:
        raise UserError(f"--train-device {text}: under torchrun each rank takes cuda:LOCAL_RANK; give cuda or auto")
    index = int(text.split(":")[1]) if ":" in text else local_rank
    if index >= count:
        raise UserError(f"--train-device {text}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
                        + (f" (LOCAL_RANK {local_rank})" if ":" not in text else ""))
    return torch.device("cuda", index)


def use(device: torch.device) -> torch.device:
    """Set what training on `device` needs (nothing on the CPU); returns it."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read at first use)
        torch.backends.cuda.matmul.allow_tf32 = False  # the method trains at fp32: no 10-bit-mantissa inputs
        torch.backends.cudnn.allow_tf32 = False
        torch.cuda.set_device(device)  # NCCL and object collectives use the current device
    return device


def device_of(module: nn.Module) -> torch.device:
    """Where a module's first parameter (else buffer) lives; the CPU for a module without tensors."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return CPU


@contextlib.contextmanager
def placed(device: torch.device, *modules: nn.Module | None) -> Iterator[None]:
    """The modules on `device` for the block, each back where it was afterwards (None entries are skipped);
    a module already there is not touched, so nested blocks cost nothing."""
    homes = [(m, device_of(m)) for m in modules if m is not None]
    moved = [(m, home) for m, home in homes if home != device]
    for module, _ in moved:
        module.to(device)
    try:
        yield
    finally:
        for module, home in moved:
            module.to(home)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on `device`: non-blocking on CUDA (asynchronous from pinned memory); the tensor itself on the CPU."""
    return tensor.to(device, non_blocking=device.type == "cuda")


def on_cpu(module: nn.Module) -> nn.Module:
    """The module itself when it lives on the CPU, else a copy on the CPU (the caller's stays where it is)."""
    if device_of(module).type == "cpu":
        return module
    return copy.deepcopy(module).cpu()
