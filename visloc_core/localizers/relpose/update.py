"""``visloc map update`` and ``visloc map merge``: grow a relpose map without rebuilding it.

Both add keyframes to an existing map (in its world frame: the new poses must already be in it, e.g.
a recording localized against the map, or a dataset of the same site and frame):

- the retrieval index gets the new descriptors added (``faiss.Index.add``: no retraining; the map's
  own global descriptor, with its vocabulary, describes the new images);
- features/ gets the new keyframes' estimator caches appended (the old arrays are copied, not
  recomputed; a format 2 map becomes format 3 on the way);
- points.npz: a map whose structure comes from registered depth gets the new keyframes' points
  appended. A triangulated map is re-triangulated over all keyframes from the cached features (the
  existing images are not re-processed; incremental triangulation is not done yet);
- unchanged files (images, depth, semantic maps of the existing keyframes) are hard-linked, not copied;
- the map calibrates itself again (calibration.py) on the grown map, unless ``calibrate=False``.

Atomic (visloc_core.atomic): the grown map is written beside the output and swapped in at the end; a
failure at any step leaves the old map as it was. ``map update`` reports what was added and which of
the new keyframes show views the map did not have: no existing keyframe within ``near`` of its
centre with a viewing direction within ``near_deg`` (``near`` defaults to 4 x the median distance of
the existing keyframes to their nearest neighbour, so it follows the map's own spacing).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ...atomic import atomic_folder
from ...data.layout import Dataset
from ..loading import check_device
from .base import Keyframe
from .mapping import (
    FORMAT_VERSION,
    build_estimator,
    check_map_integrity,
    depth_at_keypoints,
    finish_map,
    load_keyframes,
    structure_source,
    write_keyframe,
)
from .retrieval import DescriptorIndex
from .store import OFFSETS, FeatureStore, save_feature_arrays

log = logging.getLogger(__name__)

# files of the map that an update writes anew; everything else is hard-linked into the new map
REWRITTEN = ("artifact.json", "calibration.json", "index.faiss", "descriptors.npy", "keyframes.json", "points.npz",
             "features.npz", "features")  # fmt: skip


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy, across filesystems) the files of map ``src`` that an update keeps."""
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if rel.parts[0] in REWRITTEN:
            continue
        q = dst / rel
        if p.is_dir():
            q.mkdir(parents=True, exist_ok=True)
            continue
        q.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, q)
        except OSError:
            shutil.copy2(p, q)


def _append_features(old: FeatureStore, n_old: int, new: list[dict[str, np.ndarray]], folder: Path) -> None:
    """features/ of the old keyframes followed by the new ones, copying the old arrays in blocks."""
    if old._npz is not None:  # format 2: small maps, read them whole
        caches = [{k: np.array(old.get(i, k)) for k in old.keyframe_keys(i)} for i in range(n_old)]
        save_feature_arrays(folder, caches + new)
        return
    keys = set(old.keys)
    for i, c in enumerate(new):
        if set(c) != keys:
            raise ValueError(f"new keyframe {i} caches {sorted(c)}, the map {sorted(keys)}: not the map's estimator")
    folder.mkdir()
    offsets = {}
    for key in old.keys:
        a_old = old._arrays[key]
        parts = [np.asarray(c[key]).reshape(-1, *a_old.shape[1:]) for c in new]
        n_new = sum(len(p) for p in parts)
        out = np.lib.format.open_memmap(
            folder / f"{key}.npy", "w+", a_old.dtype, (len(a_old) + n_new, *a_old.shape[1:])
        )
        for a in range(0, len(a_old), 1 << 20):
            b = min(len(a_old), a + (1 << 20))
            out[a:b] = a_old[a:b]
        pos = len(a_old)
        for p in parts:
            out[pos : pos + len(p)] = p
            pos += len(p)
        out.flush()
        del out
        off_old = old._offsets[key]
        offsets[key] = np.r_[off_old, off_old[-1] + np.cumsum([len(p) for p in parts])].astype(np.int64)
    np.savez(folder / OFFSETS, **offsets, __scalar__=np.array(sorted(old._scalar)))


