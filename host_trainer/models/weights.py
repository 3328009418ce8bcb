"""The user's trained weights (`--weights FILE`): a state_dict saved with `torch.save`, or a safetensors file.

`torch.save` files are read with `torch.load(..., weights_only=True)`, which refuses any pickled object other
than tensors and plain containers. A file may hold the state_dict itself or wrap it under "state_dict" or
"model" (common training-script checkpoints); a "module." prefix on every key (DataParallel) is dropped.
Every problem (no file, not a weights file, keys or shapes that do not fit the model) is one UserError line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from host_trainer.errors import UserError

WRAPPERS = ("state_dict", "model")  # keys under which checkpoints commonly keep the state_dict
SHOWN = 3  # offending keys named in an error


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_unchanged(path: str | Path, sha256: str) -> None:
    """A resumed run starts generation 0 again from the same bytes, or not at all."""
    if sha256 and Path(path).is_file() and file_sha256(path) != sha256:
        raise UserError(f"--weights {path} changed since the run started (sha256 {sha256[:12]}…): restore it, "
                        "or start a new run")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, by name; a one-line UserError when it has none to give."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--weights: file not found: {path}")
    try:
        loaded = _safetensors(path) if _is_safetensors(path) else torch.load(path, map_location="cpu",
                                                                               weights_only=True)
    except Exception as exc:  # a damaged file, a pickle of arbitrary objects, ...: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"--weights: cannot read {path} as a state_dict: {type(exc).__name__}: {first}"[:300]) from None
    return _unwrap(loaded, path)


def _is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in WRAPPERS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise UserError(f"--weights: {path} holds no state_dict (a dict of tensors), got {type(loaded).__name__}")
    state = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise UserError(f"--weights: {path} holds no tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path, model_ref: str = "the model",
                 state: dict[str, torch.Tensor] | None = None) -> None:
    """Load the file's tensors (`state`, when the caller read them already) into `model` in place; missing,
    unexpected or misshapen keys are one UserError naming the first few. BatchNorm's `num_batches_tracked` may
    be missing (it does not change the output)."""
    state = read_state_dict(path) if state is None else state
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshapen = [f"{k} {list(state[k].shape)} (model: {list(v.shape)})" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]
    problems = [f"{what}: {_first(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)) if keys]
    if problems:
        raise UserError(f"--weights {path} does not fit {model_ref}: " + "; ".join(problems))
    values = {k: state[k].to(v.dtype) if k in state else v for k, v in expected.items()}
    model.load_state_dict(values, strict=True)


def _first(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more
