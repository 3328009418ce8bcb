"""Models by name: the built-ins, and the user's own `path/to/file.py:factory`.

Synthesis may remove clusters (filters, neurons) from any Conv2d/Linear layer except the ones
`fixed_layers()` names: the classifier or the detection head, whose width the task fixes.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from host_trainer.errors import UserError
from host_trainer.models.classifiers import MLP, LeNet5, ResNetSmall, VGGSmall
from host_trainer.models.detectors import DetSmall

BUILTIN_MODELS: dict[str, Callable[[int, tuple[int, int, int]], nn.Module]] = {
    "mlp": MLP,
    "lenet5": LeNet5,
    "vgg-small": VGGSmall,
    "resnet-small": ResNetSmall,
    "det-small": DetSmall,  # a detector: --task detect (models/detectors.py)
}


def _load_factory(ref: str) -> Callable[..., object]:
    path_s, _, name = ref.rpartition(":")
    path = Path(path_s)
    if not path.is_file():
        raise UserError(f"model factory file not found or unreadable: {path}")
    spec = importlib.util.spec_from_file_location(f"_user_model_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot import model factory file: {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: any failure becomes one clear line
        raise UserError(f"cannot import {path}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"{path} has no callable named {name!r}")
    return factory


def _call_factory(factory: Callable[..., object], num_classes: int, input_shape: tuple[int, int, int]) -> object:
    """Pass only the keyword arguments the factory declares (num_classes, input_shape, in_channels)."""
    offered = {"num_classes": num_classes, "input_shape": tuple(input_shape), "in_channels": input_shape[0]}
    try:
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in offered.items() if takes_all or k in params}
    except (TypeError, ValueError):
        kwargs = {}
    return factory(**kwargs)


def build_model(ref: str, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Build a fresh, dense model from a built-in name or `path/to/file.py:factory`."""
    if ref in BUILTIN_MODELS:
        try:
            return BUILTIN_MODELS[ref](num_classes, tuple(input_shape))  # type: ignore[arg-type]
        except ValueError as exc:  # e.g. det-small at an input size it cannot take
            raise UserError(f"{ref}: {exc}") from None
    if ":" not in ref:
        names = ", ".join(BUILTIN_MODELS)
        raise UserError(f"unknown model {ref!r}: choose one of {names} or give path/to/file.py:factory")
    factory = _load_factory(ref)
    try:
        model = _call_factory(factory, num_classes, input_shape)
    except Exception as exc:
        raise UserError(f"model factory {ref} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory {ref} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def fixed_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose output clusters never drop: the model's `evolve_fixed_layers` or its last Conv/Linear."""
    declared = getattr(model, "evolve_fixed_layers", None)
    if declared is not None:
        return [model.get_submodule(n) if isinstance(n, str) else n for n in declared]
    layers: list[nn.Module] = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return layers[-1:]
