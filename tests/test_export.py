"""fp16 ONNX export: one self-contained file, fp16 weights, fp32 inputs and outputs, parity with torch."""

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from onnx import TensorProto

from host_trainer.data.classify import load_dataset
from host_trainer.method.export import ATOL, RTOL, to_onnx_bytes
from host_trainer.method.restriction import restrict
from host_trainer.models.registry import BUILTIN_MODELS, build_model
from host_trainer.tasks.classify import check_parity


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, image_size=32)


def _model(ref, data):
    torch.manual_seed(0)
    model = build_model(ref, data.num_classes, data.input_shape)
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(data.train.x[:64]))  # BatchNorm statistics from real images
    return restrict(model.eval(), "fp16")


@pytest.mark.parametrize("ref", list(BUILTIN_MODELS))
def test_fp16_onnx_matches_torch_on_real_inputs(ref, digits):
    model = _model(ref, digits)
    data = to_onnx_bytes(model, digits.input_shape, "fp16", "logits")
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    weights = [t for t in proto.graph.initializer if len(t.dims) > 1]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)  # one file
    io = [*proto.graph.input, *proto.graph.output]
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in io)  # devices feed float32
    parity = check_parity(data, model, digits.test.x[:128])
    assert parity.ok, parity
    assert parity.max_abs_err < ATOL and parity.agreement >= 0.99


def test_fp16_initializers_are_the_restricted_values_exactly(digits):
    """No BatchNorm to fold in the MLP, so the file must hold exactly the restricted weights."""
    model = _model("mlp", digits)
    with torch.no_grad():
        model.fc1.weight[0, :3] = torch.tensor([2.0 ** -24, -(2.0 ** -24), 3 * 2.0 ** -20])  # fp16 subnormals
    proto = onnx.load_from_string(to_onnx_bytes(model, digits.input_shape, "fp16", "logits"))
    stored = {tuple(t.dims): onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    w = model.fc1.weight.detach().numpy()
    got = stored[w.T.shape] if w.T.shape in stored else stored[w.shape].T
    np.testing.assert_array_equal(got.T.astype(np.float32), w)


def test_fp32_export_is_exact_and_twice_the_size(digits):
    model = _model("vgg-small", digits)
    fp32 = to_onnx_bytes(model, digits.input_shape, "fp32", "logits")
    fp16 = to_onnx_bytes(model, digits.input_shape, "fp16", "logits")
    assert 1.8 < len(fp32) / len(fp16) < 2.1
    assert check_parity(fp32, model, digits.test.x[:64]).max_abs_err < 1e-4


def test_parity_detects_a_different_model(digits):
    model = _model("lenet5", digits)
    data = to_onnx_bytes(model, digits.input_shape, "fp16", "logits")
    with torch.no_grad():
        model.fc3.bias.add_(5.0 * torch.arange(10, dtype=torch.float32))
    parity = check_parity(data, model, digits.test.x[:64])
    assert not parity.ok and parity.max_abs_err > ATOL + RTOL
    assert np.isfinite(parity.max_abs_err)
