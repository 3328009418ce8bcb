"""Benchmark 7: accuracy against measured batch-1 latency, ours against Torch-Pruning, at three budget points.

Per task (classification: vgg-small on glyphs, top-1; detection: det-small on shapes-det, mAP@0.5) and seed:
1. generation 0: the dense model trained with the project's loop one epoch at a time until validation accuracy
   has not improved for --patience epochs (at most the cap), best epoch kept, restricted to fp16, saved to
   bench/out/pareto/<task>-seed<k>/gen0.pt and reused by later runs (--fresh trains it again). Every method
   starts from it;
2. ours: `host-trainer evolve --weights gen0.pt --gen0-epochs 0 --no-mqtt` for --generations generations, once
   with --allocation device and once with --allocation magnitude (the ablation);
3. Torch-Pruning L1 (MetaPruner, MagnitudeImportance(p=1), one ratio for every layer) with round_to None, 8 and
   16, the ratio solved for about 3x, 6x and 10x fewer MACs;
4. every Torch-Pruning model, the lineages of both runs and generation 0 are timed interleaved; at each point
   ours (each allocation) is the generation whose latency is closest to, at or below if possible, the fastest
   Torch-Pruning variant's there;
5. each Torch-Pruning model is fine-tuned with the project's loop for the offspring epochs ours (device-aware)
   spent up to the generation it is compared with; the dense control (generation 0 trained on) gets the largest
   of those budgets;
6. everything is restricted to fp16, exported to fp16 ONNX and timed once more in this process, interleaved, with
   ONNX Runtime on 1 intra-op thread, batch 1: those are the table's latencies.
The verdict's definitions (equal accuracy = within 0.5 points, "dominates", "speed ratio") are in
bench/pareto_rules.py; the last line of the output states it.

    python bench/pareto.py                           # both tasks, seeds 0 and 1 (long; not timed yet)
    python bench/pareto.py --task classify --seeds 0
    python bench/pareto.py --quick --task classify   # smoke run: one seed, small budgets, bench/out/pareto_quick*
    python bench/pareto.py --task classify -- --env-factor 0.75,0.95   # options after -- go to host-trainer evolve
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
from common import OUT, evolve_into, interleaved_latency, markdown, save
from pareto_peers import GEN0_FILE, describe, finetune, generation_zero, onnx_of, prune, say, solve_ratios

from host_trainer.config import EvolveConfig
from host_trainer.loop.runstore import RunDir
from host_trainer.record import lineage as lineage_of
from host_trainer.tasks.registry import load_data, make_task

ALLOCATIONS = {"device": rules.OURS, "magnitude": rules.ABLATION}
ARGS_FILE = "bench_args.json"  # beside a finished run: the exact evolve options it was made with


@dataclasses.dataclass(frozen=True)
class Budget:
    generations: int
    epochs: float       # per offspring
    train_subset: int   # 0 = the whole training split (ours, generation 0 and fine-tuning alike)
    cap: int            # most epochs of generation 0
    patience: int


# --quick: every offspring costs two test and one validation pass whatever its training, so a smoke run keeps
# few generations and a training subset large enough for a usable generation 0.
BUDGETS = {("classify", False): Budget(16, 1.5, 0, 40, 3), ("detect", False): Budget(16, 1.5, 0, 30, 3),
           ("classify", True): Budget(3, 0.5, 4000, 8, 2), ("detect", True): Budget(3, 0.5, 400, 4, 2)}


def ours_args(task: str, seed: int, gen0: Path, allocation: str, budget: Budget, quick: bool,
              extra: list[str]) -> list[str]:
    args = ["--task", task, "--seed", str(seed), "--weights", str(gen0), "--gen0-epochs", "0",
            "--allocation", allocation, "--no-mqtt", "--quiet", "--generations", str(budget.generations),
            "--epochs", f"{budget.epochs:g}"]
    args += ["--train-subset", str(budget.train_subset)] if budget.train_subset else []
    args += ["--bench-min-seconds", "0.25", "--bench-min-iterations", "50"] if quick else []
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


def timed(models: dict[str, bytes], rounds: int, min_seconds: float) -> dict[str, float]:
    """p50 in µs of every model, interleaved in this process, 1 thread; identical bytes are timed once."""
    first: dict[str, str] = {}
    for name, data in models.items():
        first.setdefault(hashlib.sha256(data).hexdigest(), name)
    lat = interleaved_latency({n: models[n] for n in first.values()}, rounds=rounds, threads=1,
                              min_seconds=min_seconds)
    return {name: lat[first[hashlib.sha256(data).hexdigest()]]["p50_ms"] * 1000 for name, data in models.items()}


@dataclasses.dataclass(frozen=True)
class Ours:
    """One finished run of ours: its directory, lineage and epochs per offspring."""

    run: Path
    lineage: list
    epochs: float

    @classmethod
    def read(cls, run: Path) -> Ours:
        store = RunDir(run)
        return cls(run, lineage_of(store.records()), float(store.read_config()["epochs"]))

    def steps(self) -> list[tuple[int, bool, float | None]]:
        """(generation, carried over, its own epochs where the record has them) for budget_epochs."""
        return [(r.generation, r.carried_over, getattr(r, "epochs_trained", None)) for r in self.lineage]


@dataclasses.dataclass(frozen=True)
class Context:
    """What one seed of one task trains and evaluates with."""

    data: Any
    train_split: Any
    task: Any
    cfg: EvolveConfig


def match(gen0_onnx: bytes, pruned: dict, lineages: dict, args: argparse.Namespace) -> tuple[dict, dict]:
    """Time generation 0, every pruned model and both lineages together; per point and allocation, the generation
    matched to the fastest Torch-Pruning variant there. Returns ({allocation: {point: generation}}, the p50s)."""
    models = {"dense": gen0_onnx, **{f"tp {p:g} {rt}": onnx for (p, rt), (_m, onnx) in pruned.items()}}
    for alloc, ours in lineages.items():
        for r in ours.lineage:
            if r.generation > 0 and not r.carried_over:  # a carried-over model is its parent, for more epochs
                models[f"{alloc} {r.generation}"] = (ours.run / r.onnx_path).read_bytes()
    p50 = timed(models, args.rounds, args.min_seconds)
    picks: dict[str, dict[float, int]] = {alloc: {} for alloc in lineages}
    for point in rules.POINTS:
        target = min(p50[f"tp {point:g} {rt}"] for rt in rules.ROUND_TOS)
        for alloc in lineages:
            mine = {int(k.split()[1]): v for k, v in p50.items() if k.split()[0] == alloc}
            picks[alloc][point] = rules.pick_generation(mine, target)
    return picks, p50


def ours_rows(lineages: dict[str, Ours], picks: dict) -> tuple[list[dict], dict[str, bytes]]:
    """Ours at every point, for each allocation: the matched generation's record (test accuracy, size)."""
    rows, onnx = [], {}
    for alloc, ours in lineages.items():
        by_gen = {r.generation: r for r in ours.lineage}
        for point, g in picks[alloc].items():
            r, key = by_gen[g], f"{alloc} {point:g}"
            rows.append({"key": key, "method": ALLOCATIONS[alloc], "point": point, "generation": g,
                         "accuracy": r.accuracy, "macs": r.macs, "params": r.params, "synapses": r.synapses,
                         "budget_epochs": rules.budget_epochs(ours.steps(), ours.epochs, g)})
            onnx[key] = (ours.run / r.onnx_path).read_bytes()
    return rows, onnx


