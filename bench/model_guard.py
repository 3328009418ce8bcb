"""What the model safety check (edge_evolver/measure/model_guard.py) costs, next to onnx's own.

For each model: the guard (check_model_safety with ONNX Runtime's policy) against
onnx.load_from_string + onnx.checker.check_model on the same bytes; best of --repeat runs each.
Models: host_trainer's vgg-small (fp16 and fp32 exports, when torch is installed), a ~10 MB chain
of MatMul+Add built with onnx.helper, a 20 000-node graph (many small messages: the guard's
slowest legitimate shape), and a hostile 16 MB tensor of unpacked one-byte int64 entries (its
worst case per byte: every field goes through the Python loop; onnx is not timed on it).

    .venv/bin/python bench/model_guard.py [--repeat 5] [--json bench/out/model_guard.json]
"""

import argparse
import contextlib
import functools
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_evolver.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from edge_evolver.errors import EdgeError  # noqa: E402
from edge_evolver.measure.model_guard import check_model_safety  # noqa: E402


def _best(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _chain(layers: int = 40, width: int = 256) -> bytes:
    rng = np.random.default_rng(0)
    nodes, inits, last = [], [], "x"
    for i in range(layers):
        inits += [numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        last = f"a{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _many_nodes(count: int = 20000) -> bytes:
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"relu_{i}") for i in range(count)]
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(f"t{count}", TensorProto.FLOAT, [1, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _unpacked(megabytes: int = 16) -> bytes:
    """One INT64 initializer whose entries are each their own 2-byte field (key 0x38, value 1)."""
    entries = megabytes * 1024 * 1024 // 2
    tensor = TensorProto(name="w", data_type=TensorProto.INT64, dims=[entries]).SerializeToString()
    tensor += b"\x38\x01" * entries  # TensorProto.int64_data (7), unpacked
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [entries])]).SerializeToString()
    graph += b"\x2a" + _varint(len(tensor)) + tensor  # GraphProto.initializer (5)
    opset = helper.make_opsetid("", 13).SerializeToString()
    # ModelProto: ir_version (1) = 8, opset_import (8), graph (7)
    return b"\x08\x08" + b"\x42" + _varint(len(opset)) + opset + b"\x3a" + _varint(len(graph)) + graph


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _host_models() -> Dict[str, bytes]:
    try:
        import torch

        from host_trainer.method.export import to_onnx_bytes
        from host_trainer.models.registry import build_model
    except ImportError:
        return {}
    torch.manual_seed(0)
    model = build_model("vgg-small", 10, (3, 32, 32)).eval()
    return {f"vgg-small {fmt}": to_onnx_bytes(model, (3, 32, 32), fmt, "logits") for fmt in ("fp16", "fp32")}


def _guard(data: bytes) -> None:
    with contextlib.suppress(EdgeError):  # the hostile model is refused: only the time matters here
        check_model_safety(data, OnnxRuntimeBackend.model_policy)


def _onnx_check(data: bytes) -> None:
    onnx.checker.check_model(onnx.load_from_string(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    models = dict(_host_models(), **{"chain 40x(256x256) fp32": _chain(), "20000 Relu nodes": _many_nodes()})
    rows: List[Dict[str, object]] = []
    for name, data in models.items():
        guard = _best(functools.partial(_guard, data), args.repeat)
        checker = _best(functools.partial(_onnx_check, data), args.repeat)
        rows.append({"model": name, "mb": len(data) / 2 ** 20, "guard_ms": guard * 1e3, "onnx_ms": checker * 1e3,
                     "ratio": guard / checker})
    hostile = _unpacked()
    rows.append({"model": "hostile: 16 MB of unpacked int64 entries", "mb": len(hostile) / 2 ** 20,
                 "guard_ms": _best(lambda: _guard(hostile), 1) * 1e3, "onnx_ms": None, "ratio": None})
    print("| model | MB | guard ms | onnx load+checker ms | guard / onnx |\n|---|---:|---:|---:|---:|")
    for row in rows:
        onnx_ms = "-" if row["onnx_ms"] is None else f"{row['onnx_ms']:.2f}"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        print(f"| {row['model']} | {row['mb']:.2f} | {row['guard_ms']:.2f} | {onnx_ms} | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
