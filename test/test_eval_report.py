"""evaluation/report.py and evaluation/calibration.py on FrameOutcomes with known errors: every
number of report.json and frames.csv is checked against hand computation."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.stats import chi2

from visloc_core.evaluation.calibration import covariance_calibration, nees, pose_residuals
from visloc_core.evaluation.records import FrameOutcome
from visloc_core.evaluation.report import (
    FRAME_CSV_COLUMNS,
    median_with_inf,
    read_frames_csv,
    summarize,
    write_report,
)
from visloc_core.geometry import R_from_rotvec, T_from_position_quat_wxyz, T_from_R_t, pose_errors

NAN44 = np.full((4, 4), np.nan)


def _perturbed(T_gt: np.ndarray, e_t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Estimate with C_gt - C_est = e_t and R_gt R_est^T = exp([w]x) (the covariance convention)."""
    return T_from_R_t(R_from_rotvec(-np.asarray(w, dtype=np.float64)) @ T_gt[:3, :3], T_gt[:3, 3] - e_t)


def _gt(i: int) -> np.ndarray:
    R = Rotation.from_euler("xyz", [10 * i, -20 + 7 * i, 30 + 11 * i], degrees=True).as_matrix()
    return T_from_R_t(R, np.array([1.0 + i, -0.5 * i, 0.3 * i]))


def _frame(i, scene, seq, cond, status, t_m, r_deg, latency, cov=True, raw=None) -> FrameOutcome:
    """Frame i with a translation error of t_m along x and a rotation error of r_deg about z."""
    gt = _gt(i)
    e_t, w = np.array([t_m, 0.0, 0.0]), np.array([0.0, 0.0, np.radians(r_deg)])
    est = _perturbed(gt, e_t, w) if status == "LOCALIZED" else NAN44.copy()
    extras = {}
    if raw is not None:
        extras["T_world_cam_rejected"] = _perturbed(gt, np.array([raw[0], 0, 0]), np.array([0, 0, np.radians(raw[1])]))
    # Covariance equal to this frame's own squared error per axis (plus tiny variance on the others),
    # so NEES_t = NEES_r = 1 + ~0 for every localized frame.
    c = np.diag([t_m**2, 1e-2, 1e-2, 1e-2, 1e-2, np.radians(r_deg) ** 2]) if cov and status == "LOCALIZED" else None
    return FrameOutcome(
        f"{scene}/{seq}/f{i:03d}", 1_000_000_000 * i, est, gt, status, latency, "test/known", scene, cond,
        0.5 + 0.05 * i, 10 * i, c, extras,
    )  # fmt: skip


def _outcomes() -> list[FrameOutcome]:
    return [
        _frame(0, "A", "s1", "normal", "LOCALIZED", 0.1, 3.0, 10.0),
        _frame(1, "A", "s1", "normal", "LOCALIZED", 0.1, 3.0, 20.0),
        _frame(2, "A", "s1", "normal", "LOCALIZED", 0.03, 1.0, 30.0),
        _frame(3, "A", "s1", "normal", "NOT_LOCALIZED", 0, 0, 40.0),
        _frame(4, "B", "s2", "night", "LOCALIZED", 0.4, 4.0, 50.0),
        _frame(5, "B", "s2", "night", "REJECTED", 0, 0, 60.0, raw=(1.0, 10.0)),
        _frame(6, "B", "s1", "normal", "LOCALIZED", 0.2, 1.5, 70.0),
    ]


def test_known_perturbation_gives_exact_errors() -> None:
    gt = _gt(3)
    t, r = pose_errors(_perturbed(gt, np.array([0.06, 0.0, 0.08]), np.radians([2.0, 0, 0])), gt)
    assert t == pytest.approx(0.1, abs=1e-12) and r == pytest.approx(2.0, abs=1e-9)


