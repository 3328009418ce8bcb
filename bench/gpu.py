"""The GPU check (docs/method.md, "Training"), for when a machine with an NVIDIA GPU is lent; under 8 minutes.

1. Seconds per training epoch of vgg-small on glyphs (`--images` images, batch 128, the loop's own `train`, median
   of epochs 2..`--epochs`) on the CPU and on CUDA, and their ratio. CUDA runs the same seeded training twice
   (the run-to-run tolerance: largest weight difference) and once more with TF32 allowed (the measurement that
   would have to justify turning TF32 on: speed and validation accuracy).
2. NVML power, read by edge_evolver/power/nvml_meter.py through the power sampler, while CUDA trains.
3. A short `host-trainer evolve --train-device cuda --no-mqtt` (`--generations 2` on `--subset` images) that must
   complete with export parity in every generation (and its power, the same way).

    python bench/gpu.py [--images 4096] [--epochs 3] [--subset 1024]

Writes bench/out/gpu.json and bench/out/gpu.md and prints the table. Without CUDA it prints one line and exits 2,
having measured and written nothing. Exit 1: the evolve run failed or an export disagreed with torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from common import ROOT, markdown, save  # also puts the repository on sys.path

from host_trainer.rundir import EVENTS, GENERATIONS

# (name, device, TF32 allowed); the first CUDA configuration is the one whose power is read
CONFIGS = [("cpu", "cpu", False), ("cuda", "cuda:0", False), ("cuda, again", "cuda:0", False),
           ("cuda, TF32 on", "cuda:0", True)]


def facts() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {"gpu": torch.cuda.get_device_name(0), "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2 ** 30, 1), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "cpu_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}


@contextlib.contextmanager
def power(into: dict[str, Any]) -> Iterator[None]:
    """NVML power over the block (GPU 0), into `into["power"]`; the reason instead when there is no meter."""
    from edge_evolver.power.base import MeterUnavailable
    from edge_evolver.power.nvml_meter import NvmlMeter
    from edge_evolver.power.sampler import PowerSampler

    try:
        meter = NvmlMeter.probe()
    except MeterUnavailable as exc:  # pynvml missing (pip install -e '.[nvml]'), no driver, no sensor
        into["power"] = {"mean_w": None, "reason": exc.reason}
        yield
        return
    sampler = PowerSampler(meter, interval_s=0.1)
    sampler.start()
    try:
        yield
    finally:
        summary = sampler.stop().to_dict()
        meter.close()
        into["power"] = {k: v for k, v in summary.items() if k not in ("samples_w", "sample_t")}


def train_epochs(device: str, tf32: bool, data: Any, split: Any, epochs: int) -> dict[str, Any]:
    """`epochs` seeded training epochs of a fresh vgg-small on `device`: seconds of each, validation accuracy and
    the final weights (on the CPU)."""
    from host_trainer.loop.training import TrainConfig, train
    from host_trainer.method.masks import dense_masks
    from host_trainer.models.registry import build_model
    from host_trainer.tasks.registry import make_task
    from host_trainer.torch_device import placed

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    model = build_model("vgg-small", data.num_classes, data.input_shape)
    task, masks = make_task("classify", data, model), dense_masks(model)
    seconds = []
    for epoch in range(epochs):
        torch.cuda.synchronize()
        started = time.perf_counter()
        train(model, masks, split, TrainConfig(epochs=1.0, seed=epoch, device=device), task)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    with placed(torch.device(device), model):
        accuracy = task.evaluate(model, data.val).accuracy
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return {"epochs_s": seconds, "epoch_s": statistics.median(seconds[1:] or seconds), "val_accuracy": accuracy,
            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def epochs_part(args: argparse.Namespace) -> dict[str, Any]:
    from host_trainer.data.stream import load_data
    from host_trainer.torch_device import resolve, use

    use(resolve("cuda"))
    torch.use_deterministic_algorithms(True, warn_only=True)  # as a run sets it (loop/session.py)
    data = load_data("classify", "glyphs", seed=0, image_size=32)
    split = data.train.take(args.images)
    rows: dict[str, dict[str, Any]] = {}
    for name, device, tf32 in CONFIGS:
        print(f"[{time.strftime('%X')}] training {args.epochs} epochs: {name}", flush=True)
        row: dict[str, Any] = {}
        with power(row) if name == "cuda" else contextlib.nullcontext():
            row.update(train_epochs(device, tf32, data, split, args.epochs))
        rows[name] = row
    states = {name: row.pop("state") for name, row in rows.items()}
    return {"rows": rows, "cuda_vs_cpu": rows["cpu"]["epoch_s"] / rows["cuda"]["epoch_s"],
            "tf32_vs_fp32": rows["cuda"]["epoch_s"] / rows["cuda, TF32 on"]["epoch_s"],
            "run_to_run_max_abs_dw": max_diff(states["cuda"], states["cuda, again"]),
            "cpu_vs_cuda_max_abs_dw": max_diff(states["cpu"], states["cuda"]),
            "tf32_vs_fp32_max_abs_dw": max_diff(states["cuda"], states["cuda, TF32 on"])}


def evolve_part(args: argparse.Namespace) -> dict[str, Any]:
    """`host-trainer evolve --train-device cuda --no-mqtt`, 2 generations; every row must pass export parity."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "host_trainer", "evolve", "--train-device", "cuda", "--no-mqtt",
               "--model", "vgg-small", "--dataset", "glyphs", "--train-subset", str(args.subset),
               "--gen0-epochs", "2", "--epochs", "0.5", "--generations", "2", "--final-epochs", "0",
               "--max-accuracy-drop", "100", "--no-probes", "--bench-min-seconds", "0.2",
               "--bench-min-iterations", "50", "--quiet", "--run-dir", tmp]
        print(f"[{time.strftime('%X')}] {' '.join(cmd[2:])}", flush=True)
        started = time.perf_counter()
        with power(out):
            try:
                done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.evolve_timeout)
                code, tail = done.returncode, done.stderr[-2000:]
            except subprocess.TimeoutExpired:
                code, tail = None, f"timed out after {args.evolve_timeout} s"
        out.update(wall_s=time.perf_counter() - started, exit_code=code, stderr_tail=tail)
        runs = [p for p in Path(tmp).iterdir() if p.is_dir()]
        if runs:
            out.update(summarise_run(runs[0]))
    out["ok"] = out["exit_code"] == 0 and bool(out.get("rows")) and bool(out.get("parity_ok"))
    return out


