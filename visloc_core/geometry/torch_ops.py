"""Pose operations in torch for losses and models (batched, differentiable).

Convention: quaternions (w, x, y, z) as everywhere in visloc; poses (B, 4, 4) T_world_cam.
The log-quaternion of a unit q = (cos a, u sin a) is u * a (3-vector), as in MapNet/MVL-Loc.
"""

from __future__ import annotations

import torch


def quat_normalize(q_B4: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Unit-normalise quaternions (B, 4)."""
    return q_B4 / q_B4.norm(dim=-1, keepdim=True).clamp_min(eps)


def quat_canonical(q_B4: torch.Tensor) -> torch.Tensor:
    """Unit quaternions flipped to w >= 0."""
    q = quat_normalize(q_B4)
    return torch.where(q[..., :1] < 0, -q, q)


def qlog(q_B4: torch.Tensor) -> torch.Tensor:
    """Log map of unit quaternions (B, 4) (w, x, y, z) -> (B, 3): axis * half-angle.

    Canonicalises to w >= 0 first so q and -q give the same log.
    """
    q = quat_canonical(q_B4)
    v = q[..., 1:]
    n = v.norm(dim=-1, keepdim=True)
    half = torch.atan2(n, q[..., :1])
    # half/n = asin(n)/n -> 1 as n -> 0; use its series 1 + n^2/6 to keep gradients finite at the identity.
    scale = torch.where(n > 1e-7, half / n.clamp_min(1e-7), 1.0 + n**2 / 6.0)
    return v * scale


def qexp(v_B3: torch.Tensor) -> torch.Tensor:
    """Exp map (B, 3) -> unit quaternions (B, 4) (w, x, y, z); inverse of :func:`qlog`."""
    n = v_B3.norm(dim=-1, keepdim=True)
    scale = torch.where(n > 1e-7, torch.sin(n) / n.clamp_min(1e-7), 1.0 - n**2 / 6.0)
    return torch.cat([torch.cos(n), v_B3 * scale], dim=-1)


def R_from_quat(q_B4: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (B, 3, 3) from quaternions (B, 4) (w, x, y, z); normalises first."""
    w, x, y, z = quat_normalize(q_B4).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - z * w),
            2 * (x * z + y * w),
            2 * (x * y + z * w),
            1 - 2 * (x * x + z * z),
            2 * (y * z - x * w),
            2 * (x * z - y * w),
            2 * (y * z + x * w),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(q_B4.shape[:-1] + (3, 3))


def quat_angle_deg(q_est_B4: torch.Tensor, q_gt_B4: torch.Tensor) -> torch.Tensor:
    """Rotation error 2 acos(|<q_est, q_gt>|) in degrees, per row (B,)."""
    d = (quat_normalize(q_est_B4) * quat_normalize(q_gt_B4)).sum(-1).abs().clamp(max=1.0)
    return torch.rad2deg(2 * torch.acos(d))


def skew(t_B3: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices (B, 3, 3)."""
    x, y, z = t_B3.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(t_B3.shape[:-1] + (3, 3))


def essential_from_relative_pose(R_B33: torch.Tensor, t_B3: torch.Tensor) -> torch.Tensor:
    """E = [t/|t|]x R (B, 3, 3) for relative poses x_b = R x_a + t (see geometry.epipolar)."""
    t = t_B3 / t_B3.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return skew(t) @ R_B33


def T_from_position_quat(position_B3: torch.Tensor, q_B4: torch.Tensor) -> torch.Tensor:
    """Poses (B, 4, 4) T_world_cam from camera centres (B, 3) and quaternions (B, 4) (w, x, y, z;
    normalised here); differentiable in both."""
    R = R_from_quat(q_B4)
    top = torch.cat([R, position_B3.unsqueeze(-1)], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def se3_exp(xi_B6: torch.Tensor) -> torch.Tensor:
    """Exponential map of se(3): twists (B, 6) = (rho, phi) -> 4x4 transforms (B, 4, 4).

    ``phi`` is a rotation vector (rad), ``rho`` the translation part: ``exp(xi) = [R, V rho; 0, 1]``
    with ``R = exp([phi]x)`` (Rodrigues) and ``V = I + (1 - cos a)/a^2 [phi]x + (a - sin a)/a^3 [phi]x^2``.
    A perturbed camera pose is ``T_world_cam @ se3_exp(xi)`` (xi in the camera frame). Small-angle
    series keep values and gradients finite at xi = 0."""
    rho, phi = xi_B6[..., :3], xi_B6[..., 3:]
    a2 = (phi * phi).sum(-1, keepdim=True).unsqueeze(-1)  # (B, 1, 1)
    a = a2.clamp_min(1e-24).sqrt()
    small = a2 < 1e-8
    # sin(a)/a, (1 - cos a)/a^2, (a - sin a)/a^3 with their Taylor series near 0
    s1 = torch.where(small, 1.0 - a2 / 6.0, torch.sin(a) / a)
    s2 = torch.where(small, 0.5 - a2 / 24.0, (1.0 - torch.cos(a)) / a2.clamp_min(1e-24))
    s3 = torch.where(small, 1.0 / 6.0 - a2 / 120.0, (a - torch.sin(a)) / (a2 * a).clamp_min(1e-36))
    K = skew(phi)
    K2 = K @ K
    eye = torch.eye(3, dtype=xi_B6.dtype, device=xi_B6.device).expand_as(K)
    R = eye + s1 * K + s2 * K2
    V = eye + s2 * K + s3 * K2
    t = (V @ rho.unsqueeze(-1)).squeeze(-1)
    top = torch.cat([R, t.unsqueeze(-1)], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)
