"""Benchmark 7: accuracy against measured batch-1 latency, ours against Torch-Pruning, at three budget points.

Per task (classification: vgg-small on glyphs, top-1, seeds 0 and 1; detection: det-small on shapes-det, mAP@0.5,
seed 0):
1. generation 0: the dense model trained with the project's own `train_until_plateau` (one warm-up, the peak
   learning rate held while validation accuracy improves, a decay once it has not for --patience >= 3 epochs, the
   best weights kept; no warm restarts), restricted to fp16, saved to bench/out/pareto/<task>-seed<k>/gen0.pt and
   reused while its plan is unchanged (--fresh trains it again). Every method starts from it;
2. ours: `host-trainer evolve --weights gen0.pt --gen0-epochs 0 --no-mqtt` for --generations generations, once
   with --allocation device and once with --allocation magnitude (the ablation); the host-trainer defaults
   otherwise (options after -- are passed on);
3. Torch-Pruning: L1 uniform (MagnitudeImportance(p=1), global_pruning=False) with round_to None and 8, and Taylor
   global (GroupTaylorImportance, global_pruning=True, gradients summed over 8 fixed seeded training batches; round_to
   None, and 8 with --taylor8). Each variant's ratio is solved (a grid scan, then bisection) until its measured
   speed-up over dense (1 thread, batch 1; each probe timed interleaved with dense, --solve-rounds rounds) is
   nearest 3x, 6x and 10x; L1 once per task (its channel counts do not depend on the weights), Taylor per seed;
4. one timing: generation 0, every Torch-Pruning model and every generation of both lineages, interleaved in this
   process (every session open at once, 20 ms bursts of each model in turn, so the machine's drift hits all alike),
   ONNX Runtime CPU, 1 intra-op thread, batch 1, --rounds (>= 5) rounds; a model's latency is the median over
   rounds of its per-round p50. It serves the matching and the table. At each point ours (each allocation) is
   the generation closest to, at or below if possible, the fastest Torch-Pruning variant there (the
   generations of one architecture (a rest, the final fine-tune and the generation they trained on) are
   represented by the last of them: the same network on the board, only trained longer);
5. fine-tuning budget: ours' (device-aware) budget at a point is the sum of `epochs_trained` of every record up to
   its picked generation (rejected offspring and the final fine-tune included, carried-over ones not); every
   Torch-Pruning model at that point is fine-tuned (the project's `train`) for it, the dense control for the largest.
The definitions and the five goals are in bench/pareto_rules.py; one line per goal, and the last line of the output
is the verdict.

Sizing (2 cores, idle, measured 2026-12-07: vgg-small 0.69 s per 128-image step and det-small 1.04 s per 64-image
step, dense; pruned to ~3x / ~10x they train in ~0.6x / ~0.4x of that; a validation pass 3.2 s / 2.1 s, a test pass
4.8 s / 5.3 s; an offspring of ours costs ~16-19 s besides its training: two test passes, one validation pass, export,
the in-process benchmark, the Taylor scores). Every budget is counted in epochs of the training subset, so what costs
is steps. Classification trains on 4,000 images (32 steps, ~25 s an epoch with validation) with 1.2 epochs per
offspring (38 steps); detection on 1,600 (25 steps, ~28 s) with 2.0 epochs (50 steps); 8 generations each. Fewer,
longer generations: at 0.6 epochs (19 steps) per offspring a 20 % cut cost ~1.6 validation points that the
recovery could not win back, so the lineages stalled at the accuracy brake (seed 0: 18 of 31 offspring rejected);
8 x 1.2 epochs spends the same 9.6 epochs and kept every offspring in a trial. Solved ratios and fine-tuned
Torch-Pruning rows are kept per seed (tp_ratios.json, finetuned.json) keyed by what they depend on, so a rerun, or
a run of the next seed started beside this one, does not compute them again; only the one timing is always new.
Generation 0 (cap 60,
patience 3) is trained ahead with --gen0-only: classification seed 0 took 25 epochs (hold until epoch 20, a 5-epoch
decay; validation 92.2 %), 25 min on a machine shared with other jobs, ~11 min idle; detection ~15-25 min idle.
Taylor with round_to=8 (--taylor8) would add ~12 min, so it is left out by default. Run it on an otherwise idle
machine: every latency is measured in this process.
--quick: classification, one seed, 2 generations on 1,000 images, generation 0 capped at 3 epochs, a coarse ratio
solve: a smoke run (~6-8 min idle; --quick --task detect about as long; --task both adds them up).

    python bench/pareto.py --gen0-only               # train (or find) every generation 0, nothing else
    python bench/pareto.py                           # both tasks: classify seeds 0 1, detect seed 0 (~2 h)
    python bench/pareto.py --task classify --seeds 0
    python bench/pareto.py --quick                   # smoke run, classification: bench/out/pareto_quick*
    python bench/pareto.py --task classify -- --env-factor 0.75   # options after -- go to host-trainer evolve
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pareto_rules as rules
import torch
from common import OUT, evolve_into, interleaved_rounds, save
from pareto_peers import (
    GEN0_FILE,
    describe,
    finetune,
    generation_zero,
    onnx_of,
    prune,
    say,
    solve_ratios,
    taylor_gradients,
)
from pareto_report import report

from host_trainer.config import EvolveConfig
from host_trainer.data.stream import load_data
from host_trainer.record import lineage as lineage_of
from host_trainer.rundir import CHECKPOINT, RunDir, generation_name
from host_trainer.tasks.registry import make_task

ALLOCATIONS = {"device": rules.OURS, "magnitude": rules.ABLATION}
SEEDS = {"classify": (0, 1), "detect": (0,)}
ARGS_FILE = "bench_args.json"  # beside a finished run: the exact evolve options it was made with
RATIOS_FILE, FINETUNED_FILE = "tp_ratios.json", "finetuned.json"  # per seed: solved ratios, fine-tuned rows


class Cache:
    """A JSON object on disk, written whole and atomically after every entry: what a rerun (or a run of another
    seed at the same time) need not compute again. Entries are keyed by everything they depend on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.entries.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self.entries[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1) + "\n")
        tmp.replace(self.path)


