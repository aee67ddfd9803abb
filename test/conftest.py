"""Shared pytest setup. ROS tests need the colcon build (make test does it); they fail, never skip,
when it is missing, so a broken build cannot pass as green."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
