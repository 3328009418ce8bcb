"""First-order Taylor importance (host_trainer/method/importance.py) against the loss it predicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from host_trainer.method.compaction import cluster_groups
from host_trainer.method.importance import group_slices, taylor_importance


class Tiny(nn.Module):
    """conv-bn-relu → conv-bn-relu (a residual addition) → flatten → linear: every kind of slice."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn_a(self.a(x)))
        h = F.relu(self.bn_b(self.b(h)) + h)
        return self.fc(h.flatten(1))


def _model() -> Tiny:
    torch.manual_seed(0)
    model = Tiny().double()
    with torch.no_grad():
        for bn in (model.bn_a, model.bn_b):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
            bn.running_mean.uniform_(-0.1, 0.1)
    return model.eval()


def _batch() -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 2, 4, 4, generator=gen, dtype=torch.float64), [torch.randint(0, 3, (16,), generator=gen)]


def _loss(out: torch.Tensor, labels: list[torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(out, labels[0])


def test_the_score_is_the_first_order_change_in_loss_of_removing_the_cluster():
    model, (x, labels) = _model(), _batch()
    example = torch.zeros((1, 2, 4, 4), dtype=torch.float64)
    groups = cluster_groups(model, example, [model.fc])
    (group,) = groups  # the residual addition couples a and b into one group
    assert set(group.members) == {"a", "b"}
    scores = taylor_importance(model, groups, example, [(x, labels)], _loss)[group.root]
    slices = group_slices(model, groups, example)[group.root]
    touched = {id(s.param) for s in slices}
    for name in ("a.weight", "a.bias", "bn_a.weight", "bn_a.bias", "b.weight", "bn_b.bias", "fc.weight"):
        assert id(dict(model.named_parameters())[name]) in touched, name
    for c in range(group.size):
        # d/dε L(θ − ε·θ_c) at ε = 0, by central differences: θ_c = every parameter that dies with cluster c
        def loss_at(eps: float, c: int = c) -> float:
            trial = _model()
            params = dict(trial.named_parameters())
            with torch.no_grad():
                for s in slices:
                    name = next(n for n, p in model.named_parameters() if p is s.param)
                    view = params[name].index_select(s.dim, s.idxs[s.roots == c])
                    params[name].index_copy_(s.dim, s.idxs[s.roots == c], view * (1 - eps))
                return float(_loss(trial(x), labels))
        h = 1e-5
        derivative = (loss_at(h) - loss_at(-h)) / (2 * h)
        assert scores[c] == pytest.approx(abs(derivative), rel=1e-5, abs=1e-9)


def test_scores_are_one_scale_across_groups_and_average_over_batches():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    example = torch.zeros((1, 6), dtype=torch.float64)
    groups = cluster_groups(model, example, [model[4]])
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 6, generator=gen, dtype=torch.float64), [torch.randint(0, 3, (8,), generator=gen)])
               for _ in range(3)]
    both = taylor_importance(model, groups, example, batches, _loss)
    one_by_one = [taylor_importance(model, groups, example, [b], _loss) for b in batches]
    for root, values in both.items():
        assert values.shape == (dict(model.named_modules())[root].out_features,)
        np.testing.assert_allclose(values, np.mean([o[root] for o in one_by_one], axis=0), rtol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind


def test_zeroing_a_cluster_scores_it_zero():
    model, (x, labels) = _model(), _batch()
    example = torch.zeros((1, 2, 4, 4), dtype=torch.float64)
    groups = cluster_groups(model, example, [model.fc])
    for s in group_slices(model, groups, example)[groups[0].root]:
        with torch.no_grad():
            s.param.index_fill_(s.dim, s.idxs[s.roots == 2], 0.0)
    scores = taylor_importance(model, groups, example, [(x, labels)], _loss)[groups[0].root]
    assert scores[2] == 0.0 and scores.min() == 0.0 and scores.max() > 0
