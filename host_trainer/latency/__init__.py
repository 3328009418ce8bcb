"""The board's latency model: where an offspring's time goes, and how it changes with channel counts.

- `attribution`: a device's per-layer profile (ONNX node names) mapped to torch modules and coupling groups.
- `model`: what the host learns per device from those profiles and from probe jobs (docs/method.md,
  "Device-aware allocation"), stored in the run directory and reused by resumed and later runs.
- `probes`: single-layer networks benchmarked on the board at several channel counts.
"""
