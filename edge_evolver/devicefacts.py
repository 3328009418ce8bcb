"""Facts about the board that change what a measurement means, read from sysfs/procfs.

The same model runs at very different speeds under another nvpmodel mode, with or without
``jetson_clocks``, or on a hot board: the daemon's retained status and `info` carry these facts, every
result carries the power mode and clock state, and telemetry the temperatures, GPU load and memory.
Each function takes ``root`` (tests pass a fixture tree shaped like a real board), never raises, and
returns None for what it cannot tell (a desktop, a container, a board without the file).
"""

import os
import platform
import re
import subprocess
from typing import Any, Callable, Dict, List, Optional

from .power.sysfs import read_int, read_text, sorted_glob, under

# L4T (Jetson Linux) release -> JetPack, after NVIDIA's JetPack archive as tabulated by
# jetson-stats (jtop/core/jetson_variables.py). Releases not listed map to None, not a guess.
JETPACK_FOR_L4T = {
    "32.1.0": "4.2", "32.2.0": "4.2.1", "32.2.1": "4.2.2", "32.2.3": "4.2.3", "32.3.1": "4.3",
    "32.4.2": "4.4 DP", "32.4.3": "4.4", "32.4.4": "4.4.1", "32.5.0": "4.5", "32.5.1": "4.5.1",
    "32.5.2": "4.5.1", "32.6.1": "4.6", "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3",
    "32.7.4": "4.6.4", "32.7.5": "4.6.5", "32.7.6": "4.6.6",
    "34.1.0": "5.0 DP", "34.1.1": "5.0.1 DP", "35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1",
    "35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4", "35.6.1": "5.1.5",
    "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
}  # fmt: skip

L4T_RE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)")
POWER_MODEL_RE = re.compile(r"<\s*POWER_MODEL\s+ID\s*=\s*(\d+)\s+NAME\s*=\s*([^\s>]+)\s*>")
NVPMODEL_TIMEOUT_S = 5.0

# Where the integrated GPU's devfreq node lives across releases: gpu.0 (Nano, JetPack 5 Orin),
# <addr>.gpu (TX1, JetPack 6 Orin), <addr>.gv11b (Xavier), <addr>.ga10b (Orin), gp10b (TX2).
GPU_DEVFREQ_GLOBS = (
    "/sys/devices/gpu.0/devfreq/*",
    "/sys/devices/platform/gpu.0/devfreq/*",
    "/sys/devices/*.gpu/devfreq/*",
    "/sys/devices/*.gp10b/devfreq/*",
    "/sys/devices/*.gv11b/devfreq/*",
    "/sys/devices/*.ga10b/devfreq/*",
    "/sys/devices/platform/*.gpu/devfreq/*",
    "/sys/devices/platform/bus@0/*.gpu/devfreq/*",
    "/sys/devices/platform/bus@0/*.ga10b/devfreq/*",
)

# A thermal zone outside this range is a sensor that is off or not wired: Orin's cv zones read
# -256 C with the DLA powered down, and some boards report -40 C for absent sensors.
TEMP_RANGE_C = (-40.0, 150.0)


def _text_or_none(path: str) -> Optional[str]:
    try:
        return read_text(path)
    except OSError:
        return None


def board_model(root: str = "/") -> Optional[str]:
    """The device-tree model ("NVIDIA Jetson Nano Developer Kit"); the file is NUL-terminated."""
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            with open(under(root, path), "rb") as handle:
                model = handle.read().replace(b"\x00", b"").decode("utf-8", "replace").strip()
        except OSError:
            continue
        if model:
            return model
    return None


def l4t_release(root: str = "/") -> Optional[str]:
    """"32.7.1" from /etc/nv_tegra_release ("# R32 (release), REVISION: 7.1, GCID: ...")."""
    text = _text_or_none(under(root, "/etc/nv_tegra_release"))
    match = L4T_RE.search(text or "")
    return f"{match.group(1)}.{match.group(2)}" if match else None


