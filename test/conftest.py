"""Shared pytest setup. ROS tests need the colcon build (make test does it); they fail, never skip,
when it is missing, so a broken build cannot pass as green."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.umask(0o022)  # outputs get the umask's modes (visloc_core.atomic): tests check 0755 / 0644

# `make test` (scripts/run_tests.sh) sets VISLOC_FAIL_ON_SKIP=1: there a skipped test is a failure, since a skip
# would count as green what did not run (a missing ros-src package, a system call the machine lacks). Targeted
# runs on a partial install may skip with the reason.
_SKIPPED: list[str] = []


def pytest_runtest_logreport(report) -> None:
    if report.skipped:
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _SKIPPED and os.environ.get("VISLOC_FAIL_ON_SKIP") == "1" and exitstatus == 0:
        print(f"\nVISLOC_FAIL_ON_SKIP=1 and {len(_SKIPPED)} test(s) skipped: {', '.join(_SKIPPED)}")
        session.exitstatus = 1


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


_MODULE_DOMAINS = itertools.count(1)


@pytest.fixture(scope="module")
def ros():
    """rclpy initialised for the ROS tests of one module (real DDS), on a DDS domain of the module's own.

    Why a domain per module: a lifecycle node of an earlier module can stay discoverable after its module
    ended (an rclpy participant of a shut-down context, a subprocess still exiting) without answering.
    `ros2 launch`'s configure request went to such a node (its wait_for_service saw the old
    /visloc_localizer/change_state) and was never answered, so the launched node stayed unconfigured.
    Subprocesses started by the module inherit the domain through the environment. Domains stay in
    scripts/run_tests.sh's range 101..200.
    """
    import rclpy

    before = os.environ.get("ROS_DOMAIN_ID")
    base = int(before) if before and before.isdigit() else 101
    domain = 101 + (base - 101 + next(_MODULE_DOMAINS)) % 100
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    rclpy.init()
    try:
        yield
    finally:
        rclpy.try_shutdown()
        if before is None:
            os.environ.pop("ROS_DOMAIN_ID", None)
        else:
            os.environ["ROS_DOMAIN_ID"] = before


@pytest.fixture(scope="module")
def tiny_artifact():
    """The trained tiny APR artifact of test/ros_helpers.py (cached across runs)."""
    from ros_helpers import trained_tiny_artifact

    return trained_tiny_artifact()
