"""Measuring one model on this board: the path every `bench`, every daemon job and the host's
in-process benchmark take (docs/daemon.md).

- pipeline.py      `measure_model`: check, get an engine, make the feeds, smoke-test, agree, benchmark with power
- model_guard.py   our own check of the ONNX bytes before any runtime: external data, sizes (docs/model-safety.md)
- benchmark.py     the trtexec-like timing loop, with raw latencies and statistics
- inputs.py        seeded synthetic inputs
- agreement.py     does the engine compute what the exported model computes (reference outputs from the host)
- detection.py     decode + NMS of a detector's output, shared with the host's metrics
- engine_cache.py  built engines on disk, keyed by model and build
- onnx_check.py    onnx.checker, where the onnx package exists (a second opinion after model_guard)
- layer_map.py, profile.py  a per-layer profile mapped to the model's nodes

The backends' side (tensor descriptions, opset policy, the profiling pass) is in edge_evolver/backends/.
"""