def test_median_with_inf() -> None:
    assert median_with_inf(np.array([3.0, 1.0, np.inf])) == 3.0
    assert median_with_inf(np.array([1.0, 2.0, np.inf, 4.0])) == 3.0
    assert median_with_inf(np.array([1.0, np.inf])) == math.inf
    assert median_with_inf(np.array([np.inf, np.inf])) == math.inf
    assert math.isnan(median_with_inf(np.array([])))
    rng = np.random.default_rng(0)
    x = rng.random(11)
    assert median_with_inf(x) == np.median(x)


def test_report_json_numbers_by_hand(tmp_path) -> None:
    rep = write_report(_outcomes(), tmp_path, meta={"artifact": "x"})
    on_disk = json.loads(
        (tmp_path / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}")
    )
    assert on_disk == rep
    assert rep["partial"] is False and rep["meta"] == {"artifact": "x"}
    assert (rep["n_frames"], rep["n_localized"], rep["n_not_localized"], rep["n_rejected"]) == (7, 5, 1, 1)
    assert rep["localized_fraction"] == pytest.approx(5 / 7)
    # Errors: t [0.1, 0.1, 0.03, inf, 0.4, inf, 0.2], r [3, 3, 1, inf, 4, inf, 1.5] (sorted middle = 4th).
    assert rep["median_translation_m"] == pytest.approx(0.2, abs=1e-12)
    assert rep["median_rotation_deg"] == pytest.approx(3.0, abs=1e-9)
    assert rep["mean_translation_m"] is None and rep["mean_rotation_deg"] is None  # infinite
    assert rep["mean_translation_m_localized"] == pytest.approx((0.1 + 0.1 + 0.03 + 0.4 + 0.2) / 5)
    assert rep["mean_rotation_deg_localized"] == pytest.approx((3 + 3 + 1 + 4 + 1.5) / 5)
    assert rep["median_translation_m_localized"] == pytest.approx(0.1)
    assert rep["median_rotation_deg_localized"] == pytest.approx(3.0)
    assert rep["recall"] == pytest.approx(
        {
            "0.01m_1deg": 0,
            "0.02m_2deg": 0,
            "0.05m_5deg": 1 / 7,
            "0.25m_2deg": 2 / 7,
            "0.5m_5deg": 5 / 7,
            "5m_10deg": 5 / 7,
        }
    )
    # Latency 10..70 ms: median 40, p95 at rank 0.95 * 6 = 5.7 -> 60 + 0.7 * 10 = 67.
    assert rep["latency_ms"] == pytest.approx({"median": 40.0, "p95": 67.0, "mean": 40.0, "max": 70.0})
    # Scene A: t [0.1, 0.1, 0.03, inf] -> (0.1 + 0.1) / 2; r [3, 3, 1, inf] -> 3. Scene B: t [0.4, inf, 0.2] -> 0.4.
    A, B = rep["per_scene"]["A"], rep["per_scene"]["B"]
    assert (A["n_frames"], A["n_localized"], A["n_not_localized"], A["n_rejected"]) == (4, 3, 1, 0)
    assert A["median_translation_m"] == pytest.approx(0.1) and A["median_rotation_deg"] == pytest.approx(3.0)
    assert A["latency_ms"] == pytest.approx({"median": 25.0, "p95": 38.5, "mean": 25.0, "max": 40.0})
    assert A["recall"]["0.05m_5deg"] == pytest.approx(1 / 4)
    assert (B["n_frames"], B["n_localized"], B["n_rejected"]) == (3, 2, 1)
    assert B["median_translation_m"] == pytest.approx(0.4) and B["median_rotation_deg"] == pytest.approx(4.0)
    assert B["recall"]["0.25m_2deg"] == pytest.approx(1 / 3)
    # 7-Scenes convention: mean of per-scene medians.
    avg = rep["average_of_scene_medians"]
    assert avg["translation_m"] == pytest.approx(0.25) and avg["rotation_deg"] == pytest.approx(3.5)
    assert avg["n_scenes"] == 2
    # Conditions: normal = A + frame 6: t [0.1, 0.1, 0.03, inf, 0.2] -> 0.1; night: [0.4, inf] -> infinite.
    normal, night = rep["per_condition"]["normal"], rep["per_condition"]["night"]
    assert normal["n_frames"] == 5 and normal["median_translation_m"] == pytest.approx(0.1)
    assert normal["median_rotation_deg"] == pytest.approx(3.0)
    assert normal["recall"]["0.25m_2deg"] == pytest.approx(2 / 5)
    assert night["n_frames"] == 2 and night["median_translation_m"] is None and night["median_rotation_deg"] is None
    assert night["median_translation_m_localized"] == pytest.approx(0.4)
    # Scene x condition: A/normal = frames 0-3, B/normal = frame 6 (0.2 m), B/night = frames 4, 5.
    sc = rep["per_scene_condition"]
    assert set(sc) == {"A/normal", "B/normal", "B/night"}
    assert sc["A/normal"]["n_frames"] == 4 and sc["A/normal"]["median_translation_m"] == pytest.approx(0.1)
    assert sc["B/normal"]["n_frames"] == 1 and sc["B/normal"]["median_translation_m"] == pytest.approx(0.2)
    assert sc["B/night"]["n_frames"] == 2 and sc["B/night"]["median_translation_m"] is None
    # The rejected estimate would have been 1 m / 10 deg off.
    assert rep["rejected"]["n_rejected"] == 1 and rep["rejected"]["n_with_estimate"] == 1
    assert rep["rejected"]["median_translation_m_if_accepted"] == pytest.approx(1.0)
    assert rep["rejected"]["median_rotation_deg_if_accepted"] == pytest.approx(10.0)
    assert rep["methods"] == ["test/known"]
    assert "scene_classification" not in rep  # no frame says which scene it chose
    # Calibration: each localized frame's covariance equals its own squared error on the perturbed axis.
    cal = rep["calibration"]
    assert cal["n_frames"] == 5 and cal["n_skipped"] == 0
    assert cal["translation"]["mean_nees"] == pytest.approx(1.0, abs=1e-9)
    assert cal["rotation"]["mean_nees"] == pytest.approx(1.0, abs=1e-9)
    assert cal["pose"]["mean_nees"] == pytest.approx(2.0, abs=1e-9)
    assert cal["translation"]["fraction_within"] == {"68%": 1.0, "95%": 1.0, "99%": 1.0}
    assert cal["translation"]["chi2_bounds"]["95%"] == pytest.approx(7.8147, abs=1e-4)
    # Mean NEES 1 over 5 frames is below chi2(15)/5's 2.5 % quantile (6.26 / 5 = 1.25): too cautious.
    assert cal["translation"]["verdict"] == "underconfident"
    assert cal["translation"]["scale_to_calibrate"] == pytest.approx(1 / 3)
    # All 5 NEES (= 1) lie below the chi2_3 median 2.366: beyond 1/2 + 1.96 sqrt(1/20) = 0.94.
    assert cal["translation"]["fraction_below_expected_median"] == 1.0
    assert cal["translation"]["verdict_median"] == "underconfident"
    assert cal["translation"]["scale_to_calibrate_median"] == pytest.approx(1 / chi2.median(3))
    assert cal["translation"]["fraction_beyond_99"] == 0.0


