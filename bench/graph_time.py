"""Seconds per generation spent on the coupling graph (issue #21, part 5): the parent's coupling groups, its
Taylor importance and one offspring's compaction, as loop/breeding.py does them, generation after generation,
with no training in between (the graph does not depend on the weights). One thread, like the tuning runs.

    python bench/graph_time.py --model tests/fixtures/public_archs.py:shufflenet --generations 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from host_trainer.method.compaction import cluster_groups, compact  # noqa: E402
from host_trainer.method.importance import taylor_importance  # noqa: E402
from host_trainer.method.masks import dense_masks  # noqa: E402
from host_trainer.method.synthesis import SynthesisConfig, plan_offspring  # noqa: E402
from host_trainer.models.registry import build_model, fixed_layers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tests/fixtures/public_archs.py:shufflenet")
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.8)
    parser.add_argument("--shape", type=int, nargs=3, default=(3, 32, 32))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shape = tuple(args.shape)
    model = build_model(args.model, 10, shape).eval()
    masks, example = dense_masks(model), torch.zeros(1, *shape)
    batches = [(torch.randn(8, *shape), [torch.randint(0, 10, (8,))])]
    for generation in range(1, args.generations + 1):
        started = time.perf_counter()
        groups = cluster_groups(model, example, fixed_layers(model))
        taylor_importance(model, groups, example, batches, lambda out, labels: F.cross_entropy(out, labels[0]))
        plan = plan_offspring(model, groups, masks, SynthesisConfig(args.alpha, 1.0), np.random.default_rng(generation))
        model, masks = compact(model, plan.masks, groups, plan.keep, example)
        model.eval()
        print(f"generation {generation}: {time.perf_counter() - started:.2f} s, {len(groups)} groups, "
              f"clusters {plan.clusters_before} -> {plan.clusters_after}", flush=True)


if __name__ == "__main__":
    main()
