"""Benchmark 2: ours against peers, on the same model, data and fine-tuning budget, in one run.

For each seed, starting from the same trained, fp16-restricted generation 0:
- dense control: generation 0 trained for the same extra epochs that our offspring received;
- unstructured: global L1 magnitude pruning (torch.nn.utils.prune) to our final synapse count,
  then the same fine-tuning budget with the pruning masks held;
- Torch-Pruning: structured L1 magnitude channel pruning to our final parameter count, then the same
  fine-tuning budget; once without rounding and once with round_to=16 (the two baselines of docs/findings.md; with
  rounding, Torch-Pruning's uniform ratio cannot get near our size, so the closest count is used);
- ours: the evolved lineage's last generation.
Every model is restricted to fp16, exported to fp16 ONNX and timed in this process, interleaved,
with ONNX Runtime on 1 intra-op thread.

    python bench/peers.py --seeds 0 1                    # evolve as bench/default_run.py does, then compare
    python bench/peers.py --ours RUN_A --ours RUN_B      # reuse existing runs as "ours"
    python bench/peers.py --ours RUN_A --seeds 1         # reuse one run, evolve another seed
    python bench/peers.py --seeds 0 -- --generations 4   # options after -- go to host-trainer evolve
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch
import torch_pruning as tp
from common import OUT, evolve_into, interleaved_latency, markdown, save
from default_run import BUDGET
from torch.nn.utils import prune

from host_trainer.config import EvolveConfig
from host_trainer.data.classify import load_dataset
from host_trainer.loop import checkpoint as ckpt
from host_trainer.loop.training import TrainConfig, train
from host_trainer.method.export import to_onnx_bytes
from host_trainer.method.masks import dense_masks, prunable_layers
from host_trainer.method.restriction import restrict
from host_trainer.method.size import size_metrics
from host_trainer.models.registry import fixed_layers
from host_trainer.record import lineage as lineage_of
from host_trainer.rundir import CONFIG, RunDir
from host_trainer.tasks.classify import ClassificationTask

TP_PLAIN, TP_ROUNDED = "Torch-Pruning L1", "Torch-Pruning L1, round_to=16"
METHODS = ("dense (gen 0)", "dense control", "unstructured L1", TP_PLAIN, TP_ROUNDED, "ours")


def finetune(model, masks, data, cfg: EvolveConfig, epochs: float, seed: int):
    train(model, masks, data.train, TrainConfig(epochs=epochs, seed=seed, batch_size=cfg.batch_size, lr=cfg.lr),
          ClassificationTask(data.num_classes))
    return restrict(model, cfg.precision_format)


def unstructured(gen0, data, cfg, target_synapses: int, epochs: float, seed: int):
    model = copy.deepcopy(gen0.model)
    layers = list(prunable_layers(model).items())
    total = sum(m.weight.numel() for _n, m in layers)
    prune.global_unstructured([(m, "weight") for _n, m in layers], prune.L1Unstructured,
                              amount=1.0 - target_synapses / total)
    masks = {n: m.weight_mask.bool() for n, m in layers}
    for _n, m in layers:
        prune.remove(m, "weight")  # bake the zeros in; our trainer holds them with the masks
    return finetune(model, masks, data, cfg, epochs, seed), masks


def structured(gen0, data, cfg, target_params: int, epochs: float, seed: int, round_to: int | None):
    """Torch-Pruning MagnitudePruner at the uniform ratio whose parameter count is closest to ours.

    A grid, not a bisection: past some ratio Torch-Pruning skips layers it would empty, so the count
    is not monotone in the ratio (at 0.99 it pruned nothing at all)."""
    example = torch.zeros((1, *data.input_shape))

    def pruned(ratio: float):
        model = copy.deepcopy(gen0.model)
        pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=ratio, ignored_layers=fixed_layers(model),
                                           round_to=round_to)
        pruner.step()
        return model

    def gap(ratio: float) -> int:
        return abs(sum(p.numel() for p in pruned(ratio).parameters()) - target_params)

    model = pruned(min((r / 100 for r in range(30, 98)), key=gap))
    masks = dense_masks(model)
    return finetune(model, masks, data, cfg, epochs, seed), masks


def compare_seed(run: Path) -> list[dict]:
    store = RunDir(run)
    cfg = EvolveConfig.from_dict(store.read_config(), str(run / CONFIG))
    data = load_dataset(cfg.dataset, seed=cfg.seed, image_size=cfg.input_size())
    lineage = lineage_of(store.records())
    # The epochs the final network's lineage was trained for after generation 0 (rejected attempts were
    # extra compute, but none of their training reached the final network).
    budget = sum(cfg.epochs for r in lineage if r.generation > 0 and not r.carried_over)
    gen0 = ckpt.read_checkpoint(store.gen_dir(0))
    last = ckpt.read_checkpoint(store.gen_dir(lineage[-1].generation))
    seed = cfg.seed + 1000  # fine-tuning order differs from any generation's but is fixed per seed
    print(f"seed {cfg.seed}: fine-tuning three peers for {budget:g} epochs each", flush=True)
    models = {
        "dense (gen 0)": gen0.model,
        "dense control": finetune(copy.deepcopy(gen0.model), gen0.masks, data, cfg, budget, seed),
        "unstructured L1": unstructured(gen0, data, cfg, lineage[-1].synapses, budget, seed)[0],
        TP_PLAIN: structured(gen0, data, cfg, lineage[-1].params, budget, seed, None)[0],
        TP_ROUNDED: structured(gen0, data, cfg, lineage[-1].params, budget, seed, 16)[0],
        "ours": last.model,
    }
    print(f"seed {cfg.seed}: timing {len(models)} models, interleaved", flush=True)
    onnx = {name: to_onnx_bytes(m, data.input_shape, cfg.precision_format, "logits") for name, m in models.items()}
    latency = interleaved_latency(onnx, rounds=3, threads=1)
    task = ClassificationTask(data.num_classes)
    out = []
    for name, model in models.items():
        size = size_metrics(model, data.input_shape)
        out.append({"method": name, "seed": cfg.seed, "accuracy": task.evaluate(model, data.test).accuracy,
                    "synapses": size.synapses, "params": size.params, "macs": size.macs,
                    "onnx_kb": len(onnx[name]) / 1000, "p50_us": latency[name]["p50_ms"] * 1000,
                    "budget_epochs": budget})
    return out


def aggregate(results: list[dict]) -> list[dict]:
    dense = {r["seed"]: r["p50_us"] for r in results if r["method"] == "dense (gen 0)"}
    rows = []
    for method in METHODS:
        mine = [r for r in results if r["method"] == method]
        accs = [r["accuracy"] * 100 for r in mine]
        rows.append({
            "method": method, "acc": statistics.mean(accs), "acc_sd": statistics.pstdev(accs),
            "accs": " / ".join(f"{a:.2f}" for a in accs),
            "params": statistics.mean(r["params"] for r in mine),
            "synapses": statistics.mean(r["synapses"] for r in mine),
            "mmacs": statistics.mean(r["macs"] for r in mine) / 1e6,
            "onnx_kb": statistics.mean(r["onnx_kb"] for r in mine),
            "p50_us": statistics.mean(r["p50_us"] for r in mine),
            "speedup": statistics.mean(dense[r["seed"]] / r["p50_us"] for r in mine),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", help="seeds to evolve [default: 0 1 without --ours]")
    parser.add_argument("--ours", type=Path, action="append", help="reuse an existing run (repeatable)")
    parser.add_argument("extra", nargs="*", help="options after -- go to host-trainer evolve")
    args = parser.parse_args()
    seeds = args.seeds if args.seeds is not None else ([] if args.ours else [0, 1])
    # The default run's budget, so that seed 0 can reuse bench/default_run.py's run.
    runs = (args.ours or []) + [evolve_into(OUT / "peers_runs", ["--seed", str(s), *BUDGET, *args.extra])[0]
                                for s in seeds]
    results = [row for run in runs for row in compare_seed(run)]
    table = markdown(aggregate(results), [
        ("method", "method", "s"), ("test accuracy % (mean)", "acc", ".2f"), ("per seed", "accs", "s"),
        ("synapses", "synapses", ",.0f"), ("parameters", "params", ",.0f"), ("MMACs", "mmacs", ".2f"),
        ("fp16 ONNX KB", "onnx_kb", ".0f"), ("batch-1 p50 µs", "p50_us", ".0f"), ("speed-up", "speedup", ".2f")])
    table += (f"\n\n{len(runs)} seeds; fine-tuning budget {results[0]['budget_epochs']:g} epochs for every method; "
              "ONNX Runtime CPU, 1 intra-op thread, 3 interleaved rounds")
    save("peers", {"runs": [str(r) for r in runs], "results": results}, table)


if __name__ == "__main__":
    main()
