"""Distributed training on this machine (docs/distributed.md): seconds per training epoch of vgg-small on glyphs,
with 1 process (2 threads, then 1 thread) and with 2 processes under torchrun (1 thread each: torchrun's ranks
get cores // local ranks threads), and the ratios.

Each configuration runs host_trainer.loop.training.train, the function every generation trains with, for
`--epochs` epochs of `--images` glyphs at the run's batch size (128: 64 per rank with 2 ranks); the first epoch
is a warm-up and the median of the others is reported.

    python bench/ddp.py [--epochs 3] [--images 4096]          (make bench-ddp)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, markdown, save  # also puts the repository on sys.path

CONFIGS = [  # (name, processes, threads per process)
    ("1 process, 2 threads", 1, 2),
    ("1 process, 1 thread", 1, 1),
    ("2 processes (torchrun), 1 thread each", 2, 1),
]


def worker(args: argparse.Namespace) -> None:
    """One configuration: under torchrun every rank runs this; rank 0 writes the result."""
    import torch

    from host_trainer import distributed
    from host_trainer.data.stream import load_data
    from host_trainer.loop.training import TrainConfig, train
    from host_trainer.method.masks import dense_masks
    from host_trainer.models.registry import build_model
    from host_trainer.tasks.registry import make_task

    me = distributed.init(300.0)
    if not me.active:
        torch.set_num_threads(args.threads)
    data = load_data("classify", "glyphs", seed=0, image_size=32)
    split = data.train.take(args.images)
    torch.manual_seed(0)
    model = build_model("vgg-small", data.num_classes, data.input_shape)
    task, masks = make_task("classify", data, model), dense_masks(model)
    seconds = []
    for epoch in range(args.epochs):
        started = time.perf_counter()
        train(model, masks, split, TrainConfig(epochs=1.0, seed=epoch), task)
        seconds.append(time.perf_counter() - started)
    if me.leader:
        Path(args.out).write_text(json.dumps({"epoch_seconds": seconds, "threads": torch.get_num_threads(),
                                              "world_size": me.size}))
    distributed.teardown()


def measure(processes: int, threads: int, args: argparse.Namespace, out: Path) -> dict:
    script = [str(Path(__file__).resolve()), "--worker", "--epochs", str(args.epochs), "--images",
              str(args.images), "--threads", str(threads), "--out", str(out)]
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               *script]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    result = json.loads(out.read_text())
    timed = result["epoch_seconds"][1:] or result["epoch_seconds"]
    return {"processes": processes, "threads_per_process": result["threads"], "epoch_s": statistics.median(timed),
            "epochs_s": result["epoch_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, processes, threads) in enumerate(CONFIGS):
            row = measure(processes, threads, args, Path(tmp) / f"{i}.json")
            rows.append({"config": name, **row})
    base = rows[0]["epoch_s"]
    for row in rows:
        row["vs_1_process_2_threads"] = base / row["epoch_s"]
    table = markdown(rows, [("configuration", "config", ""), ("threads/process", "threads_per_process", "d"),
                            ("s/epoch", "epoch_s", ".2f"), ("speed vs 1 process × 2 threads",
                                                            "vs_1_process_2_threads", ".2f")])
    table += (f"\n\nvgg-small on glyphs, {args.images} images per epoch, batch 128 (global), median of epochs "
              f"2..{args.epochs}, gloo on CPU, {os.cpu_count()} cores.")
    save("ddp", {"rows": rows, "images": args.images, "epochs": args.epochs, "cores": os.cpu_count()}, table)


if __name__ == "__main__":
    main()
