"""Probe jobs: one layer alone, benchmarked on the board at many channel counts, on each axis.

The counts straddle every candidate alignment (8, 9, 15, 16, 17, ...), so the curve's steps show which
alignment the board's kernels use. The probed layer is the convolution that took the most time in the
parent's profile, at its real input size. Two sweeps: its output channels at its real input channels, and
its input channels (the same counts, up to its own) at its real output channels; the two alignments may
differ, and together they give the board's fixed cost per layer (host_trainer/latency/model.py). Each probe
is an ordinary fp16 ONNX job, measured like an offspring (so a TensorRT board builds an engine for each).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from host_trainer.latency.model import INPUT, Probe
from host_trainer.method.export import to_onnx_bytes
from host_trainer.method.masks import prunable_layers

PROBE_COUNTS = (1, 2, 4, 6, 8, 9, 12, 15, 16, 17, 20, 24, 28, 31, 32, 33, 40, 47, 48, 49, 56, 63, 64)
MIN_SWEEP = 3  # fewer counts cannot show an alignment: such a sweep is not run
ROUNDS = 2  # passes over each sweep; each count keeps its fastest (a busy board measured once shows no steps)
OUTPUT = "output"

# (job name, fp16 ONNX bytes, input shape without batch) -> the layer's time in ms on the board
ProbeRunner = Callable[[str, bytes, tuple[int, ...]], float]


@dataclass(frozen=True)
class ProbeLayer:
    name: str
    inputs: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    spatial: tuple[int, int]  # input height, width
    outputs: int = 0  # the layer's own output channels: the input sweep's (0: no input sweep)

    def network(self, outputs: int, inputs: int | None = None) -> nn.Module:
        return nn.Sequential(nn.Conv2d(inputs or self.inputs, outputs, self.kernel, self.stride, self.padding),
                             nn.ReLU())

    def shape(self, inputs: int | None = None) -> tuple[int, int, int]:
        """The network's input shape without batch, at `inputs` channels (default: the layer's own)."""
        return (inputs or self.inputs, *self.spatial)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.shape()


def input_sizes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Each Conv/Linear layer's input shape (without batch), from one forward pass."""
    seen: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module: nn.Module, args: tuple, _output: object) -> None:  # None: the output stays as is
            seen.setdefault(name, tuple(args[0].shape[1:]))
        return hook

    hooks = [layer.register_forward_hook(record(name)) for name, layer in prunable_layers(model).items()]
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            model(example)
            model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def probe_layer(model: nn.Module, example: torch.Tensor, layer_ms: dict[str, float]) -> ProbeLayer | None:
    """The slowest plain (not grouped) convolution of the profile, or None when there is none."""
    layers = prunable_layers(model)
    sizes = input_sizes(model, example)
    convs = [n for n, m in layers.items() if isinstance(m, nn.Conv2d) and m.groups == 1 and n in sizes
             and isinstance(m.padding, tuple)]
    if not convs:
        return None
    name = max(convs, key=lambda n: (layer_ms.get(n, 0.0), -list(layers).index(n)))
    conv = layers[name]
    if not isinstance(conv, nn.Conv2d):  # never: convs holds Conv2d only (narrows the type)
        return None
    return ProbeLayer(name=name, inputs=conv.in_channels, kernel=_pair(conv.kernel_size),
                      stride=_pair(conv.stride), padding=_pair(conv.padding), spatial=_pair(sizes[name][1:]),
                      outputs=conv.out_channels)


def run_probes(layer: ProbeLayer, runner: ProbeRunner, counts: tuple[int, ...] = PROBE_COUNTS,
               prefix: str = "probe", rounds: int = ROUNDS) -> list[Probe]:
    """The output sweep (jobs `<prefix>.<layer>.c<count>`), then the input sweep at the counts up to the
    layer's own input channels (`.i<count>`) when there are MIN_SWEEP of them and the layer's outputs are known.
    Each sweep runs `rounds` times, every other round in reverse order, and keeps each count's fastest time:
    load on the board only ever adds time, and a drift over the sweep then shows on both ends of it, not as a
    step. Fixed weights: only the time matters."""
    times = _sweep(layer, runner, [(_name(prefix, layer, "c", c), c, None) for c in counts], rounds)
    sweeps = [Probe(layer=layer.name, inputs=layer.inputs, counts=list(counts), ms=times, outputs=layer.outputs)]
    inputs = [c for c in counts if c <= layer.inputs]
    if layer.outputs > 0 and len(set(inputs)) >= MIN_SWEEP:
        times = _sweep(layer, runner, [(_name(prefix, layer, "i", c), layer.outputs, c) for c in inputs], rounds)
        sweeps.append(Probe(layer=layer.name, inputs=layer.inputs, counts=inputs, ms=times, axis=INPUT,
                            outputs=layer.outputs))
    return sweeps


def _sweep(layer: ProbeLayer, runner: ProbeRunner, jobs: list[tuple[str, int, int | None]],
           rounds: int) -> list[float]:
    """Each job's (name, outputs, inputs) fastest time over `rounds` passes, odd passes in reverse order and
    named `<name>.r<round>`. Each network is exported once: only its timing is repeated."""
    payloads = [_export(layer, outputs, inputs) for _, outputs, inputs in jobs]
    best = [math.inf] * len(jobs)
    for r in range(max(1, rounds)):
        for i in (range(len(jobs)) if r % 2 == 0 else reversed(range(len(jobs)))):
            name = jobs[i][0] + (f".r{r}" if r else "")
            best[i] = min(best[i], float(runner(name, *payloads[i])))
    return best


def _name(prefix: str, layer: ProbeLayer, axis: str, count: int) -> str:
    return f"{prefix}.{layer.name}.{axis}{count}"


def _export(layer: ProbeLayer, outputs: int, inputs: int | None) -> tuple[bytes, tuple[int, ...]]:
    """The probe network at (inputs, outputs) channels as fp16 ONNX bytes, and its input shape. Fixed weights:
    only the time matters."""
    torch.manual_seed(outputs * 1000 + (inputs or 0))
    return to_onnx_bytes(layer.network(outputs, inputs), layer.shape(inputs), "fp16", OUTPUT), layer.shape(inputs)


def _pair(value) -> tuple[int, int]:
    values = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value), int(value))
    return (values[0], values[-1])