def _append_points(old_path: Path | None, n_old: int, new_model, out_path: Path) -> dict:
    """points.npz of the old model followed by ``new_model``'s points (ids shifted)."""
    from .structure import SparseModel

    old = SparseModel.load(old_path, mmap=True) if old_path is not None else None
    if old is None:
        new_model.save(out_path)
        return new_model.stats
    shift = old.n_points
    ids = [np.asarray(old.kf_point_ids[k]) for k in range(n_old)]
    ids += [np.where(i >= 0, i + shift, -1).astype(np.int32) for i in new_model.kf_point_ids]
    merged = SparseModel(
        old.source,
        np.concatenate([np.asarray(old.xyz_P3, np.float64), new_model.xyz_P3]),
        np.concatenate([old.track_length_P, new_model.track_length_P]),
        np.concatenate([old.error_px_P, new_model.error_px_P]),
        np.concatenate([old.angle_deg_P, new_model.angle_deg_P]),
        ids,
    )
    merged.save(out_path)
    return {"points_added": int(new_model.n_points), "points_total": int(merged.n_points)}


def new_views(T_old_K44: np.ndarray, T_new_M44: np.ndarray, near_m: float | None = None, near_deg: float = 30.0):
    """Which new keyframes no old keyframe covers (module doc); returns (mask (M,), near_m used)."""
    c_old, c_new = T_old_K44[:, :3, 3], T_new_M44[:, :3, 3]
    z_old, z_new = T_old_K44[:, :3, 2], T_new_M44[:, :3, 2]
    if near_m is None:
        if len(c_old) >= 2:
            d = np.linalg.norm(c_old[:, None] - c_old[None], axis=2) if len(c_old) <= 4000 else None
            if d is None:  # large maps: a sample is enough for a median
                s = np.random.default_rng(0).choice(len(c_old), 4000, replace=False)
                d = np.linalg.norm(c_old[s][:, None] - c_old[None], axis=2)
                d[np.arange(len(s)), s] = np.inf
            else:
                np.fill_diagonal(d, np.inf)
            near_m = 4.0 * float(np.median(d.min(axis=1)))
        else:
            near_m = 1.0
    cos_min = np.cos(np.radians(near_deg))
    out = np.zeros(len(c_new), bool)
    for j in range(len(c_new)):
        close = np.linalg.norm(c_old - c_new[j], axis=1) <= near_m
        out[j] = not np.any(close & (z_old @ z_new[j] >= cos_min))
    return out, near_m