def jetpack_for_l4t(l4t: Optional[str]) -> Optional[str]:
    """The JetPack release shipping this L4T ("32.7.1" -> "4.6.1"), or None when not in the table."""
    if not l4t:
        return None
    parts = l4t.split(".")
    # "32.5" and "32.5.0" are the same release; the table is keyed with three parts.
    key = ".".join((parts + ["0", "0"])[:3])
    return JETPACK_FOR_L4T.get(key)


def _parse_nvpmodel_query(output: str) -> Dict[str, Any]:
    """{"name", "id"} from ``nvpmodel -q``: "NV Power Mode: MAXN" then the id on the next line."""
    found: Dict[str, Any] = {}
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith("NV Power Mode:"):
            found["name"] = line.split(":", 1)[1].strip() or None
            following = lines[index + 1] if index + 1 < len(lines) else ""
            if following.isdigit():
                found["id"] = int(following)
    return found


def _conf_modes(root: str) -> Dict[int, str]:
    text = _text_or_none(under(root, "/etc/nvpmodel.conf")) or ""
    return {int(mode_id): name for mode_id, name in POWER_MODEL_RE.findall(text)}


def _status_mode_id(root: str) -> Optional[int]:
    # "pmode:0000" (JetPack 4.3+ may add " fmode:quiet").
    match = re.search(r"pmode:(\d+)", _text_or_none(under(root, "/var/lib/nvpmodel/status")) or "")
    return int(match.group(1)) if match else None


