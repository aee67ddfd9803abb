"""How far from the true pose does paper 000's eq. 12, rendered through a trained field, still point home?

Usage (from the repo root, in .venv; FIELD is a NeRF artifact, e.g. from scripts/sem_ablation.py):

    python scripts/sem_basin.py runs/sem_ablation/nerf__indoor_room/artifact --data runs/ms \\
        --errors 0.05:1 0.25:2.5 0.5:5 1:10 3:20 --views 16 --out runs/sem_basin_indoor.json

Stage 3 of PoseFormer_sem moves the regressed pose only through the gradient of eq. 12 (0.7 CE +
0.3 SAM between the classes rendered at the pose and the true class map). For query views of the
field's scene (``--split``, ``--condition``) this perturbs the true pose by a random twist of a given
size (``t:deg``: translation metres and rotation degrees, random directions, in the camera frame),
renders every pixel of a ``--width`` x ``--height`` class map there and takes the gradient of eq. 12
with respect to the twist. Per size it reports the loss at the perturbed pose against the loss at
the true pose (how often the truth is lower) and how often the descent direction points back to the
truth (cosine of -gradient with -twist > 0, translation and rotation parts separately). Eq. 12 can
only pull a pose home from errors where both are near 1; a random direction scores 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="see the module docstring")
    p.add_argument("field", help="NeRF artifact (kind nerf) with a semantic head")
    p.add_argument("--data", required=True, help="dataset (visloc layout) with class maps of the field's scene")
    p.add_argument("--split", default="test")
    p.add_argument("--condition", default="day")
    p.add_argument("--errors", nargs="+", default=["0.05:1", "0.25:2.5", "0.5:5", "1:10", "3:20"], help="t_m:deg")
    p.add_argument("--views", type=int, default=16, help="query views (spread over the split)")
    p.add_argument("--width", type=int, default=40)
    p.add_argument("--height", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file for the results (written atomically)")
    return p.parse_args(argv)


def _twist(t_m: float, r_deg: float, rng: np.random.Generator) -> np.ndarray:
    """A random (rho, phi) of translation norm t_m and rotation angle r_deg."""
    u, v = rng.normal(size=3), rng.normal(size=3)
    return np.concatenate([t_m * u / np.linalg.norm(u), np.radians(r_deg) * v / np.linalg.norm(v)])


def eq12_at(field, T_world_cam: torch.Tensor, K: torch.Tensor, uv: torch.Tensor, target: torch.Tensor, xi: np.ndarray):
    """(loss, gradient w.r.t. the twist xi) of eq. 12 at T_world_cam @ exp(xi)."""
    from visloc_core.geometry.torch_ops import se3_exp
    from visloc_core.models.nerf.rays import camera_rays
    from visloc_core.training.poseformer_sem import semantic_consistency_loss

    x = torch.tensor(xi, dtype=torch.float64).unsqueeze(0).requires_grad_(True)
    T = (T_world_cam @ se3_exp(x)[0]).float()
    o, d = camera_rays(T, K, uv)
    loss, _ = semantic_consistency_loss(field.render_rays(o, d)["semantic"], target, 0.7, 0.3)
    (g,) = torch.autograd.grad(loss, x)
    return float(loss.detach()), g[0].numpy()


def run(args: argparse.Namespace) -> dict:
    from visloc_core.data.layout import Dataset
    from visloc_core.models.nerf.artifact import load_radiance_field
    from visloc_core.models.nerf.rays import pixel_centres
    from visloc_core.models.nerf.views import load_view

    field, meta = load_radiance_field(args.field)
    ds = Dataset(args.data)
    frames = ds.frames(args.split, scene=meta["scene"], condition=args.condition)
    if not frames:
        raise SystemExit(f"{args.data}: no {args.condition} frames of {meta['scene']!r} in split {args.split!r}")
    frames = [frames[i] for i in np.linspace(0, len(frames) - 1, min(args.views, len(frames))).round().astype(int)]
    uv = pixel_centres(args.width, args.height)
    rng = np.random.default_rng(args.seed)
    res: dict = {"field": str(args.field), "scene": meta["scene"], "views": len(frames), "errors": {}}
    views = [load_view(ds, f, args.width, args.height, depth=False) for f in frames]
    if any(v.classes is None for v in views):
        raise SystemExit(f"{args.data}: the {args.split} frames have no class maps")
    for spec in args.errors:
        t_m, r_deg = (float(x) for x in spec.split(":"))
        lower, cos_t, cos_r = [], [], []
        for v in views:
            T = torch.tensor(v.T_world_cam, dtype=torch.float64)
            K = torch.tensor(v.camera.K, dtype=torch.float32)
            target = torch.from_numpy(v.classes.astype(np.int64)).reshape(-1)
            xi = _twist(t_m, r_deg, rng)
            loss0, _ = eq12_at(field, T, K, uv, target, np.zeros(6))
            loss, g = eq12_at(field, T, K, uv, target, xi)
            lower.append(loss0 < loss)
            cos_t.append(float(np.dot(-g[:3], -xi[:3]) / (np.linalg.norm(g[:3]) * t_m + 1e-12)))
            cos_r.append(float(np.dot(-g[3:], -xi[3:]) / (np.linalg.norm(g[3:]) * np.radians(r_deg) + 1e-12)))
        res["errors"][spec] = {
            "truth_lower": float(np.mean(lower)),
            "descent_toward_truth_t": float(np.mean(np.array(cos_t) > 0)),
            "descent_toward_truth_r": float(np.mean(np.array(cos_r) > 0)),
            "median_cos_t": float(np.median(cos_t)),
            "median_cos_r": float(np.median(cos_r)),
        }
        print(f"{meta['scene']} {spec}: {json.dumps(res['errors'][spec])}", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    if args.out:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from apr_ablation import write_atomic

        write_atomic(Path(args.out), json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
