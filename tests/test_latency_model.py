"""What the host learns about a board: alignment from probes and profiles, storage, group pricing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from host_trainer.errors import UserError
from host_trainer.latency.attribution import attribute, group_ms, module_of
from host_trainer.latency.groups import consumer_inputs, group_costs, observe
from host_trainer.latency.model import LatencyModel, Observation, Probe, Shape, load, step
from host_trainer.latency.probes import PROBE_COUNTS, probe_layer, run_probes
from host_trainer.latency.store import LatencyBook, file_name
from host_trainer.method.compaction import cluster_groups
from host_trainer.models.registry import build_model, fixed_layers

SHAPE = (1, 32, 32)


def _probe(a: int, noise: float = 0.0, seed: int = 0) -> Probe:
    rng = np.random.default_rng(seed)
    ms = [0.05 + 0.004 * step(c, a) * (1 + noise * rng.standard_normal()) for c in PROBE_COUNTS]
    return Probe(layer="conv", inputs=32, counts=list(PROBE_COUNTS), ms=ms)


@pytest.mark.parametrize("a", [1, 8, 16, 32])
def test_probes_reveal_the_boards_alignment(a):
    latency = LatencyModel("board")
    latency.add_probe(_probe(a, noise=0.02))
    assert (latency.alignment, latency.alignment_source) == (a, "probes")


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


def test_groups_are_priced_by_their_members_and_consumers():
    model = build_model("vgg-small", 10, SHAPE)
    groups = cluster_groups(model, torch.zeros(1, *SHAPE), fixed_layers(model))
    profile = [{"name": n, "ms": 1.0, "nodes": [f"/features/features.{i}/Conv"]} for n, i in (("a", 0), ("b", 3))]
    obs = observe(model, profile, "sha", 0)
    assert group_ms(attribute(profile, obs.layers), groups)["features.0"] == 1.0
    latency = LatencyModel("board")
    strengths = {g.root: np.ones(g.size) for g in groups}
    costs = {c.root: c for c in group_costs(latency, obs, groups, strengths)}
    first = costs["features.0"]  # features.0's clusters: its outputs (1 ms) and features.3's inputs (1 ms)
    assert first.ms(32) == pytest.approx(2.0) and first.ms(16) == pytest.approx(1.0)


def test_a_linear_after_flatten_reads_each_channel_at_every_position():
    assert consumer_inputs(Shape(128 * 4, 256, 1.0, linear=True), 128, 64) == 64 * 4
    assert consumer_inputs(Shape(96, 48, 1.0), 64, 32) == 64  # a concatenation of 64 and 32 channels


def test_probes_run_the_slowest_convolution_at_every_count():
    model = build_model("vgg-small", 10, SHAPE)
    layer = probe_layer(model, torch.zeros(1, *SHAPE), {"features.3": 2.0, "features.0": 1.0})
    assert layer is not None and (layer.name, layer.inputs, layer.spatial) == ("features.3", 32, (32, 32))
    seen = []
    probe = run_probes(layer, lambda name, onnx, shape: seen.append((name, len(onnx), shape)) or 0.1,
                       counts=(8, 16))
    assert [s[0] for s in seen] == ["probe.features.3.c8", "probe.features.3.c16"] and probe.ms == [0.1, 0.1]
    assert all(s[2] == (32, 32, 32) for s in seen)
    json.dumps(LatencyModel("b", probes=[probe]).to_dict())
