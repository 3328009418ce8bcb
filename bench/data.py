"""Streaming vs in-memory loading of an image folder (issue #13): peak memory, throughput, CPU use.

Generates (once, cached under bench/out/data-images/ with a marker) an image folder of --images JPEGs at
--px pixels in 4 classes, then, each in a fresh process so that its peak memory is its own:

- in-memory: `stream_data`, then every training image decoded once, un-augmented (`splits.images`, the
  loader's workers), into one float32 array; then --epochs epochs of indexed batches from that array (a seeded
  permutation of the training split, one random shift per batch: `batching.shift`);
- streaming: `stream_data` (header scan + normalisation sample) then --epochs epochs of `make_loader(train,
  train=True, workers=2)` batches (decode, random resized crop, flip per image).

The two arms read the same files through the same reader and differ only in when pixels are decoded: once up
front and held, or every epoch per batch.

Peak memory is of the whole process tree (the parent samples /proc/PID/smaps_rollup every 200 ms: the process
and its DataLoader workers; PSS, with the RSS sum as an upper bound); CPU is the tree's user+system time over
the wall time, per core (--cores); "machine busy" is every process's share of all cores meanwhile (/proc/stat),
to tell idle cores from cores taken by other work. In-memory runs at every --sizes figure up to
--inmemory-max (default 10,000: its float32 array takes ~0.2 MB per 128 px image, and this machine has 24 GB
shared with others); streaming at every figure.

    python bench/data.py [--images 20000] [--px 128] [--sizes 5000,10000,20000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

from common import OUT, ROOT, markdown, save  # also puts the repository on sys.path

CLASSES = ("disc", "square", "bar", "ring")


def _draw(args: tuple[Path, int, int]) -> None:
    """One JPEG: a shape of its class, random colours, position and size, over a noisy gradient."""
    import numpy as np
    from PIL import Image, ImageDraw

    file, n, px = args
    rng = np.random.default_rng(n)
    base = np.linspace(0, 1, px)[None, :, None] * rng.uniform(0, 255, 3) + rng.normal(0, 12, (px, px, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d, c = ImageDraw.Draw(img), tuple(int(v) for v in rng.integers(0, 256, 3))
    r, x, y = (int(v) for v in (rng.integers(px // 8, px // 3), *rng.integers(px // 3, 2 * px // 3, 2)))
    shape = CLASSES[n % len(CLASSES)]
    if shape == "disc":
        d.ellipse((x - r, y - r, x + r, y + r), fill=c)
    elif shape == "square":
        d.rectangle((x - r, y - r, x + r, y + r), fill=c)
    elif shape == "bar":
        d.rectangle((x - r, y - r // 4, x + r, y + r // 4), fill=c)
    else:
        d.ellipse((x - r, y - r, x + r, y + r), outline=c, width=max(2, r // 4))
    img.save(file, quality=90)


def image_folder(images: int, px: int) -> Path:
    """The cached folder: reused when its marker says it is complete."""
    folder = OUT / "data-images" / f"{images}x{px}"
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    jobs = [(folder / CLASSES[n % len(CLASSES)] / f"{n:06d}.jpg", n, px) for n in range(images)]
    started = time.perf_counter()
    with multiprocessing.Pool(2) as pool:
        pool.map(_draw, jobs, chunksize=256)
    marker.write_text(f"{images} images, {px} px\n")
    print(f"generated {images} JPEGs in {time.perf_counter() - started:.1f} s: {folder}", flush=True)
    return folder


def subset(folder: Path, n: int) -> Path:
    """The first n images of `folder` (symbolic links), same classes: a smaller set of the same images."""
    files = sorted(folder.rglob("*.jpg"), key=lambda f: f.name)[:n]  # numbered across the classes
    sub = folder.parent / f"{folder.name}-first{n}"
    if not (sub / ".complete").is_file():
        for f in files:
            link = sub / f.parent.name / f.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(f)
        (sub / ".complete").write_text(f"{n}\n")
    return sub


def _tree(pid: int) -> list[int]:
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
            kids += [int(k) for k in text.split()]
    except OSError:
        return []
    return [pid] + [p for k in kids for p in _tree(k)]


def _memory_mb(pids: list[int]) -> tuple[float, float]:
    """(summed RSS, summed PSS) of `pids` in MB. Forked workers share the parent's pages (torch, numpy): RSS
    counts a shared page once per process, PSS splits it between them, so PSS sums to the tree's real use."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, pss / 1024


def measure(mode: str, folder: Path, px: int, epochs: int) -> dict:
    """Run one mode in a child process, sampling its tree's RSS; the child reports times and CPU."""
    cmd = [sys.executable, str(Path(__file__)), "--child", mode, "--folder", str(folder), "--px", str(px),
           "--epochs", str(epochs)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    peak_rss = peak_pss = 0.0
    while proc.poll() is None:
        rss, pss = _memory_mb(_tree(proc.pid))
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)  # reading smaps costs CPU on the cores being measured
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        raise RuntimeError(f"{mode} child failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"], result["peak_pss_mb"] = round(peak_rss, 1), round(peak_pss, 1)
    return result


def _cpu_s() -> float:
    """User + system seconds of this process and of its children already reaped (DataLoader workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine: were other processes competing for the cores?"""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _decoded(folder: Path, px: int) -> tuple:
    """(images float32 (N, C, S, S), labels int64 (N,)): the streamed training split, each image decoded once,
    un-augmented and normalised, into one array."""
    import gc

    import numpy as np

    from host_trainer.data.splits import images
    from host_trainer.data.stream import stream_data

    data = stream_data("classify", f"imagefolder:{folder}", seed=0, image_size=px)
    x, start = np.empty((len(data.train), *data.input_shape), np.float32), 0
    for batch in images(data.train):
        x[start: start + len(batch)] = batch
        start += len(batch)
    gc.collect()  # shuts the decoding workers down: their CPU time is counted, their memory not held
    return x, data.train.y


