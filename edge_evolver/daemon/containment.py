"""Containment of the measuring process: a private, empty directory per job and a memory limit.

Used by runner.py inside the measuring process (docs/security.md):

- Each job runs with the child's working directory, ``TMPDIR`` and ``tempfile.tempdir`` set to a
  fresh, empty 0700 directory ``<work_dir>/job-XXXXXXXX``, removed after the job; whatever a
  runtime writes next to itself (ONNX Runtime's optimised model goes through ``tempfile``) lands
  there and goes with it. ``work_dir`` is the daemon's ``<state_dir>/work``: the state directory is
  writable under the unit's ``ProtectSystem=strict``, on disk rather than on a possibly RAM-backed
  /tmp, and leftovers of a killed child are swept when the next child starts. Without ``work_dir``
  (tests, a hand-run child) the root is a private ``mkdtemp`` in the temp directory (under systemd,
  the unit's ``PrivateTmp=``), removed when the child exits.
- The child gets each job as bytes over its pipe (runner.py: the daemon reads the spool file), never a
  path into the state directory, and hands a runtime bytes, never a path. It still runs as the daemon's
  user (the unit has no capability to switch to another uid), so native code that a hostile model ran
  inside a runtime could read that user's files, keys/board.key among them: a residual risk that only a
  separate uid for the child closes (docs/security.md).
- Memory: an rlimit set once at child start (``memory_mb``; 0 = automatic), see
  ``plan_memory_limit``. RLIMIT_AS counts every mapping, including the huge PROT_NONE ranges CUDA
  reserves for unified addressing, so it breaks CUDA/TensorRT initialisation: it is used for
  ONNX Runtime only. RLIMIT_DATA (Linux >= 4.7 counts private writable mappings, i.e. heap and
  anonymous memory, not PROT_NONE reservations nor shared device mappings; JetPack 4.6's kernel is
  4.9) is what an explicit limit becomes for tensorrt; the automatic choice there is no limit, logged,
  until it is verified on the boards. A job that hits the limit comes back OVERSIZE, naming the limit.
- The kernel's OOM killer: the child sets its own ``oom_score_adj`` to 1000 at start
  (``raise_oom_score``), so when memory runs out anyway (GPU memory of a Jetson is the same RAM, and
  no rlimit counts it) the child is killed first, not the daemon or another service, and the job comes
  back OVERSIZE (runner.py ``_death_result``).
- CPU: no RLIMIT_CPU. It counts the child's whole lifetime, so a long-lived child would be killed
  after enough ordinary jobs; the job's wall-clock timeout (``run``) kills the child instead.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Any, Dict, Iterator, NamedTuple, Optional

import structlog

from ..errors import ErrorCode, clip_line

log = structlog.get_logger("edge_evolver.runner")

WORK_PREFIX = "job-"
AUTO_SHARE = 0.75
AUTO_FLOOR_MB = 1024
OOM_SCORE_ADJ = 1000  # the most: the kernel's OOM killer takes this process before any other
# Messages of runtimes (and Python) that failed to allocate: under a limit, the limit is the likely cause.
OOM_MARKERS = ("failed to allocate memory", "bad_alloc", "out of memory", "cannot allocate memory",
               "memoryerror", "out_of_memory")


class MemoryLimit(NamedTuple):
    """The child's memory rlimit: ``resource`` is "RLIMIT_AS", "RLIMIT_DATA" or "" (none)."""

    resource: str
    mb: int
    reason: str


def physical_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return 0


def available_memory_bytes(meminfo: str = "/proc/meminfo") -> int:
    """The kernel's MemAvailable (what can be allocated without swapping or killing); 0 when unknown."""
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def raise_oom_score(path: str = "/proc/self/oom_score_adj") -> bool:
    """Make this process the OOM killer's first choice (1000). Any process may raise its own score, so this
    needs no privilege; where it fails anyway (no /proc), the child runs on, logged."""
    try:
        with open(path, "w") as handle:
            handle.write(str(OOM_SCORE_ADJ))
    except OSError as exc:
        log.warning("runner_oom_score_not_set", error=str(exc))
        return False
    return True


def resolve_backend_name(name: str) -> str:
    """The backend "auto" lands on, resolved as measure_model would; the name itself if none is usable
    (every job then fails with BACKEND_UNAVAILABLE anyway)."""
    if name != "auto":
        return name
    from ..backends import resolve_backend

    try:
        return resolve_backend(name).name
    except Exception:
        return name