def gen0_sha(args: argparse.Namespace, task_name: str, seed: int) -> str:
    return hashlib.sha256((args.out / f"{task_name}-seed{seed}" / GEN0_FILE).read_bytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Budget:
    generations: int
    epochs: float       # per offspring
    train_subset: int   # 0 = the whole training split (ours, generation 0 and fine-tuning alike)
    cap: int            # most epochs of generation 0
    patience: int


# Sizing: see the module docstring.
BUDGETS = {("classify", False): Budget(8, 1.2, 4000, 60, 3), ("detect", False): Budget(8, 2.0, 1600, 60, 3),
           ("classify", True): Budget(2, 0.5, 1000, 3, 1), ("detect", True): Budget(2, 1.0, 200, 3, 1)}


def ours_args(task: str, seed: int, gen0: Path, allocation: str, budget: Budget, quick: bool,
              extra: list[str]) -> list[str]:
    args = ["--task", task, "--seed", str(seed), "--weights", str(gen0), "--gen0-epochs", "0",
            "--allocation", allocation, "--no-mqtt", "--quiet", "--generations", str(budget.generations),
            "--epochs", f"{budget.epochs:g}"]
    args += ["--train-subset", str(budget.train_subset)] if budget.train_subset else []
    args += ["--bench-min-seconds", "0.25", "--bench-min-iterations", "50", "--final-epochs", "1"] if quick else []
    return args + extra


def ours_run(folder: Path, args: list[str]) -> Path:
    """A finished run made with exactly `args` in `folder`, reused, or a new one."""
    for run in sorted(folder.glob("*/" + ARGS_FILE)):
        if json.loads(run.read_text()) == args:
            say(f"  reusing {run.parent}")
            return run.parent
    run, wall = evolve_into(folder, args)
    (run / ARGS_FILE).write_text(json.dumps(args) + "\n")
    say(f"  evolved {run} in {wall / 60:.1f} min")
    return run


@dataclasses.dataclass(frozen=True)
class Ours:
    """One finished run of ours: its directory, every record, its lineage and its epochs per offspring."""

    run: Path
    records: list
    lineage: list
    epochs: float

    @classmethod
    def read(cls, run: Path) -> Ours:
        store = RunDir(run)
        records = store.records()
        return cls(run, records, lineage_of(records), float(store.read_config()["epochs"]))

    def budget(self, generation: int) -> float:
        """The epochs every offspring up to `generation` really trained (pareto_rules.budget_epochs)."""
        steps = [(r.generation, r.carried_over, r.epochs_trained) for r in self.records]
        return rules.budget_epochs(steps, self.epochs, generation)

    def models(self, alloc: str) -> dict[str, bytes]:
        """The generations ours may be picked from, by timing key: every generation > 0 that trained (a carried-over
        one is its parent), each architecture once, by its last generation. Generations of one architecture (a
        rest, the final fine-tune and the generation they trained on) differ only in training: the same network on
        the board, so timing noise must not choose among them; the run's output is the last one (its epochs count
        in the budget)."""
        last: dict[str, Any] = {}
        for r in self.lineage:
            if r.generation > 0 and not r.carried_over:
                last[self.architecture(r.generation)] = r
        return {f"{alloc} {r.generation}": (self.run / r.onnx_path).read_bytes() for r in last.values()}

    def architecture(self, generation: int) -> str:
        """The generation's architecture (its checkpoint's model, input and widths), as comparable text."""
        meta = json.loads((self.run / generation_name(generation) / CHECKPOINT).read_text())
        return json.dumps(meta["architecture"], sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Context:
    """What one seed of one task trains and evaluates with."""

    data: Any
    train_split: Any
    task: Any
    cfg: EvolveConfig
    example: Any


def timed(models: dict[str, bytes], rounds: int, min_seconds: float) -> tuple[dict[str, float], dict[str, list]]:
    """Every model interleaved in this process, 1 thread, batch 1, `rounds` rounds; identical bytes are timed once.
    Returns (the median over rounds of each per-round p50, in µs; the per-round p50s in µs)."""
    first: dict[str, str] = {}
    for name, data in models.items():
        first.setdefault(hashlib.sha256(data).hexdigest(), name)
    raw = interleaved_rounds({n: models[n] for n in first.values()}, rounds=rounds, threads=1, min_seconds=min_seconds)
    per_round = {name: [v * 1000 for v in raw[first[hashlib.sha256(data).hexdigest()]]]
                 for name, data in models.items()}
    return rules.median_of_rounds(per_round), per_round


def tp_key(point: float, variant: tuple[str, int | None]) -> str:
    return f"tp {point:g} {variant[0]} {variant[1]}"


def match(gen0_onnx: bytes, pruned: dict, lineages: dict[str, Ours], args: argparse.Namespace) -> tuple[dict, dict]:
    """The one timing (module docstring, step 4); per allocation and point, the generation matched to the fastest
    Torch-Pruning variant there. Returns ({allocation: {point: generation}}, {"p50_us", "rounds_us"})."""
    models = {"dense": gen0_onnx, **{tp_key(p, v): onnx for (p, v), (_m, onnx, _r) in pruned.items()}}
    for alloc, ours in lineages.items():
        models.update(ours.models(alloc))
    p50, per_round = timed(models, args.rounds, args.min_seconds)
    picks: dict[str, dict[float, int]] = {alloc: {} for alloc in lineages}
    for point in rules.POINTS:
        target = min(p50[tp_key(point, v)] for (p, v) in pruned if p == point)
        for alloc in lineages:
            mine = {int(k.split()[1]): v for k, v in p50.items() if k.split()[0] == alloc}
            picks[alloc][point] = rules.pick_generation(mine, target)
    return picks, {"p50_us": p50, "rounds_us": per_round}


def ours_rows(lineages: dict[str, Ours], picks: dict, p50: dict[str, float]) -> list[dict]:
    """Ours at every point, for each allocation: the matched generation's record and its counted budget."""
    rows = []
    for alloc, ours in lineages.items():
        by_gen = {r.generation: r for r in ours.lineage}
        for point, g in picks[alloc].items():
            r = by_gen[g]
            rows.append({"key": f"{alloc} {g}", "method": ALLOCATIONS[alloc], "point": point, "generation": g,
                         "accuracy": r.accuracy, "macs": r.macs, "params": r.params, "synapses": r.synapses,
                         "budget_epochs": ours.budget(g), "p50_us": p50[f"{alloc} {g}"]})
    return rows


def peer_rows(gen0, pruned: dict, budgets: dict[float, float], ctx: Context, cache: Cache, seed: int,
              p50: dict[str, float]) -> list[dict]:
    """Generation 0, the dense control and every Torch-Pruning model fine-tuned for its point's budget: their rows
    (test accuracy after the fp16 restriction; latency from the one timing). A fine-tune's row is kept in `cache`
    by its starting model and budget (training is deterministic), so a rerun only times again."""
    longest = max(budgets.values())
    jobs = [("dense", rules.DENSE, None, gen0, b"dense", 0.0, None),
            ("dense", rules.CONTROL, None, copy.deepcopy(gen0), b"dense", longest, None)]
    jobs += [(tp_key(p, v), rules.tp_name(v), p, model, onnx, budgets[p], ratio)
             for (p, v), (model, onnx, ratio) in pruned.items()]
    rows, done = [], {}
    for key, method, point, model, start, epochs, ratio in jobs:
        # A variant that cannot get nearer a point is the same model with the same budget and seed as at the point
        # before: fine-tuned once (training is deterministic).
        same = f"{hashlib.sha256(start).hexdigest()} {epochs:.6f}"
        done.setdefault(same, cache.get(same))
        if done[same] is None:
            if epochs:
                say(f"  fine-tuning {method}{f' at {point:g}x' if point else ''} for {epochs:.3g} epochs")
            done[same] = describe(finetune(model, ctx.train_split, ctx.task, ctx.cfg, epochs, seed), ctx.data,
                                  ctx.task)[0]
            cache.put(same, done[same])
        rows.append({**done[same], "key": key, "method": method, "point": point, "budget_epochs": epochs,
                     "p50_us": p50[key], "ratio": None if ratio is None else ratio[0],
                     "solved_speedup": None if ratio is None else ratio[1]})
    return rows


def prepare(task_name: str, seed: int, args: argparse.Namespace, budget: Budget) -> tuple[Context, Any, dict, bool]:
    """The seed's data and its generation 0 (cached); whether generation 0 is new."""
    cfg = EvolveConfig.for_task(task_name)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as host-trainer evolve
    data = load_data(task_name, cfg.dataset, seed=seed, image_size=cfg.input_size())
    train_split = data.train.take(budget.train_subset) if budget.train_subset else data.train
    plan = {"task": task_name, "model": cfg.model, "dataset": cfg.dataset, "seed": seed, "cap": budget.cap,
            "patience": budget.patience, "train_subset": budget.train_subset, "schedule": "train_until_plateau",
            "lr": cfg.lr, "batch_size": cfg.batch_size, "image_size": cfg.input_size()}
    say(f"{task_name} seed {seed}: generation 0")
    gen0, info, new = generation_zero(args.out / f"{task_name}-seed{seed}", plan, data, train_split, cfg,
                                      lambda m: make_task(task_name, data, m), args.fresh)
    example = torch.zeros((1, *data.input_shape))
    return Context(data, train_split, make_task(task_name, data, gen0), cfg, example), gen0, info, new


def evolve_ours(task_name: str, seed: int, args: argparse.Namespace, budget: Budget, new_gen0: bool) -> dict:
    folder = args.out / f"{task_name}-seed{seed}"
    lineages, sha = {}, hashlib.sha256((folder / GEN0_FILE).read_bytes()).hexdigest()
    for alloc in ALLOCATIONS:
        if new_gen0:  # runs evolved from an older generation 0 no longer start where the peers start
            shutil.rmtree(folder / f"ours-{alloc}", ignore_errors=True)
        say(f"{task_name} seed {seed}: ours, allocation {alloc}")
        args_ = ours_args(task_name, seed, folder / GEN0_FILE, alloc, budget, args.quick, args.extra)
        lineages[alloc] = Ours.read(ours_run(folder / f"ours-{alloc}", args_))
        started_from = getattr(lineages[alloc].lineage[0], "weights_sha256", None)
        if started_from is not None and started_from != sha:  # the comparison rests on one shared generation 0
            raise RuntimeError(f"{lineages[alloc].run} started from other weights than {folder / GEN0_FILE}")
    return lineages


def variants(args: argparse.Namespace) -> tuple[tuple[str, int | None], ...]:
    return (*rules.VARIANTS, rules.TAYLOR8) if args.taylor8 else rules.VARIANTS


def solve_peers(task_name: str, seed: int, ctx: Context, gen0, ratios: dict, args: argparse.Namespace) -> dict:
    """{(point, variant): (pruned model, its fp16 ONNX, (ratio, solved speed-up))}; `ratios` keeps L1's across
    seeds (its channel counts do not depend on the weights); Taylor's are solved for this seed's weights."""
    grads = taylor_gradients(gen0, ctx.train_split, ctx.task, seed)
    timing = (args.solve_rounds, args.solve_min_seconds, args.grid, args.refine)

    def export(model: torch.nn.Module) -> bytes:
        return onnx_of(model, ctx.data, ctx.task)

    pruned = {}
    for variant in variants(args):
        solved = ratios.get(variant) if variant[0] == "l1" else None
        cache = Cache(args.out / f"{task_name}-seed{seed}" / RATIOS_FILE)
        key = f"{variant} {timing[2:]} {'' if variant[0] == 'l1' else gen0_sha(args, task_name, seed)}"
        solved = solved or {float(p): tuple(v) for p, v in cache.get(key, {}).items()}
        if not solved:
            say(f"{task_name} seed {seed}: solving {rules.tp_name(variant)} for "
                f"{', '.join(f'{p:g}' for p in rules.POINTS)}x measured speed-up")
            solved = solve_ratios(gen0, ctx.example, rules.POINTS, variant, export, timing, grads)
        cache.put(key, {str(p): list(v) for p, v in solved.items()})
        if variant[0] == "l1":
            ratios[variant] = solved
        for point, (ratio, speedup) in solved.items():
            model = prune(gen0, ctx.example, variant, ratio, grads)
            pruned[(point, variant)] = (model, export(model), (ratio, speedup))
    return pruned


def run_seed(task_name: str, seed: int, args: argparse.Namespace, budget: Budget, ratios: dict) -> dict:
    ctx, gen0, info, new = prepare(task_name, seed, args, budget)
    lineages = evolve_ours(task_name, seed, args, budget, new)
    pruned = solve_peers(task_name, seed, ctx, gen0, ratios, args)
    say(f"{task_name} seed {seed}: timing every model, {args.rounds} interleaved rounds")
    picks, timing = match(onnx_of(gen0, ctx.data, ctx.task), pruned, lineages, args)
    p50, device = timing["p50_us"], lineages["device"]
    budgets = {p: device.budget(g) for p, g in picks["device"].items()}
    cache = Cache(args.out / f"{task_name}-seed{seed}" / FINETUNED_FILE)
    rows = peer_rows(gen0, pruned, budgets, ctx, cache, seed, p50) + ours_rows(lineages, picks, p50)
    for row in rows:
        row.update({"seed": seed, "dense_p50_us": p50["dense"]})
    curve = {r.generation: (r.accuracy * 100, p50[f"device {r.generation}"]) for r in device.lineage
             if f"device {r.generation}" in p50}
    how = [r.allocation for r in device.records
           if r.generation > 0 and not (r.carried_over or r.final_tune or r.rest)]
    return {"seed": seed, "gen0": info, "runs": {a: str(o.run) for a, o in lineages.items()},
            "device_run_allocations": {str(h): how.count(h) for h in set(how)},
            "offspring": {a: sum(r.generation > 0 and not r.carried_over for r in o.records)
                          for a, o in lineages.items()},
            "picks": {a: {f"{p:g}": g for p, g in v.items()} for a, v in picks.items()},
            "budgets": {f"{p:g}": b for p, b in budgets.items()}, "timing": timing, "rows": rows,
            "dense_goal": rules.dense_goal(rows[0]["accuracy"] * 100, p50["dense"], curve)}


def task_budget(task_name: str, args: argparse.Namespace) -> Budget:
    """The task's budget (BUDGETS), with what was given on the command line instead."""
    base = BUDGETS[(task_name, args.quick)]
    given = {k: getattr(args, k) for k in ("generations", "epochs", "train_subset", "cap", "patience")}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def task_seeds(task_name: str, args: argparse.Namespace) -> list[int]:
    """--seeds, else SEEDS: two seeds for classification, one for detection; --quick: one."""
    return args.seeds if args.seeds is not None else ([0] if args.quick else list(SEEDS[task_name]))


def run_task(task_name: str, args: argparse.Namespace) -> dict:
    started, budget, ratios = time.perf_counter(), task_budget(task_name, args), {}
    seeds = [run_seed(task_name, seed, args, budget, ratios) for seed in task_seeds(task_name, args)]
    rows = rules.aggregate([row for s in seeds for row in s["rows"]])
    points = rules.point_verdicts(rows)
    return {"budget": dataclasses.asdict(budget), "seeds": seeds, "rows": rows, "wall_s": time.perf_counter() - started,
            "l1_ratios": {f"{rules.tp_name(v)} {p:g}x": r for v, solved in ratios.items() for p, r in solved.items()},
            "points": points, "summary": rules.summary(points), "ablation": rules.ablation(rows),
            "dense_goal": [s["dense_goal"] for s in seeds]}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("classify", "detect", "both"), help="[both; --quick: classify]")
    parser.add_argument("--seeds", type=int, nargs="+", help="[default: classify 0 1, detect 0; --quick: 0]")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, one seed, classification unless --task "
                                                             "says: a smoke run in minutes")
    parser.add_argument("--gen0-only", action="store_true", help="only train (or find) every generation 0")
    parser.add_argument("--fresh", action="store_true", help="train generation 0 again (and so evolve ours again)")
    parser.add_argument("--generations", type=int, help="ours' generations [8; --quick: 2]")
    parser.add_argument("--epochs", type=float, help="epochs per offspring [classify 1.2, detect 2; --quick 0.5, 1]")
    parser.add_argument("--train-subset", type=int, help="first N training images [4000, detect 1600; --quick: "
                                                         "1000, 200]")
    parser.add_argument("--cap", type=int, help="most epochs of generation 0 [60; --quick: 3]")
    parser.add_argument("--patience", type=int, help="generation 0 decays after N epochs without gain [3; quick 1]")
    parser.add_argument("--taylor8", action="store_true", help="Torch-Pruning Taylor global with round_to=8 too")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds of the one timing [5; --quick: 3]")
    parser.add_argument("--min-seconds", type=float, help="shortest timed window per model and round [0.5; quick 0.2]")
    parser.add_argument("--solve-rounds", type=int, default=2, help="timing rounds per probe of a ratio [2]")
    parser.add_argument("--solve-min-seconds", type=float, default=0.2, help="timed window per probe [0.2]")
    parser.add_argument("extra", nargs="*", help="options after -- go to host-trainer evolve")
    args = parser.parse_args()
    args.task = args.task or ("classify" if args.quick else "both")
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.grid, args.refine = ((0.3, 0.6, 0.9), 1) if args.quick else (tuple(rules.ratio_grid()), 4)
    args.min_seconds = args.min_seconds or (0.2 if args.quick else 0.5)
    args.name = "pareto_quick" if args.quick else "pareto"  # a smoke run never overwrites the real results
    args.out = OUT / args.name
    return args


def main() -> None:
    args = parse()
    started = time.perf_counter()
    tasks = ("classify", "detect") if args.task == "both" else (args.task,)
    if args.gen0_only:
        for t in tasks:
            for seed in task_seeds(t, args):
                prepare(t, seed, args, task_budget(t, args))
        return
    results = {t: run_task(t, args) for t in tasks}
    table, payload = report(results, args)
    payload.update({"wall_s": time.perf_counter() - started,
                    "settings": {k: v for k, v in vars(args).items() if k != "out"}})
    save(args.name, payload, table)
    print(payload["verdict"])  # the last line of the output, plainly


if __name__ == "__main__":
    main()
