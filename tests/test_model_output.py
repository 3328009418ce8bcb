"""A model whose output its task cannot read is one line before anything is written: a YOLO-style head (a tuple
of scales, or (N, 4 + K, anchors)), the wrong class count, a forward that fails on the run's input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from host_trainer.cli import app
from host_trainer.errors import UserError
from host_trainer.tasks.registry import make_task

DATA = SimpleNamespace(num_classes=5, input_shape=(3, 32, 32))


class Head(nn.Module):
    """A detector at stride 4 whose output is whatever `shape_of` makes of its feature map."""

    output_stride = 4

    def __init__(self, channels: int = 9, form: str = "map") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=4, padding=1)
        self.form = form

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        y = self.conv(x)
        if self.form == "tuple":  # several scales, as a YOLO neck gives them
            return y, y, y
        if self.form == "flat":  # (N, 4 + K, anchors): a decoded YOLOv8 head
            return y.flatten(2)
        return y


def test_the_contract_s_own_layout_passes_and_the_mode_is_kept():
    model = Head().train()
    task = make_task("detect", DATA, model)
    assert task.expected_output() == (9, 8, 8) and model.training


@pytest.mark.parametrize("form, found", [("tuple", "a tuple of 3 outputs"), ("flat", "shape (1, 9, 64)")])
def test_a_yolo_style_head_is_one_line_naming_what_fits(form, found):
    with pytest.raises(UserError) as caught:
        make_task("detect", DATA, Head(form=form), model_name="yolo.py:build")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"yolo.py:build outputs {found}")
    assert "(N, 9, 8, 8)" in message and "docs/detection.md" in message


def test_a_detector_with_another_class_count_is_named():
    with pytest.raises(UserError, match=r"outputs shape \(1, 7, 8, 8\).*\(N, 9, 8, 8\) for K = 5 classes"):
        make_task("detect", DATA, Head(channels=7))


def test_a_classifier_with_the_wrong_class_count_or_a_failing_forward():
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 1000))
    with pytest.raises(UserError, match=r"outputs shape \(1, 1000\), but a classifier .* \(N, 5\)"):
        make_task("classify", DATA, wrong, model_name="resnet.py:build")
    small = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))  # made for 8x8 inputs
    with pytest.raises(UserError, match=r"fails on a \(1, 3, 32, 32\) input: RuntimeError: mat1 and mat2"):
        make_task("classify", DATA, small, model_name="small.py:build")


def test_the_command_refuses_it_in_one_line_and_writes_nothing(tmp_path: Path):
    (tmp_path / "yolo.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Yolo(nn.Module):\n    output_stride = 4\n\n"
        "    def __init__(self, k):\n        super().__init__()\n        self.conv = nn.Conv2d(3, 4 + k, 3, 4, 1)\n\n"
        "    def forward(self, x):\n        return self.conv(x).flatten(2)\n\n"
        "def build(num_classes, input_shape):\n    return Yolo(num_classes)\n")
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["evolve", "--task", "detect", "--model", f"{tmp_path / 'yolo.py'}:build",
                                      "--no-mqtt", "--run-dir", str(runs)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "outputs shape (1, " in lines[0] and "docs/detection.md" in lines[0]
    assert not runs.exists() or not any(runs.iterdir())
