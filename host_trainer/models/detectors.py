"""`det-small`: a compact single-stage, anchor-free detector (CenterNet-style centre heat-map).

Layout of its one output, `detections` (N, K + 4, S/4, S/4), is the contract of docs/detection.md:
K class heat-map logits, then the centre offset (dx, dy) in cells, then log(w/4), log(h/4).
`edge_evolver.measure.detection.decode` turns it into boxes; the host's metrics and the device-side output
check both use that one function.

Every layer is a plain Conv2d + BatchNorm + ReLU, an upsampling or a concatenation, which the
dependency graph of compaction handles: the backbone, the neck and the head's hidden layer lose
clusters; the final 1×1 convolution is fixed (`evolve_fixed_layers`), since its width is the task's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

STRIDE = 4
HEAT_PRIOR = 0.1  # initial foreground probability of every heat-map cell: bias = -log((1 - p) / p)


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DetSmall(nn.Module):
    """Backbone of strides 2-4-8-16 (16-32-64-128 filters), an FPN-like neck up to stride 4, one head.

    Input C×S×S with S a multiple of 16; output (N, K + 4, S/4, S/4).
    """

    output_stride = STRIDE

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = input_shape
        if h % 16 or w % 16:
            raise ValueError(f"det-small needs an input size that is a multiple of 16, got {h}x{w}")
        self.num_classes = num_classes
        self.stem = _cbr(c, 16, 2)                                     # S/2
        self.stage2 = nn.Sequential(_cbr(16, 32, 2), _cbr(32, 32))     # S/4
        self.stage3 = nn.Sequential(_cbr(32, 64, 2), _cbr(64, 64))     # S/8
        self.stage4 = nn.Sequential(_cbr(64, 128, 2), _cbr(128, 128))  # S/16
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck3 = _cbr(128 + 64, 64)                                # S/8
        self.neck2 = _cbr(64 + 32, 48)                                 # S/4
        self.head = _cbr(48, 48)
        self.out = nn.Conv2d(48, num_classes + 4, 1)
        self.evolve_fixed_layers = [self.out]
        with torch.no_grad():
            prior = torch.zeros(num_classes + 4)
            prior[:num_classes] = -math.log((1 - HEAT_PRIOR) / HEAT_PRIOR)
            self.out.bias = nn.Parameter(prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s2 = self.stage2(self.stem(x))
        s3 = self.stage3(s2)
        s4 = self.stage4(s3)
        n3 = self.neck3(torch.cat([self.up(s4), s3], 1))
        n2 = self.neck2(torch.cat([self.up(n3), s2], 1))
        return self.out(self.head(n2))
