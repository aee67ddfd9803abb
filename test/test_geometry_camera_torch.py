"""PinholeCamera resize/crop against real cv2.resize'd and cropped images, and the torch pose
operations against their numpy counterparts (values and gradients)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from visloc_core.geometry import (
    PinholeCamera,
    R_from_quat_wxyz,
    T_from_R_t,
    essential_from_relative_pose,
    rotation_error_deg,
    skew,
)
from visloc_core.geometry import torch_ops as tops

SETTINGS = settings(max_examples=40, deadline=None)


# ------------------------------------------------------------------------------- camera
def _blob_image(cam: PinholeCamera, uv: np.ndarray, sigma: float = 2.5) -> np.ndarray:
    """A float image with a Gaussian blob centred at sub-pixel uv (pixel centres at integers)."""
    v, u = np.mgrid[0 : cam.height, 0 : cam.width].astype(np.float64)
    return np.exp(-((u - uv[0]) ** 2 + (v - uv[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def _centroid(img: np.ndarray) -> np.ndarray:
    v, u = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    w = img.astype(np.float64)
    return np.array([(u * w).sum() / w.sum(), (v * w).sum() / w.sum()])


# (new size, interpolation): downsizing by block averages (INTER_AREA) and upsizing (INTER_LINEAR).
@pytest.mark.parametrize(
    ("size", "interp"), [((80, 60), cv2.INTER_AREA), ((40, 30), cv2.INTER_AREA), ((200, 150), cv2.INTER_LINEAR)]
)
def test_resized_camera_projects_where_the_resized_image_shows_the_point(size, interp) -> None:
    cam = PinholeCamera(160, 120, 130.0, 125.0, 81.3, 58.7)
    X_cam = np.array([[0.21, -0.13, 2.0]])
    uv = cam.project(X_cam)[0]
    img = _blob_image(cam, uv, sigma=4.0)
    np.testing.assert_allclose(_centroid(img), uv, atol=1e-3)  # the blob marks the point
    small = cv2.resize(img, size, interpolation=interp)
    cam_s = cam.resized(*size)
    assert (cam_s.width, cam_s.height) == size
    np.testing.assert_allclose(_centroid(small), cam_s.project(X_cam)[0], atol=0.03)
    # Naive scaling of the principal point (c * s) would be off by 0.5 (s - 1) px: e.g. 0.25 px at s = 1/2.
    sx, sy = size[0] / cam.width, size[1] / cam.height
    naive = PinholeCamera(*size, cam.fx * sx, cam.fy * sy, cam.cx * sx, cam.cy * sy)
    assert np.all(np.abs(naive.project(X_cam)[0] - _centroid(small)) > 0.1)


def test_cropped_camera_projects_where_the_crop_shows_the_point() -> None:
    cam = PinholeCamera(160, 120, 130.0, 125.0, 80.0, 60.0)
    X_cam = np.array([[0.3, 0.2, 2.5]])
    img = _blob_image(cam, cam.project(X_cam)[0])
    x0, y0, w, h = 37, 21, 96, 80
    crop = img[y0 : y0 + h, x0 : x0 + w]
    cam_c = cam.cropped(x0, y0, w, h)
    np.testing.assert_allclose(_centroid(crop), cam_c.project(X_cam)[0], atol=1e-3)
    # Resize then crop (what the training transform does).
    cam_rc = cam.resized(120, 90).cropped(10, 5, 100, 80)
    img_rc = cv2.resize(img, (120, 90), interpolation=cv2.INTER_AREA)[5:85, 10:110]
    np.testing.assert_allclose(_centroid(img_rc), cam_rc.project(X_cam)[0], atol=0.03)
    with pytest.raises(ValueError, match="outside image"):
        cam.cropped(100, 0, 100, 50)


def test_camera_project_unproject_K_and_dict() -> None:
    cam = PinholeCamera(160, 120, 100.0, 90.0, 79.5, 59.5, (0.1, -0.01, 0.0, 0.0))
    p = np.array([[0.5, -0.2, 2.0], [0.0, 0.0, 1.0]])
    uv = cam.project(p)
    np.testing.assert_allclose(uv[1], [79.5, 59.5])
    np.testing.assert_allclose(cam.unproject(uv) * p[:, 2:3], p)
    # K agrees with OpenCV's projection (no distortion).
    uv_cv, _ = cv2.projectPoints(p, np.zeros(3), np.zeros(3), cam.K, None)
    np.testing.assert_allclose(uv_cv.reshape(-1, 2), uv)
    assert PinholeCamera.from_dict(cam.to_dict()) == cam
    assert PinholeCamera.from_K(cam.K, 160, 120, cam.dist) == cam
    with pytest.raises(ValueError, match="invalid camera"):
        PinholeCamera(160, 120, -1.0, 90.0, 80.0, 60.0)
    with pytest.raises(ValueError, match="invalid camera"):
        PinholeCamera(0, 120, 100.0, 90.0, 80.0, 60.0)


# ------------------------------------------------------------------------------- torch ops
@st.composite
def rotvecs(draw, max_angle: float = np.pi - 1e-3) -> np.ndarray:
    a = np.array([draw(st.floats(-1, 1)) for _ in range(3)])
    if np.linalg.norm(a) < 1e-3:
        a = np.array([0.0, 1.0, 0.0])
    return a / np.linalg.norm(a) * draw(st.floats(0.0, max_angle))


@SETTINGS
@given(rotvecs())
def test_qlog_qexp_round_trip_and_meaning(rv: np.ndarray) -> None:
    # The log-quaternion is axis * half-angle.
    v = torch.tensor(rv / 2, dtype=torch.float64)[None]
    q = tops.qexp(v)
    q_ref = Rotation.from_rotvec(rv).as_quat(scalar_first=True)
    np.testing.assert_allclose(q[0].numpy(), q_ref if q_ref[0] >= 0 else -q_ref, atol=1e-12)
    np.testing.assert_allclose(tops.qlog(q).numpy(), v.numpy(), atol=1e-9)
    # qlog of -q is the same (canonical hemisphere).
    np.testing.assert_allclose(tops.qlog(-q).numpy(), v.numpy(), atol=1e-9)


def test_R_from_quat_and_angle_match_numpy() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(16, 4))  # not normalised on purpose: both normalise
    np.testing.assert_allclose(tops.R_from_quat(torch.from_numpy(q)).numpy(), R_from_quat_wxyz(q), atol=1e-12)
    q2 = rng.normal(size=(16, 4))
    ang = tops.quat_angle_deg(torch.from_numpy(q), torch.from_numpy(q2)).numpy()
    np.testing.assert_allclose(ang, rotation_error_deg(R_from_quat_wxyz(q), R_from_quat_wxyz(q2)), atol=1e-6)
    np.testing.assert_allclose(
        tops.quat_canonical(torch.from_numpy(-q)).numpy()[:, 0], np.abs(q[:, 0]) / np.linalg.norm(q, axis=1)
    )


def test_torch_skew_and_essential_match_numpy() -> None:
    rng = np.random.default_rng(1)
    t = rng.normal(size=(5, 3))
    R = Rotation.random(5, random_state=rng).as_matrix()
    np.testing.assert_allclose(tops.skew(torch.from_numpy(t)).numpy(), skew(t))
    E_t = tops.essential_from_relative_pose(torch.from_numpy(R), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(E_t, essential_from_relative_pose(T_from_R_t(R, t)), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_at_identity(dtype: torch.dtype) -> None:
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    tops.qlog(q).sum().backward()
    assert torch.isfinite(q.grad).all()
    # d qlog / d (x, y, z) at the identity is the identity (log is axis * half-angle ~ vector part).
    q1 = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    J = torch.autograd.functional.jacobian(lambda x: tops.qlog(x)[0], q1)[:, 0, :]
    np.testing.assert_allclose(J[:, 1:].numpy(), np.eye(3), atol=1e-6)
    v = torch.zeros(2, 3, dtype=dtype, requires_grad=True)
    tops.qexp(v).sum().backward()
    assert torch.isfinite(v.grad).all()
    np.testing.assert_allclose(v.grad.numpy(), np.ones((2, 3)), atol=1e-6)  # d sin(n)/n v / dv = I at 0
    qr = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    tops.R_from_quat(qr).sum().backward()
    assert torch.isfinite(qr.grad).all()
    qa = torch.tensor([[1.0, 1e-4, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    tops.qlog(qa).sum().backward()
    assert torch.isfinite(qa.grad).all()


def test_qlog_small_angles_match_the_series() -> None:
    """Near the identity qlog(q) = v * asin(|v|)/|v| ~ v (1 + |v|^2 / 6)."""
    for n in (1e-9, 1e-7, 1e-6, 1e-3):
        v = torch.tensor([[n, 0.0, 0.0]], dtype=torch.float64)
        q = torch.cat([torch.sqrt(1 - (v**2).sum(-1, keepdim=True)), v], dim=-1)
        expect = n * np.arcsin(n) / n
        assert tops.qlog(q)[0, 0].item() == pytest.approx(expect, rel=1e-14)
