"""Rank 0's orders to the other ranks, carried through torchrun's key-value store (MASTER_ADDR:MASTER_PORT) in
sequence, with a heartbeat.

The store rather than a collective: a follower waits as long as rank 0 measures (which may take longer than the
collective timeout) and gives up only when rank 0's heartbeat stops for `timeout_s`. What an order says is
distributed/orders.py; this is only the transport of its JSON.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import timedelta

import torch.distributed as dist

from host_trainer.distributed.errors import DistributedError

BEAT_S = 1.0  # rank 0's heartbeat period
POLL_S = 2.0  # how long a follower waits on the store between heartbeat checks
FINAL_OPS = ("stop", "abort")  # after one of these rank 0 sends nothing more


class Channel:
    def __init__(self, leader: bool, timeout_s: float):
        self.leader, self.timeout_s, self.seq, self.done = leader, timeout_s, 0, False
        run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
        self.prefix = f"host_trainer/{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        self.store = self._connect()
        self._stop = threading.Event()
        if leader:
            threading.Thread(target=self._beat, name="rank0-heartbeat", daemon=True).start()

    def _connect(self) -> dist.TCPStore:
        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                             timeout=timedelta(seconds=self.timeout_s), wait_for_workers=False)

    def _beat(self) -> None:
        store = self._connect()  # its own connection: the main thread's may be waiting
        while not self._stop.wait(BEAT_S):
            try:
                store.add(self.prefix + "beat", 1)
            except Exception:  # the store went away: the run is ending
                return

    def send(self, message: dict) -> None:
        self.store.set(f"{self.prefix}order/{self.seq}", json.dumps(message))
        self.seq += 1
        self.done = message["op"] in FINAL_OPS

    def receive(self) -> dict:
        key, beat, since = f"{self.prefix}order/{self.seq}", -1, time.monotonic()
        while True:
            try:
                self.store.wait([key], timedelta(seconds=POLL_S))
                break
            except RuntimeError:  # not there yet (DistStoreError is a RuntimeError): is rank 0 still beating?
                now = int(self.store.add(self.prefix + "beat", 0))
                if now != beat:
                    beat, since = now, time.monotonic()
                elif time.monotonic() - since > self.timeout_s:
                    raise DistributedError(f"rank 0 has not been heard from for {self.timeout_s:g} s") from None
        self.seq += 1
        return json.loads(self.store.get(key))

    def close(self) -> None:
        self._stop.set()
