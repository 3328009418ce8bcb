"""The early stops: goals met (--hold) and a stalled lineage (--patience), from the records alone."""

from __future__ import annotations

from host_trainer.config import EvolveConfig
from host_trainer.fleet.measurers import PROBE_BENCH, FleetMeasurer
from host_trainer.loop.controller import Goals
from host_trainer.loop.stopping import goals_held, stalled
from host_trainer.record import GenerationRecord


def lineage(*synapses: int, **extra) -> list[GenerationRecord]:
    return [GenerationRecord(generation=g, accepted=True, synapses=s, **extra) for g, s in enumerate(synapses)]


def test_a_lineage_stalls_after_patience_generations_without_a_cut():
    assert not stalled(lineage(1000, 800, 800, 800), 3)  # two without a cut
    assert stalled(lineage(1000, 800, 800, 800, 800), 3)
    assert not stalled(lineage(1000, 800, 800, 800, 600), 3)  # the latest one cut again
    assert stalled(lineage(1000, 1000, 1000, 1000), 3)  # from generation 0 on
    assert not stalled(lineage(1000, 1000), 3)  # too short to tell


def test_fp16_underflow_is_not_a_cut_and_a_rejected_offspring_is_not_a_generation():
    records = lineage(1000, 800, 799, 800, 799)  # a synapse or two zeroed by restriction: no cut
    assert stalled(records, 3)
    records = lineage(1000, 800, 800, 800)
    records.insert(2, GenerationRecord(generation=2, accepted=False, synapses=400))  # rejected: not in the lineage
    assert stalled(records, 2) and not stalled(records, 3)


def test_patience_zero_never_stops_and_the_final_tune_does_not_count():
    assert not stalled(lineage(1000, *[1000] * 20), 0)
    records = lineage(1000, 800, 800, 800)
    records.append(GenerationRecord(generation=4, accepted=True, synapses=800, final_tune=True))
    assert not stalled(records, 3)


def test_goals_are_held_by_the_last_accepted_offspring_only():
    goals = Goals(fps=100.0)
    fast = lineage(1000, 900, 800, fps=150.0)
    assert goals_held(fast, goals, 2)
    assert not goals_held(fast, Goals(), 2)  # no goals: never met
    fast[-1].fps = 50.0
    assert not goals_held(fast, goals, 2)
    assert not goals_held(lineage(1000, fps=500.0), goals, 1)  # generation 0 alone does not count


def test_the_patience_option_is_checked():
    import pytest

    from host_trainer.errors import UserError

    assert EvolveConfig().patience == 3
    with pytest.raises(UserError, match="--patience"):
        EvolveConfig(patience=-1).validate()


def test_a_probe_job_asks_for_the_short_probe_timing_and_no_profile():
    """A probe is one small layer: timing it for the run's full second, and profiling it, cost make evolve 1.5
    of its minutes."""
    sent = {}

    class FakeFleet:
        def measure(self, name, model, inputs, reference, meta, **job):
            sent.update(job, meta=meta)
            return {"tx1": {"status": "ok", "latency_ms_p50": 0.25}}

    from onnx import TensorProto, helper

    from host_trainer.tasks.classify import ClassificationTask

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    assert FleetMeasurer(FakeFleet(), ClassificationTask(4)).probe("probe.x.c8", model, (4,)) == 0.25
    assert sent["bench"] == PROBE_BENCH and PROBE_BENCH["min_seconds"] < 1.0
    assert sent["options"] == {"profile": False} and sent["meta"] == {"probe": True}
