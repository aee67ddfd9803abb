"""``visloc map build``: a self-contained relpose map artifact from a dataset split.

Artifact folder (written to a temporary folder next to ``out``, renamed when complete)::

    ARTIFACT/
      artifact.json     {"kind": "relpose", "format_version", "estimator", "descriptor", "image_size",
                         "n_keyframes", "scenes", "source": {dataset, split}, "created_unix"}
      config.yaml       the full config used (defaults merged with the file)
      calibration.json  decision thresholds and covariance scales the map measured on its own
                        keyframes (calibration.py)
      descriptor/       global descriptor (descriptor.json + weights.pt | centroids.npy)
      index.faiss       faiss index over the keyframe descriptors (row i = keyframe i): exact flat,
                        or for large maps the one retrieval.index picks (retrieval.py)
      descriptors.npy   (N, D) float32, the same vectors (for inspection / re-indexing)
      keyframes.json    per keyframe: key, scene, T_world_cam (row-major 4x4), camera, relative paths
      features/         estimator caches of all keyframes, one .npy per cache key (XFeat keypoints
                        float32, descriptors float16) concatenated over keyframes + offsets.npz,
                        memory-mapped at load (store.py; format 2 maps have features.npz instead)
      points.npz        the 3D structure (structure.py): world points and each keyframe's keypoint ->
                        point links, from registered depth or triangulated from the images and poses;
                        absent for direction-only maps
      estimator/        a learned estimator's checkpoint (copied; config path made relative)
      images/           keyframe RGB (PNG) at the processing size; depth/ (uint16 PNG, mm) when the
                        structure comes from registered depth, semantic/ (uint8 PNG) when the dataset
                        has class maps

Keyframe images are resized to the config's ``image_size`` (intrinsics scaled with
PinholeCamera.resized), so the artifact does not depend on the dataset folder afterwards.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import yaml

from ...atomic import atomic_folder
from ...config import deep_merge, log_config
from ...data.layout import Dataset, FrameRecord
from ...geometry import PinholeCamera
from ...integrity import ArtifactError, check_format_version, file_digests, verify_files
from ...yaml_io import load_yaml_file
from ..loading import check_device
from .base import RELPOSE_ESTIMATORS, Keyframe
from .retrieval import DescriptorIndex, RetrievalConfig
from .store import save_feature_arrays, stored_keyframes

if TYPE_CHECKING:
    from .calibration import CalibrationConfig
    from .structure import StructureConfig

log = logging.getLogger(__name__)

# 3: features/ (one memory-mapped array per cache key, store.py); 2: 3D points in points.npz and
# features.npz per keyframe; 1: depth at the keypoints in features.npz. All three are read.
FORMAT_VERSION = 3
DEPTH_SCALE = 1000.0  # uint16 per metre in the artifact's depth PNGs

DEFAULT_CONFIG: dict = {
    "kind": "relpose",
    "image_size": [320, 240],  # processing size (width, height) of map and query images; null = as stored
    "scene": None,  # only frames of this scene (None = all scenes of the split)
    "descriptor": {"name": "gem"},  # global descriptor (visloc_core.models.descriptors), + its keys
    "finetune": None,  # e.g. {epochs: 1, pos_m: 1.0, pos_deg: 30, neg_m: 3.0} for gem/netvlad
    "fit_max_images": 200,  # mapping images used to fit a VLAD vocabulary / NetVLAD clusters
    "estimator": {"name": "xfeat"},  # relative-pose estimator (RELPOSE_ESTIMATORS), + its keys
    "retrieval": {},  # RetrievalConfig keys (their defaults live in that dataclass, once)
    "filtering": {},  # hypotheses.FilterConfig keys
    "joint_pnp": True,  # metric maps: final PnP over the inlier references' correspondences jointly
    "structure": {},  # structure.StructureConfig keys: 3D points from depth, triangulated, or none
    "decision": {},  # confidence.DecisionConfig keys: what a pose needs to be published as LOCALIZED
    "calibration": {},  # calibration.CalibrationConfig keys: thresholds and covariance from the map itself
}


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist (see config/models/relpose_*.yaml)")
    cfg = load_yaml_file(path) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    kind = cfg.get("kind", "relpose")
    if kind != "relpose":
        raise ValueError(f"{path}: kind is {kind!r}; `visloc map build` builds relpose maps (kind: relpose)")
    return deep_merge(DEFAULT_CONFIG, cfg)


def build_estimator(est_cfg: dict, device: str = "cpu"):
    name = est_cfg.get("name")
    if not name:
        raise ValueError(f"estimator config needs a 'name' ({', '.join(RELPOSE_ESTIMATORS.names())})")
    return RELPOSE_ESTIMATORS.build(name, {k: v for k, v in est_cfg.items() if k != "name"}, device)


def _imwrite(path: Path, img: np.ndarray) -> None:
    # cv2.imwrite returns False (no exception) on failure: a map missing its images would only fail at query time.
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path} (disk full or not writable?)")


def _progress(it, total: int, desc: str, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, unit="img", dynamic_ncols=True)


def structure_source(requested: str, ds: Dataset, frames: list[FrameRecord], estimator: str) -> str:
    """Where the map's 3D points come from: ``depth``, ``triangulate`` or ``none`` (see structure.py).

    ``auto`` takes registered depth when every mapping frame has it, else triangulates (estimators
    with local features) or builds a direction-only map (the learned estimator). Depth that the
    dataset marks as not registered to the colour image (7-Scenes, ``depth_registered: false``) is
    never used as if it were."""
    registered = bool(ds.manifest.get("depth_registered", True))
    all_depth = registered and all(fr.depth for fr in frames)
    has_features = estimator in ("xfeat", "sift")
    if requested == "depth":
        if not all_depth:
            why = "its depth is not registered to the colour images" if not registered else "some frames have no depth"
            raise ValueError(
                f"structure.source is depth but {ds.root} cannot give it ({why}); use structure.source=triangulate "
                "(a sparse model from the images and poses) or auto"
            )
        return "depth"
    if requested == "triangulate":
        if not has_features:
            raise ValueError(f"structure.source=triangulate needs an estimator with local features, not {estimator!r}")
        return "triangulate"
    if requested == "none":
        return "none"
    if all_depth:
        return "depth"
    if any(fr.depth for fr in frames) and not registered:
        log.info("%s: depth is not registered to the colour images; triangulating the 3D points instead", ds.root)
    return "triangulate" if has_features else "none"


def write_keyframe(folder: Path, i: int, fr: FrameRecord, ds: Dataset, size: tuple[int, int] | None,
                   source: str) -> tuple[Keyframe, dict]:  # fmt: skip
    """Keyframe ``i`` of a map in ``folder``: its image (and depth when the structure comes from it,
    class map when the dataset has one) at the processing ``size``; returns it and its keyframes.json record."""
    rgb = ds.load_rgb(fr)
    cam = fr.camera
    if (rgb.shape[1], rgb.shape[0]) != (cam.width, cam.height):
        raise ValueError(f"{fr.key}: image {rgb.shape[1]}x{rgb.shape[0]} != camera {cam.width}x{cam.height}")
    if size is not None and size != (cam.width, cam.height):
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        cam = cam.resized(*size)
    rel = {"image": f"images/{i:06d}.png", "depth": "", "semantic": ""}
    (folder / "images").mkdir(exist_ok=True)
    _imwrite(folder / rel["image"], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if fr.depth and source == "depth":
        depth = ds.load_depth(fr)
        if depth.shape != rgb.shape[:2]:
            depth = cv2.resize(depth, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        (folder / "depth").mkdir(exist_ok=True)
        rel["depth"] = f"depth/{i:06d}.png"
        q = np.clip(np.round(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16)
        _imwrite(folder / rel["depth"], q)
    if fr.semantic:
        sem = ds.load_semantic(fr)
        if sem.shape != rgb.shape[:2]:
            sem = cv2.resize(sem, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        (folder / "semantic").mkdir(exist_ok=True)
        rel["semantic"] = f"semantic/{i:06d}.png"
        _imwrite(folder / rel["semantic"], sem)
    kf = Keyframe(
        fr.key, fr.T_world_cam.copy(), cam, str(folder / rel["image"]),
        str(folder / rel["semantic"]) if rel["semantic"] else "",
        str(folder / rel["depth"]) if rel["depth"] else "", DEPTH_SCALE,
    )  # fmt: skip
    rec = {"key": fr.key, "scene": fr.scene, "T_world_cam": kf.T_world_cam.ravel().tolist(), "camera": cam.to_dict(),
           "stamp_ns": fr.stamp_ns, **rel}  # fmt: skip
    return kf, rec


def depth_at_keypoints(ds: Dataset, frames: list[FrameRecord], keyframes: list[Keyframe], feats) -> list[np.ndarray]:
    """The dataset's depth (m) at each keyframe's keypoints, resized to the processing size."""
    from .geometric import sample_depth

    out = []
    for fr, kf, f in zip(frames, keyframes, feats):
        d = ds.load_depth(fr)
        if d.shape != (kf.camera.height, kf.camera.width):
            d = cv2.resize(d, (kf.camera.width, kf.camera.height), interpolation=cv2.INTER_NEAREST)
        out.append(sample_depth(d, f.keypoints_N2))
    return out


def build_structure(source: str, cfg, estimator, keyframes: list[Keyframe], global_desc: np.ndarray, ds: Dataset,
                    frames: list[FrameRecord], progress: bool):  # fmt: skip
    """The sparse model of ``source`` for keyframes whose features the estimator has cached."""
    from .structure import depth_check, model_from_depth, triangulate_model

    feats = [estimator.keyframe_features(kf) for kf in keyframes]
    poses = np.stack([kf.T_world_cam for kf in keyframes])
    cams = [kf.camera for kf in keyframes]

    if source == "depth":
        return model_from_depth([f.keypoints_N2 for f in feats], depth_at_keypoints(ds, frames, keyframes, feats),
                                poses, cams)  # fmt: skip
    model = triangulate_model(
        [f.keypoints_N2 for f in feats], poses, cams, lambda i, j: estimator.match(feats[i], feats[j]), global_desc,
        cfg, progress=(lambda it, n, desc: _progress(it, n, desc, True)) if progress else None,
    )  # fmt: skip
    if bool(ds.manifest.get("depth_registered", True)) and all(fr.depth for fr in frames):
        # The dataset has registered depth that the map does not use: measure the model against it.
        model.stats["depth_check"] = depth_check(model, poses, depth_at_keypoints(ds, frames, keyframes, feats))
        log.info("triangulated points vs the dataset's depth: %s", model.stats["depth_check"])
    return model


def _checked_config(config: dict, device: str) -> tuple[dict, RetrievalConfig, StructureConfig, CalibrationConfig]:
    """The map config merged over DEFAULT_CONFIG (and logged), with every section validated before the
    long work: (merged config, retrieval, structure and calibration configs). Raises ValueError on an
    unknown key or a bad value, and on an unusable ``device``."""
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        # A typo would otherwise be ignored silently (and an APR training config, which has no
        # 'kind', would build a default map).
        raise ValueError(
            f"unknown relpose config key(s) {unknown}; known: {sorted(DEFAULT_CONFIG)} (check the spelling; "
            "APR training configs go to `visloc train`)"
        )
    check_device(device)
    cfg = deep_merge(DEFAULT_CONFIG, config)
    log_config(log, "map build", cfg)
    retrieval_cfg = RetrievalConfig.from_dict(cfg["retrieval"])  # validated once, before the long work
    from .hypotheses import FilterConfig

    FilterConfig.from_dict(cfg["filtering"])
    from .structure import StructureConfig

    structure_cfg = StructureConfig.from_dict(cfg["structure"])
    from .calibration import CalibrationConfig
    from .confidence import DecisionConfig

    DecisionConfig.from_dict(cfg["decision"])
    calibration_cfg = CalibrationConfig.from_dict(cfg["calibration"])
    return cfg, retrieval_cfg, structure_cfg, calibration_cfg


def _mapping_frames(ds: Dataset, data: str | Path, split: str, cfg: dict, max_frames: int | None) -> list[FrameRecord]:
    """The frames of ``split`` (of ``cfg["scene"]`` if set) the map is built from, the first
    ``max_frames`` if given; ValueError when there are none."""
    frames: list[FrameRecord] = ds.frames(split=split, scene=cfg.get("scene"))
    if max_frames:
        frames = frames[: int(max_frames)]
    if not frames:
        raise ValueError(
            f"{data}: split {split!r} has no frames" + (f" of scene {cfg['scene']!r}" if cfg.get("scene") else "")
        )
    return frames


def _write_keyframes(
    folder: Path, frames: list[FrameRecord], ds: Dataset, size: tuple[int, int] | None, source: str, progress: bool
) -> tuple[list[Keyframe], list[dict]]:
    """Step 1: every frame written into ``folder`` as a keyframe (write_keyframe: image at the
    processing ``size`` (width, height) in pixels, camera, depth and semantics); the keyframes and
    their keyframes.json records, in frame order."""
    keyframes: list[Keyframe] = []
    records = []
    for i, fr in enumerate(_progress(frames, len(frames), "keyframes", progress)):
        kf, rec = write_keyframe(folder, i, fr, ds, size, source)
        keyframes.append(kf)
        records.append(rec)
    return keyframes, records


def _keyframe_images(keyframes: list[Keyframe], idx):
    """The RGB (H, W, 3) uint8 images of ``keyframes[k]`` for k in ``idx``, read one at a time."""
    for k in idx:
        yield cv2.cvtColor(cv2.imread(keyframes[k].image_path), cv2.COLOR_BGR2RGB)


def _describe_keyframes(
    folder: Path,
    descriptor,
    keyframes: list[Keyframe],
    cfg: dict,
    retrieval_cfg: RetrievalConfig,
    progress: bool,
    stats: dict,
) -> np.ndarray:
    """Step 2: the global descriptor fitted (vocabulary) and optionally fine-tuned with the keyframe
    poses (its stats in ``stats["finetune"]``), then every keyframe described; saves descriptor/,
    index.faiss and descriptors.npy in ``folder`` and returns the (N, D) descriptors."""
    from ...models.descriptors import finetune_gem

    if descriptor.needs_fit():
        n_fit = min(len(keyframes), int(cfg["fit_max_images"]))
        sel = np.linspace(0, len(keyframes) - 1, n_fit).round().astype(int)
        log.info("fitting %s on %d mapping images", descriptor.name, n_fit)
        descriptor.fit(_progress(_keyframe_images(keyframes, sel), n_fit, "descriptor fit", progress), n_fit)
    if cfg.get("finetune"):
        if not hasattr(descriptor, "net"):
            raise ValueError(f"descriptor {descriptor.name!r} is training-free; finetune needs gem or netvlad")
        imgs = list(_keyframe_images(keyframes, range(len(keyframes))))
        poses = np.stack([kf.T_world_cam for kf in keyframes])
        stats["finetune"] = finetune_gem(descriptor, imgs, poses, progress=progress, **cfg["finetune"])
        log.info("descriptor fine-tuning: %s", stats["finetune"])
    images = _keyframe_images(keyframes, range(len(keyframes)))
    desc = np.stack([descriptor.describe(img) for img in _progress(images, len(keyframes), "descriptors", progress)])
    descriptor.save(folder / "descriptor")
    DescriptorIndex(desc, retrieval_cfg.index_kind(len(desc))).save(folder / "index.faiss")
    np.save(folder / "descriptors.npy", desc.astype(np.float32))
    return desc


def _save_local_features(folder: Path, estimator, keyframes: list[Keyframe], progress: bool, stats: dict) -> None:
    """Step 3: the estimator's caches (local features) of every keyframe, saved to ``folder/features``;
    the time taken in ``stats["features_seconds"]`` (seconds)."""
    t0 = time.perf_counter()
    images = _keyframe_images(keyframes, range(len(keyframes)))
    for i, img in enumerate(_progress(images, len(keyframes), "local features", progress)):
        estimator.prepare_keyframe(keyframes[i], img)
    stats["features_seconds"] = time.perf_counter() - t0
    # run-time memos ("_" keys) are not map content
    save_feature_arrays(folder / "features", [{k: v for k, v in kf.cache.items() if not k.startswith("_")}
                                              for kf in keyframes])  # fmt: skip


def _copy_checkpoint(folder: Path, cfg: dict) -> None:
    """Step 4: a learned estimator's checkpoint (file or folder) copied into ``folder/estimator``, and
    ``cfg["estimator"]["checkpoint"]`` made relative to the artifact, so it is self-contained."""
    ckpt = cfg["estimator"].get("checkpoint")
    if ckpt:
        src = Path(ckpt)
        dst = folder / "estimator" / src.name
        dst.parent.mkdir()
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        cfg["estimator"]["checkpoint"] = str(dst.relative_to(folder))


def _map_meta(
    cfg: dict,
    descriptor,
    desc: np.ndarray,
    size: tuple[int, int] | None,
    records: list[dict],
    source: str,
    ds: Dataset,
    data: str | Path,
    split: str,
    stats: dict,
) -> dict:
    """Step 5: the artifact.json content (see module doc) before finish_map adds files and calibration;
    ``size`` is (width, height) in pixels, ``created_unix`` seconds since the epoch."""
    return {
        "kind": "relpose",
        "format_version": FORMAT_VERSION,
        "estimator": cfg["estimator"]["name"],
        "descriptor": descriptor.name,
        "descriptor_dim": int(desc.shape[1]),
        "image_size": list(size) if size else None,
        "n_keyframes": len(records),
        "has_depth": any(r["depth"] for r in records),
        "structure": source,
        "has_semantic": any(r["semantic"] for r in records),
        "scenes": sorted({r["scene"] for r in records}),
        "classes": {str(k): v for k, v in ds.classes.items()},
        "source": {"dataset": str(Path(data).resolve()), "split": split},
        "created_unix": time.time(),
        "stats": stats,
    }


def build_map(
    config: dict,
    data: str | Path,
    out: str | Path,
    split: str = "train",
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    max_frames: int | None = None,
) -> Path:
    """Build a relpose map artifact from ``split`` of dataset ``data`` into ``out`` (see module doc)."""
    from ...models.descriptors import build_descriptor

    cfg, retrieval_cfg, structure_cfg, calibration_cfg = _checked_config(config, device)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    ds = Dataset(data)
    frames = _mapping_frames(ds, data, split, cfg, max_frames)
    source = structure_source(structure_cfg.source, ds, frames, cfg["estimator"]["name"])
    log.info(
        "map build: %d frames of %s split %s; 3D structure: %s; config %s",
        len(frames), data, split, source, json.dumps(cfg),
    )  # fmt: skip

    # Atomic (visloc_core.atomic): built beside `out`, swapped in at the end; Ctrl-C keeps the
    # partial folder as .NAME.interrupted-PID; a second build into the same `out` fails at once.
    with atomic_folder(out, overwrite=overwrite, keep_partial_on_interrupt=True) as tmp:
        (tmp / "images").mkdir()
        size = tuple(int(x) for x in cfg["image_size"]) if cfg.get("image_size") else None
        estimator = build_estimator(cfg["estimator"], device)
        descriptor = build_descriptor(cfg["descriptor"], device)
        stats: dict = {}
        # 1. keyframes: images at the processing size, cameras, depth and semantics copied in
        keyframes, records = _write_keyframes(tmp, frames, ds, size, source, progress)
        # 2. global descriptor: fit (vocabulary), optional fine-tuning with the poses, describe all
        desc = _describe_keyframes(tmp, descriptor, keyframes, cfg, retrieval_cfg, progress, stats)
        # 3. local features (estimator caches) of every keyframe
        _save_local_features(tmp, estimator, keyframes, progress, stats)
        # 3b. the 3D structure: registered depth at the keypoints, or triangulated from images + poses
        if source != "none":
            t0 = time.perf_counter()
            model = build_structure(source, structure_cfg, estimator, keyframes, desc, ds, frames, progress)
            model.save(tmp / "points.npz")
            stats["structure"] = model.stats
            stats["structure_seconds"] = time.perf_counter() - t0
        # 4. a learned estimator's checkpoint is copied in, so the artifact is self-contained
        _copy_checkpoint(tmp, cfg)
        # 5. metadata
        (tmp / "keyframes.json").write_text(json.dumps(records))
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        meta = _map_meta(cfg, descriptor, desc, size, records, source, ds, data, split, stats)
        finish_map(tmp, meta, calibration_cfg, device, progress)
    log.info("map written to %s (%d keyframes)", out, len(keyframes))
    return out


def finish_map(folder: Path, meta: dict, calibration_cfg, device: str, progress: bool) -> None:
    """Write artifact.json with the sha256 of every file, after the map calibrates itself: its
    keyframes localized against the rest (calibration.py; ``meta["estimator"]`` learned: not run)."""
    meta["files"] = file_digests(folder)  # checked at load (visloc_core.integrity)
    (folder / "artifact.json").write_text(json.dumps(meta, indent=2))
    if calibration_cfg.enabled and meta["n_keyframes"] >= 3 and meta["estimator"] != "learned":
        from ..loading import load_localizer  # by kind, not `.localizer`: that module imports this one
        from .calibration import calibrate

        cal = calibrate(load_localizer(folder, device), calibration_cfg, progress)
        cal.save(folder / "calibration.json")
        meta["calibration"] = {k: v for k, v in cal.__dict__.items() if k != "stats"} | {
            "seconds": cal.stats["seconds"]
        }
        meta["files"] = file_digests(folder)  # again, with calibration.json
        (folder / "artifact.json").write_text(json.dumps(meta, indent=2))


REBUILD = "rebuild the map with `visloc map build` (or restore it from a copy)"


def check_map_integrity(artifact_dir: Path, meta: dict) -> None:
    """format_version this visloc reads, and every file as written (visloc_core.integrity), or ArtifactError."""
    check_format_version(meta, artifact_dir / "artifact.json", FORMAT_VERSION, REBUILD, "map")
    verify_files(artifact_dir, meta, REBUILD)


def load_keyframes(artifact_dir: Path, lazy: bool = True) -> list[Keyframe]:
    """Keyframes of a map artifact with their estimator caches (paths resolved in the artifact) and
    3D points (``points.npz``; maps of format 1 kept depth at the keypoints, lifted here).

    ``lazy`` (default): caches and points are read from the memory-mapped map files when a keyframe
    is used (store.py), so memory does not grow with the map; ``lazy=False`` reads everything now."""
    from .structure import SparseModel, model_from_depth

    recs = json.loads((artifact_dir / "keyframes.json").read_text())
    if not isinstance(recs, list) or not recs:
        raise ArtifactError(f"{artifact_dir / 'keyframes.json'} lists no keyframes: {REBUILD}")
    model = None
    if (artifact_dir / "points.npz").is_file():
        model = SparseModel.load(artifact_dir / "points.npz", mmap=lazy)
        if len(model.kf_point_ids) != len(recs):
            raise ValueError(
                f"{artifact_dir}/points.npz links {len(model.kf_point_ids)} keyframes, map has {len(recs)}"
            )
    if lazy and (model is not None or not (artifact_dir / "features.npz").is_file()):
        return stored_keyframes(artifact_dir, recs, model, DEPTH_SCALE)
    kfs = []
    for r in recs:
        kfs.append(
            Keyframe(
                r["key"],
                np.asarray(r["T_world_cam"], np.float64).reshape(4, 4),
                PinholeCamera.from_dict(r["camera"]),
                str(artifact_dir / r["image"]),
                str(artifact_dir / r["semantic"]) if r.get("semantic") else "",
                str(artifact_dir / r["depth"]) if r.get("depth") else "",
                DEPTH_SCALE,
            )
        )
    from .store import FeatureStore

    store = FeatureStore(artifact_dir)
    for i, kf in enumerate(kfs):
        kf.cache.update({k: np.array(store.get(i, k)) for k in store.keyframe_keys(i)})
    if model is None:
        legacy = [k for k in kfs[0].cache if k.endswith("_depth")] if kfs else []
        if legacy:  # format 1: "<estimator>_depth" at each keypoint (small maps: read eagerly)
            prefix = legacy[0][: -len("depth")]
            model = model_from_depth(
                [kf.cache[f"{prefix}keypoints"] for kf in kfs], [kf.cache[legacy[0]] for kf in kfs],
                np.stack([kf.T_world_cam for kf in kfs]), [kf.camera for kf in kfs],
            )  # fmt: skip
    if model is not None:
        for k, kf in enumerate(kfs):
            kf.points_world_N3 = model.keyframe_points(k)
    return kfs
