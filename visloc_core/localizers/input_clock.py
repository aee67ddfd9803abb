"""The clock of the image stream, to judge the stamps of the localizer's other inputs.

map->odom is computed from odometry interpolated AT the image stamp, so odometry (or TF) stamped
far from the images is useless at best, and at worst (one message stamped in 2038) it would become
the newest sample of the odometry buffer and block every later one. The node's own clock cannot
judge it: in a bag replay without /clock the images carry the bag's time, not the wall time. The
reference is therefore the image stream itself: the stamp of the last image received, advanced by
the (monotonic) time since it arrived. A stamp further from that than ``tolerance_s`` plus the time
since the last image (images may stall; a replay may run faster than real time) is implausible.
Before the first image nothing is judged (the odometry buffer restarts itself after a jump back).
"""

from __future__ import annotations

import time


class ImageClock:
    """Thread-safe by construction: one tuple is replaced atomically."""

    def __init__(self, tolerance_s: float = 10.0) -> None:
        self.tolerance_ns = int(tolerance_s * 1e9)
        self._last: tuple[int, int] | None = None  # (image stamp ns, monotonic ns when it arrived)

    def observe(self, image_stamp_ns: int, now_mono_ns: int | None = None) -> None:
        """An image with this stamp arrived now."""
        self._last = (int(image_stamp_ns), time.monotonic_ns() if now_mono_ns is None else int(now_mono_ns))

    def reset(self) -> None:
        self._last = None

    def implausible(self, stamp_ns: int, what: str, now_mono_ns: int | None = None) -> str | None:
        """None when ``stamp_ns`` fits the image clock (or no image was seen yet), else why not (one line)."""
        last = self._last
        if last is None or self.tolerance_ns <= 0:
            return None
        now = time.monotonic_ns() if now_mono_ns is None else int(now_mono_ns)
        elapsed = max(0, now - last[1])
        offset = int(stamp_ns) - (last[0] + elapsed)
        allowed = self.tolerance_ns + elapsed
        if abs(offset) <= allowed:
            return None
        return (
            f"{what} stamped {offset * 1e-9:+.4g} s from the image clock (tolerance {allowed * 1e-9:.3g} s): "
            "ignored; check the publisher's clock"
        )