def test_frames_csv_rows_by_hand(tmp_path) -> None:
    outcomes = _outcomes()
    write_report(outcomes, tmp_path)
    rows = read_frames_csv(tmp_path / "frames.csv")
    with open(tmp_path / "frames.csv") as f:
        assert f.readline().strip().split(",") == FRAME_CSV_COLUMNS
    assert [r["name"] for r in rows] == [o.name for o in outcomes]
    expect_t = [0.1, 0.1, 0.03, math.inf, 0.4, math.inf, 0.2]
    expect_r = [3.0, 3.0, 1.0, math.inf, 4.0, math.inf, 1.5]
    for r, o, et, er in zip(rows, outcomes, expect_t, expect_r):
        assert float(r["t_err_m"]) == pytest.approx(et, abs=1e-12)
        assert float(r["r_err_deg"]) == pytest.approx(er, abs=1e-9)
        assert (r["scene"], r["condition"], r["status"], r["method"]) == (o.scene, o.condition, o.status, o.method)
        assert int(r["stamp_ns"]) == o.stamp_ns and int(r["num_inliers"]) == o.num_inliers
        assert float(r["latency_ms"]) == o.latency_ms and float(r["confidence"]) == o.confidence
        gt = T_from_position_quat_wxyz(
            np.array([float(r[f"gt_{c}"]) for c in ("tx", "ty", "tz")]),
            np.array([float(r[f"gt_{c}"]) for c in ("qw", "qx", "qy", "qz")]),
        )
        np.testing.assert_allclose(gt, o.T_world_cam_gt, atol=1e-12)
        est_vals = np.array([float(r[f"est_{c}"]) for c in ("tx", "ty", "tz", "qw", "qx", "qy", "qz")])
        if o.status == "LOCALIZED":
            assert est_vals[3] >= 0  # canonical hemisphere
            np.testing.assert_allclose(
                T_from_position_quat_wxyz(est_vals[:3], est_vals[3:]), o.T_world_cam_est, atol=1e-12
            )
        else:
            assert np.isnan(est_vals).all()


