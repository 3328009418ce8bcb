"""bench/common.py's interleaved timing: every session kept open, bursts of every model in turn, the order reversed
on every other pass, one p50 per model per round (no timing assertions: the order and the bookkeeping)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import common  # noqa: E402


class FakeEngine:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls, self.closed = name, calls, False

    def infer(self, feeds):
        self.calls.append(self.name)


@pytest.fixture
def fakes(monkeypatch):
    calls: list[str] = []
    engines: dict[str, FakeEngine] = {}

    def open_sessions(models, threads):
        for name in models:
            engines[name] = FakeEngine(name, calls)
            engines[name].close = lambda e=engines[name]: setattr(e, "closed", True)
        return engines, dict.fromkeys(models, {})

    def burst(engine, feeds, burst_s, samples):  # one call that "takes" the whole burst: no clock, so no load
        engine.infer(feeds)                     # on the machine changes how many bursts a round holds
        samples.append(0.1)
        return burst_s

    monkeypatch.setattr(common, "_open_sessions", open_sessions)
    monkeypatch.setattr(common, "_burst", burst)
    return calls, engines


def test_rounds_give_one_p50_per_model_each_and_close_every_session(fakes):
    calls, engines = fakes
    out = common.interleaved_rounds({"a": b"1", "b": b"2", "c": b"3"}, rounds=3, min_seconds=0.01, burst_s=0.001)
    assert sorted(out) == ["a", "b", "c"]
    assert all(len(v) == 3 and all(x >= 0 for x in v) for v in out.values())
    assert all(e.closed for e in engines.values())


def test_bursts_alternate_and_reverse(fakes):
    calls, _ = fakes
    common.interleaved_rounds({"a": b"1", "b": b"2", "c": b"3"}, rounds=1, min_seconds=0.005, burst_s=0.001)
    # a b c, then c b a: the burst of c runs twice in a row, so runs of one name merge at the turns
    order = [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]
    assert order[:9] == ["a", "b", "c", "b", "a", "b", "c", "b", "a"]
    # every model gets its share: each appears in many bursts, spread over the round
    assert min(order.count(n) for n in "abc") >= 3


def test_real_onnx_runtime_sessions(tmp_path):
    """The real backend: two tiny models timed side by side; each has as many p50s as rounds."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def model(k: int) -> bytes:
        w = helper.make_tensor("w", TensorProto.FLOAT, [k, k], np.ones(k * k, np.float32))
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k])], [w])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()

    out = common.interleaved_rounds({"small": model(4), "big": model(64)}, rounds=2, min_seconds=0.02)
    assert {k: len(v) for k, v in out.items()} == {"small": 2, "big": 2}
    assert all(x > 0 for v in out.values() for x in v)
