"""Shared timing helpers for ``visloc bench`` modules: warm-up, repeats, robust statistics, and the
machine facts a number is meaningless without (CPU, cores, threads, BLAS/OpenMP environment, load).

Usage in a benchmark module::

    from .timing import time_call, machine_info, ratio, set_threads

    set_threads(args.threads)
    ours = time_call(lambda: model(x), warmup=3, repeats=20)
    base = time_call(lambda: baseline(x), warmup=3, repeats=20)
    return {"ours": ours, "baseline": base, "speedup": ratio(base["median_ms"], ours["median_ms"]),
            "machine": machine_info()}

All times are milliseconds of wall time (``time.perf_counter``). Percentiles use numpy's linear
interpolation. Benchmarks measure, they never assert on time; compare numbers as ratios taken on
the same machine in the same run (our machines are shared: ``machine_info()["load_average"]`` says
how busy it was).
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

#: environment variables that change how many threads numeric libraries use
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "OPENCV_FOR_THREADS_NUM",
)


def summarize_ms(samples_ms: list[float] | np.ndarray, key_suffix: str = "_ms") -> dict[str, float | int]:
    """n, median, p95, mean, std, min, max of samples in milliseconds (NaN statistics for none).
    Keys are ``median_ms``, ...; ``key_suffix=""`` gives ``median``, ... for a dict whose own name
    already says the unit (``meta.replay.e2e_latency_ms``)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    stats = ("median", "p95", "mean", "std", "min", "max")
    if x.size == 0:
        return {"n": 0, **{f"{k}{key_suffix}": float("nan") for k in stats}}
    values = (np.median(x), np.percentile(x, 95), np.mean(x), np.std(x), np.min(x), np.max(x))
    return {"n": int(x.size), **{f"{k}{key_suffix}": float(v) for k, v in zip(stats, values, strict=True)}}


def torch_threads() -> int | None:
    """torch's intra-op thread count, or None without torch."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return int(torch.get_num_threads())


def time_call(
    fn: Callable[[], Any],
    warmup: int = 3,
    repeats: int = 20,
    min_time_s: float | None = None,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Time ``fn()``: ``warmup`` untimed calls (lazy init, caches, allocator), then ``repeats`` timed
    calls (more if ``min_time_s`` is given and not yet reached). ``sync`` runs after each call inside
    the timed region (e.g. ``torch.cuda.synchronize``). Returns :func:`summarize_ms` of the samples plus
    ``warmup``, ``repeats``, ``samples_ms`` and the torch thread count at the time.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    samples: list[float] = []
    start = clock()
    while len(samples) < repeats or (min_time_s is not None and clock() - start < min_time_s):
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        samples.append(1000.0 * (clock() - t0))
    out: dict[str, Any] = summarize_ms(samples)
    out.update(
        {"warmup": int(warmup), "repeats": len(samples), "samples_ms": samples, "torch_threads": torch_threads()}
    )
    return out


class Stopwatch:
    """Accumulates named stage times: ``with sw("decode"): ...``; ``sw.summary()`` gives per-stage stats."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.samples_ms: dict[str, list[float]] = {}

    @contextmanager
    def __call__(self, stage: str):
        t0 = self.clock()
        try:
            yield
        finally:
            self.samples_ms.setdefault(stage, []).append(1000.0 * (self.clock() - t0))

    def summary(self) -> dict[str, dict[str, float | int]]:
        return {k: summarize_ms(v) for k, v in self.samples_ms.items()}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing, non-finite or the denominator is 0."""
    if numerator is None or denominator is None:
        return None
    a, b = float(numerator), float(denominator)
    if not (np.isfinite(a) and np.isfinite(b)) or b == 0:
        return None
    return a / b


def set_threads(n: int) -> None:
    """Pin torch (intra-op) and OpenCV to ``n`` threads, so numbers compare across machines.
    (OMP/BLAS environment variables only act before the libraries load: set them in the shell.)"""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:  # pragma: no cover
        pass


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / (1024.0 * 1024.0) if sys.platform == "darwin" else ru / 1024.0  # bytes on macOS, KiB on Linux


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, thread env vars, versions, load, memory."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch_threads(),
        "thread_env": {k: os.environ.get(k) for k in THREAD_ENV_VARS},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "peak_rss_mb": peak_rss_mb(),
    }
    with contextlib.suppress(OSError, AttributeError):  # not on every platform
        info["load_average_1_5_15min"] = list(os.getloadavg())
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_interop_threads"] = int(torch.get_num_interop_threads())
    except ImportError:  # pragma: no cover
        pass
    try:
        import cv2

        info["opencv"] = cv2.__version__
        info["opencv_threads"] = int(cv2.getNumThreads())
    except ImportError:  # pragma: no cover
        pass
    try:
        import psutil

        info["memory_total_gb"] = psutil.virtual_memory().total / 1e9
    except ImportError:  # pragma: no cover
        pass
    return info