def peer_rows(gen0, pruned: dict, budgets: dict[float, float], ctx: Context,
              seed: int) -> tuple[list[dict], dict[str, bytes]]:
    """Generation 0, the dense control and every pruned model fine-tuned: their rows and ONNX (by row key)."""
    longest = max(budgets.values())
    jobs = [("dense", rules.DENSE, None, gen0, b"dense", 0.0),
            ("control", rules.CONTROL, None, copy.deepcopy(gen0), b"dense", longest)]
    jobs += [(f"tp {p:g} {rt}", rules.tp_name(rt), p, model, start, budgets[p])
             for (p, rt), (model, start) in pruned.items()]
    rows, onnx, done = [], {}, {}
    for key, method, point, model, start, epochs in jobs:
        # A variant that cannot get nearer a point (round_to=16 saturates) is the same model with the same budget
        # and seed as at the point before: fine-tuned once (training is deterministic).
        same = (hashlib.sha256(start).hexdigest(), epochs)
        if same not in done:
            if epochs:
                say(f"  fine-tuning {method}{f' at {point:g}x' if point else ''} for {epochs:g} epochs")
            done[same] = describe(finetune(model, ctx.train_split, ctx.task, ctx.cfg, epochs, seed), ctx.data,
                                  ctx.task)
        row, onnx[key] = done[same]
        rows.append({**row, "key": key, "method": method, "point": point, "budget_epochs": epochs})
    return rows, onnx


