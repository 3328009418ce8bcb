"""Intake limits: an unauthenticated job costs the board one signature check, not a signed answer each.

A job refused before any trusted key vouched for it (unsigned, unknown key, bad signature, oversized,
no frame) may come from anyone, as fast as anyone can publish. Its answer is a courtesy that costs more
than the check itself (an Ed25519 signature by the board, a SHA-256 of the payload, a log line and a
publish that the host's results subscription then has to read), so such answers are paced by one token
bucket: a burst, then a steady rate; the rest are counted and dropped without an answer, and the log gets
one ``refusals_suppressed`` summary per interval instead of a line each.

The bucket is shared by every sender: an MQTT delivery does not say who published it, and the key id in
an unverified job is a claim anyone can make, so a per-key bucket would be escaped by varying the claim.
Refusals after a valid signature (expired, wrong target, replayed, queue full...) are always answered,
and accepted jobs never touch the bucket: forged traffic cannot delay or silence a trusted host.
"""

import collections
import threading
import time
from typing import Any, Callable, Counter, Dict, Optional

from ..errors import ErrorCode

# The codes gate.open gives before (or instead of) a successful signature check. INVALID_FRAME is in:
# a payload without an EEJ1 frame is refused before its signature is even looked at.
UNAUTHENTICATED = frozenset({ErrorCode.UNSIGNED, ErrorCode.UNKNOWN_KEY, ErrorCode.BAD_SIGNATURE,
                             ErrorCode.OVERSIZE, ErrorCode.INVALID_FRAME})
REFUSALS_PER_S = 20.0  # a misconfigured host still hears why, at about 1 % of a core for the signing
REFUSAL_BURST = 100  # bench/security.py's 20 bad jobs of each class, several classes in a row, all answered
SUMMARY_INTERVAL_S = 10.0


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; starts full. Not thread-safe: the caller holds a lock."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0 or burst < 1:
            raise ValueError(f"token bucket: rate {rate} must be >= 0 and burst {burst} >= 1")
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self.tokens = float(burst)
        self._last = clock()

    def take(self) -> bool:
        """One token if there is one (True), else False; never blocks."""
        now = self.clock()
        # max(): a clock that steps back (an injected one, or a bad monotonic source) never drains the bucket.
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _start_timer(delay_s: float, action: Callable[[], Any]) -> None:
    timer = threading.Timer(delay_s, action)
    timer.daemon = True  # a pending summary never holds up the daemon's exit
    timer.start()


class RefusalLimiter:
    """Which refusals are answered. Called from paho's thread; the summary comes from a timer thread.

    ``report(summary)`` receives {"suppressed": n, "codes": {code: n}, "window_s": s} once per interval in
    which anything was suppressed (a window still open when the daemon stops goes unreported: the timer is a
    daemon thread); ``schedule(delay_s, action)`` runs ``action`` later (tests run it when they choose).
    """

    def __init__(self, report: Callable[[Dict[str, Any]], None], rate: float = REFUSALS_PER_S,
                 burst: float = REFUSAL_BURST, interval_s: float = SUMMARY_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic,
                 schedule: Callable[[float, Callable[[], Any]], None] = _start_timer) -> None:
        self.bucket = TokenBucket(rate, burst, clock)
        self.report, self.interval_s, self.clock, self.schedule = report, interval_s, clock, schedule
        self.answered = 0
        self.suppressed = 0  # in all, since start: for tests and benches
        self._window: Counter[str] = collections.Counter()
        self._window_start: Optional[float] = None
        self._lock = threading.Lock()

    def answer(self, code: str) -> bool:
        """True when a refusal with ``code`` is to be answered; False: counted, to be dropped silently."""
        if code not in UNAUTHENTICATED:
            return True
        with self._lock:
            if self.bucket.take():
                self.answered += 1
                return True
            self.suppressed += 1
            self._window[code] += 1
            first = self._window_start is None
            if first:
                self._window_start = self.clock()
        if first:  # one summary per window, however long the flood
            self.schedule(self.interval_s, self.flush)
        return False

    def flush(self) -> Optional[Dict[str, Any]]:
        """Report and reset the current window's count; None (and no report) when it is empty."""
        with self._lock:
            if self._window_start is None:
                return None
            summary = {"suppressed": sum(self._window.values()), "codes": dict(sorted(self._window.items())),
                       "window_s": round(self.clock() - self._window_start, 3)}
            self._window.clear()
            self._window_start = None
        self.report(summary)
        return summary