def _query_nvpmodel(run: Callable[..., Any]) -> Dict[str, Any]:
    try:
        done = run(
            ["nvpmodel", "-q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,  # noqa: UP021 - also runs on the board's Python 3.6
            timeout=NVPMODEL_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    if getattr(done, "returncode", 1) != 0:
        return {}
    return _parse_nvpmodel_query(done.stdout or "")


def power_mode(root: str = "/", run: Optional[Callable[..., Any]] = None) -> Optional[Dict[str, Any]]:
    """The nvpmodel mode as {"id": int, "name": str}, or None off a Jetson / when unknown.

    Asks ``nvpmodel -q`` first (``run`` defaults to subprocess.run, and only for the live
    system, root "/"), then falls back to /var/lib/nvpmodel/status for the id and
    /etc/nvpmodel.conf for its name. Either key may be None when only half is known.
    """
    if run is None and root in ("/", ""):
        run = subprocess.run
    found = _query_nvpmodel(run) if run is not None else {}
    modes = _conf_modes(root)
    if found.get("id") is None and found.get("name"):
        # The id that goes with the name nvpmodel printed, not the status file's (it may lag).
        found["id"] = next((mode_id for mode_id, name in modes.items() if name == found["name"]), None)
    if found.get("id") is None:
        found["id"] = _status_mode_id(root)
    if not found.get("name") and found.get("id") is not None:
        found["name"] = modes.get(found["id"])
    if found.get("id") is None and not found.get("name"):
        return None
    return {"id": found.get("id"), "name": found.get("name")}


def _freq_pairs(root: str) -> List[List[int]]:
    """[min, max] for each online CPU's cpufreq policy and the GPU devfreq node, when readable."""
    pairs = []
    for cpu in sorted_glob(root, "/sys/devices/system/cpu/cpu[0-9]*"):
        online = _text_or_none(cpu + "/online")
        if online is not None and online != "1":
            continue  # cpu0 often has no "online" file: it cannot be taken offline
        pair = _min_max(cpu + "/cpufreq/scaling_min_freq", cpu + "/cpufreq/scaling_max_freq")
        if pair:
            pairs.append(pair)
    seen = set()
    for pattern in GPU_DEVFREQ_GLOBS:
        for node in sorted_glob(root, pattern):
            if os.path.realpath(node) not in seen:
                seen.add(os.path.realpath(node))
                pair = _min_max(node + "/min_freq", node + "/max_freq")
                if pair:
                    pairs.append(pair)
    return pairs


def _min_max(min_path: str, max_path: str) -> Optional[List[int]]:
    try:
        return [read_int(min_path), read_int(max_path)]
    except (OSError, ValueError):
        return None


def clocks_locked(root: str = "/") -> Optional[bool]:
    """True when every readable online-CPU policy and the GPU have min == max (jetson_clocks).

    False when something readable is not pinned; None when nothing is readable.
    """
    pairs = _freq_pairs(root)
    if not pairs:
        return None
    return all(low == high for low, high in pairs)


def temperatures(root: str = "/") -> Dict[str, float]:
    """{zone type: degrees C} from the thermal zones, skipping unreadable and implausible ones."""
    out: Dict[str, float] = {}
    for zone in sorted_glob(root, "/sys/class/thermal/thermal_zone*"):
        try:
            zone_type = read_text(zone + "/type")
            celsius = read_int(zone + "/temp") / 1000.0  # millidegrees
        except (OSError, ValueError):
            continue  # e.g. EINVAL/ENODATA from a zone whose sensor is powered down
        if not TEMP_RANGE_C[0] < celsius <= TEMP_RANGE_C[1]:
            continue
        key = zone_type if zone_type not in out else f"{zone_type}@{os.path.basename(zone)}"
        out[key] = round(celsius, 3)
    return out


def gpu_load(root: str = "/") -> Optional[float]:
    """The integrated GPU's load in percent, or None: the devfreq node's device has a `load` file in
    tenths of a percent (0-1000), the number tegrastats and jtop show as GR3D."""
    for pattern in GPU_DEVFREQ_GLOBS:
        for node in sorted_glob(root, pattern):
            try:
                return read_int(os.path.join(os.path.dirname(os.path.dirname(node)), "load")) / 10.0
            except (OSError, ValueError):
                continue
    return None


def memory_mb(root: str = "/") -> Dict[str, Optional[float]]:
    """Used and total memory in MiB from /proc/meminfo (a Jetson's GPU shares it); None when unknown."""
    text = _text_or_none(under(root, "/proc/meminfo")) or ""
    kib = {name: int(value) for name, value in re.findall(r"^(MemTotal|MemAvailable):\s+(\d+)", text, re.M)}
    total, available = kib.get("MemTotal"), kib.get("MemAvailable")
    return {
        "memory_used_mb": None if total is None or available is None else round((total - available) / 1024.0, 1),
        "memory_total_mb": None if total is None else round(total / 1024.0, 1),
    }


def gauges(root: str = "/") -> Dict[str, Optional[float]]:
    """Live load for telemetry: GPU load (%) and memory (MiB); never raises."""
    found: Dict[str, Optional[float]] = {"gpu_load_pct": _safe(gpu_load, root)}
    found.update(_safe(memory_mb, root) or {"memory_used_mb": None, "memory_total_mb": None})
    return found


def cpu_count(root: str = "/") -> Optional[int]:
    """CPUs present per /sys/devices/system/cpu/present ("0-3,5"); os.cpu_count() as a fallback."""
    text = _text_or_none(under(root, "/sys/devices/system/cpu/present"))
    if text:
        try:
            return sum(_range_size(part) for part in text.split(",") if part)
        except ValueError:
            pass
    return os.cpu_count() if root in ("/", "") else None


def _range_size(part: str) -> int:
    low, _, high = part.partition("-")
    return int(high or low) - int(low) + 1


def collect_facts(root: str = "/") -> Dict[str, Any]:
    """Everything above in one JSON-ready dict (the daemon's retained status, and `info`)."""
    l4t = _safe(l4t_release, root)
    return {
        "board": _safe(board_model, root),
        "l4t": l4t,
        "jetpack": jetpack_for_l4t(l4t),
        "power_mode": _safe(power_mode, root),
        "clocks_locked": _safe(clocks_locked, root),
        "temperatures": _safe(temperatures, root) or {},
        "cpu_count": _safe(cpu_count, root),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def _safe(function: Callable[[str], Any], root: str) -> Any:
    # Facts are informative: a surprise in one file must not stop the daemon from starting.
    try:
        return function(root)
    except Exception:
        return None


__all__ = [
    "board_model",
    "clocks_locked",
    "collect_facts",
    "cpu_count",
    "gauges",
    "gpu_load",
    "jetpack_for_l4t",
    "l4t_release",
    "memory_mb",
    "power_mode",
    "temperatures",
]
