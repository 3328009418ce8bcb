"""Export: one self-contained ONNX file with fp16 weights, checked and compared with torch.

- The classic exporter (`dynamo=False`) writes a single file: a model sent over MQTT must be
  self-contained, and the new exporter would split weights into `.onnx.data` (docs/findings.md).
- onnxconverter-common turns the graph to fp16 with fp32 inputs and outputs (`keep_io_types`),
  so a device feeds float32 and TensorRT runs the fp16 graph natively.
- Parity: ONNX Runtime's outputs on real held-out inputs are compared with the torch model's.
  Tolerance (fp16 arithmetic inside the graph): |onnx - torch| <= ATOL + RTOL * |torch| for
  every output value; each task adds its own check on top (top-1 for a classifier, decoded boxes
  for a detector: host_trainer/tasks/).
- Both run on the CPU: a model that lives on a GPU is exported and compared from a copy on the CPU
  (`on_cpu`), so the file and its parity figures do not depend on where the model was trained.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnxconverter_common import float16
from torch import nn

from host_trainer.torch_device import on_cpu

OPSET = 17
ATOL, RTOL = 0.05, 0.02
INPUT_NAME = "input"
FP16_TINY, FP16_MAX = 2.0 ** -24, 65504.0  # smallest subnormal and largest finite fp16


@dataclass(frozen=True)
class Parity:
    """How closely the exported ONNX computes what torch computes, on real held-out inputs."""

    max_abs_err: float
    agreement: float  # the task's own figure: top-1 agreement, or box agreement (see `metric`)
    samples: int
    ok: bool
    metric: str = "top1"  # "top1" or "box"

    def to_dict(self) -> dict[str, object]:
        return {"onnx_max_abs_err": self.max_abs_err, f"onnx_{self.metric}_agreement": self.agreement,
                "onnx_parity_samples": self.samples, "onnx_parity_ok": self.ok}


def to_onnx_bytes(model: nn.Module, input_shape: tuple[int, ...], number_format: str, output_name: str) -> bytes:
    """Export with a dynamic batch dimension; fp16/bf16 runs store fp16 weights and compute."""
    model.eval()
    source = on_cpu(model)
    buf = io.BytesIO()
    example = torch.zeros((1, *input_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the classic exporter's deprecation notice
        # torch accepts a file object here, though its annotation says path only
        torch.onnx.export(source, (example,), buf, dynamo=False, opset_version=OPSET,  # type: ignore[arg-type]
                          input_names=[INPUT_NAME], output_names=[output_name],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    if number_format != "fp32":
        # bf16 has no portable ONNX kernels on CPU or TensorRT 8; its weights are exported as fp16
        # (a bf16-restricted value is usually but not always exact in fp16, see docs/method.md).
        # The converter clamps magnitudes to [1e-7, 1e4] by default, which would move restricted values
        # (fp16 subnormals, large BatchNorm variances); fp16's own range keeps them exactly.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns for every value at the range limits, even unchanged ones
            proto = float16.convert_float_to_float16(proto, keep_io_types=True, min_positive_val=FP16_TINY,
                                                     max_finite_val=FP16_MAX)
    proto.producer_name = "edge-evolver"
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def onnx_and_torch(onnx_bytes: bytes, model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first output of ONNX Runtime (1 thread, CPU) and of torch (on the CPU) on the same inputs `x`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x.astype(np.float32)})[0]
    model.eval()
    with torch.no_grad():
        ref = on_cpu(model)(torch.from_numpy(x.astype(np.float32))).detach().cpu().numpy()
    return got, ref


def within_tolerance(got: np.ndarray, ref: np.ndarray) -> tuple[float, bool]:
    """(max |got - ref|, every element within ATOL + RTOL·|ref|)."""
    err = np.abs(got.astype(np.float64) - ref)
    return float(err.max()) if err.size else 0.0, bool(np.all(err <= ATOL + RTOL * np.abs(ref)))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
