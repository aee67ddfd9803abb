"""Keyframe data of a relpose map read on demand, so a map's size is bounded by disk, not memory.

Map format 3 keeps the estimator caches of all keyframes in ``features/``: one ``.npy`` per cache
key with the keyframes' arrays concatenated along the first axis, and ``features/offsets.npz`` with
each key's (K + 1) row offsets::

    features/xfeat_keypoints.npy     (sum N_k, 2) float32
    features/xfeat_descriptors.npy   (sum N_k, 64) float16
    features/offsets.npz             xfeat_keypoints = [0, N_0, N_0 + N_1, ...], ...

The ``.npy`` files are memory-mapped (``np.load(mmap_mode="r")``): a keyframe's arrays are views
that cost no memory until read, and pages read stay in the kernel's page cache, which it reclaims
under pressure (file-backed, not anonymous memory). Format 2 maps (``features.npz`` with one member
per keyframe and key) are read through the same interface, member by member.

Run-time memos that estimators keep in ``Keyframe.cache`` (keys starting with ``_``, e.g. the
float32 copy of the XFeat features) go to one LRU shared by the map (:data:`MEMO_KEYFRAMES`
keyframes), so localizing 10^4 queries on a 10^5-keyframe map does not accumulate them.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import numpy as np

from ...geometry import PinholeCamera
from .base import Keyframe

MEMO_KEYFRAMES = 512  # keyframes whose run-time memos are kept (~0.14 MB each for 512 XFeat features)
OFFSETS = "offsets.npz"


def save_feature_arrays(folder: Path, caches: list[dict[str, np.ndarray]]) -> dict:
    """Write the keyframes' caches (list index = keyframe) as format 3 ``folder``; returns its summary.

    Every keyframe must cache the same keys with the same trailing shape and dtype (one estimator)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(caches[0]) if caches else []
    offsets = {}
    for key in keys:
        parts = []
        for i, c in enumerate(caches):
            if key not in c:
                raise ValueError(f"keyframe {i} has no cache entry {key!r} (every keyframe needs the same keys)")
            a = np.asarray(c[key])
            if a.dtype == object:
                raise TypeError(f"estimator cache entry {key!r} is not a numeric array; store arrays only")
            parts.append(a.reshape(1) if a.ndim == 0 else a)
        offsets[key] = np.r_[0, np.cumsum([len(p) for p in parts])].astype(np.int64)
        np.save(folder / f"{key}.npy", np.concatenate(parts) if parts else np.zeros(0))
    np.savez(folder / OFFSETS, **offsets, __scalar__=np.array([k for k in keys if np.ndim(caches[0][k]) == 0]))
    return {"keys": keys, "n_keyframes": len(caches)}


def npz_memmap(path: Path) -> dict[str, np.ndarray]:
    """The members of an uncompressed ``.npz`` (``np.savez``) as read-only memory maps (compressed
    members, which cannot be mapped, are read into memory)."""
    import struct
    import zipfile

    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type != zipfile.ZIP_STORED:
                with zf.open(info) as m:
                    out[name] = np.lib.format.read_array(m)
                continue
            f.seek(info.header_offset)
            head = f.read(30)  # local file header: its name and extra field lengths at bytes 26..29
            n_name, n_extra = struct.unpack("<HH", head[26:30])
            f.seek(info.header_offset + 30 + n_name + n_extra)
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                with zf.open(info) as m:
                    out[name] = np.lib.format.read_array(m)
                continue
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject or 0 in shape:
                with zf.open(info) as m:
                    out[name] = np.lib.format.read_array(m)
                continue
            order = "F" if fortran else "C"
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape, order=order)
    return out


