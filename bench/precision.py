"""Benchmark 3: what the precision restriction costs. For every generation of a run: test accuracy
before and after restriction (from generations.jsonl), and the ONNX size at fp32 and at fp16.

    python bench/precision.py RUN_DIR          # e.g. the run made by bench/default_run.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import markdown, save

from host_trainer.loop import checkpoint as ckpt
from host_trainer.method.export import to_onnx_bytes
from host_trainer.rundir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    store = RunDir(args.run)
    config = store.read_config()
    records = store.records()
    out = []
    for row in (r for r in records if r.accepted):
        checkpoint = ckpt.read_checkpoint(store.gen_dir(row.generation))
        shape = tuple(checkpoint.meta["architecture"]["input_shape"])
        fp32 = len(to_onnx_bytes(checkpoint.model, shape, "fp32", "logits"))
        out.append({"gen": row.generation, "before": row.accuracy_before_restriction * 100,
                    "after": row.accuracy * 100,
                    "delta": (row.accuracy - row.accuracy_before_restriction) * 100,
                    "fp32_kb": fp32 / 1000, "fp16_kb": row.onnx_bytes / 1000, "ratio": fp32 / row.onnx_bytes})
    table = markdown(out, [("gen", "gen", "d"), ("accuracy before %", "before", ".2f"),
                           ("after fp16 %", "after", ".2f"), ("change (points)", "delta", "+.2f"),
                           ("fp32 ONNX KB", "fp32_kb", ".0f"), ("fp16 ONNX KB", "fp16_kb", ".0f"),
                           ("size ratio", "ratio", ".2f")])
    deltas = [r.delta for r in out]
    number_format = config.get("precision_format") or config.get("precision")  # config.json of 0.1: "precision"
    table += (f"\n\nrestriction: {number_format}; mean change {sum(deltas) / len(deltas):+.3f} points, "
              f"largest {max(deltas, key=abs):+.2f}")
    save("precision", {"run": str(args.run), "rows": out}, table)


if __name__ == "__main__":
    main()