def prepare(task_name: str, seed: int, args: argparse.Namespace, budget: Budget) -> tuple[Context, Any, dict, bool]:
    """The seed's data and its generation 0 (cached); whether generation 0 is new."""
    cfg = EvolveConfig.for_task(task_name)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as host-trainer evolve
    data = load_data(task_name, cfg.dataset, seed=seed, image_size=cfg.input_size())
    train_split = data.train.take(budget.train_subset) if budget.train_subset else data.train
    plan = {"task": task_name, "model": cfg.model, "dataset": cfg.dataset, "seed": seed, "cap": budget.cap,
            "patience": budget.patience, "train_subset": budget.train_subset}
    say(f"{task_name} seed {seed}: generation 0")
    gen0, info, new = generation_zero(args.out / f"{task_name}-seed{seed}", plan, data, train_split, cfg,
                                      lambda m: make_task(task_name, data, m), args.fresh)
    return Context(data, train_split, make_task(task_name, data, gen0), cfg), gen0, info, new


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


def run_seed(task_name: str, seed: int, args: argparse.Namespace, budget: Budget, ratios: dict) -> dict:
    ctx, gen0, info, new = prepare(task_name, seed, args, budget)
    lineages = evolve_ours(task_name, seed, args, budget, new)
    example = torch.zeros((1, *ctx.data.input_shape))
    if not ratios:  # the same for every seed (pareto_peers.solve_ratios)
        say(f"{task_name}: solving Torch-Pruning's ratios for {', '.join(f'{p:g}' for p in rules.POINTS)}x "
            "fewer MACs")
        ratios.update(solve_ratios(gen0, example, rules.POINTS, rules.ROUND_TOS))
    pruned = {}
    for (point, rt), (ratio, _factor) in ratios.items():
        model = prune(gen0, example, ratio, rt)
        pruned[(point, rt)] = (model, onnx_of(model, ctx.data, ctx.task))
    say(f"{task_name} seed {seed}: matching ours to Torch-Pruning's latency")
    picks, selection = match(onnx_of(gen0, ctx.data, ctx.task), pruned, lineages, args)
    device = lineages["device"]
    budgets = {p: rules.budget_epochs(device.steps(), device.epochs, g) for p, g in picks["device"].items()}
    rows, onnx = peer_rows(gen0, pruned, budgets, ctx, seed)
    mine, mine_onnx = ours_rows(lineages, picks)
    say(f"{task_name} seed {seed}: timing {len(rows) + len(mine)} models, interleaved")
    p50 = timed({**onnx, **mine_onnx}, args.rounds, args.min_seconds)
    for row in rows + mine:
        row.update({"seed": seed, "p50_us": p50[row["key"]], "dense_p50_us": p50["dense"]})
    curve = {r.generation: (r.accuracy * 100, selection[f"device {r.generation}"]) for r in device.lineage
             if f"device {r.generation}" in selection}
    how = [getattr(r, "allocation", None) for r in device.lineage if r.generation > 0 and not r.carried_over]
    return {"seed": seed, "gen0": info, "runs": {a: str(o.run) for a, o in lineages.items()},
            "device_run_allocations": {str(h): how.count(h) for h in set(how)},
            "picks": {a: {f"{p:g}": g for p, g in v.items()} for a, v in picks.items()},
            "selection_p50_us": selection, "rows": rows + mine,
            "dense_goal": rules.dense_goal(rows[0]["accuracy"] * 100, selection["dense"], curve)}