def _grow(map_dir: Path, out: Path, add, what: dict, device: str, progress: bool, calibrate: bool) -> dict:
    """The shared part of update and merge: ``add(tmp, n_old, cfg, meta, estimator, descriptor)`` writes
    the new keyframes' images into tmp and returns (keyframes, records, descriptors (M, D), points model
    or None, structure source of the new ones)."""
    import yaml

    from ...models.descriptors import load_descriptor
    from .calibration import CalibrationConfig

    map_dir = Path(map_dir)
    meta = json.loads((map_dir / "artifact.json").read_text())
    if meta.get("kind") != "relpose":
        raise ValueError(f"{map_dir} is a {meta.get('kind')!r} artifact; map update/merge grow relpose maps")
    check_map_integrity(map_dir, meta)
    check_device(device)
    cfg = yaml.safe_load((map_dir / "config.yaml").read_text())
    recs_old = json.loads((map_dir / "keyframes.json").read_text())
    n_old = len(recs_old)
    T_old = np.stack([np.asarray(r["T_world_cam"], np.float64).reshape(4, 4) for r in recs_old])
    with atomic_folder(out, overwrite=out == map_dir or out.exists()) as tmp:
        t0 = time.perf_counter()
        _link_tree(map_dir, tmp)
        estimator = build_estimator(cfg["estimator"], device)
        descriptor = load_descriptor(map_dir / "descriptor", device)
        kfs, recs, desc_new, model_new = add(tmp, n_old, cfg, meta, estimator, descriptor)
        if not recs:
            raise ValueError("nothing to add: the new data has no frames")
        # index and descriptors: the new rows appended, the index not retrained
        desc_old = np.load(map_dir / "descriptors.npy", mmap_mode="r")
        if desc_new.shape[1] != desc_old.shape[1]:
            raise ValueError(f"new descriptors are {desc_new.shape[1]}-d, the map's {desc_old.shape[1]}-d")
        desc_all = np.lib.format.open_memmap(
            tmp / "descriptors.npy", "w+", np.float32, (n_old + len(desc_new), desc_old.shape[1])
        )
        desc_all[:n_old] = desc_old
        desc_all[n_old:] = desc_new
        desc_all.flush()
        index = DescriptorIndex.load(map_dir / "index.faiss")
        index.index.add(np.ascontiguousarray(desc_new, np.float32))
        index.save(tmp / "index.faiss")
        del desc_all
        # local features
        _append_features(FeatureStore(map_dir), n_old,
                         [{k: v for k, v in kf.cache.items() if not k.startswith("_")} for kf in kfs], tmp / "features")  # fmt: skip
        # 3D points
        source = meta.get("structure", "none")
        stats: dict = {}
        if source == "triangulate":
            from .structure import StructureConfig

            all_kfs = [*load_keyframes(map_dir, lazy=True), *kfs]
            stats = _retriangulate(all_kfs, estimator, StructureConfig.from_dict(cfg.get("structure")),
                                   np.load(tmp / "descriptors.npy"), tmp / "points.npz")  # fmt: skip
        elif source == "depth":
            pts = map_dir / "points.npz"
            stats = _append_points(pts if pts.is_file() else None, n_old, model_new, tmp / "points.npz")
        (tmp / "keyframes.json").write_text(json.dumps(recs_old + recs))
        mask, near_m = new_views(T_old, np.stack([kf.T_world_cam for kf in kfs]))
        report = {
            **what,
            "keyframes_before": n_old,
            "keyframes_added": len(recs),
            "keyframes_after": n_old + len(recs),
            "new_views": int(mask.sum()),
            "new_view_keys": [r["key"] for r, m in zip(recs, mask) if m],
            "new_view_rule": {"near_m": near_m, "near_deg": 30.0},
            "structure": source,
            "structure_stats": stats,
        }
        meta = dict(meta)
        meta.update(format_version=FORMAT_VERSION, n_keyframes=n_old + len(recs),
                    scenes=sorted({r["scene"] for r in recs_old + recs}),
                    has_semantic=any(r.get("semantic") for r in recs_old + recs))  # fmt: skip
        meta.pop("calibration", None)
        meta.setdefault("updates", []).append({k: v for k, v in report.items() if k != "new_view_keys"} | {
            "unix": time.time()})  # fmt: skip
        cal_cfg = CalibrationConfig.from_dict(cfg.get("calibration"))
        if not calibrate:
            cal_cfg.enabled = False
        elif (tmp / "calibration.json").exists():
            (tmp / "calibration.json").unlink()  # measured again on the grown map
        finish_map(tmp, meta, cal_cfg, device, progress)
        report["seconds"] = time.perf_counter() - t0
    log.info("map %s: %d keyframes added (%d new views), %d in all", out, len(recs), mask.sum(), n_old + len(recs))
    return report


def _retriangulate(kfs, estimator, structure_cfg, desc, out_path: Path) -> dict:
    from .structure import triangulate_model

    feats = [estimator.keyframe_features(kf) for kf in kfs]
    poses = np.stack([kf.T_world_cam for kf in kfs])
    model = triangulate_model([f.keypoints_N2 for f in feats], poses, [kf.camera for kf in kfs],
                              lambda i, j: estimator.match(feats[i], feats[j]), desc, structure_cfg)  # fmt: skip
    model.save(out_path)
    return model.stats


