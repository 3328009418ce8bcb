"""A discrete NVIDIA GPU's own power sensor through NVML (pynvml, from nvidia-ml-py).

This measures the GPU board only (rail = the GPU's name), not the host. Jetsons have no NVML,
so there ``nvmlInit`` fails and the meter is unavailable. ``nvmlDeviceGetPowerUsage`` is in mW
(on Ampere and newer it is a 1 s average, not instantaneous); the total-energy counter (mJ)
exists from Volta on and gives exact window energy when present.
"""

import contextlib
from typing import Any, Dict, Optional

from .base import MeterUnavailable, PowerMeter, exception_text

GPU_INDEX = 0


def _text(value: Any) -> str:
    # Older pynvml returns bytes for names, nvidia-ml-py 11.5+ returns str.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class NvmlMeter(PowerMeter):
    name = "nvml"

    def __init__(self, nvml: Any, handle: Any, gpu_name: str, has_energy: bool) -> None:
        self._nvml = nvml
        self._handle = handle
        self.rail = gpu_name
        self.has_energy = has_energy
        self._open = True

    @classmethod
    def probe(cls, root: str = "/") -> "NvmlMeter":
        try:
            import pynvml
        except ImportError as exc:
            raise MeterUnavailable("pynvml is not installed (pip install nvidia-ml-py)") from exc
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError subclasses: library missing, driver not loaded...
            raise MeterUnavailable(f"NVML did not initialise: {exception_text(exc)}") from exc
        try:
            return cls._open_gpu(pynvml)
        except MeterUnavailable:
            pynvml.nvmlShutdown()
            raise

    @classmethod
    def _open_gpu(cls, pynvml: Any) -> "NvmlMeter":
        try:
            if pynvml.nvmlDeviceGetCount() <= GPU_INDEX:
                raise MeterUnavailable("NVML sees no GPU")
            handle = pynvml.nvmlDeviceGetHandleByIndex(GPU_INDEX)
            gpu_name = _text(pynvml.nvmlDeviceGetName(handle))
            pynvml.nvmlDeviceGetPowerUsage(handle)
        except MeterUnavailable:
            raise
        except Exception as exc:  # NVMLError_NotSupported on GPUs without a power sensor, etc.
            raise MeterUnavailable(f"NVML cannot read GPU {GPU_INDEX} power: {exception_text(exc)}") from exc
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            has_energy = True
        except Exception:  # pre-Volta GPUs: NVMLError_NotSupported; fall back to sampled power
            has_energy = False
        return cls(pynvml, handle, gpu_name, has_energy)

    def read_watts(self) -> Optional[float]:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0

    def read_energy_j(self) -> Optional[float]:
        if not self.has_energy:
            return None
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0

    def _details(self) -> Dict[str, Any]:
        return {
            "source": "pynvml",
            "gpu_index": GPU_INDEX,
            "unit": "W from nvmlDeviceGetPowerUsage (mW)",
            "energy_counter": self.has_energy,
        }

    def close(self) -> None:
        if self._open:
            self._open = False
            # Shutting down after a driver reset fails harmlessly.
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
