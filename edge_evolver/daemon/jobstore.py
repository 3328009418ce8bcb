"""The daemon's disk state: the spool of accepted jobs and the results it has produced.

    <state_dir>/spool/<job_id>.job       the framed payload, fsync'ed before the broker's PUBACK
    <state_dir>/results/<job_id>.json    the result payload, written before it is published

A job whose spool file exists without a result is unfinished (the daemon was killed): it is
run again at start-up. A job whose result exists is done: a repeated job_id gets the stored
result back. Results are pruned oldest-first beyond ``max_results`` files or ``max_bytes`` in all,
so the disk stays bounded. The sizes are kept as a running total (one directory scan at start-up),
so storing a result does not stat thousands of files.
"""

import collections
import contextlib
import json
import os
from typing import Any, Dict, List, Optional

from ..files import atomic_write

JOB_SUFFIX = ".job"
RESULT_SUFFIX = ".json"
DEFAULT_MAX_RESULTS = 5000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class JobStore:
    def __init__(self, state_dir: str, max_results: int = DEFAULT_MAX_RESULTS,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.spool_dir = os.path.join(state_dir, "spool")
        self.results_dir = os.path.join(state_dir, "results")
        self.max_results = max_results
        self.max_bytes = max_bytes
        for directory in (self.spool_dir, self.results_dir):
            os.makedirs(directory, exist_ok=True)
        self._drop_temp_files()
        # file name -> size, oldest first: what pruning walks, and the running total it keeps.
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.results_bytes = 0
        self._scan_results()
        self._prune()

    def _drop_temp_files(self) -> None:
        """Half-written files of a killed daemon (atomic_write's temp names) are garbage."""
        for directory in (self.spool_dir, self.results_dir):
            for name in os.listdir(directory):
                if name.startswith(".tmp-"):
                    os.remove(os.path.join(directory, name))

    def job_path(self, job_id: str) -> str:
        return os.path.join(self.spool_dir, job_id + JOB_SUFFIX)

    def result_path(self, job_id: str) -> str:
        return os.path.join(self.results_dir, job_id + RESULT_SUFFIX)

    def spool(self, job_id: str, payload: bytes) -> None:
        atomic_write(self.job_path(job_id), payload, fsync=True)

    def is_spooled(self, job_id: str) -> bool:
        return os.path.exists(self.job_path(job_id))

    def read_job(self, job_id: str) -> bytes:
        with open(self.job_path(job_id), "rb") as handle:
            return handle.read()

    def finish(self, job_id: str) -> None:
        """Drop the spooled payload once its result is stored and handed to the broker."""
        if os.path.exists(self.job_path(job_id)):
            os.remove(self.job_path(job_id))

    def store_result(self, job_id: str, result: Dict[str, Any]) -> None:
        data = json.dumps(result, sort_keys=True).encode("utf-8")
        atomic_write(self.result_path(job_id), data, fsync=True)
        name = job_id + RESULT_SUFFIX
        self.results_bytes += len(data) - self._sizes.pop(name, 0)  # a rewrite replaces the old size
        self._sizes[name] = len(data)
        self._prune()

    def result(self, job_id: str) -> Optional[Dict[str, Any]]:
        try:
            with open(self.result_path(job_id), "rb") as handle:
                return json.loads(handle.read().decode("utf-8"))
        except (OSError, ValueError):
            return None

    def pending(self) -> List[str]:
        """Spooled job ids, oldest first (the order they were accepted in)."""
        entries = []
        for name in os.listdir(self.spool_dir):
            if name.endswith(JOB_SUFFIX) and not name.startswith(".tmp-"):
                path = os.path.join(self.spool_dir, name)
                entries.append((os.stat(path).st_mtime, name[: -len(JOB_SUFFIX)]))
        return [job_id for _, job_id in sorted(entries)]

    def _scan_results(self) -> None:
        """The one full scan: sizes of the stored results, oldest first."""
        entries = []
        for name in os.listdir(self.results_dir):
            if name.endswith(RESULT_SUFFIX) and not name.startswith(".tmp-"):
                try:
                    stat = os.stat(os.path.join(self.results_dir, name))
                except OSError:
                    continue
                entries.append((stat.st_mtime, name, stat.st_size))
        for _, name, size in sorted(entries):
            self._sizes[name] = size
            self.results_bytes += size

    def _prune(self) -> None:
        """Drop the oldest results beyond either bound; the newest always stays (it is being sent)."""
        while len(self._sizes) > 1 and (len(self._sizes) > self.max_results or self.results_bytes > self.max_bytes):
            name, size = self._sizes.popitem(last=False)
            self.results_bytes -= size
            with contextlib.suppress(FileNotFoundError):  # removed by hand: the total is right again
                os.remove(os.path.join(self.results_dir, name))
