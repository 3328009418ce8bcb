"""final/README.md: how to run the exported model, rendered from its preprocess.json.

The snippets read preprocess.json rather than repeating its numbers, so they stay right for any run; the test
suite runs the ONNX Runtime snippet on the files it documents (tests/test_deploy_result.py).
"""

from __future__ import annotations

CLASSIFY_SNIPPET = '''import json

import numpy as np
import onnxruntime as ort
from PIL import Image

spec = json.load(open("preprocess.json"))
size = tuple(spec["image"]["size"])  # (width, height)
image = Image.open("photo.jpg")
image.draft(None, size)  # a large JPEG is decoded at a reduced scale, as in training
image = image.convert(spec["input"]["channels"]).resize(size, Image.Resampling.BILINEAR)
x = np.asarray(image, np.float32) / spec["image"]["scale"]
x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)  # HWC -> CHW
mean, std = (np.array(spec["normalize"][k], np.float32)[:, None, None] for k in ("mean", "std"))
x = ((x - mean) / std)[None]  # NCHW float32, a batch of one
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
logits = session.run(None, {spec["input"]["name"]: x})[0]
print(spec["classes"][int(logits[0].argmax())])
'''

DETECT_SNIPPET = '''import json

import numpy as np
import onnxruntime as ort
from PIL import Image

from edge_evolver.measure.detection import decode

spec = json.load(open("preprocess.json"))
S, mode, pad = spec["image"]["size"][0], spec["input"]["channels"], spec["image"]["pad"]
image = Image.open("photo.jpg")
scale = S / max(image.size)  # letterbox: the long side to S, centred
w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
ox, oy = (S - w) // 2, (S - h) // 2
image.draft(None, (w, h))  # a large JPEG is decoded at a reduced scale, as in training
canvas = Image.new(mode, (S, S), tuple(pad) if mode == "RGB" else pad[0])
canvas.paste(image.convert(mode).resize((w, h), Image.Resampling.BILINEAR), (ox, oy))
x = np.asarray(canvas, np.float32) / spec["image"]["scale"]
x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)  # HWC -> CHW
mean, std = (np.array(spec["normalize"][k], np.float32)[:, None, None] for k in ("mean", "std"))
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
out = session.run(None, {spec["input"]["name"]: ((x - mean) / std)[None]})[0]
d = spec["output"]["decode"]
(found,) = decode(out, d["num_classes"], d["stride"], d["score_threshold"], d["nms_iou"], d["max_detections"])
for box, score, label in zip(*found):
    x1, y1, x2, y2 = (box - [ox, oy, ox, oy]) / scale  # the photo's own pixels
    print(spec["classes"][label], round(float(score), 3), [round(float(v)) for v in (x1, y1, x2, y2)])
'''


def _summary(spec: dict) -> list[str]:
    source, shape = spec.get("source", {}), spec["input"]["shape"]
    score = source.get("test_score")
    scored = f"{source.get('metric', 'score')} {score:.4f} on the run's held-out test split" if score is not None \
        else "no recorded test score"
    speed = f", {source['fps']:.1f} fps measured on `{source.get('device_id')}`" if source.get("fps") else ""
    return [f"Generation {source.get('generation')} of run `{source.get('run')}` ({source.get('picked')}): "
            f"{scored}{speed}. Task `{spec['task']}`, input `{spec['input']['name']}` "
            f"{'x'.join(str(v) for v in shape)} ({spec['input']['channels']}, NCHW float32, any batch), "
            f"{len(spec['classes'])} classes."]


FILES = [
    "| file | what it is |", "|---|---|",
    "| `model.onnx` | the model as the run measured it (fp16 weights and compute, float32 input and output) |",
    "| `model.safetensors` | the compact network's weights, fp32 (the values the run restricted) |",
    "| `architecture.json` | what rebuilds that network in PyTorch: `host_trainer.load(\"final\")` |",
    "| `preprocess.json` | how to feed it: size, resize, channels, normalisation, classes, output decoding |",
]


def render(spec: dict) -> str:
    """The README of one final/ folder."""
    c, h, w = spec["input"]["shape"][1:]
    snippet = DETECT_SNIPPET if spec["task"] == "detect" else CLASSIFY_SNIPPET
    lines = ["# The evolved model, ready to deploy", "", *_summary(spec), "", *FILES, "",
             "## ONNX Runtime", "", "```python", snippet.rstrip("\n"), "```", "",
             "## TensorRT (`trtexec`, fp16)", "", "```bash",
             f"trtexec --onnx=model.onnx --fp16 --shapes={spec['input']['name']}:1x{c}x{h}x{w} "
             "--saveEngine=model.engine", "```", "",
             "## On a board, as the run measured it (`edge-evolver bench`)", "", "```bash",
             "edge-evolver bench model.onnx --backend tensorrt      # a Jetson: TensorRT from JetPack",
             "edge-evolver bench model.onnx --backend onnxruntime   # any machine with onnxruntime",
             "```", "",
             "## PyTorch", "", "```python", "import host_trainer", "",
             "deployed = host_trainer.load(\"final\")  # this folder: the compact nn.Module, fp32, eval mode",
             "x = deployed.prepare(\"photo.jpg\")       # preprocess.json applied: (1, C, H, W) float32",
             "```", "",
             "The schema of preprocess.json, and what is stable: docs/api.md in the edge-evolver repository.", ""]
    return "\n".join(lines)