def task_budget(task_name: str, args: argparse.Namespace) -> Budget:
    """The task's budget (BUDGETS), with what was given on the command line instead."""
    base = BUDGETS[(task_name, args.quick)]
    given = {k: getattr(args, k) for k in ("generations", "epochs", "train_subset", "cap", "patience")}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def run_task(task_name: str, args: argparse.Namespace) -> dict:
    started, budget, ratios = time.perf_counter(), task_budget(task_name, args), {}
    seeds = [run_seed(task_name, seed, args, budget, ratios) for seed in args.seeds]
    rows = rules.aggregate([row for s in seeds for row in s["rows"]])
    points = rules.point_verdicts(rows)
    return {"budget": dataclasses.asdict(budget), "seeds": seeds, "rows": rows, "wall_s": time.perf_counter() - started,
            "ratios": {f"{p:g}x round_to={rt}": {"ratio": r, "mac_factor": f} for (p, rt), (r, f) in ratios.items()},
            "points": {f"{p:g}": v for p, v in points.items()}, "summary": rules.summary(points),
            "ablation": {f"{p:g}": v for p, v in rules.ablation(rows).items()},
            "dense_goal": [s["dense_goal"] for s in seeds]}


def notes(name: str, result: dict) -> list[str]:
    """The verdict lines of one task: each point, the task's verdict, ours against dense, the ablation."""
    lines = []
    for point, v in sorted(result["points"].items(), key=lambda kv: float(kv[0])):
        ours = next(r for r in result["rows"] if r["point"] == float(point) and r["method"] == rules.OURS)
        lines.append(f"- {point}x: ours {ours['p50_us']:.0f} µs at {ours['acc']:.2f}, against {v['tp_method']}: "
                     f"speed ratio {v['speed_ratio']:.2f}x, accuracy {v['accuracy_gap']:+.2f} points: "
                     f"{'dominates' if v['dominates'] else 'does not dominate'}")
    lines.append("- " + rules.verdict_line(name, {name: result["summary"]}))
    used = [s["device_run_allocations"] for s in result["seeds"]]
    lines.append(f"- {name}: how the device-aware runs' accepted offspring were allocated, per seed: {used} "
                 "(magnitude there: the allocator fell back, e.g. no per-layer profile of the parent)")
    return lines + [goal_line(name, result["dense_goal"]), ablation_line(name, result["ablation"])]


def goal_line(name: str, goals: list) -> str:
    """Ours against dense generation 0 (the lineage as timed for matching): the fastest generation within a point."""
    unit = "fps" if name == "detect" else "speed-up"
    goal = f"goal >= {rules.GOAL_SPEEDUP:g}x {unit} within {rules.GOAL_GAP:g} point"
    if not all(goals):
        return f"- {name}: ours against dense generation 0: a seed has no generation within the point; {goal}: not met"
    mean = sum(g["speedup"] for g in goals) / len(goals)
    per_seed = ", ".join(f"{g['speedup']:.2f}x at {g['gap']:+.2f} (gen {g['generation']})" for g in goals)
    met = "met" if mean >= rules.GOAL_SPEEDUP else "not met"
    return (f"- {name}: ours against dense generation 0: {mean:.2f}x {unit} for the fastest generation within "
            f"{rules.GOAL_GAP:g} point (per seed: {per_seed}); {goal}: {met}")


