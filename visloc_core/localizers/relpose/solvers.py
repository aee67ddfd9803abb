"""Robust two-view and absolute-pose solvers shared by the geometric and SIFT estimators.

All solvers take NORMALISED image coordinates (``K^-1 [u, v, 1]``, undistorted) so that the two
images may have different intrinsics; thresholds are given in pixels and divided by the focal
length. Returned poses follow visloc's relpose convention: ``T_q_r`` maps reference-camera points
into the query frame (points1 = reference, points2 = query; x_q = R x_r + t); absolute poses are
``T_cam_world``.
"""

from __future__ import annotations

import cv2
import numpy as np

from ...geometry import PinholeCamera, T_from_R_t

ESSENTIAL_SOLVERS = ("poselib", "opencv_usac", "opencv_usac_accurate", "opencv_ransac")


def normalise_points(uv_N2: np.ndarray, camera: PinholeCamera) -> np.ndarray:
    """Undistorted normalised coordinates (N, 2) of pixels (N, 2)."""
    uv = np.asarray(uv_N2, dtype=np.float64).reshape(-1, 2)
    if len(uv) == 0:
        return uv
    if camera.dist and any(abs(d) > 0 for d in camera.dist):
        return cv2.undistortPoints(uv.reshape(-1, 1, 2), camera.K, np.asarray(camera.dist)).reshape(-1, 2)
    return np.stack([(uv[:, 0] - camera.cx) / camera.fx, (uv[:, 1] - camera.cy) / camera.fy], axis=1)


_UNIT_CAMERA = {"model": "PINHOLE", "width": 2, "height": 2, "params": [1.0, 1.0, 0.0, 0.0]}


