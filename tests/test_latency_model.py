"""What the host learns about a board: alignment from probes and profiles, storage, group pricing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from host_trainer.errors import UserError
from host_trainer.latency.attribution import attribute, module_of
from host_trainer.latency.model import INPUT, LatencyModel, Observation, Probe, Shape, load, step
from host_trainer.latency.probes import PROBE_COUNTS, probe_layer, run_probes
from host_trainer.latency.store import LatencyBook, file_name
from host_trainer.models.registry import build_model

SHAPE = (1, 32, 32)


def _probe(a: int, noise: float = 0.0, seed: int = 0) -> Probe:
    rng = np.random.default_rng(seed)
    ms = [0.05 + 0.004 * step(c, a) * (1 + noise * rng.standard_normal()) for c in PROBE_COUNTS]
    return Probe(layer="conv", inputs=32, counts=list(PROBE_COUNTS), ms=ms)


def _sweeps(a_out: int, a_in: int, b: float, k: float = 1e-4, inputs: int = 32, outputs: int = 64,
            noise: float = 0.0, seed: int = 0) -> list[Probe]:
    """Both sweeps of one layer on a board whose time is exactly b + k·u_in(i)·u_out(o) (times noise)."""
    rng = np.random.default_rng(seed)

    def ms(i: int, o: int) -> float:
        return (b + k * step(i, a_in) * step(o, a_out)) * (1 + noise * rng.standard_normal())
    ins = [c for c in PROBE_COUNTS if c <= inputs]
    return [Probe("conv", inputs, list(PROBE_COUNTS), [ms(inputs, c) for c in PROBE_COUNTS], outputs=outputs),
            Probe("conv", inputs, ins, [ms(c, outputs) for c in ins], axis=INPUT, outputs=outputs)]


def _below(times: dict[int, float], a: int = 16) -> Probe:
    """An output sweep that steps every a channels from 16 up, with `times` measured below 16."""
    ms = [times.get(c, 1.0) if c <= 16 else 1.0 + 0.5 * (step(c, a) // a - 1) for c in PROBE_COUNTS]
    return Probe("conv", 32, list(PROBE_COUNTS), ms)


@pytest.mark.parametrize("a", [1, 2, 4, 8, 16, 32])
def test_probes_reveal_the_boards_alignment(a):
    latency = LatencyModel("board")
    latency.add_probe(_probe(a))
    assert (latency.alignment, latency.alignment_source) == (a, "probes")
    noisy = LatencyModel("board")
    noisy.add_probe(_probe(a, noise=0.02))
    # at 2% scatter a board of a = 1 cannot be told from a = 2 (steps of one channel in 33): the larger is kept
    assert noisy.alignment == (2 if a == 1 else a)


# features.10 of vgg-small (64 → c channels at 8×8) on this 2-core machine while two trainings shared it:
# (count, µs) of one pass of each sweep, as the benchmark's seed-0 device-aware run recorded them.
BUSY_OUT = [(1, 80), (2, 122), (4, 79), (6, 115), (8, 97), (9, 97), (12, 93), (15, 105), (16, 90), (17, 147),
            (20, 126), (24, 189), (28, 298), (31, 133), (32, 139), (33, 195), (40, 302), (47, 240), (48, 190),
            (49, 224), (56, 287), (63, 308), (64, 280)]
BUSY_IN = [(1, 34), (2, 41), (4, 56), (6, 51), (8, 56), (9, 66), (12, 106), (15, 129), (16, 95), (17, 155),
           (20, 121), (24, 110), (28, 131), (31, 209), (32, 166), (33, 269), (40, 168), (47, 369), (48, 300),
           (49, 253), (56, 213), (63, 376), (64, 268)]


def test_a_busy_boards_probes_keep_the_steps_instead_of_allowing_every_width():
    def probe(points, axis):
        return Probe("features.10", 64, [c for c, _ in points], [us / 1000 for _, us in points], axis=axis,
                     outputs=64)
    latency = LatencyModel("local", probes=[probe(BUSY_OUT, "output"), probe(BUSY_IN, INPUT)])
    latency.refit()
    errors = {int(a): e for a, e in latency.fit_error.items()}
    assert max(errors[a] for a in (1, 2, 4, 8, 16)) < 1.05 * min(errors.values())  # nothing stands out
    assert latency.alignment == 16 and latency.scatter() > 0.15
    assert latency.ladder(64) == (64, 48, 32, 16)  # 1 µs-level luck below 16 is not a saving
    assert latency.ladder(111) == (111, 96, 80, 64, 48, 32, 16)


def test_with_nothing_measured_the_alignment_is_one_and_says_so():
    latency = LatencyModel("board")
    assert (latency.alignment, latency.alignment_source) == (1, "none")


def test_profiles_of_one_layer_at_several_widths_fit_the_alignment():
    latency = LatencyModel("board")
    for g, out in enumerate((64, 48, 40, 33, 20)):
        ms = 0.001 * step(32, 16) * step(out, 16)
        latency.observe(Observation(f"sha{g}", g, {"conv": Shape(32, out, ms)}))
    assert (latency.alignment, latency.alignment_source) == (16, "profiles")
    assert latency.predict(latency.observations[0].layers["conv"], 32, 17) == pytest.approx(0.001 * 32 * 32)


def test_the_model_round_trips_through_its_file(tmp_path):
    latency = LatencyModel("board")
    latency.add_probe(_probe(8))
    latency.observe(Observation("abc", 0, {"fc": Shape(128, 10, 0.5, linear=True)}, other_ms=0.1))
    latency.save(tmp_path / "latency" / "board.json")
    again = load(tmp_path / "latency" / "board.json")
    assert again.to_dict() == latency.to_dict()


@pytest.mark.parametrize("text", ["", "{", "[]", '{"device": 1, "probes": [{"x": 1}]}', '{"nodevice": 1}'])
def test_a_damaged_model_file_is_a_one_line_error(tmp_path, text):
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="not a latency model"):
        load(path)
    with pytest.raises(UserError, match="--latency-model"):
        LatencyBook(tmp_path / "run", str(path))


def test_the_book_keeps_one_file_per_device_and_seeds_new_ones(tmp_path):
    seed = LatencyModel("tx1-old")
    seed.add_probe(_probe(16))
    seed.save(tmp_path / "seed.json")
    book = LatencyBook(tmp_path / "run", str(tmp_path / "seed.json"))
    model = build_model("vgg-small", 10, SHAPE)
    book.observe("../tx1/01", model, [{"name": "c", "ms": 1.0, "nodes": ["/features/features.3/Conv"]}], "s1", 0)
    stored = tmp_path / "run" / "latency" / file_name("../tx1/01")
    assert stored.parent == tmp_path / "run" / "latency" and stored.exists()
    again = LatencyBook(tmp_path / "run").for_device("../tx1/01")
    assert again.alignment == 16 and again.observation("s1").layers["features.3"].ms == 1.0


def test_node_names_map_to_modules():
    assert module_of("/features/features.3/Conv") == "features.3"
    assert module_of("/layer2/layer2.0/shortcut/shortcut.0/Conv") == "layer2.0.shortcut.0"
    assert module_of("/fc1/Gemm") == "fc1"
    assert module_of("/features/features.4/Relu") is None
    assert module_of("Conv") is None


def test_attribution_splits_fused_entries_and_keeps_the_rest_apart():
    profile = [{"name": "a", "ms": 2.0, "nodes": ["/features/features.0/Conv", "/features/features.2/Relu"]},
               {"name": "b", "ms": 1.0, "nodes": ["/features/features.3/Conv", "/features/features.7/Conv"]},
               {"name": "pool", "ms": 0.5, "nodes": ["/features/features.6/MaxPool"]},
               {"name": "ghost", "ms": 0.25, "nodes": ["/nowhere/Conv"]},
               {"name": "bad", "ms": "x"}, "not an entry"]
    timed = attribute(profile, ["features.0", "features.3", "features.7"])
    assert timed.layer_ms == {"features.0": 2.0, "features.3": 0.5, "features.7": 0.5}
    assert timed.other_ms == 0.75 and timed.unmapped == ["ghost"]




def test_the_fixed_cost_is_the_intercept_of_the_probe_fit():
    latency = LatencyModel("board")
    latency.add_probes(_sweeps(16, 8, b=0.05))
    assert (latency.fixed_ms_source, latency.fixed_ms) == ("probes", pytest.approx(0.05, rel=1e-6))
    noisy = LatencyModel("board")
    noisy.add_probes(_sweeps(16, 8, b=0.05, noise=0.01, seed=3))
    assert noisy.fixed_ms == pytest.approx(0.05, abs=0.01)


def test_the_fixed_cost_lies_between_zero_and_the_fastest_probe():
    latency = LatencyModel("board")
    latency.add_probes(_sweeps(1, 1, b=-0.01, k=1e-3))  # a board faster than linear for narrow layers
    assert latency.fixed_ms == 0.0
    flat = Probe("conv", 32, [1, 2, 4, 8], [1.0, 1.0, 1.0, 1.2])
    latency = LatencyModel("board", probes=[flat])
    latency.refit()
    assert latency.fixed_ms <= 1.0


def test_without_probes_there_is_no_fixed_cost_and_the_model_says_so():
    latency = LatencyModel("board")
    latency.observe(Observation("a", 0, {"conv": Shape(32, 32, 1.0)}))
    assert (latency.fixed_ms, latency.fixed_ms_source) == (0.0, "none")
    assert latency.predict(Shape(32, 32, 1.0), 32, 16) == pytest.approx(0.5)


def test_a_narrow_layer_saves_less_than_its_share_of_channels():
    latency = LatencyModel("board")
    latency.add_probes(_sweeps(1, 1, b=0.05))
    b = latency.fixed_ms
    layer = Shape(32, 32, 0.1)
    halved = latency.predict(layer, 32, 16)
    assert halved == pytest.approx(b + (0.1 - b) / 2) and halved > 0.1 / 2
    assert latency.predict(layer, 32, 32) == pytest.approx(0.1)
    fast = Shape(8, 8, 0.01)  # faster than b: all of it fixed, but still its measured time at its own shape
    assert latency.predict(fast, 8, 8) == pytest.approx(0.01) and latency.predict(fast, 8, 4) == 0.01


def test_input_and_output_alignments_are_fitted_from_their_own_sweeps():
    latency = LatencyModel("board")
    latency.add_probes(_sweeps(16, 4, b=0.02, noise=0.01))
    assert (latency.alignment, latency.input_alignment) == (16, 4)
    assert latency.input_alignment_source == "probes"
    assert latency.cost(17, 17) == step(17, 4) * step(17, 16)
    assert latency.cost(17, 17, depthwise=True) == step(17, 16)
    only_outputs = LatencyModel("board")
    only_outputs.add_probe(_probe(8))
    assert (only_outputs.input_alignment, only_outputs.input_alignment_source) == (8, "output alignment")


def test_the_ladder_is_the_multiples_of_the_alignment_without_probes():
    latency = LatencyModel("board")
    for g, out in enumerate((64, 48, 40, 33, 20)):
        latency.observe(Observation(f"sha{g}", g, {"conv": Shape(32, out, 1e-3 * 32 * step(out, 16))}))
    assert latency.alignment == 16
    assert latency.ladder(40) == (40, 32, 16) and latency.ladder(16) == (16,)
    assert latency.ladder(5) == (5, 4, 3, 2, 1)


def test_below_the_alignment_the_ladder_has_only_the_counts_the_probes_measured_a_saving_at():
    flat = LatencyModel("board")
    flat.add_probe(_below({c: 1.0 + 0.02 * (c % 3) for c in PROBE_COUNTS if c <= 16}))
    assert flat.alignment == 16
    assert flat.ladder(40) == (40, 32, 16) and flat.ladder(12) == (12,)
    drop = LatencyModel("board")
    drop.add_probe(_below({8: 0.85, 6: 0.85, 4: 0.83, 2: 0.7, 1: 0.7}))  # 4: within the margin of 8
    assert drop.alignment == 16
    assert drop.ladder(40) == (40, 32, 16, 8, 2) and drop.ladder(12) == (12, 8, 2)


def test_a_count_below_the_alignment_is_priced_by_the_probes_shape_there():
    latency = LatencyModel("board")
    latency.add_probe(_below({8: 0.8, 6: 0.8, 4: 0.8, 2: 0.8, 1: 0.8}))
    b = latency.fixed_ms
    assert latency.alignment == 16 and 0 < b < 0.8
    assert latency.width(8) == pytest.approx(16 * (0.8 - b) / (1.0 - b))
    assert latency.width(12) == 16 and latency.width(20) == 32  # unmeasured or above a: the full step
    layer = Shape(32, 16, 1.0)
    assert latency.predict(layer, 32, 8) == pytest.approx(b + (1 - b) * latency.width(8) / 16)
    assert latency.predict(layer, 32, 8) == pytest.approx(0.8)  # the probed layer itself: what was measured


def test_an_old_file_without_fixed_cost_or_input_sweeps_still_loads(tmp_path):
    old = {"schema": 1, "device": "tx1", "alignment": 16, "alignment_source": "probes", "fit_error": {},
           "probes": [{"layer": "conv", "inputs": 32, "counts": list(PROBE_COUNTS), "ms": _probe(16).ms}],
           "observations": [{"model_sha256": "s", "generation": 0, "layers": {"c": {"inputs": 3, "outputs": 8,
                                                                                   "ms": 0.2}}}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    latency = load(tmp_path / "old.json")
    assert (latency.alignment, latency.input_alignment) == (16, 16)
    assert latency.fixed_ms == pytest.approx(0.05) and latency.fixed_ms_source == "probes"
    assert latency.probes[0].axis == "output" and latency.observation("s").layers["c"].ms == 0.2
    bare = load_text(tmp_path, {"device": "tx1"})
    assert (bare.fixed_ms, bare.fixed_ms_source, bare.alignment) == (0.0, "none", 1)


def load_text(tmp_path, data: dict) -> LatencyModel:
    (tmp_path / "m.json").write_text(json.dumps(data))
    return load(tmp_path / "m.json")


def test_the_model_with_both_sweeps_round_trips_through_its_file(tmp_path):
    latency = LatencyModel("board")
    latency.add_probes(_sweeps(16, 4, b=0.02, noise=0.01))
    latency.save(tmp_path / "board.json")
    assert load(tmp_path / "board.json").to_dict() == latency.to_dict()


def test_probes_sweep_outputs_then_inputs_of_the_slowest_convolution():
    model = build_model("vgg-small", 10, SHAPE)
    layer = probe_layer(model, torch.zeros(1, *SHAPE), {"features.3": 2.0, "features.0": 1.0})
    assert layer is not None and (layer.name, layer.inputs, layer.spatial) == ("features.3", 32, (32, 32))
    seen = []
    probes = run_probes(layer, lambda name, onnx, shape: seen.append((name, len(onnx), shape)) or 0.1,
                        counts=(8, 16, 32, 40), rounds=1)
    assert [s[0] for s in seen] == [f"probe.features.3.{x}" for x in ("c8", "c16", "c32", "c40", "i8", "i16", "i32")]
    assert [s[2][0] for s in seen] == [32, 32, 32, 32, 8, 16, 32]
    out, inp = probes
    assert (out.axis, out.counts, out.outputs) == ("output", [8, 16, 32, 40], layer.outputs)
    assert (inp.axis, inp.counts, inp.channels(8)) == ("input", [8, 16, 32], (8, layer.outputs))
    json.dumps(LatencyModel("b", probes=probes).to_dict())
    assert len(run_probes(layer, lambda *_: 0.1, counts=(8, 16, 48, 64))) == 1  # 2 input counts: no sweep


def test_each_sweep_runs_twice_the_second_time_backwards_and_keeps_each_counts_fastest_time():
    model = build_model("vgg-small", 10, SHAPE)
    layer = probe_layer(model, torch.zeros(1, *SHAPE), {"features.3": 2.0})
    names: list[str] = []
    busy = {"probe.features.3.c16": 0.9, "probe.features.3.c8.r1": 0.7}  # a load spike in each pass

    def runner(name, _onnx, _shape):
        names.append(name)
        return busy.get(name, 0.2 if ".r1" in name else 0.3)
    out, inp = run_probes(layer, runner, counts=(8, 16, 32))
    assert names[:6] == [f"probe.features.3.{x}" for x in ("c8", "c16", "c32", "c32.r1", "c16.r1", "c8.r1")]
    assert out.ms == [0.3, 0.2, 0.2] and inp.ms == [0.2, 0.2, 0.2] and len(names) == 12