def plan_memory_limit(backend: str, memory_mb: float, physical_bytes: int, available_bytes: int = 0) -> MemoryLimit:
    """Which rlimit the measuring process gets, and why.

    CUDA reserves address space far beyond physical memory (unified addressing), so RLIMIT_AS makes
    cuInit/TensorRT fail with out-of-memory: tensorrt gets RLIMIT_DATA when a limit is given, and no
    automatic limit (RLIMIT_DATA under CUDA is not yet verified on a Jetson; GPU allocations there
    are shared nvmap mappings that RLIMIT_DATA does not count anyway). ONNX Runtime's automatic limit
    is AUTO_SHARE of the memory *available* when the child starts: the physical memory would let a
    job take what the daemon and the board's other services are using, and the OOM killer would then
    pick among them. Address space over-counts (libraries, thread stacks, malloc arenas: about 600 MB
    for a small model on two threads), hence the floor AUTO_FLOOR_MB, never above the physical memory.
    """
    kind = "RLIMIT_DATA" if backend == "tensorrt" else "RLIMIT_AS"
    if memory_mb > 0:
        return MemoryLimit(kind, int(memory_mb), "child_memory_mb")
    if backend == "tensorrt":
        return MemoryLimit("", 0, "tensorrt: RLIMIT_AS breaks CUDA's address-space reservations and "
                                  "RLIMIT_DATA is not verified under CUDA on the boards; set child_memory_mb "
                                  "to apply RLIMIT_DATA")
    if available_bytes <= 0:
        if physical_bytes <= 0:
            return MemoryLimit("", 0, "the physical and available memory sizes are unknown")
        return MemoryLimit("RLIMIT_AS", physical_bytes >> 20, "automatic: the physical memory (available unknown)")
    mb = max(AUTO_FLOOR_MB, int(available_bytes * AUTO_SHARE) >> 20)
    if physical_bytes > 0:
        mb = min(mb, physical_bytes >> 20)
    available = available_bytes >> 20
    reason = f"automatic: {AUTO_SHARE:.0%} of the {available} MB available at start, at least {AUTO_FLOOR_MB} MB"
    return MemoryLimit("RLIMIT_AS", mb, reason)


def apply_memory_limit(limit: MemoryLimit) -> None:
    """Set soft and hard limit: a compromised child cannot raise it again."""
    if not limit.resource:
        log.info("runner_memory_limit", limit="none", reason=limit.reason)
        return
    import resource

    which = getattr(resource, limit.resource)
    _, hard = resource.getrlimit(which)
    value = limit.mb * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))
    log.info("runner_memory_limit", limit=limit.resource, mb=limit.mb, reason=limit.reason)


def explain_memory_failure(result: Dict[str, Any], limit: MemoryLimit) -> Dict[str, Any]:
    """An allocation failure under a limit becomes OVERSIZE naming the limit, whatever code the
    runtime's exception was classified as (ONNX Runtime's "Failed to allocate memory" is a run error)."""
    if not limit.resource or result.get("status") != "error":
        return result
    message = str(result.get("message") or "")
    if not any(marker in message.lower() for marker in OOM_MARKERS):
        return result
    text = f"the measuring process ran out of its {limit.mb} MB memory limit ({limit.resource}): {message}"
    return dict(result, code=ErrorCode.OVERSIZE, message=clip_line(text))


def prepare_work_root(work_dir: Optional[str]) -> str:
    """The private (0700) parent of the jobs' directories, emptied of a killed child's leftovers."""
    if not work_dir:
        return tempfile.mkdtemp(prefix="edge-evolver-work-")
    root = os.path.abspath(work_dir)
    os.makedirs(root, mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
    for name in os.listdir(root):
        if name.startswith(WORK_PREFIX):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return root


@contextlib.contextmanager
def job_directory(root: str) -> Iterator[str]:
    """Run the body in a fresh, empty 0700 directory (cwd, TMPDIR, tempfile's default), then remove it.

    Changed only while no other thread of the child reads them: the progress thread starts later.
    """
    path = tempfile.mkdtemp(prefix=WORK_PREFIX, dir=root)  # mkdtemp creates it 0700
    saved_tempdir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    os.chdir(path)
    tempfile.tempdir = path
    os.environ["TMPDIR"] = path
    try:
        yield path
    finally:
        os.chdir(root)
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(path, ignore_errors=True)