def ablation_line(name: str, ablation: dict) -> str:
    if not ablation:
        return f"- {name}: no ablation rows"
    loss = sum(v["accuracy_loss"] for v in ablation.values()) / len(ablation)
    ratio = sum(v["p50_ratio"] for v in ablation.values()) / len(ablation)
    per_point = ", ".join(f"{p}x {v['accuracy_loss']:+.2f} / {v['p50_ratio']:.2f}x"
                          for p, v in sorted(ablation.items(), key=lambda kv: float(kv[0])))
    return (f"- {name}: the ablation (--allocation magnitude) loses {loss:+.2f} points against device-aware on "
            f"average, at {ratio:.2f}x its p50 ({per_point})")


def task_table(name: str, result: dict, args: argparse.Namespace) -> str:
    cfg, b = EvolveConfig.for_task(name), result["budget"]
    dense_macs = result["rows"][0]["macs"]
    shown = [{**r, "pt": "–" if r["point"] is None else f"{r['point']:g}x", "mmacs": r["macs"] / 1e6,
              "fewer": dense_macs / r["macs"]} for r in result["rows"]]
    table = markdown(shown, [
        ("point", "pt", "s"), ("method", "method", "s"), ("MMACs", "mmacs", ".2f"), ("fewer MACs", "fewer", ".1f"),
        ("parameters", "params", ",.0f"), ("batch-1 p50 µs", "p50_us", ".0f"), ("speed-up vs dense", "speedup", ".2f"),
        ("accuracy % (mean)", "acc", ".2f"), ("per seed", "accs", "s"), ("fine-tune epochs", "budget", ".3g"),
        ("ours' generation", "gens", "s")])
    metric = "top-1 accuracy" if name == "classify" else "mAP@0.5"
    head = (f"### {name}: {cfg.model} on {cfg.dataset}, {metric} on the test split\n\n{len(args.seeds)} seed(s); ours "
            f"{b['generations']} generations x {b['epochs']:g} epochs; generation 0 until validation stopped "
            f"improving for {b['patience']} epochs (cap {b['cap']}); train subset {b['train_subset'] or 'all'}; "
            f"ONNX Runtime CPU, 1 intra-op thread, batch 1, {args.rounds} interleaved rounds; "
            f"{result['wall_s'] / 60:.1f} min")
    return f"{head}\n\n{table}\n\n" + "\n".join(notes(name, result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("classify", "detect", "both"), default="both")
    parser.add_argument("--seeds", type=int, nargs="+", help="[default: 0 1; --quick: 0]")
    parser.add_argument("--quick", action="store_true", help="small budgets, one seed: a smoke run in minutes")
    parser.add_argument("--fresh", action="store_true", help="train generation 0 again (and so evolve ours again)")
    parser.add_argument("--generations", type=int, help="ours' generations [16; --quick: 3]")
    parser.add_argument("--epochs", type=float, help="epochs per offspring [1.5; --quick: 0.5]")
    parser.add_argument("--train-subset", type=int, help="first N training images [all; --quick: 4000, detect 400]")
    parser.add_argument("--cap", type=int, help="most epochs of generation 0 [classify 40, detect 30; --quick: 8, 4]")
    parser.add_argument("--patience", type=int, help="generation 0 stops after N epochs without gain [3; --quick: 2]")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds [3; --quick: 2]")
    parser.add_argument("--min-seconds", type=float, help="shortest timed window of each measurement [1; quick 0.25]")
    parser.add_argument("extra", nargs="*", help="options after -- go to host-trainer evolve")
    args = parser.parse_args()
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1])
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.min_seconds = args.min_seconds or (0.25 if args.quick else 1.0)
    name = "pareto_quick" if args.quick else "pareto"  # a smoke run never overwrites the real results
    args.out = OUT / name
    started = time.perf_counter()
    results = {t: run_task(t, args) for t in (("classify", "detect") if args.task == "both" else (args.task,))}
    final = rules.verdict_line("pareto", {t: r["summary"] for t, r in results.items()})
    table = "\n\n".join(task_table(t, r, args) for t, r in results.items()) + f"\n\n{final}"
    payload = {"tasks": results, "verdict": final, "wall_s": time.perf_counter() - started,
               "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    save(name, payload, table)
    print(final)  # the last line of the output, plainly


if __name__ == "__main__":
    main()