def test_outputs_are_files_written_atomically(tmp_path) -> None:
    out = tmp_path / "nested" / "report"
    rep = write_report(_outcomes(), out, partial=True)
    assert rep["partial"] is True
    names = sorted(p.name for p in out.iterdir())
    assert names == ["error_cdf.png", "frames.csv", "report.json", "trajectory.png"]  # no temp files left
    for png in ("trajectory.png", "error_cdf.png"):
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[0] > 300 and img.shape[1] > 500
        assert img.std() > 10  # something is drawn
    # A second write replaces the files.
    write_report(_outcomes()[:2], out, plots=False)
    assert json.loads((out / "report.json").read_text())["n_frames"] == 2
    assert len(read_frames_csv(out / "frames.csv")) == 2


def test_degenerate_sets(tmp_path) -> None:
    rep = write_report([], tmp_path / "empty")
    assert rep["n_frames"] == 0 and rep["median_translation_m"] is None and rep["recall"]["5m_10deg"] == 0.0
    assert rep["latency_ms"]["median"] is None and "calibration" not in rep
    assert not (tmp_path / "empty" / "trajectory.png").exists()
    # Nothing localized: everything infinite, plots still drawn.
    misses = [_frame(i, "A", "s1", "normal", "NOT_LOCALIZED", 0, 0, 5.0) for i in range(3)]
    rep = write_report(misses, tmp_path / "misses")
    assert rep["n_localized"] == 0 and rep["median_translation_m"] is None and rep["localized_fraction"] == 0.0
    assert rep["median_translation_m_localized"] is None
    assert (tmp_path / "misses" / "trajectory.png").stat().st_size > 1000
    # A LOCALIZED status with a NaN pose is still a miss.
    bad = _frame(0, "A", "s1", "normal", "LOCALIZED", 0.1, 1.0, 5.0)
    bad.T_world_cam_est = NAN44.copy()
    assert summarize([bad])["n_localized"] == 0
    # A frame without ground truth is an input error, not a miss.
    no_gt = _frame(1, "A", "s1", "normal", "LOCALIZED", 0.1, 1.0, 5.0)
    no_gt.T_world_cam_gt = NAN44.copy()
    with pytest.raises(ValueError, match="no finite ground-truth pose"):
        summarize([bad, no_gt])


# ----------------------------------------------------------------------------------- calibration
def test_residuals_are_left_perturbations() -> None:
    rng = np.random.default_rng(1)
    gt = _gt(2)
    e_t, w = rng.normal(size=3) * 0.1, rng.normal(size=3) * 0.05
    est = _perturbed(gt, e_t, w)
    np.testing.assert_allclose(pose_residuals(est[None], gt[None])[0], np.concatenate([e_t, w]), atol=1e-12)
    # A right perturbation (R_est^T R_gt) is a different vector when R is not the identity.
    w_right = Rotation.from_matrix(est[:3, :3].T @ gt[:3, :3]).as_rotvec()
    assert np.linalg.norm(w_right - w) > 1e-3