def update_map(map_dir: str | Path, data: str | Path, split: str = "train", out: str | Path | None = None,
               device: str = "cpu", progress: bool = True, max_frames: int | None = None,
               calibrate: bool = True) -> dict:  # fmt: skip
    """Add the frames of ``split`` of dataset ``data`` to map ``map_dir`` (into ``out``, default in
    place); returns the report (module doc)."""
    from .structure import model_from_depth

    map_dir = Path(map_dir)
    ds = Dataset(data)

    def add(tmp: Path, n_old: int, cfg: dict, meta: dict, estimator, descriptor):
        frames = ds.frames(split=split, scene=cfg.get("scene"))
        if max_frames:
            frames = frames[: int(max_frames)]
        if not frames:
            raise ValueError(f"{data}: split {split!r} has no frames to add")
        source = meta.get("structure", "none")
        if source == "depth":
            structure_source("depth", ds, frames, meta["estimator"])  # the error names what is missing
        size = tuple(meta["image_size"]) if meta.get("image_size") else None
        kfs: list[Keyframe] = []
        recs = []
        descs = []
        for j, fr in enumerate(_progress(frames, "new keyframes", progress)):
            kf, rec = write_keyframe(tmp, n_old + j, fr, ds, size, source)
            img = _read_rgb(kf.image_path)
            descs.append(descriptor.describe(img))
            estimator.prepare_keyframe(kf, img)
            kfs.append(kf)
            recs.append(rec)
        model = None
        if source == "depth":  # from the dataset's depth, as map build does
            feats = [estimator.keyframe_features(kf) for kf in kfs]
            model = model_from_depth([f.keypoints_N2 for f in feats], depth_at_keypoints(ds, frames, kfs, feats),
                                     np.stack([kf.T_world_cam for kf in kfs]), [kf.camera for kf in kfs])  # fmt: skip
        return kfs, recs, np.stack(descs).astype(np.float32), model

    return _grow(map_dir, Path(out) if out else map_dir, add, {"data": str(Path(data).resolve()), "split": split},
                 device, progress, calibrate)  # fmt: skip


def merge_maps(map_a: str | Path, map_b: str | Path, out: str | Path, device: str = "cpu", progress: bool = True,
               calibrate: bool = True) -> dict:  # fmt: skip
    """Map ``out`` = map ``a`` plus the keyframes of map ``b`` (same site and world frame, same
    estimator configuration). ``b``'s images are described again with ``a``'s global descriptor (a
    VLAD vocabulary is per map); its local features and 3D points are copied."""
    from .structure import SparseModel

    map_a, map_b, out = Path(map_a), Path(map_b), Path(out)
    if out.resolve() in (map_a.resolve(), map_b.resolve()):
        raise ValueError("map merge writes a new map: --out must differ from both inputs")
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --out")
    meta_b = json.loads((map_b / "artifact.json").read_text())
    check_map_integrity(map_b, meta_b)

    def add(tmp: Path, n_old: int, cfg: dict, meta: dict, estimator, descriptor):
        import yaml

        cfg_b = yaml.safe_load((map_b / "config.yaml").read_text())
        for key in ("estimator", "image_size"):
            if cfg_b.get(key) != cfg.get(key):
                raise ValueError(
                    f"maps differ in {key}: {cfg.get(key)} vs {cfg_b.get(key)}; merge needs maps built alike"
                )
        if meta_b.get("structure") != meta.get("structure"):
            raise ValueError(f"maps differ in structure: {meta.get('structure')} vs {meta_b.get('structure')}")
        recs_b = json.loads((map_b / "keyframes.json").read_text())
        kfs_b = load_keyframes(map_b, lazy=True)
        kfs, recs, descs = [], [], []
        for j, (r, kb) in enumerate(zip(_progress(recs_b, "merged keyframes", progress), kfs_b)):
            i = n_old + j
            rec = dict(r)
            for field in ("image", "depth", "semantic"):
                if r.get(field):
                    src = map_b / r[field]
                    rec[field] = f"{field if field != 'image' else 'images'}/{i:06d}{src.suffix}"
                    (tmp / rec[field]).parent.mkdir(exist_ok=True)
                    shutil.copy2(src, tmp / rec[field])
            kf = Keyframe(kb.key, kb.T_world_cam, kb.camera, str(tmp / rec["image"]))
            kf.cache.update({k: np.array(v) for k, v in kb.cache.items() if not k.startswith("_")})
            descs.append(descriptor.describe(_read_rgb(kf.image_path)))
            kfs.append(kf)
            recs.append(rec)
        model = None
        if meta.get("structure") == "depth" and (map_b / "points.npz").is_file():
            model = SparseModel.load(map_b / "points.npz")
        return kfs, recs, np.stack(descs).astype(np.float32), model

    return _grow(map_a, out, add, {"merged": str(map_b.resolve())}, device, progress, calibrate)


def _read_rgb(path: str) -> np.ndarray:
    import cv2

    img = cv2.imread(path)
    if img is None:
        raise OSError(f"could not read {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _progress(it, desc: str, enabled: bool):
    from .mapping import _progress as progress_bar

    return progress_bar(it, len(it), desc, enabled)
