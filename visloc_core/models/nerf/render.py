"""Volume rendering (NeRF eq. 3; paper 000 eq. 7; paper 001 eq. 3-4) over sample intervals.

A ray is split into intervals [b_i, b_{i+1}] (``bins``, ray parameter t = camera-frame depth, see
rays.py); the field is evaluated at each interval's midpoint and taken as constant on it. With
metric lengths ``delta_i = (b_{i+1} - b_i) |d|``:

    alpha_i = 1 - exp(-sigma_i delta_i),   T_i = exp(-sum_{j<i} sigma_j delta_j),   w_i = T_i alpha_i

and every per-point quantity q (colour, semantic logits, pose features, depth t) renders as
``Q = sum_i w_i q_i + T_out q_background`` with ``T_out = exp(-sum_i sigma_i delta_i)`` the
transmittance left at the end of the last interval (the background term is 0 when the field has
no background). For a piecewise-constant density these weights are exact, not an approximation:
the rendered transmittance through a slab of density sigma and thickness d is exp(-sigma d).

Depth: ``depth = sum_i w_i t_mid_i`` (expected termination depth, camera-frame z, metres) and
``acc = sum_i w_i`` (opacity); ``depth / acc`` is the depth of the surface seen by the ray.
"""

from __future__ import annotations

import torch


def volume_weights(sigma_NS: torch.Tensor, delta_NS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendering weights w (N, S) and the transmittance left after the last interval T_out (N,)."""
    tau = sigma_NS * delta_NS
    cum = torch.cumsum(tau, dim=-1)
    excl = torch.cat([torch.zeros_like(cum[..., :1]), cum[..., :-1]], dim=-1)
    w = torch.exp(-excl) * (1.0 - torch.exp(-tau))
    return w, torch.exp(-cum[..., -1])


def render_rays(field, origins_N3: torch.Tensor, dirs_N3: torch.Tensor, bins_NS1: torch.Tensor) -> dict:
    """Render rays through ``field`` (field.SceneField interface) over the intervals ``bins``
    (N, S+1), sorted along each ray. Returns per ray: ``rgb`` (N, 3), ``semantic`` (N, C) logits,
    ``pose_feature`` (N, K) if the field has the branch, ``depth`` (N,), ``acc`` (N,), ``weights``
    (N, S), ``t_mid`` (N, S), ``t_out`` (N,) = transmittance to the background. Differentiable with
    respect to origins and directions (hence the pose) and the field's parameters; ``bins`` is
    treated as a constant (sampling is not differentiated, as in NeRF/iNeRF)."""
    bins = bins_NS1.detach()
    t_mid = 0.5 * (bins[..., 1:] + bins[..., :-1])
    n, s = t_mid.shape
    delta = (bins[..., 1:] - bins[..., :-1]) * dirs_N3.norm(dim=-1, keepdim=True)
    pts = origins_N3.unsqueeze(1) + t_mid.unsqueeze(-1) * dirs_N3.unsqueeze(1)  # (N, S, 3)
    dirs = dirs_N3.unsqueeze(1).expand(n, s, 3)
    raw = field(pts.reshape(-1, 3), dirs.reshape(-1, 3))
    sigma = raw["sigma"].reshape(n, s)
    w, t_out = volume_weights(sigma, delta)
    out = {"weights": w, "t_mid": t_mid, "t_out": t_out, "acc": w.sum(-1), "depth": (w * t_mid).sum(-1)}
    bg = field.background_values(dirs_N3) if hasattr(field, "background_values") else None
    for key in ("rgb", "semantic", "pose_feature"):
        if key not in raw:
            continue
        q = (w.unsqueeze(-1) * raw[key].reshape(n, s, -1)).sum(1)
        if bg is not None and key in bg:
            q = q + t_out.unsqueeze(-1) * bg[key]
        out[key] = q
    return out