def _inmemory_epochs(folder: Path, px: int, epochs: int) -> tuple[int, list[float]]:
    """Decode everything once (`_decoded`), then indexed batches: a seeded permutation, one shift per batch."""
    import torch

    from host_trainer.data.batching import shift

    x, y = _decoded(folder, px)
    marks = [time.perf_counter()]
    x, y, gen = torch.from_numpy(x), torch.from_numpy(y), torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(order), 128):
            idx = order[start: start + 128]
            xb, _yb = shift(x[idx], 2, gen), y[idx]
            float(xb[:, :, 0, 0].sum())  # touch the batch, as a model would
        marks.append(time.perf_counter())
    return len(x), marks


def _stream_epochs(folder: Path, px: int, epochs: int) -> tuple[int, list[float]]:
    """The streaming path: build the lazy set, then make_loader's augmented batches from 2 workers."""
    import gc

    from host_trainer.data.stream import make_loader, stream_data

    data = stream_data("classify", f"imagefolder:{folder}", seed=0, image_size=px)
    marks = [time.perf_counter()]
    loader = make_loader(data.train, 128, train=True, seed=0, workers=2)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            float(batch.x[:, :, 0, 0].sum())
        marks.append(time.perf_counter())
    del loader, batch
    gc.collect()  # shuts the persistent workers down, so that their CPU time is counted (RUSAGE_CHILDREN)
    return len(data.train), marks


def run_child(mode: str, folder: Path, px: int, epochs: int, cores: int) -> dict:
    """One mode's figures: prepare time (load, or build), epoch times, throughput, CPU use of the cores."""
    import host_trainer.data.stream  # noqa: F401  (imports out of the timed window)
    import host_trainer.tasks.registry  # noqa: F401

    started, cpu0, machine0 = time.perf_counter(), _cpu_s(), _machine_jiffies()
    n, marks = (_inmemory_epochs if mode == "inmemory" else _stream_epochs)(folder, px, epochs)
    wall, cpu, machine1 = time.perf_counter() - started, _cpu_s() - cpu0, _machine_jiffies()
    epoch_s = [b - a for a, b in zip(marks, marks[1:])]
    later = epoch_s[1:] or epoch_s
    prepare = marks[0] - started
    return {"train_images": n, "prepare_s": prepare, "epoch_s": epoch_s, "epoch1_s": epoch_s[0],
            "first_epoch_img_s": n / (prepare + epoch_s[0]), "steady_img_s": n / (sum(later) / len(later)),
            "cpu_s": cpu, "wall_s": wall, "cpu_util_pct": 100 * cpu / (wall * cores),
            "machine_busy_pct": 100 * (machine1[0] - machine0[0]) / max(1, machine1[1] - machine0[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--px", type=int, default=128)
    ap.add_argument("--sizes", default="5000,10000,20000", help="image counts to measure (subsets of --images)")
    ap.add_argument("--inmemory-max", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--child", choices=["inmemory", "stream"])
    ap.add_argument("--folder", type=Path)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.folder, args.px, args.epochs, args.cores)))
        return
    folder = image_folder(args.images, args.px)
    rows = []
    for n in sorted(int(s) for s in args.sizes.split(",")):
        where = folder if n >= args.images else subset(folder, n)
        for mode in ("inmemory", "stream"):
            if mode == "inmemory" and n > args.inmemory_max:
                continue
            row = {"mode": mode, "images": n, **measure(mode, where, args.px, args.epochs)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    ratios = []
    for r in rows:
        if r["mode"] == "stream":
            mem = next((m for m in rows if m["mode"] == "inmemory" and m["images"] == r["images"]), None)
            if mem:
                ratios.append({"images": r["images"], "pss_ratio": r["peak_pss_mb"] / mem["peak_pss_mb"],
                               "first_epoch_speed_ratio": r["first_epoch_img_s"] / mem["first_epoch_img_s"],
                               "steady_speed_ratio": r["steady_img_s"] / mem["steady_img_s"]})
    columns = [("mode", "mode", ""), ("images", "images", "d"), ("train imgs", "train_images", "d"),
               ("peak PSS MB", "peak_pss_mb", ".0f"), ("peak RSS sum MB", "peak_rss_mb", ".0f"),
               ("prepare s", "prepare_s", ".1f"),
               ("epoch 1 s", "epoch1_s", ".1f"), ("1st epoch img/s (incl. prepare)", "first_epoch_img_s", ".0f"),
               ("later epoch img/s", "steady_img_s", ".0f"), ("CPU % of cores", "cpu_util_pct", ".0f"),
               ("machine busy %", "machine_busy_pct", ".0f")]
    table = markdown(rows, columns) + "\n\nstreaming / in-memory:\n\n" + markdown(
        ratios, [("images", "images", "d"), ("peak PSS", "pss_ratio", ".3f"),
                 ("1st-epoch throughput", "first_epoch_speed_ratio", ".2f"),
                 ("later-epoch throughput", "steady_speed_ratio", ".3f")])
    save("data", {"rows": rows, "ratios": ratios, "px": args.px, "cores": args.cores, "epochs": args.epochs,
                  "cpu_count": os.cpu_count()}, table)


if __name__ == "__main__":
    main()
