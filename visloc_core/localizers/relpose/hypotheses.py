"""Pose-hypothesis filtering (paper 003, section 2.3): absolute query pose from N relative poses.

Pure numpy. Conventions of :mod:`visloc_core.localizers.relpose.base`: the query is q, a reference
keyframe r with known ``T_world_r``; a relative pose ``T_q_r`` maps r-camera points into the q frame
(``x_q = R x_r + t``), ``E = [t]x R``.

From one reference the query orientation is ``R_world_q = R_world_r R^T`` and the query centre lies
on the line ``c_r + s d`` with ``d = -R_world_r R^T t`` (world frame). The two rotations R1, R2 of an
essential matrix differ by a rotation of 180 degrees about t, so ``R^T t`` and therefore ``d`` are
the same for both; the sign of t only flips d, which does not move the intersection of lines.

Algorithm (as the paper, which follows Laskar et al. and Zhou et al.):

1. For every pair of references (i, j): pick the rotation candidates whose absolute rotations agree
   best (rotation disambiguation), average them, and triangulate the query centre from the two rays.
2. A reference k is an inlier of a hypothesis when the angle between its ray direction d_k and the
   hypothesised direction ``c_hyp - c_k`` is below ``alpha_max_deg`` (the paper's consistency
   measure; sign-free when the sign of t is unknown). Our optional addition: ``rot_max_deg`` also
   requires its closest rotation candidate to agree with the hypothesis rotation.
3. The hypothesis with most inliers wins (ties: smaller summed angular residual), among those with
   at least ``min_inliers`` inliers; if none has, the pose of the top retrieved keyframe is
   returned (``fallback``).
4. Refinement on the inliers: the centre is the least-squares intersection of all inlier rays
   (:func:`visloc_core.geometry.triangulate_point_from_rays`), the rotation the chordal mean of the
   inliers' absolute rotations (:func:`visloc_core.geometry.average_rotations`).

Metric estimates (PnP against map depth) fix the full query pose from one reference; each one is
also a hypothesis. A metric estimate is an inlier when its own centre is within
``metric_inlier_m`` of the hypothesis (direction-only estimates keep the angle test); hypotheses
with metric inliers need ``min_inliers_metric`` inliers, and their refined centre is the weighted
mean of the metric inliers' centres (the localizer then re-solves one joint PnP over them). The
position test also accepts ``metric_inlier_sigmas`` standard deviations of the estimate's own centre
(its PnP covariance, ``RelPoseEstimate.sigma_center_m``), so that agreement scales with the scene.

Covariance (6x6, order x, y, z, rotation about world X, Y, Z, as LocalizationResult):

- position, ray case: the angular residuals e_k (radians) of the inlier rays at the refined centre
  give sigma_a^2 = max(sum e_k^2 / max(2n - 3, 1), sigma_a_min^2) (each ray gives 2 constraints, the
  centre has 3 unknowns). A ray from c_k at distance rho_k constrains the two directions orthogonal
  to it with standard deviation sigma_a * rho_k, so the information is
  ``sum_k P_k / (sigma_a rho_k)^2`` with ``P_k = I - d_k d_k^T``; the covariance is its inverse.
- position, metric case: sample covariance of the inlier centres / n, plus sigma_p_min^2 / n.
- rotation: residual rotation vectors ``w_k = log(R_k R^T)`` (left perturbation, world frame, the
  convention of LocalizationResult), isotropic covariance
  (sum |w_k|^2 / (3 max(n - 1, 1)) + sigma_r_min^2) I / n (a full 3x3 from ~5 samples is too noisy).
- cross terms are zero. Fallback: diagonal from ``fallback_position_sigma_m`` /
  ``fallback_rotation_sigma_deg``.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ...geometry import (
    average_rotations,
    decompose_essential,
    rotvec_from_R,
    triangulate_point_from_rays,
)
from .base import ConfigSection, RelPoseEstimate

log = logging.getLogger(__name__)


@dataclass
class FilterConfig(ConfigSection):
    """Settings of the hypothesis filter; every key is a config key of ``filtering:``."""

    section = "filtering"

    enabled: bool = True  # False: the paper's ablation, the pair of the two top references only, no RANSAC
    alpha_max_deg: float = 10.0  # inlier threshold on the ray-direction angle (paper's alpha_max)
    rot_max_deg: float | None = None  # our addition: also require rotation agreement (None = paper, off)
    min_inliers: int = 3  # fewer inliers of the best direction-only hypothesis -> fallback to top-1 pose
    min_inliers_metric: int = 1  # same for hypotheses supported by metric (PnP) estimates
    metric_inlier_m: float = 0.25  # our addition: a metric estimate agrees when its centre is this close...
    # ... or within this many of its own standard deviations (PnP covariance of the reference, calibrated):
    # far structure (halls, squares) makes single-reference centres uncertain by decimetres
    metric_inlier_sigmas: float = 3.0
    # too few agreeing references: "reject" = NOT_LOCALIZED with the reason (a robot must not fuse a
    # guess); "top1" = the pose of the top retrieved keyframe, published (paper 003, for its numbers)
    fallback: str = "reject"
    min_angle_sigma_deg: float = 0.5  # floor of the ray-angle standard deviation in the covariance
    min_rotation_sigma_deg: float = 0.5  # floor of the rotation standard deviation
    min_position_sigma_m: float = 0.01  # floor of the position std of the metric case
    # our addition: stop estimating references once this many METRIC estimates agree (centres within
    # metric_inlier_m, rotations within rot_max_deg); 0 = every reference is estimated (paper). Saves
    # the matching and PnP of the remaining references; they can then no longer vote for a rival.
    early_exit_agree: int = 0
    fallback_position_sigma_m: float = 5.0  # covariance of a fallback pose (retrieval accuracy)
    fallback_rotation_sigma_deg: float = 20.0

    def validate(self) -> None:
        if self.fallback not in ("top1", "reject"):
            raise ValueError(f"filtering.fallback must be 'top1' or 'reject', got {self.fallback!r}")


@dataclass
class Observation:
    """One reference's relative pose in world terms (see the module docstring)."""

    T_world_ref: np.ndarray  # (4, 4)
    R_q_r_M33: np.ndarray  # (M, 3, 3) rotation candidates (M = 1 after cheirality, 2 from a bare E)
    t_q_r: np.ndarray  # (3,) translation (unit unless metric)
    sign_known: bool  # the sign of t is known (cheirality checked or metric)
    metric: bool = False
    weight: float = 1.0  # e.g. number of feature inliers; weights the rotation mean and metric centres
    sigma_center_m: float = 0.0  # metric: largest standard deviation of the implied query centre (m)

    @property
    def center(self) -> np.ndarray:
        return self.T_world_ref[:3, 3]

    @cached_property
    def R_world_q_M33(self) -> np.ndarray:
        """Absolute query rotation candidates R_world_r R^T, (M, 3, 3)."""
        return self.T_world_ref[:3, :3][None] @ np.swapaxes(self.R_q_r_M33, -1, -2)

    @cached_property
    def direction(self) -> np.ndarray:
        """Unit world direction from the reference centre towards the query centre (sign as t)."""
        d = -self.T_world_ref[:3, :3] @ self.R_q_r_M33[0].T @ self.t_q_r
        n = np.linalg.norm(d)
        return d / n if n > 0 else d

    @cached_property
    def metric_center(self) -> np.ndarray:
        """Query centre implied by a metric estimate: c_r - R_world_r R^T t."""
        return self.center - self.T_world_ref[:3, :3] @ self.R_q_r_M33[0].T @ self.t_q_r

    @classmethod
    def from_estimate(cls, est: RelPoseEstimate, T_world_ref: np.ndarray, sigma_scale: float = 1.0) -> Observation:
        """Candidates of an estimate: its own pose when cheirality-checked or metric, otherwise the two
        rotations of E with unknown sign of t (paper 003). ``sigma_scale`` multiplies the standard
        deviation of a metric estimate's centre (the map's calibration)."""
        T = np.asarray(est.T_q_r, dtype=np.float64)
        weight = float(max(est.num_inliers, 1))
        if est.metric or est.cheirality_checked or est.E is None:
            sigma = float(est.sigma_center_m) * float(sigma_scale) if est.metric else 0.0
            return cls(np.asarray(T_world_ref, float), T[None, :3, :3], T[:3, 3].copy(), True, est.metric, weight,
                       sigma)  # fmt: skip
        R1, R2, t = decompose_essential(est.E)
        return cls(np.asarray(T_world_ref, float), np.stack([R1, R2]), t, False, False, weight)


