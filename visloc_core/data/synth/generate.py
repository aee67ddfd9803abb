"""Synthesize a dataset (and optionally one rosbag2 per sequence) from a scene spec.

For every sequence: base_link poses along its trajectory at the camera rate, camera poses
``T_world_cam = T_map_base @ T_base_optical`` (exactly what the bag's TF chain composes to), one
render per frame (RGB + metric depth + class ids), the condition's motion blur (sub-frames over
the shutter) and sensor noise, then the frame goes to the dataset writer (and the bag writer).
Everything random comes from ``numpy.random.default_rng`` seeded by (seed, sequence index, ...),
so the same seed gives identical files.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..layout import DatasetWriter
from ..png import encode_png
from .conditions import ConditionSpec, NoiseBank, apply_sensor_noise
from .geometry import actor_mesh, actor_pose, clearance_m, static_mesh
from .renderer import Renderer, RenderOutput
from .spec import CLASS_IDS, CLASSES, SceneSpec, SequenceSpec
from .trajectories import base_pose_at, drifting_odometry, frame_stamps_ns, periods_ns

log = logging.getLogger(__name__)

# Salts for the per-purpose random streams (so adding one never shifts another).
_RNG_NOISE, _RNG_ODOM, _RNG_BANK = 1, 2, 3
MIN_CLEARANCE_M = 0.3  # camera paths closer than this to a static box or wall get a warning


@dataclass
class SequencePlan:
    """Everything about one sequence except its pixels (poses, stamps, odometry, actors)."""

    index: int
    seq: SequenceSpec
    cond: ConditionSpec
    stamps_ns: np.ndarray  # (N,) image stamps
    T_map_base: np.ndarray  # (N, 4, 4) at the image stamps
    T_world_cam: np.ndarray  # (N, 4, 4) = T_map_base @ T_base_optical
    odom_stamps_ns: np.ndarray  # (M,) odometry stamps; image i is odom sample i * odom_rate_factor
    T_odom_base: np.ndarray  # (M, 4, 4) drifting odometry
    T_map_odom: np.ndarray  # (M, 4, 4) = T_map_base @ inv(T_odom_base) at the odom stamps
    actors: list[str]  # actor names present in this condition


def apply_overrides(spec: SceneSpec, size: tuple[int, int] | None = None, max_frames: int | None = None) -> SceneSpec:
    """A copy of ``spec`` rendered at ``size`` (W, H; same field of view) and/or with at most
    ``max_frames`` per sequence (the same path, sampled more sparsely)."""
    out = replace(spec)
    if size is not None:
        w, h = size
        if w < 8 or h < 8:
            raise ValueError(f"--size must be at least 8x8, got {w}x{h}")
        out.camera = replace(spec.camera, width=int(w), height=int(h))
    if max_frames is not None:
        if max_frames < 1:
            raise ValueError("--max-frames must be >= 1")
        out.sequences = [replace(s, n_frames=min(s.n_frames, int(max_frames))) for s in spec.sequences]
    return out


def plan_sequence(spec: SceneSpec, index: int) -> SequencePlan:
    """Poses, stamps and drifting odometry of sequence ``index`` (deterministic from spec.seed)."""
    seq = spec.sequences[index]
    cond = spec.conditions[seq.condition]
    rate = spec.camera.rate_hz
    factor = spec.odom_rate_factor
    _, odom_ns = periods_ns(rate, factor)
    stamps = frame_stamps_ns(seq, rate, factor)
    n_odom = seq.n_frames * factor
    odom_stamps = stamps[0] + odom_ns * np.arange(n_odom, dtype=np.int64)
    # the pose is a function of time since the start; cam_ns * i is exactly odom_ns * (i * factor)
    T_map_base_odom = np.stack([base_pose_at(seq, rate, j * odom_ns * 1e-9) for j in range(n_odom)])
    T_map_base = T_map_base_odom[::factor].copy()
    T_world_cam = T_map_base @ spec.T_base_optical
    rng = np.random.default_rng([spec.seed, index, _RNG_ODOM])
    T_odom_base, T_map_odom = drifting_odometry(T_map_base_odom, spec.odom_drift, rng)
    people = [a.name for a in spec.actors if a.kind == "person"][: cond.people]
    vehicles = [a.name for a in spec.actors if a.kind == "vehicle"][: cond.vehicles]
    return SequencePlan(
        index, seq, cond, stamps, T_map_base, T_world_cam, odom_stamps, T_odom_base, T_map_odom, people + vehicles
    )


class SceneRenderer:
    """A :class:`Renderer` for one scene spec plus the per-frame logic (actors, blur, noise)."""

    def __init__(self, spec: SceneSpec, ctx=None) -> None:
        self.spec = spec
        self.camera = spec.camera.pinhole()
        self.actors = {a.name: a for a in spec.actors}
        background = CLASS_IDS["sky"] if spec.kind == "outdoor" else CLASS_IDS["void"]
        self.renderer = Renderer(
            self.camera.width,
            self.camera.height,
            static_mesh(spec),
            {a.name: actor_mesh(a) for a in spec.actors},
            background_class=background,
            ctx=ctx,
            sky=spec.kind == "outdoor",
        )
        self.noise = NoiseBank((self.camera.height, self.camera.width, 3), [spec.seed, _RNG_BANK])

    def _actor_poses(self, names: list[str], t_abs_s: float) -> list[tuple[str, np.ndarray]]:
        return [(n, actor_pose(self.actors[n], t_abs_s)) for n in names]

    def render_frame(self, plan: SequencePlan, i: int) -> RenderOutput:
        """Frame ``i`` of a planned sequence: RGB with blur and noise, exact depth and classes.

        Depth and classes are those of the pose at the image stamp (mid-exposure); RGB averages
        ``blur_samples`` renders over the shutter time centred on it.
        """
        spec, cond, seq = self.spec, plan.cond, plan.seq
        rate = spec.camera.rate_hz
        t = (int(plan.stamps_ns[i]) - int(plan.stamps_ns[0])) * 1e-9
        t_abs = seq.t0_s + t  # actors move on a clock shared by all sequences
        r = self.renderer
        kw = {"near": spec.camera.near, "far": spec.camera.far}
        r.draw(plan.T_world_cam[i], self.camera, cond, actors=self._actor_poses(plan.actors, t_abs), **kw)
        out = r.read()
        rgb = out.rgb_HW3
        if cond.blur_exposure_s > 0 and cond.blur_samples > 1:
            acc = np.zeros(rgb.shape, np.float32)
            for dt in np.linspace(-cond.blur_exposure_s / 2, cond.blur_exposure_s / 2, cond.blur_samples):
                T = base_pose_at(seq, rate, t + dt) @ spec.T_base_optical
                r.draw(T, self.camera, cond, actors=self._actor_poses(plan.actors, t_abs + dt), **kw)
                acc += r.read_rgb()
            rgb = acc / cond.blur_samples
        rng = np.random.default_rng([spec.seed, plan.index, i, _RNG_NOISE])
        out.rgb_HW3 = apply_sensor_noise(rgb, cond, rng, self.noise)
        return out

    def release(self) -> None:
        self.renderer.release()


def generate(
    spec: SceneSpec | list[SceneSpec],
    out: str | Path,
    bag_dir: str | Path | None = None,
    storage: str = "sqlite3",
    compressed: bool = False,
    preview: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_frame: Callable[[SequencePlan, int, RenderOutput], None] | None = None,
    png_level: int = 0,
    bag_depth: bool = False,
) -> Path:
    """Render every sequence of ``spec`` (one scene, or several into one multi-scene dataset) into
    the dataset ``out`` (atomic: temp folder, then rename).

    With ``bag_dir``, also writes ``bag_dir/<scene>_<sequence>/`` per sequence (rosbag2, storage
    ``sqlite3`` or ``mcap``, raw rgb8 or ``compressed`` JPEG images, plus the depth topic with
    ``bag_depth``), each atomically. Existing
    outputs are an error unless ``overwrite``. ``png_level``: deflate level of the RGB PNGs (0 =
    uncompressed: ~1.5x the disk, much faster to write; lossless either way). Returns the dataset path.
    """
    from tqdm import tqdm

    specs = [spec] if isinstance(spec, SceneSpec) else list(spec)
    names = [s.name for s in specs]
    if not specs or len(set(names)) != len(names):
        raise ValueError(f"give one or more scenes with distinct names, got {names}")
    out = Path(out)
    bag_paths: dict[tuple[str, str], Path] = {}
    if bag_dir is not None:
        from ..bags.write import STORAGES

        if storage not in STORAGES:
            raise ValueError(f"--storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        bag_dir = Path(bag_dir)
        for sp in specs:
            for s in sp.sequences:
                p = bag_dir / f"{sp.name}_{s.name}"
                if p.exists() and not overwrite:
                    raise FileExistsError(f"bag {p} exists; pass --overwrite or choose another --bag folder")
                bag_paths[(sp.name, s.name)] = p
    if not 0 <= int(png_level) <= 9:
        raise ValueError(f"--png-level must be 0..9, got {png_level}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")

    source = {
        "type": "synth",
        "scene_files": [sp.source_path for sp in specs],
        "scenes": names,
        "seeds": [sp.seed for sp in specs],
        "sizes": [[sp.camera.width, sp.camera.height] for sp in specs],
    }
    if len(specs) == 1:  # the single-scene keys too, the common case
        cam0 = specs[0].camera
        source.update(
            scene_file=specs[0].source_path, scene=names[0], seed=specs[0].seed, size=[cam0.width, cam0.height]
        )
    writer = _WriterThread()
    samples: dict[str, list] = {}
    splits: dict[str, list[str]] = {}
    total = sum(s.n_frames for sp in specs for s in sp.sequences)
    bar = tqdm(total=total, desc="synth " + "+".join(names), unit="frame", disable=not progress)
    try:
        with DatasetWriter(out, source=source, overwrite=overwrite) as w:
            w.set_classes(CLASSES)
            for sp in specs:
                _generate_scene(
                    sp,
                    w,
                    writer,
                    bar,
                    splits,
                    samples,
                    bag_paths,
                    storage,
                    compressed,
                    png_level,
                    on_frame,
                    overwrite,
                    multi=len(specs) > 1,
                    bag_depth=bag_depth,
                )
            bar.close()
            for split, keys in splits.items():
                w.set_split(split, keys)
            if preview:
                from .preview import write_contact_sheet

                far = max(float(np.linalg.norm(np.subtract(_extent(sp)["max"], _extent(sp)["min"]))) for sp in specs)
                title = ", ".join(f"{sp.name} (seed {sp.seed})" for sp in specs)
                write_contact_sheet(samples, w.tmp / "preview.png", title=title, depth_range=(0.3, far))
    finally:
        bar.close()
        writer.close()
    return out


def _generate_scene(
    spec: SceneSpec,
    w: DatasetWriter,
    writer: _WriterThread,
    bar,
    splits: dict[str, list[str]],
    samples: dict[str, list],
    bag_paths: dict[tuple[str, str], Path],
    storage: str,
    compressed: bool,
    png_level: int,
    on_frame,
    overwrite: bool,
    multi: bool,
    bag_depth: bool = False,
) -> None:
    """All sequences of one scene into the open dataset writer (and bags)."""
    cam = spec.camera.pinhole()
    log.info(
        "synth %s: %d sequences, %d frames at %dx%d, seed %d",
        spec.name,
        len(spec.sequences),
        sum(s.n_frames for s in spec.sequences),
        cam.width,
        cam.height,
        spec.seed,
    )
    w.set_scene(
        spec.name,
        description=spec.description,
        kind=spec.kind,
        extent=_extent(spec),
        T_base_optical=spec.T_base_optical.tolist(),
        frames={"map": "map", "odom": "odom", "base": "base_link", "camera": "camera_optical_frame"},
    )
    sr = SceneRenderer(spec)
    try:
        for idx, seq in enumerate(spec.sequences):
            plan = plan_sequence(spec, idx)
            gap = float(clearance_m(spec, plan.T_world_cam[:, :3, 3]).min())
            if gap < MIN_CLEARANCE_M:
                log.warning(
                    "sequence %s: the camera comes %.2f m from a wall/object (or enters it); "
                    "move the trajectory or the object in %s",
                    seq.name,
                    gap,
                    spec.source_path,
                )
            w.set_sequence(
                spec.name,
                seq.name,
                condition=seq.condition,
                split=seq.split,
                actors=plan.actors,
                rate_hz=spec.camera.rate_hz,
            )
            splits.setdefault(seq.split, []).append(f"{spec.name}/{seq.name}")
            bag = None
            if bag_paths:
                from ..bags.write import SequenceBagWriter

                bag = SequenceBagWriter(
                    bag_paths[(spec.name, seq.name)],
                    camera=cam,
                    T_base_cameralink=spec.T_base_cameralink,
                    storage=storage,
                    compressed=compressed,
                    overwrite=overwrite,
                    depth=bag_depth,
                )
            try:
                if bag is not None:
                    bag.set_odometry(plan.odom_stamps_ns, plan.T_odom_base, plan.T_map_odom)
                pick = {int(k * seq.n_frames / 3) for k in range(3)}  # 0, 1/3, 2/3: loops end where they start
                key = f"{spec.name}/{seq.name}" if multi else seq.name  # preview row label
                for i in range(seq.n_frames):
                    frame = sr.render_frame(plan, i)
                    # encoding and writing run on the writer thread, overlapping the next render
                    writer.submit(_write_frame, w, spec, plan, i, cam, frame, png_level)
                    if bag is not None:  # here: rosbags' sqlite3 connection belongs to this thread
                        bag.write_frame(
                            int(plan.stamps_ns[i]),
                            frame.rgb_HW3,
                            plan.T_map_base[i],
                            frame.depth_HW if bag_depth else None,
                        )
                    if on_frame is not None:
                        on_frame(plan, i, frame)
                    if i in pick:
                        samples.setdefault(key, []).append((seq.condition, frame))
                    bar.update(1)
                writer.drain()
            except BaseException:
                writer.drain(raise_errors=False)
                if bag is not None:
                    bag.abort()
                raise
            if bag is not None:
                bag.close()
    finally:
        sr.release()


def _write_frame(
    w: DatasetWriter, spec: SceneSpec, plan: SequencePlan, i: int, cam, frame: RenderOutput, png_level: int
) -> None:
    stamp = int(plan.stamps_ns[i])
    # RGB PNG: level 1 is the layout's default (DatasetWriter); 0 = uncompressed (5-20x faster to write)
    encoded = None if png_level == 1 else encode_png(frame.rgb_HW3, level=png_level)
    w.add_frame(
        spec.name,
        plan.seq.name,
        f"frame-{i:06d}",
        stamp,
        plan.T_world_cam[i],
        cam,
        rgb_HW3=frame.rgb_HW3 if encoded is None else None,
        depth_m_HW=frame.depth_HW,
        semantic_HW=frame.class_HW,
        rgb_encoded=encoded,
        rgb_ext="png",
    )


class _WriterThread:
    """One background thread that runs submitted writes in order (PNG encoding and file I/O release
    the GIL, so they overlap with rendering). At most ``max_pending`` frames wait in memory; the
    first error is re-raised in the caller."""

    def __init__(self, max_pending: int = 8) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-writer")
        self._pending: deque = deque()
        self.max_pending = max_pending

    def submit(self, fn, *args) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self.max_pending:
            self._pending.popleft().result()
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()

    def drain(self, raise_errors: bool = True) -> None:
        while self._pending:
            fut = self._pending.popleft()
            if raise_errors:
                fut.result()
            else:
                fut.exception()

    def close(self) -> None:
        self.drain(raise_errors=False)
        self._pool.shutdown(wait=True)


def _extent(spec: SceneSpec) -> dict:
    if spec.room is not None:
        lx, ly, h = (float(v) for v in spec.room["size"])
        return {"min": [-lx / 2, -ly / 2, 0.0], "max": [lx / 2, ly / 2, h]}
    gx, gy = (float(v) for v in spec.ground["size"])
    top = max([float(o.center[2] + o.size[2]) for o in spec.objects] + [1.0])
    return {"min": [-gx / 2, -gy / 2, 0.0], "max": [gx / 2, gy / 2, top]}