def _sampled_outcomes(n: int, scale: float, seed: int) -> list[FrameOutcome]:
    """Errors drawn from each frame's own (correlated, random) covariance; the reported covariance is
    ``scale`` times the true one."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        A = rng.normal(size=(6, 6)) * np.array([0.1, 0.1, 0.1, 0.02, 0.02, 0.02])[:, None]
        cov = A @ A.T + np.diag([1e-4] * 3 + [1e-5] * 3)
        e = np.linalg.cholesky(cov) @ rng.normal(size=6)
        gt = T_from_R_t(Rotation.random(random_state=rng).as_matrix(), rng.normal(size=3))
        out.append(
            FrameOutcome(f"s/q/{i}", i, _perturbed(gt, e[:3], e[3:]), gt, "LOCALIZED", 1.0, covariance_66=scale * cov)
        )
    return out


def test_calibrated_covariance_gives_chi_square_fractions() -> None:
    cal = covariance_calibration(_sampled_outcomes(3000, 1.0, seed=2))
    for block, dof in (("translation", 3), ("rotation", 3), ("pose", 6)):
        b = cal[block]
        assert b["dof"] == dof
        assert b["mean_nees"] == pytest.approx(dof, rel=0.08)
        assert b["median_nees"] == pytest.approx(chi2.median(dof), rel=0.1)
        for level, frac in b["fraction_within"].items():
            p = int(level.rstrip("%")) / 100
            assert frac == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / 3000) + 1e-3)
        assert b["verdict"] == "consistent" and b["verdict_median"] == "consistent"
        assert b["fraction_beyond_99"] == pytest.approx(0.01, abs=0.01)
        assert b["scale_to_calibrate_median"] == pytest.approx(1.0, rel=0.1)


def test_overconfident_covariance_is_flagged() -> None:
    cal = covariance_calibration(_sampled_outcomes(500, 0.25, seed=3))  # covariances 4x too small
    for block in ("translation", "rotation", "pose"):
        assert cal[block]["verdict"] == "overconfident"
        assert cal[block]["scale_to_calibrate"] == pytest.approx(4.0, rel=0.15)
        assert cal[block]["fraction_within"]["68%"] < 0.4
        assert cal[block]["verdict_median"] == "overconfident"
        assert cal[block]["scale_to_calibrate_median"] == pytest.approx(4.0, rel=0.2)


def test_a_few_gross_outliers_sway_the_mean_not_the_median_verdict() -> None:
    outs = _sampled_outcomes(400, 1.0, seed=5)
    for o in outs[:8]:  # 2 % of the frames 3 m off
        o.T_world_cam_est = o.T_world_cam_est.copy()
        o.T_world_cam_est[:3, 3] += 3.0
    cal = covariance_calibration(outs)["translation"]
    assert cal["verdict"] == "overconfident"  # the mean NEES explodes
    assert cal["verdict_median"] == "consistent"  # the core is calibrated
    assert cal["fraction_beyond_99"] >= 0.02


def test_calibration_skips_frames_without_a_usable_covariance() -> None:
    outs = _sampled_outcomes(4, 1.0, seed=4)
    outs[0].covariance_66 = None
    outs[1].covariance_66 = np.full((6, 6), np.nan)
    outs[2].covariance_66 = -np.eye(6)  # not positive definite
    cal = covariance_calibration(outs)
    assert cal["n_frames"] == 1 and cal["n_skipped"] == 3
    e = pose_residuals(outs[3].T_world_cam_est[None], outs[3].T_world_cam_gt[None])
    expect = float(e[0, :3] @ np.linalg.solve(outs[3].covariance_66[:3, :3], e[0, :3]))
    assert cal["translation"]["mean_nees"] == pytest.approx(expect)
    assert covariance_calibration(outs[:3]) is None
    assert nees(np.array([[3.0, 4.0]]), np.eye(2)[None] * 25.0)[0] == pytest.approx(1.0)


def test_scene_classification_and_reasons(tmp_path) -> None:
    outs = _outcomes()
    for o, pred in zip(outs, ["A", "A", "B", "", "B", "A", "B"]):
        o.extras["predicted_scene"] = pred
    outs[5].extras["status_reason"] = "pose outside the mapped region"
    rep = write_report(outs, tmp_path, plots=False)
    # 6 frames name a scene; right: 0, 1, 4, 6 -> 4 / 6. Normal light: frames 0, 1, 2, 6 (3 right);
    # night: 4, 5 (1 right). True A: 0, 1, 2 (2 right); true B: 4, 5, 6 (2 right).
    assert rep["scene_classification"] == {
        "n_frames": 6,
        "accuracy": pytest.approx(4 / 6),
        "per_condition": {"night": {"n_frames": 2, "accuracy": 0.5}, "normal": {"n_frames": 4, "accuracy": 0.75}},
        "per_scene": {
            "A": {"n_frames": 3, "accuracy": pytest.approx(2 / 3)},
            "B": {"n_frames": 3, "accuracy": pytest.approx(2 / 3)},
        },
        "confusion": {"A": {"A": 2, "B": 1}, "B": {"B": 2, "A": 1}},
    }
    # a frame whose true scene is unknown is not scored
    outs[0].scene = ""
    assert write_report(outs, tmp_path, plots=False)["scene_classification"]["n_frames"] == 5
    rows = read_frames_csv(tmp_path / "frames.csv")
    assert [r["predicted_scene"] for r in rows] == ["A", "A", "B", "", "B", "A", "B"]
    assert rows[5]["status_reason"] == "pose outside the mapped region" and rows[0]["status_reason"] == ""


def test_precision_fallbacks_and_refusal_of_unmapped_views_by_hand() -> None:
    """Precision = fraction of the LOCALIZED frames within 25 cm / 2 deg and 5 cm / 5 deg; fallbacks
    counted apart; frames of condition 'unmapped' scored by the fraction refused."""
    fb = _frame(7, "A", "s1", "normal", "LOCALIZED", 1.0, 10.0, 10.0)
    fb.extras["fallback"] = True
    um = [
        _frame(8, "A", "u", "unmapped", "NOT_LOCALIZED", 0, 0, 10.0),
        _frame(9, "A", "u", "unmapped", "REJECTED", 0, 0, 10.0),
        _frame(10, "A", "u", "unmapped", "LOCALIZED", 3.0, 20.0, 10.0),
    ]
    rep = summarize(_outcomes() + [fb] + um)
    # LOCALIZED frames 0, 1, 2, 4, 6 (covered), 7 (fallback), 10 (unmapped): 7 published
    # within 25 cm / 2 deg: 2 (3 cm, 1 deg) and 6 (20 cm, 1.5 deg); within 5 cm / 5 deg: 2 only
    assert rep["precision"]["0.25m_2deg"] == pytest.approx(2 / 7)
    assert rep["precision"]["0.05m_5deg"] == pytest.approx(1 / 7)
    assert rep["n_fallback"] == 1 and rep["precision_without_fallback"]["0.25m_2deg"] == pytest.approx(2 / 6)
    cov = rep["covered"]  # frames 0-7
    assert cov["n_frames"] == 8 and cov["n_localized"] == 6 and cov["precision"]["0.25m_2deg"] == pytest.approx(2 / 6)
    assert rep["unmapped"] == {
        "n_frames": 3, "n_refused": 2, "refused_fraction": pytest.approx(2 / 3), "n_localized": 1, "n_fallback": 0,
        "conditions": ["unmapped"],
    }  # fmt: skip
    assert rep["per_condition"]["unmapped"]["localized_fraction"] == pytest.approx(1 / 3)
    # without unmapped frames the report has no such blocks
    assert "unmapped" not in summarize(_outcomes()) and "covered" not in summarize(_outcomes())