@dataclass
class FilterResult:
    """Output of :func:`filter_hypotheses`. ``T_world_cam`` is NaN when nothing could be estimated."""

    T_world_cam: np.ndarray
    covariance_66: np.ndarray
    inlier_mask: np.ndarray  # (N,) over the observations given
    fallback: bool
    metric: bool  # the centre has metric support (PnP) rather than triangulated rays only
    hypothesis: tuple[int, ...] | None = None  # observation indices the winning hypothesis came from
    num_hypotheses: int = 0
    reason: str = ""
    residuals_deg: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rival_inliers: int = 0  # inlier references of the best hypothesis sharing no reference with the winner
    rival_weight_ratio: float = 0.0  # its feature support (sum of feature inliers) over the winner's

    @property
    def num_inliers(self) -> int:
        return int(self.inlier_mask.sum())


def _angle_deg(a: np.ndarray, b: np.ndarray, sign_known: bool) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12:
        return 0.0  # the hypothesis sits on the reference centre: no direction to disagree with
    c = float(np.clip(a @ b / (na * nb), -1.0, 1.0))
    if not sign_known:
        c = abs(c)
    return float(np.degrees(np.arccos(c)))


def _angle_of_deg(R_M33: np.ndarray) -> np.ndarray:
    """Rotation angles (deg) from the trace: ~20x faster than the quaternion route; its loss of
    precision near 0 (~1e-6 deg) does not matter for choosing candidates or thresholding."""
    c = (np.trace(R_M33, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def _closest_rotation(obs: Observation, R_world_q: np.ndarray) -> tuple[np.ndarray, float]:
    cands = obs.R_world_q_M33
    ang = _angle_of_deg(cands @ R_world_q.T)
    j = int(np.argmin(ang))
    return cands[j], float(ang[j])


def _metric_tolerance(o: Observation, cfg: FilterConfig) -> float:
    """How far (m) a metric observation's centre may be from a hypothesis and still agree."""
    return max(cfg.metric_inlier_m, cfg.metric_inlier_sigmas * o.sigma_center_m)


def _score(obs: list[Observation], R_world_q: np.ndarray, c_q: np.ndarray, cfg: FilterConfig):
    """Inlier mask, angular residuals (deg) and chosen absolute rotations of every observation."""
    n = len(obs)
    mask = np.zeros(n, bool)
    res = np.zeros(n)
    rots = np.zeros((n, 3, 3))
    for k, o in enumerate(obs):
        rots[k], rot_err = _closest_rotation(o, R_world_q)
        res[k] = _angle_deg(o.direction, c_q - o.center, o.sign_known)
        if o.metric:  # a full pose: compare positions (an angle test would depend on the baseline)
            agree = float(np.linalg.norm(o.metric_center - c_q)) <= _metric_tolerance(o, cfg)
        else:
            agree = res[k] <= cfg.alpha_max_deg
        mask[k] = agree and (cfg.rot_max_deg is None or rot_err <= cfg.rot_max_deg)
    return mask, res, rots


def _pair_hypothesis(oi: Observation, oj: Observation, check_sign: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """(R_world_q, c_q) from two references, or None for parallel rays / (with ``check_sign``) a
    centre behind a reference whose sign of t is known."""
    Ri, Rj = oi.R_world_q_M33, oj.R_world_q_M33
    ang = _angle_of_deg(Ri[:, None] @ np.swapaxes(Rj[None], -1, -2))  # (Mi, Mj)
    a, b = np.unravel_index(int(np.argmin(ang)), ang.shape)
    R = average_rotations(np.stack([Ri[a], Rj[b]]))
    try:
        c = triangulate_point_from_rays(np.stack([oi.center, oj.center]), np.stack([oi.direction, oj.direction]))
    except ValueError:
        return None
    for o in (oi, oj):  # with a known sign the query must lie ahead along the ray
        if check_sign and o.sign_known and (c - o.center) @ o.direction < 0:
            return None
    return R, c


def _covariance(
    obs: list[Observation], rots: np.ndarray, R: np.ndarray, c: np.ndarray, metric: bool, cfg: FilterConfig
) -> np.ndarray:
    n = len(obs)
    cov = np.zeros((6, 6))
    if metric:
        centers = np.stack([o.metric_center for o in obs])
        d = centers - c
        cov[:3, :3] = (d.T @ d / max(n - 1, 1) + cfg.min_position_sigma_m**2 * np.eye(3)) / n
    else:
        e = np.radians([_angle_deg(o.direction, c - o.center, o.sign_known) for o in obs])
        sigma_a2 = max(float(e @ e) / max(2 * n - 3, 1), np.radians(cfg.min_angle_sigma_deg) ** 2)
        info = np.zeros((3, 3))
        for o in obs:
            rho2 = max(float(np.sum((c - o.center) ** 2)), 1e-12)
            d = o.direction
            info += (np.eye(3) - np.outer(d, d)) / (sigma_a2 * rho2)
        cov[:3, :3] = np.linalg.pinv(info)
    # Isotropic: a full 3x3 sample covariance from ~5 references is too noisy to invert reliably.
    w = rotvec_from_R(rots @ R.T)
    sigma_r2 = float(np.sum(w * w)) / (3 * max(n - 1, 1)) + np.radians(cfg.min_rotation_sigma_deg) ** 2
    cov[3:, 3:] = sigma_r2 / n * np.eye(3)
    return 0.5 * (cov + cov.T)


def _refine(obs: list[Observation], rots: np.ndarray, metric: bool) -> tuple[np.ndarray, np.ndarray]:
    weights = np.array([o.weight for o in obs])
    R = average_rotations(rots, weights)
    if metric:
        c = np.average(np.stack([o.metric_center for o in obs]), axis=0, weights=weights)
    else:
        c = triangulate_point_from_rays(np.stack([o.center for o in obs]), np.stack([o.direction for o in obs]))
    return R, c


def _pose(R: np.ndarray, c: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = c
    return T


def _fallback(
    obs: list[Observation], T_world_top: np.ndarray | None, cfg: FilterConfig, reason: str, n_hyp: int
) -> FilterResult:
    mask = np.zeros(len(obs), bool)
    if cfg.fallback == "reject" or T_world_top is None:
        return FilterResult(np.full((4, 4), np.nan), np.full((6, 6), np.nan), mask, True, False, None, n_hyp, reason)
    cov = np.diag([cfg.fallback_position_sigma_m**2] * 3 + [np.radians(cfg.fallback_rotation_sigma_deg) ** 2] * 3)
    return FilterResult(np.asarray(T_world_top, float).copy(), cov, mask, True, False, None, n_hyp, reason)


def metric_agreement(obs: list[Observation | None], cfg: FilterConfig) -> int:
    """Largest number of metric observations that agree with one of them (itself included)."""
    m = [o for o in obs if o is not None and o.metric]
    best = 0
    for a in m:
        n = 0
        for b in m:
            tol = max(_metric_tolerance(a, cfg), _metric_tolerance(b, cfg))
            close = float(np.linalg.norm(a.metric_center - b.metric_center)) <= tol
            if close and cfg.rot_max_deg is not None:
                close = float(_angle_of_deg(a.R_world_q_M33[0] @ b.R_world_q_M33[0].T)) <= cfg.rot_max_deg
            n += close
        best = max(best, n)
    return best


def filter_hypotheses(
    observations: list[Observation | None],
    T_world_top: np.ndarray | None,
    cfg: FilterConfig | None = None,
) -> FilterResult:
    """Absolute query pose from per-reference observations (None = the estimator failed there).

    ``observations`` are in retrieval order (best first); ``T_world_top`` is the pose of the top
    retrieved keyframe, returned when too few references agree (fallback="top1").
    """
    cfg = cfg or FilterConfig()
    n_all = len(observations)
    idx = [k for k, o in enumerate(observations) if o is not None]
    obs = [observations[k] for k in idx]

    def _expand(mask_valid: np.ndarray) -> np.ndarray:
        m = np.zeros(n_all, bool)
        m[idx] = mask_valid
        return m

    if not cfg.enabled:
        return _unfiltered(obs, idx, n_all, T_world_top, cfg)

    hypotheses: list[tuple[tuple[int, ...], np.ndarray, np.ndarray, bool]] = []
    for i, j in itertools.combinations(range(len(obs)), 2):
        if obs[i].metric and obs[j].metric:
            # Both are full metric poses, each already a hypothesis below; the centre triangulated
            # from their rays only adds a noisier copy (and ~0.3 ms of the query's time).
            continue
        h = _pair_hypothesis(obs[i], obs[j])
        if h is not None:
            hypotheses.append(((idx[i], idx[j]), h[0], h[1], False))
    for i, o in enumerate(obs):
        if o.metric:
            hypotheses.append(((idx[i],), o.R_world_q_M33[0], o.metric_center, True))
    if not hypotheses:
        return _fallback(observations, T_world_top, cfg, f"no hypothesis from {len(obs)} valid references", 0)

    best, most = None, 0
    supports = []  # (inlier mask, count) of every valid hypothesis, to find rivals of the winner
    for key, R, c, is_metric in hypotheses:
        mask, res, _ = _score(obs, R, c, cfg)
        n_in = int(mask.sum())
        most = max(most, n_in)
        # A hypothesis counts when it has enough inliers for its kind: metric-supported ones need
        # min_inliers_metric, direction-only ones min_inliers (chosen among valid ones only, so a
        # pair of agreeing rays cannot shadow a valid metric pose with fewer votes).
        supported = any(o.metric for o, m in zip(obs, mask) if m)
        if n_in < (cfg.min_inliers_metric if supported else cfg.min_inliers):
            continue
        weight = float(sum(o.weight for o, m in zip(obs, mask) if m))
        supports.append((mask, n_in, weight))
        # ties: metric hypotheses first (full pose measured), then the larger feature support
        # (sum of the inlier references' feature inliers), then the smaller angular residual
        score = (n_in, is_metric, weight, -float(res[mask].sum()))
        if best is None or score > best[0]:
            best = (score, key, mask, is_metric)
    if best is None:
        reason = f"no hypothesis has enough agreeing references (best: {most}; need {cfg.min_inliers}, or {cfg.min_inliers_metric} with a metric one)"
        return _fallback(observations, T_world_top, cfg, reason, len(hypotheses))
    _, key, mask, _ = best
    # A rival: a valid hypothesis supported by none of the winner's references (another place the
    # references vouch for, e.g. a repeated texture). Its support tells how ambiguous the winner is.
    rivals = [(n, w) for m, n, w in supports if not (m & mask).any()]
    rival = max(rivals, default=(0, 0.0))
    win_weight = float(sum(o.weight for o, m in zip(obs, mask) if m))
    inl = [o for o, m in zip(obs, mask) if m]
    metric = any(o.metric for o in inl)
    if metric:  # metric centres are the measurement; direction-only inliers vote but do not move them
        inl = [o for o in inl if o.metric]
    # Refine on the inliers; rotation candidates chosen against the winning hypothesis.
    R_h = next(R for k, R, _, _ in hypotheses if k == key)
    rots = np.stack([_closest_rotation(o, R_h)[0] for o in inl])
    try:
        R, c = _refine(inl, rots, metric)
    except ValueError:  # inlier rays parallel: keep the hypothesis itself
        R, c = R_h, next(c for k, _, c, _ in hypotheses if k == key)
    rots = np.stack([_closest_rotation(o, R)[0] for o in inl])
    cov = _covariance(inl, rots, R, c, metric, cfg)
    # Report the inliers of the refined pose (what the covariance and the caller should trust).
    mask_final, res, _ = _score(obs, R, c, cfg)
    out = FilterResult(_pose(R, c), cov, _expand(mask_final), False, metric, key, len(hypotheses), "", res)
    out.rival_inliers = int(rival[0])
    out.rival_weight_ratio = rival[1] / win_weight if win_weight > 0 else 0.0
    return out


def _unfiltered(
    obs: list[Observation], idx: list[int], n_all: int, T_world_top: np.ndarray | None, cfg: FilterConfig
) -> FilterResult:
    """Ablation without hypothesis filtering: the pose from the first two valid references (the
    paper's {I_r1, I_r2}), or the first metric estimate; no inlier test, no refinement."""
    mask = np.zeros(n_all, bool)
    metric = [k for k, o in enumerate(obs) if o.metric]
    if metric:
        o = obs[metric[0]]
        R, c, used, is_metric = o.R_world_q_M33[0], o.metric_center, [metric[0]], True
    else:
        h = _pair_hypothesis(obs[0], obs[1], check_sign=False) if len(obs) >= 2 else None
        if h is None:
            return _fallback([None] * n_all, T_world_top, cfg, "fewer than two usable references", 0)
        (R, c), used, is_metric = h, [0, 1], False
    mask[[idx[u] for u in used]] = True
    rots = np.stack([_closest_rotation(obs[u], R)[0] for u in used])
    cov = _covariance([obs[u] for u in used], rots, R, c, is_metric, cfg)
    return FilterResult(_pose(R, c), cov, mask, False, is_metric, tuple(idx[u] for u in used), 1)
