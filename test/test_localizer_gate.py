"""The sanity gate (no ROS): jump bounds, time window, pass-through of the localizer's own verdicts, reset."""

from __future__ import annotations

import numpy as np

from visloc_core.geometry import R_from_rotvec, T_from_R_t
from visloc_core.localizers.base import LocalizationResult, Status
from visloc_core.localizers.gate import GateConfig, SanityGate

S = 1_000_000_000


def res(t_xyz, yaw_deg=0.0, status=Status.LOCALIZED, reason="") -> LocalizationResult:
    T = T_from_R_t(R_from_rotvec(np.array([0.0, np.deg2rad(yaw_deg), 0.0])), np.asarray(t_xyz, dtype=float))
    return LocalizationResult(T, np.eye(6) * 0.01, status, "test", status_reason=reason)


def test_jump_in_translation_and_rotation_is_rejected_within_window():
    gate = SanityGate(GateConfig(max_jump_m=1.0, max_jump_deg=20.0, window_s=2.0))
    assert gate.check(res([0, 0, 0]), 0).status == Status.LOCALIZED
    assert gate.check(res([0.9, 0, 0]), 1 * S).status == Status.LOCALIZED  # 0.9 m: within the bound
    far = gate.check(res([2.0, 0, 0]), 2 * S)  # 1.1 m from the last accepted (0.9, 0, 0)
    assert far.status == Status.REJECTED and "1.10 m" in far.status_reason
    assert np.isclose(far.extras["jump_m"], 1.1)
    turned = gate.check(res([0.9, 0, 0], yaw_deg=25.0), 2 * S)
    assert turned.status == Status.REJECTED and "25.0 deg" in turned.status_reason
    # the reference is still the last ACCEPTED pose
    assert gate.reference[0] == 1 * S


def test_window_expiry_and_reset_accept_again():
    gate = SanityGate(GateConfig(max_jump_m=0.5, max_jump_deg=10.0, window_s=1.0))
    gate.check(res([0, 0, 0]), 0)
    assert gate.check(res([5, 0, 0]), S // 2).status == Status.REJECTED
    assert gate.check(res([5, 0, 0]), 1 * S + 1).status == Status.LOCALIZED  # reference older than the window
    assert gate.check(res([0, 0, 0]), 2 * S).status == Status.REJECTED
    gate.reset()
    assert gate.reference is None
    assert gate.check(res([0, 0, 0]), 2 * S).status == Status.LOCALIZED


def test_localizer_verdicts_pass_through_and_do_not_move_the_reference():
    gate = SanityGate(GateConfig(max_jump_m=0.5, window_s=10.0))
    gate.check(res([0, 0, 0]), 0)
    outside = gate.check(res([0.1, 0, 0], status=Status.REJECTED, reason="pose outside the mapped region"), S)
    assert outside.status == Status.REJECTED and outside.status_reason == "pose outside the mapped region"
    nl = LocalizationResult.not_localized("test", "too few inliers")
    assert gate.check(nl, S).status == Status.NOT_LOCALIZED
    assert gate.reference[0] == 0
    nan = res([0, 0, 0])
    nan.T_world_cam[0, 3] = np.nan
    assert gate.check(nan, S).status == Status.REJECTED


def test_disabled_bounds():
    gate = SanityGate(GateConfig(max_jump_m=0.0, max_jump_deg=0.0, window_s=10.0))
    gate.check(res([0, 0, 0]), 0)
    assert gate.check(res([100, 0, 0], yaw_deg=170), S).status == Status.LOCALIZED


def test_consistent_jumps_are_confirmed_as_the_new_pose():
    """A wrong fix slipped through at (0,0,0); the true place (3,0,0) is rejected twice, then the third
    consistent frame is accepted and becomes the reference. Inconsistent jumps never confirm."""
    gate = SanityGate(GateConfig(max_jump_m=1.0, max_jump_deg=30.0, window_s=10.0, confirm_frames=3))
    gate.check(res([0, 0, 0]), 0)
    assert gate.check(res([3.0, 0, 0]), 1 * S).status == Status.REJECTED
    assert gate.check(res([3.1, 0, 0]), 2 * S).status == Status.REJECTED
    assert gate.check(res([3.2, 0, 0]), 3 * S).status == Status.LOCALIZED
    assert gate.reference[0] == 3 * S and np.isclose(gate.reference[1][0, 3], 3.2)
    assert gate.check(res([3.3, 0, 0]), 4 * S).status == Status.LOCALIZED
    # scattered outliers (each far from the previous one) are rejected however many come
    for k, x in enumerate([8.0, -5.0, 8.0, -5.0, 8.0]):
        assert gate.check(res([x, 0, 0]), (5 + k) * S).status == Status.REJECTED
    # an accepted pose in between restarts the count
    gate2 = SanityGate(GateConfig(max_jump_m=1.0, window_s=10.0, confirm_frames=2))
    gate2.check(res([0, 0, 0]), 0)
    assert gate2.check(res([3, 0, 0]), 1 * S).status == Status.REJECTED
    assert gate2.check(res([0.1, 0, 0]), 2 * S).status == Status.LOCALIZED
    assert gate2.check(res([3, 0, 0]), 3 * S).status == Status.REJECTED
    # confirm_frames 0: never confirmed inside the window
    gate3 = SanityGate(GateConfig(max_jump_m=1.0, window_s=10.0, confirm_frames=0))
    gate3.check(res([0, 0, 0]), 0)
    assert all(gate3.check(res([3, 0, 0]), k * S).status == Status.REJECTED for k in range(1, 6))


def test_a_change_of_scene_is_a_jump_confirmed_by_consecutive_frames():
    """Multi-scene artifacts: each scene has its own world frame, so identical coordinates in two scenes
    are not the same place; a scene switch needs confirm_frames agreeing results, a lone one is rejected."""
    import dataclasses

    def in_scene(r: LocalizationResult, scene: str) -> LocalizationResult:
        return dataclasses.replace(r, scene=scene)

    gate = SanityGate(GateConfig(max_jump_m=1.0, max_jump_deg=20.0, window_s=10.0, confirm_frames=3))
    assert gate.check(in_scene(res([0, 0, 0]), "room"), 0).status == Status.LOCALIZED
    lone = gate.check(in_scene(res([0.1, 0, 0]), "plaza"), S)  # 0.1 m away, but in another frame
    assert lone.status == Status.REJECTED and "scene 'plaza' differs from scene 'room'" in lone.status_reason
    assert gate.check(in_scene(res([0.2, 0, 0]), "room"), 2 * S).status == Status.LOCALIZED
    # the robot really moved to the plaza: two rejected, the third agreeing one is accepted
    statuses = [gate.check(in_scene(res([5.0 + 0.1 * k, 0, 0]), "plaza"), (3 + k) * S).status for k in range(3)]
    assert statuses == [Status.REJECTED, Status.REJECTED, Status.LOCALIZED]
    # a run that alternates scenes never confirms
    gate.reset()
    gate.check(in_scene(res([0, 0, 0]), "room"), 0)
    alt = [
        gate.check(in_scene(res([0, 0, 0]), s), (1 + k) * S).status for k, s in enumerate(["plaza", "hall", "plaza"])
    ]
    assert alt == [Status.REJECTED] * 3