class FeatureStore:
    """Read access to the estimator caches of a map's keyframes (format 3 folder or format 2 npz)."""

    def __init__(self, artifact_dir: Path) -> None:
        self.artifact_dir = Path(artifact_dir)
        folder = self.artifact_dir / "features"
        self._lock = threading.Lock()
        self.memos: OrderedDict[int, dict] = OrderedDict()
        if (folder / OFFSETS).is_file():
            with np.load(folder / OFFSETS) as z:
                self._scalar = {str(k) for k in z["__scalar__"]}
                self._offsets = {k: z[k] for k in z.files if k != "__scalar__"}
            self._arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in self._offsets}
            self._npz = None
            self.keys = sorted(self._offsets)
        else:  # format 2
            self._npz = np.load(self.artifact_dir / "features.npz")
            self._members: dict[int, dict[str, str]] = {}
            for name in self._npz.files:
                i, k = name.split("/", 1)
                self._members.setdefault(int(i), {})[k] = name
            self.keys = sorted(self._members.get(0, {}))

    def keyframe_keys(self, i: int) -> list[str]:
        return self.keys if self._npz is None else sorted(self._members.get(i, {}))

    def get(self, i: int, key: str) -> np.ndarray:
        """Keyframe ``i``'s array ``key`` (a read-only view of the memory-mapped file in format 3)."""
        if self._npz is not None:
            with self._lock:  # a zip member is read through one shared file handle
                return self._npz[self._members[i][key]]
        off = self._offsets[key]
        a = self._arrays[key][off[i] : off[i + 1]]
        return a.reshape(()) if key in self._scalar else a

    def memo(self, i: int) -> dict:
        """Run-time memo dict of keyframe ``i`` (shared LRU of MEMO_KEYFRAMES keyframes)."""
        with self._lock:
            d = self.memos.pop(i, None)
            if d is None:
                d = {}
            self.memos[i] = d
            while len(self.memos) > MEMO_KEYFRAMES:
                self.memos.popitem(last=False)
            return d


class KeyframeCache(MutableMapping):
    """``Keyframe.cache`` of a stored keyframe: map arrays from the :class:`FeatureStore`, memos
    (``_`` keys) in its shared LRU, anything else set at run time kept here."""

    def __init__(self, store: FeatureStore, i: int) -> None:
        self.store, self.i, self.local = store, i, {}

    def __getitem__(self, key: str):
        if key in self.local:
            return self.local[key]
        if key.startswith("_"):
            return self.store.memo(self.i)[key]
        if key not in self.store.keyframe_keys(self.i):
            raise KeyError(key)
        return self.store.get(self.i, key)

    def __setitem__(self, key: str, value) -> None:
        if key.startswith("_"):
            self.store.memo(self.i)[key] = value
        else:
            self.local[key] = value

    def __delitem__(self, key: str) -> None:
        if key in self.local:
            del self.local[key]
        elif key.startswith("_"):
            del self.store.memo(self.i)[key]
        else:
            raise KeyError(f"{key!r} is map content (read-only)")

    def __iter__(self) -> Iterator[str]:
        memo = self.store.memos.get(self.i, {})
        yield from dict.fromkeys([*self.store.keyframe_keys(self.i), *self.local, *memo])

    def __len__(self) -> int:
        return sum(1 for _ in self)


class StoredKeyframe(Keyframe):
    """A map keyframe whose caches and 3D points are read from the map files when used."""

    def __init__(self, store: FeatureStore, i: int, points, **kw) -> None:
        self.__dict__.update(kw)
        self._cache = KeyframeCache(store, i)
        self._points = points  # SparseModel (memory-mapped) or None
        self._i = i

    @property
    def cache(self):  # type: ignore[override]
        return self._cache

    @cache.setter
    def cache(self, value) -> None:
        self._cache.local.update(value)

    @property
    def points_world_N3(self):  # type: ignore[override]
        return None if self._points is None else self._points.keyframe_points(self._i)

    @points_world_N3.setter
    def points_world_N3(self, value) -> None:
        raise AttributeError("the 3D points of a stored keyframe are map content (read-only)")


def keyframe_records(artifact_dir: Path) -> list[dict]:
    return json.loads((Path(artifact_dir) / "keyframes.json").read_text())


def stored_keyframes(artifact_dir: Path, recs: list[dict], points, depth_scale: float) -> list[Keyframe]:
    """Keyframes of ``recs`` (keyframes.json) reading caches and points lazily."""
    store = FeatureStore(artifact_dir)
    out: list[Keyframe] = []
    for i, r in enumerate(recs):
        out.append(
            StoredKeyframe(
                store, i, points,
                key=r["key"],
                T_world_cam=np.asarray(r["T_world_cam"], np.float64).reshape(4, 4),
                camera=PinholeCamera.from_dict(r["camera"]),
                image_path=str(artifact_dir / r["image"]),
                semantic_path=str(artifact_dir / r["semantic"]) if r.get("semantic") else "",
                depth_path=str(artifact_dir / r["depth"]) if r.get("depth") else "",
                depth_scale=depth_scale,
            )
        )  # fmt: skip
    return out
