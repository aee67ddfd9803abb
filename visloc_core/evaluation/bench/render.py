"""``visloc bench render``: synthetic rendering speed of each scene preset, as frames/s.

For every preset (``--presets``, default indoor_room, large_hall and plaza) and size (``--sizes``, default
320x240 and 640x480) the poses of the preset's first mapping sequence are rendered ``--frames``
times, the first three interleaved frame by frame, four ways:

- ``render``: draw the frame (RGB + depth + class targets in one pass) and wait for the GPU
  (``ctx.finish()``) — the renderer alone;
- ``render_readback``: draw and read the three targets back into numpy arrays;
- ``frame``: :meth:`SceneRenderer.render_frame` in the ``day`` condition, i.e. draw, readback and
  sensor noise (what the generator does per frame, without blur sub-frames);
- ``generate``: the whole ``visloc synth`` loop of the first mapping sequence, including PNG
  encoding of RGB, depth and classes and the atomic dataset commit (``--generate-frames`` frames).

Reported per case: frames/s (from the median frame time, and from the mean), and ``ratio_to_target`` =
fps / 100 (the target: >= 100 frames/s at 320x240). Wall time depends on what else runs on the
machine, so the CPU time of the process per frame (all threads, llvmpipe's included) is reported
too, as frames per CPU-second. Mesa's llvmpipe rasterizes with
``LP_NUM_THREADS`` threads (default: all cores); it is recorded. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

HELP = "synthetic rendering frames/s per preset at 320x240 and 640x480 (target >= 100 fps at 320x240)"
TARGET_FPS = 100.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--presets",
        nargs="+",
        default=["indoor_room", "large_hall", "plaza"],
        help="scene presets or YAML files to time",
    )
    parser.add_argument("--sizes", nargs="+", default=["320x240", "640x480"], help="image sizes WxH")
    parser.add_argument("--frames", type=int, default=200, help="timed frames per case (after 10 warm-up frames)")
    parser.add_argument(
        "--generate-frames",
        type=int,
        default=200,
        help="frames of the full generate() run per case, setup included (0 = skip)",
    )


def _time_interleaved(fns: dict, poses: np.ndarray, n: int, warmup: int = 10) -> dict:
    """Time each function on the same poses, interleaved frame by frame (our machines are shared:
    a load burst then hits every variant alike). Returns name -> statistics."""
    for i in range(warmup):
        for fn in fns.values():
            fn(poses[i % len(poses)], i)
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(n):
        for k, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn(poses[i % len(poses)], i)
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    out = {}
    for k, ts in times.items():
        med = float(np.median(ts))
        cpu_mean = float(np.mean(cpu[k]))
        out[k] = {
            # CPU seconds of all our threads (incl. llvmpipe's) per frame: much less sensitive to
            # other processes than wall time; 1 / cpu = frames per CPU-second (x cores = idle fps bound)
            "cpu_ms_mean": cpu_mean * 1e3,
            "fps_per_cpu_second": 1.0 / cpu_mean if cpu_mean > 0 else None,
            "frames": n,
            "median_ms": med * 1e3,
            "p95_ms": float(np.percentile(ts, 95)) * 1e3,
            "fps_median": 1.0 / med,
            "fps_mean": n / float(np.sum(ts)),
            "ratio_to_target": (1.0 / med) / TARGET_FPS,
        }
    return out


def bench_case(preset: str, width: int, height: int, frames: int, generate_frames: int) -> dict:
    """All four timings for one preset at one size."""
    from ...data.synth import apply_overrides, generate, load_scene, plan_sequence
    from ...data.synth.generate import SceneRenderer

    spec = apply_overrides(load_scene(preset), size=(width, height))
    idx = next((i for i, s in enumerate(spec.sequences) if s.split == "train"), 0)
    plan = plan_sequence(spec, idx)
    cond = spec.conditions["day"]
    sr = SceneRenderer(spec)
    r, cam = sr.renderer, sr.camera
    kw = {"near": spec.camera.near, "far": spec.camera.far}
    out: dict = {"preset": preset, "size": f"{width}x{height}", "triangles": None}
    try:
        out["triangles"] = int(sum(v[0].size for v in r._vaos.values()) // (3 * 13 * 4))

        def render_only(T, i):
            r.draw(T, cam, cond, **kw)
            r.finish()

        def render_readback(T, i):
            r.draw(T, cam, cond, **kw)
            r.read()

        def frame(T, i):
            sr.render_frame(plan, i % len(plan.T_world_cam))

        out.update(
            _time_interleaved(
                {"render": render_only, "render_readback": render_readback, "frame": frame}, plan.T_world_cam, frames
            )
        )
    finally:
        sr.release()
    if generate_frames > 0:
        from dataclasses import replace

        one = replace(spec, sequences=[replace(spec.sequences[idx], n_frames=generate_frames)])
        tmp = Path(tempfile.mkdtemp(prefix="visloc-bench-render-"))
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            generate(one, tmp / "ds", progress=False)
            dt = time.perf_counter() - t0
            cpu = time.process_time() - c0
            out["generate"] = {
                "frames": generate_frames,
                "seconds": dt,
                "cpu_seconds": cpu,
                "fps_per_cpu_second": generate_frames / cpu if cpu > 0 else None,
                "fps_overall": generate_frames / dt,
                "ratio_to_target": generate_frames / dt / TARGET_FPS,
                "note": "includes renderer setup, PNG encoding of rgb/depth/classes and the dataset commit",
            }
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def run(args: argparse.Namespace) -> dict:
    from .timing import machine_info

    results = []
    for preset in args.presets:
        for size in args.sizes:
            try:
                w, h = (int(x) for x in size.lower().split("x"))
            except ValueError as err:
                raise ValueError(f"--sizes entries look like 320x240, got {size!r}") from err
            log.info("render bench: %s at %dx%d", preset, w, h)
            case = bench_case(preset, w, h, args.frames, args.generate_frames)
            results.append(case)
            log.info(
                "  render %.0f fps, +readback %.0f fps, frame %.0f fps",
                case["render"]["fps_median"],
                case["render_readback"]["fps_median"],
                case["frame"]["fps_median"],
            )
    summary = {
        f"{c['preset']}@{c['size']}": {
            "render_fps": round(c["render"]["fps_median"], 1),
            "render_readback_fps": round(c["render_readback"]["fps_median"], 1),
            "frame_fps": round(c["frame"]["fps_median"], 1),
            "generate_fps": round(c["generate"]["fps_overall"], 1) if "generate" in c else None,
            "generate_fps_per_cpu_second": round(c["generate"]["fps_per_cpu_second"], 1) if "generate" in c else None,
            "readback_ratio_to_100fps": round(c["render_readback"]["ratio_to_target"], 2),
            "render_readback_fps_per_cpu_second": round(c["render_readback"]["fps_per_cpu_second"], 1),
            "frame_fps_per_cpu_second": round(c["frame"]["fps_per_cpu_second"], 1),
        }
        for c in results
    }
    return {
        "target_fps_at_320x240": TARGET_FPS,
        "summary": summary,
        "cases": results,
        "llvmpipe_threads": os.environ.get("LP_NUM_THREADS", f"default ({os.cpu_count()} cores)"),
        "machine": machine_info(),
    }
