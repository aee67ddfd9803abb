"""What the localizer node's /diagnostics says, without rclpy: problems over a sliding window.

Counters in /diagnostics are cumulative (frames, bad input, errors, by reason), but the LEVEL is
judged over the last ``window_s`` seconds: one bad message makes the node WARN for that long, then
it returns to OK by itself (a window, not a latch). Standing conditions also WARN while they last:
images published but not arriving, an incompatible image QoS, a worker still finishing a frame
after deactivate.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

MAX_REASONS = 32  # distinct reasons kept by name; the rest count as "other"


def reason_key(text: str) -> str:
    """The countable category of a problem line: its text up to the first ':' or '(' (details such
    as stamps and sizes follow those), at most 80 characters."""
    cut = len(text)
    for sep in (":", "("):
        i = text.find(sep)
        if 0 < i < cut:
            cut = i
    return text[:cut].strip()[:80] or "unspecified"


class ProblemLog:
    """Thread-safe record of bad input and errors: totals, counts by reason, recent events."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = float(window_s)
        self._lock = threading.Lock()
        self._events: deque[tuple[float, str]] = deque()  # (monotonic time, kind) within the window
        self.by_reason: Counter = Counter()
        self.last_text = ""
        self.last_t: float | None = None

    def record(self, kind: str, text: str, reason: str | None = None, now: float | None = None) -> None:
        """``kind``: 'bad_input' or 'error'; ``text``: one line naming what and why; ``reason``: its
        countable category (default: :func:`reason_key` of the text)."""
        now = time.monotonic() if now is None else now
        key = f"{kind}: {reason or reason_key(text)}"
        with self._lock:
            self._events.append((now, kind))
            self._trim(now)
            if key not in self.by_reason and len(self.by_reason) >= MAX_REASONS:
                key = f"{kind}: other"
            self.by_reason[key] += 1
            self.last_text, self.last_t = text, now

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()

    def recent(self, now: float | None = None) -> Counter:
        """Counts by kind within the window."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            return Counter(kind for _, kind in self._events)

    def reasons_text(self) -> str:
        with self._lock:
            return "; ".join(f"{k} = {n}" for k, n in self.by_reason.most_common())


def judge(
    configured: bool,
    state: str,
    config_error: str,
    recent: Counter,
    last_text: str,
    last_age_s: float | None,
    conditions: list[str],
) -> tuple[str, str]:
    """(level 'ok'|'warn'|'error', one-line message) of the node's /diagnostics status."""
    if not configured:
        return "error", f"not configured: {config_error or 'waiting for configure'}"
    parts = list(conditions)
    if recent:
        counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(recent.items()))
        age = f" ({last_age_s:.1f} s ago)" if last_age_s is not None else ""
        parts.append(f"{counts} in the last window; last{age}: {last_text}")
    if parts:
        return "warn", f"{state}; " + " | ".join(parts)
    return "ok", state