def summarise_run(run: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (run / GENERATIONS).read_text().splitlines() if line.strip()]
    exported = [r for r in rows if r.get("onnx_parity_ok") is not None]
    events = [json.loads(line) for line in (run / EVENTS).read_text().splitlines() if line.strip()]
    started = next((e for e in events if e.get("event") == "run started"), {})
    return {"rows": len(rows), "accepted": sum(1 for r in rows if r.get("accepted")),
            "generations": max((r["generation"] for r in rows), default=-1),
            "parity_ok": bool(exported) and all(r["onnx_parity_ok"] for r in exported),
            "max_onnx_abs_err": max((r.get("onnx_max_abs_err") or 0.0 for r in exported), default=None),
            "last_accuracy": rows[-1].get("accuracy") if rows else None,
            "train_device": started.get("train_device")}


def table(result: dict[str, Any]) -> str:
    f, e, run = result["facts"], result["epochs"], result["evolve"]
    rows = [{"what": "GPU", "value": f"{f['gpu']} (sm {f['capability']}, {f['gpu_memory_gib']} GiB), torch "
                                      f"{f['torch']}, CUDA {f['cuda']}, cuDNN {f['cudnn']}"}]
    for name, row in e["rows"].items():
        threads = f", {f['cpu_threads']} threads" if name == "cpu" else ""
        rows.append({"what": f"epoch of vgg-small on glyphs: {name}{threads}",
                     "value": f"{row['epoch_s']:.3f} s, val accuracy {row['val_accuracy']:.4f}"})
    rows += [{"what": "CUDA speed-up over the CPU (s/epoch CPU ÷ CUDA)", "value": f"{e['cuda_vs_cpu']:.1f}×"},
             {"what": "TF32 speed-up (s/epoch off ÷ on)", "value": f"{e['tf32_vs_fp32']:.2f}×"},
             {"what": "largest weight difference: CUDA run to run; CPU vs CUDA; TF32 vs fp32",
              "value": f"{e['run_to_run_max_abs_dw']:.3g}; {e['cpu_vs_cuda_max_abs_dw']:.3g}; "
                       f"{e['tf32_vs_fp32_max_abs_dw']:.3g}"},
             {"what": "NVML power while CUDA trains", "value": watts(e["rows"]["cuda"].get("power"))},
             {"what": "evolve --train-device cuda --no-mqtt, 2 generations",
              "value": f"exit {run['exit_code']}, {run.get('rows', 0)} rows on {run.get('train_device')}, parity "
                       f"{'ok' if run.get('parity_ok') else 'FAILED'} (max err "
                       f"{run.get('max_onnx_abs_err') or 0:.3g}), {run['wall_s']:.0f} s"},
             {"what": "NVML power during that run", "value": watts(run.get("power"))}]
    return markdown(rows, [("measure", "what", ""), ("result", "value", "")])


def watts(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("mean_w") is None:
        return f"not measured: {(summary or {}).get('reason')}"
    energy = f", {summary['energy_j']:.0f} J" if summary.get("energy_j") is not None else ""
    return f"{summary['mean_w']:.0f} W mean over {summary['seconds']:.0f} s ({summary['rail']}{energy})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096, help="training images per timed epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per configuration (the first warms up)")
    parser.add_argument("--subset", type=int, default=1024, help="--train-subset of the evolve run")
    parser.add_argument("--evolve-timeout", type=int, default=360, help="seconds the evolve run may take")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"bench/gpu.py: torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda or 'no'}):"
              f" nothing measured, nothing written", file=sys.stderr)
        return 2
    started = time.perf_counter()
    result = {"facts": facts(), "args": vars(args), "epochs": epochs_part(args), "evolve": evolve_part(args)}
    result["total_s"] = time.perf_counter() - started
    save("gpu", result, table(result) + f"\n\n{result['facts']['gpu']}; bench/gpu.py took "
                                        f"{result['total_s']:.0f} s.")
    return 0 if result["evolve"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