def solve_essential(
    x_ref_N2: np.ndarray,
    x_query_N2: np.ndarray,
    threshold: float,
    solver: str = "poselib",
    max_iterations: int = 10000,
    seed: int = 0,
    min_iterations: int = 100,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Relative pose ``T_q_r`` (unit translation, cheirality checked) and the inlier mask (N,) from
    normalised correspondences, or None when it fails. ``threshold`` is in normalised units
    (pixels / focal length): the Sampson/epipolar error bound of the robust estimator.

    Solvers: ``poselib`` (LO-RANSAC with the 5-point solver and a final bundle refinement on the
    inliers), ``opencv_usac`` (cv2.findEssentialMat with USAC_MAGSAC, then recoverPose),
    ``opencv_ransac`` (the classic RANSAC of the paper's baseline).
    """
    x1 = np.asarray(x_ref_N2, np.float64)
    x2 = np.asarray(x_query_N2, np.float64)
    if len(x1) < 5:
        return None
    if solver == "poselib":
        import poselib

        pose, info = poselib.estimate_relative_pose(
            x1,
            x2,
            _UNIT_CAMERA,
            _UNIT_CAMERA,
            {
                "max_epipolar_error": float(threshold),
                "max_iterations": int(max_iterations),
                # poselib's default of 1000 minimum iterations costs ~9 ms; 100 with its adaptive
                # stopping kept the same accuracy on our synthetic pairs (see bench relpose --solvers).
                "min_iterations": int(min(min_iterations, max_iterations)),
                "seed": int(seed),
            },
            {},
        )
        mask = np.asarray(info.get("inliers", []), bool)
        if mask.sum() < 5:
            return None
        T = T_from_R_t(np.asarray(pose.R), np.asarray(pose.t))
    elif solver in ("opencv_usac", "opencv_usac_accurate", "opencv_ransac"):
        method = {"opencv_usac": cv2.USAC_MAGSAC, "opencv_usac_accurate": cv2.USAC_ACCURATE}.get(solver, cv2.RANSAC)
        cv2.setRNGSeed(int(seed))
        E, m = cv2.findEssentialMat(
            x1, x2, np.eye(3), method=method, prob=0.9999, threshold=float(threshold), maxIters=int(max_iterations)
        )
        if E is None or m is None or E.shape != (3, 3):  # several stacked solutions = degenerate
            if E is not None and E.shape[0] > 3:
                E = E[:3]
            else:
                return None
        n_good, R, t, m2 = cv2.recoverPose(E, x1, x2, np.eye(3), mask=m.copy())
        mask = (m2.ravel() > 0) if m2 is not None else m.ravel() > 0
        if n_good < 5:
            return None
        T = T_from_R_t(R, t.ravel())
    else:
        raise ValueError(f"unknown essential solver {solver!r}; choose one of {', '.join(ESSENTIAL_SOLVERS)}")
    n = np.linalg.norm(T[:3, 3])
    if not np.isfinite(n) or n < 1e-12:
        return None
    T[:3, 3] /= n
    return T, mask


def solve_pnp(
    x_query_N2: np.ndarray,
    p_world_N3: np.ndarray,
    threshold: float,
    solver: str = "poselib",
    max_iterations: int = 10000,
    seed: int = 0,
    min_iterations: int = 100,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Absolute pose ``T_cam_world`` of the query and the inlier mask from normalised 2D points and
    world 3D points (P3P LO-RANSAC + refinement in poselib, or cv2.solvePnPRansac with SQPnP)."""
    x = np.asarray(x_query_N2, np.float64)
    X = np.asarray(p_world_N3, np.float64)
    if len(x) < 4:
        return None
    if solver == "poselib":
        import poselib

        pose, info = poselib.estimate_absolute_pose(
            x,
            X,
            _UNIT_CAMERA,
            {
                "max_reproj_error": float(threshold),
                "max_iterations": int(max_iterations),
                "min_iterations": int(min(min_iterations, max_iterations)),  # see solve_essential
                "seed": int(seed),
            },
            {},
        )
        mask = np.asarray(info.get("inliers", []), bool)
        if mask.sum() < 4:
            return None
        return T_from_R_t(np.asarray(pose.R), np.asarray(pose.t)), mask
    if solver in ("opencv_usac", "opencv_ransac", "opencv"):
        cv2.setRNGSeed(int(seed))
        ok, rvec, tvec, inl = cv2.solvePnPRansac(
            X, x, np.eye(3), None, iterationsCount=int(max_iterations), reprojectionError=float(threshold),
            confidence=0.9999, flags=cv2.SOLVEPNP_SQPNP,
        )  # fmt: skip
        if not ok or inl is None or len(inl) < 4:
            return None
        mask = np.zeros(len(x), bool)
        mask[inl.ravel()] = True
        R, _ = cv2.Rodrigues(rvec)
        return T_from_R_t(R, tvec.ravel()), mask
    raise ValueError(f"unknown PnP solver {solver!r}; choose poselib or opencv")


def refine_pnp(
    x_query_N2: np.ndarray, p_world_N3: np.ndarray, T_cam_world: np.ndarray, threshold: float, iterations: int = 25
) -> np.ndarray:
    """Non-linear refinement of an absolute pose ``T_cam_world`` on normalised 2D - world 3D matches
    (poselib's Levenberg-Marquardt with a Cauchy loss of scale ``threshold``, normalised units), no
    sampling: for matches that are already inliers of verified poses (the joint PnP of agreeing
    references), where RANSAC would only search for what is known."""
    import poselib

    init = poselib.CameraPose()
    init.R = np.asarray(T_cam_world, np.float64)[:3, :3]
    init.t = np.asarray(T_cam_world, np.float64)[:3, 3]
    pose, _ = poselib.refine_absolute_pose(
        np.asarray(x_query_N2, np.float64), np.asarray(p_world_N3, np.float64), init, _UNIT_CAMERA,
        {"loss_type": "CAUCHY", "loss_scale": float(threshold), "max_iterations": int(iterations)},
    )  # fmt: skip
    return T_from_R_t(np.asarray(pose.R), np.asarray(pose.t))


def pnp_covariance(T_world_cam: np.ndarray, x_N2: np.ndarray, p_world_N3: np.ndarray, sigma: float) -> np.ndarray:
    """First-order covariance (6x6) of a pose solved by PnP, from its 2D-3D inliers.

    ``x_N2`` are normalised image points, ``p_world_N3`` world points, ``sigma`` the standard deviation
    of the image noise per coordinate in normalised units (pixels / focal length). Order and
    convention of ``LocalizationResult.covariance_66``: camera centre x, y, z (world, m), then a
    rotation w about the world axes applied on the left (R_true = exp([w]x) R_est), rad. With camera
    centre c and p = R^T (X - c): dp/dc = -R^T and dp/dw = R^T [X - c]x, so each point gives
    J = dpi/dp [dp/dc | dp/dw] and the covariance is sigma^2 (sum J^T J)^-1 (Gauss-Newton; the world
    points are taken as exact, which the map's own error calibration corrects, see calibration.py).
    """
    R = np.asarray(T_world_cam, np.float64)[:3, :3]
    c = np.asarray(T_world_cam, np.float64)[:3, 3]
    d = np.asarray(p_world_N3, np.float64) - c  # (N, 3)
    p = d @ R  # R^T (X - c)
    z = p[:, 2]
    dpi = np.zeros((len(p), 2, 3))
    dpi[:, 0, 0] = 1 / z
    dpi[:, 0, 2] = -p[:, 0] / z**2
    dpi[:, 1, 1] = 1 / z
    dpi[:, 1, 2] = -p[:, 1] / z**2
    dx = np.zeros((len(p), 3, 3))  # [d]x per point
    dx[:, 0, 1], dx[:, 0, 2] = -d[:, 2], d[:, 1]
    dx[:, 1, 0], dx[:, 1, 2] = d[:, 2], -d[:, 0]
    dx[:, 2, 0], dx[:, 2, 1] = -d[:, 1], d[:, 0]
    dp = np.concatenate([np.broadcast_to(-R.T, (len(p), 3, 3)), R.T[None] @ dx], axis=2)  # (N, 3, 6)
    J = dpi @ dp  # (N, 2, 6)
    info = np.einsum("nki,nkj->ij", J, J)
    try:
        cov = float(sigma) ** 2 * np.linalg.inv(info)
    except np.linalg.LinAlgError:  # degenerate geometry (e.g. all points on one ray)
        cov = float(sigma) ** 2 * np.linalg.pinv(info)
    return 0.5 * (cov + cov.T)
