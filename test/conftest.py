"""Shared pytest setup. ROS tests need the colcon build (make test does it); they fail, never skip,
when it is missing, so a broken build cannot pass as green."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.umask(0o022)  # outputs get the umask's modes (visloc_core.atomic): tests check 0755 / 0644


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the run's seed (test/bounds.py) with the run's thread count (scripts/run_tests.sh
    runs the suite with 1 and with 2) and torch's deterministic algorithms where it has them."""
    from bounds import seed, threads

    np.random.seed(seed())
    try:
        import cv2
        import torch

        torch.manual_seed(seed())
        torch.set_num_threads(threads())
        torch.use_deterministic_algorithms(True, warn_only=True)
        cv2.setNumThreads(threads())
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


@pytest.fixture(scope="module")
def ros():
    """rclpy initialised for the ROS tests of one module (real DDS)."""
    import rclpy

    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture(scope="module")
def tiny_artifact():
    """The trained tiny APR artifact of test/ros_helpers.py (cached across runs)."""
    from ros_helpers import trained_tiny_artifact

    return trained_tiny_artifact()
