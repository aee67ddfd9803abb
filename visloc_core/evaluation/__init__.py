"""Evaluation: per-frame records, summary reports, plots and benchmarks."""

from .records import FrameOutcome

__all__ = ["FrameOutcome"]
