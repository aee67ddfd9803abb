"""Scoring of a ``visloc replay``: the node's results against the truth, frame by frame, and the
latency statistics of ``meta.replay``. No ROS here: the ROS half (visloc_ros/replay.py) decodes each
LocalizationResult message with ``visloc_ros.conversions.msg_to_result`` and hands over plain
:class:`~visloc_core.localizers.base.LocalizationResult` objects with their arrival times.

Conventions: the node publishes the pose of its ``base_frame`` (``T_map_base``, the result's
``T_world_cam`` field as decoded) with that frame's covariance; scoring takes it back to the camera
with the bag's extrinsic (``T_world_cam = T_map_base @ T_base_cam``, covariance through
``tf_logic.pose_in_output_frame``). A published image the node never answered counts as
NOT_LOCALIZED (infinite error); an image without truth is left out of the score (a missing truth is
not a localization failure). Times are ``time.perf_counter`` seconds; latencies milliseconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..localizers.base import LocalizationResult
from ..localizers.tf_logic import pose_in_output_frame
from .bench.timing import summarize_ms
from .records import FrameOutcome
from .replay_plan import Truth

log = logging.getLogger(__name__)

NO_RESULT_REASON = "no result from the node (dropped by its newest-frame policy or lost)"


def latency_stats(samples_ms: list[float] | np.ndarray) -> dict:
    """n, median, p95, mean, std, min, max (ms; the dict's own key says the unit), or {'n': 0}."""
    if len(samples_ms) == 0:
        return {"n": 0}
    return summarize_ms(samples_ms, key_suffix="")


@dataclass
class ReplayScore:
    """Per-frame outcomes and the latency samples (ms) of one replay."""

    outcomes: list[FrameOutcome] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)  # image published -> LocalizationResult received
    e2e_pose_ms: list[float] = field(default_factory=list)  # image published -> PoseStamped received
    node_ms: list[float] = field(default_factory=list)  # the node's own latency field
    frames_published: int = 0
    frames_answered: int = 0

    def meta(self) -> dict:
        """The frame counts and latency statistics of ``meta.replay``."""
        return {
            "frames_published": self.frames_published,
            "frames_answered": self.frames_answered,
            "frames_dropped_or_lost": self.frames_published - self.frames_answered,
            "e2e_latency_ms": latency_stats(self.e2e_ms),
            "e2e_latency_pose_ms": latency_stats(self.e2e_pose_ms),
            "node_latency_ms": latency_stats(self.node_ms),
        }


def score_replay(
    truth: Truth,
    T_base_cam: np.ndarray,
    published: dict[int, tuple[str, float]],
    results: dict[int, tuple[LocalizationResult, float]],
    pose_arrivals: dict[int, float] | None = None,
    condition: str = "normal",
) -> ReplayScore:
    """Score a replay.

    ``published``: image stamp (ns) -> (frame name, time published); ``results``: stamp -> (decoded
    result of the node's output frame, time received), its ``extras['latency_s']`` the node's own
    latency; ``pose_arrivals``: stamp -> time the node's PoseStamped arrived.
    """
    pose_arrivals = pose_arrivals or {}
    score = ReplayScore(frames_published=len(published), frames_answered=sum(1 for s in published if s in results))
    for stamp, (name, t_pub) in sorted(published.items()):
        T_gt, scene = truth(stamp)
        if T_gt is None:
            log.warning("no ground truth at %d ns (%s): frame skipped from the score", stamp, name)
            continue
        hit = results.get(stamp)
        extras: dict = {}
        if hit is None:
            status, T_est, cov, latency, method, conf = "NOT_LOCALIZED", _nan44(), None, float("nan"), "", 0.0
            extras["reason"] = NO_RESULT_REASON
        else:
            res, t_recv = hit
            status = res.status.name
            latency = 1000.0 * (t_recv - t_pub)
            score.e2e_ms.append(latency)
            score.node_ms.append(1000.0 * float(res.extras.get("latency_s", float("nan"))))
            if stamp in pose_arrivals:
                score.e2e_pose_ms.append(1000.0 * (pose_arrivals[stamp] - t_pub))
            method, conf = res.method, float(res.confidence)
            if res.scene:
                extras["predicted_scene"] = res.scene
            scene = scene or res.scene  # an artifact that names no scene: the node's word is all there is
            extras["status_reason"] = res.status_reason
            extras["stage_seconds"] = dict(res.stage_seconds)
            T_map_out = res.T_world_cam if status != "NOT_LOCALIZED" else _nan44()
            # the node published its base_frame pose: back to the camera with the same extrinsic
            T_world_cam = T_map_out @ T_base_cam
            cov = None
            if status == "LOCALIZED":
                T_est = T_world_cam
                C = np.asarray(res.covariance_66, dtype=np.float64)
                if np.all(np.isfinite(C)):
                    cov = pose_in_output_frame(T_map_out, C, T_base_cam)[1]
            else:
                T_est = _nan44()
                if status == "REJECTED" and np.all(np.isfinite(T_world_cam)):
                    extras["T_world_cam_rejected"] = T_world_cam
        score.outcomes.append(
            FrameOutcome(
                name=name,
                stamp_ns=int(stamp),
                T_world_cam_est=T_est,
                T_world_cam_gt=T_gt,
                status=status,
                latency_ms=latency,
                method=method,
                scene=scene,
                condition=condition,
                confidence=conf,
                covariance_66=cov,
                extras=extras,
            )
        )
    return score


def _nan44() -> np.ndarray:
    return np.full((4, 4), np.nan)


def method_of(results: dict[int, tuple[LocalizationResult, float]]) -> str:
    """The method the node reported (that of any result; '' when it answered none)."""
    for res, _ in results.values():
        return str(res.method)
    return ""
