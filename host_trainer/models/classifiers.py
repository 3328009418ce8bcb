"""The built-in classifiers. Each takes an NCHW float input of shape `input_shape` and returns
logits of width `num_classes`; the last Conv2d/Linear is the classifier, whose width the task fixes."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class MLP(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998), as used by Han et al. 2015."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = input_shape
        self.fc1 = nn.Linear(c * h * w, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5 with max pooling and ReLU, for 32x32 inputs."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(16 * fh * fw, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class VGGSmall(nn.Module):
    """conv 32-32-pool-64-64-pool-128-pool, fc 2048-256-classes, BatchNorm (the baseline of docs/findings.md)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            *_conv_bn(c, 32), *_conv_bn(32, 32), nn.MaxPool2d(2),
            *_conv_bn(32, 64), *_conv_bn(64, 64), nn.MaxPool2d(2),
            *_conv_bn(64, 128), nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(128 * (h // 8) * (w // 8), 256)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity or 1x1 projection shortcut, joined by an addition."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A CIFAR-style ResNet (16-32-64, two blocks a stage): additions couple channels across blocks."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]):
        super().__init__()
        c = input_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(c, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(True))
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.layer3 = nn.Sequential(BasicBlock(32, 64, 2), BasicBlock(64, 64, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))
