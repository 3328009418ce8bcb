"""Rank 0's orders, typed (host_trainer/distributed/orders.py): what goes on the wire comes back as the same
order, and anything else a follower reads is one DistributedError, never a KeyError deep in training."""

from __future__ import annotations

import json

import pytest

from host_trainer import distributed
from host_trainer.distributed.orders import decode, encode


def _train(**extra):
    return distributed.Train("fixed", 3, [["w", [2, 2], "float32"]], {"epochs": 1.0, "seed": 7},
                             {"model": "mlp"}, **extra)


@pytest.mark.parametrize("order", [
    distributed.Setup({"model": "mlp", "seed": 0}),
    _train(),
    _train(teacher={"model": "mlp"}, teacher_spec=[["t", [1], "float32"]]),
    distributed.Stop(True),
    distributed.Stop(False),
])
def test_every_order_survives_the_wire(order):
    wire = json.loads(json.dumps(encode(order)))  # the store carries JSON text
    assert decode(wire) == order


def test_stop_and_abort_keep_their_wire_names():
    assert encode(distributed.Stop(True)) == {"op": "stop"} and encode(distributed.Stop(False)) == {"op": "abort"}
    assert encode(distributed.Setup({"a": 1})) == {"op": "setup", "config": {"a": 1}}


@pytest.mark.parametrize("message", [
    {"op": "reboot"},
    {},
    {"op": None},
    {"op": "train", "kind": "forever", "generation": 1, "spec": [], "train": {}, "architecture": {}},
    {"op": "train", "generation": 1},
    {"op": "setup"},
    {"op": "setup", "config": {}, "extra": 1},
])
def test_an_order_this_rank_does_not_know_is_one_distributed_error(message):
    with pytest.raises(distributed.DistributedError) as caught:
        decode(message)
    assert "\n" not in str(caught.value)


def test_on_one_process_sending_is_a_no_op_and_receiving_is_refused():
    assert distributed.world() == distributed.SINGLE
    distributed.send(distributed.Stop(True))  # nothing to send to
    with pytest.raises(RuntimeError):
        distributed.receive()
    with distributed.lead_training("fixed", None, {}, {}, 1, lambda m: {}):  # type: ignore[arg-type]
        pass  # one process: no order, no broadcast, no checksum
