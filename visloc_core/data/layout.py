"""The one on-disk dataset layout that training, mapping and evaluation read.

Every converter (7-Scenes, Cambridge, TartanAir, rosbag2, synthetic) writes this and nothing
reads the original formats afterwards. See docs/dataset_layout.md for the full description.

    DATASET/
      manifest.json                 format/version, source, conventions, scenes, splits, classes
      <scene>/<sequence>/
        frames.csv                  one row per frame (columns: FRAME_COLUMNS)
        rgb/<name>.png|.jpg         RGB image
        depth/<name>.png            optional uint16 depth, metres = value / depth_scale, 0 = invalid
        semantic/<name>.png         optional uint8 per-pixel class id (classes in the manifest)

Conventions: pose columns are T_world_cam (OpenCV optical camera, metres) as translation
(tx, ty, tz) and quaternion (qw, qx, qy, qz), scalar FIRST; ``stamp_ns`` is int nanoseconds;
intrinsics are per frame (pinhole fx fy cx cy at the stored image size, plus OpenCV distortion).
Splits name sequences as ``scene/sequence``.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..atomic import atomic_folder
from ..geometry import PinholeCamera, T_from_position_quat_wxyz, position_quat_wxyz_from_T

FORMAT_NAME = "visloc-dataset"
FORMAT_VERSION = 1
DEFAULT_DEPTH_SCALE = 1000.0  # uint16 value per metre (millimetres)

FRAME_COLUMNS = [
    "name",
    "stamp_ns",
    "tx",
    "ty",
    "tz",
    "qw",
    "qx",
    "qy",
    "qz",
    "fx",
    "fy",
    "cx",
    "cy",
    "width",
    "height",
    "dist",
    "rgb",
    "depth",
    "semantic",
]


class DatasetError(ValueError):
    """A dataset folder that does not follow the layout; the message says what and where."""


@dataclass
class FrameRecord:
    """One frame of a sequence. Paths are relative to the sequence folder ('' when absent)."""

    name: str
    stamp_ns: int
    T_world_cam: np.ndarray
    camera: PinholeCamera
    rgb: str
    depth: str = ""
    semantic: str = ""
    scene: str = ""
    sequence: str = ""

    @property
    def key(self) -> str:
        """Unique id within a dataset: scene/sequence/name."""
        return f"{self.scene}/{self.sequence}/{self.name}"


@dataclass
class SequenceInfo:
    scene: str
    sequence: str
    condition: str = "normal"  # appearance condition (e.g. day, dusk, night); "normal" if unknown
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.scene}/{self.sequence}"


# --------------------------------------------------------------------------------------- writing
class DatasetWriter:
    """Writes a dataset atomically (visloc_core.atomic): everything goes to a temporary folder next
    to ``out`` that is renamed to ``out`` only by :meth:`commit` (the ``with`` block does it on
    success). An interrupted or failed run leaves no half-written dataset and no temporary folder;
    a second writer of the same ``out`` fails at once (OutputLockedError).

    Usage::

        with DatasetWriter(out, source={"type": "7scenes", "path": src}) as w:
            w.add_frame("chess", "seq-01", "frame-000000", stamp_ns, T_world_cam, camera, rgb_HW3)
            w.set_split("train", ["chess/seq-01"])
    """

    def __init__(
        self,
        out: str | Path,
        source: dict,
        overwrite: bool = False,
        depth_scale: float = DEFAULT_DEPTH_SCALE,
        image_format: str = "png",
    ) -> None:
        self.out = Path(out)
        if image_format not in ("png", "jpg"):
            raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
        self._folder = atomic_folder(self.out, overwrite=overwrite).open()
        self.tmp = self._folder.path
        self.overwrite = overwrite
        self.depth_scale = float(depth_scale)
        self.image_format = image_format
        self.manifest: dict = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "created_unix": time.time(),
            "source": source,
            "conventions": {
                "pose": "T_world_cam: camera (OpenCV optical: x right, y down, z forward) to world, metres",
                "quaternion_order": "wxyz",
                "stamp": "int nanoseconds",
                "depth": f"uint16 png, metres = value / {self.depth_scale:g}, 0 = invalid",
            },
            "depth_scale": self.depth_scale,
            "scenes": {},
            "sequences": {},
            "splits": {},
            "classes": {},
        }
        self._rows: dict[tuple[str, str], list[dict]] = {}
        # add_frame may be called from several threads (from-bag's writers): files are written
        # unlocked (the I/O runs in parallel), the bookkeeping below under this lock.
        self._lock = threading.Lock()
        self._committed = False

    # -- content
    def set_scene(self, scene: str, **info) -> None:
        """Scene metadata, e.g. description= (text for MVL-Loc), extent= (bounds in metres)."""
        self.manifest["scenes"].setdefault(scene, {}).update(info)

    def set_sequence(self, scene: str, sequence: str, condition: str = "normal", **extra) -> None:
        self.manifest["sequences"][f"{scene}/{sequence}"] = {"condition": condition, **extra}

    def set_split(self, split: str, sequence_keys: list[str]) -> None:
        self.manifest["splits"][split] = list(sequence_keys)

    def set_classes(self, classes: dict[int, str]) -> None:
        self.manifest["classes"] = {str(k): v for k, v in classes.items()}

    def add_frame(  # thread-safe
        self,
        scene: str,
        sequence: str,
        name: str,
        stamp_ns: int,
        T_world_cam: np.ndarray,
        camera: PinholeCamera,
        rgb_HW3: np.ndarray | None = None,
        depth_m_HW: np.ndarray | None = None,
        semantic_HW: np.ndarray | None = None,
        rgb_encoded: bytes | None = None,
        rgb_ext: str | None = None,
    ) -> FrameRecord:
        """Add one frame. Give the RGB image either decoded (uint8 HxWx3, RGB order) or already
        encoded (``rgb_encoded`` bytes of a .png/.jpg file with ``rgb_ext``), which is copied as is."""
        T = np.asarray(T_world_cam, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"frame {scene}/{sequence}/{name}: T_world_cam must be a finite 4x4 matrix")
        if "/" in name or "/" in sequence or "/" in scene:
            raise ValueError(f"names may not contain '/': {scene}/{sequence}/{name}")
        seq_dir = self.tmp / scene / sequence
        (seq_dir / "rgb").mkdir(parents=True, exist_ok=True)
        if rgb_encoded is not None:
            ext = (rgb_ext or "png").lstrip(".")
            rgb_rel = f"rgb/{name}.{ext}"
            (seq_dir / rgb_rel).write_bytes(rgb_encoded)
        else:
            img = np.asarray(rgb_HW3)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"frame {name}: rgb must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
            if (img.shape[1], img.shape[0]) != (camera.width, camera.height):
                raise ValueError(
                    f"frame {name}: image {img.shape[1]}x{img.shape[0]} does not match camera "
                    f"{camera.width}x{camera.height}"
                )
            rgb_rel = f"rgb/{name}.{self.image_format}"
            params = [cv2.IMWRITE_JPEG_QUALITY, 95] if self.image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
            _imwrite(seq_dir / rgb_rel, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
        depth_rel = ""
        if depth_m_HW is not None:
            (seq_dir / "depth").mkdir(exist_ok=True)
            d = np.asarray(depth_m_HW, dtype=np.float64)
            q = np.where(np.isfinite(d) & (d > 0), np.round(d * self.depth_scale), 0)
            depth_rel = f"depth/{name}.png"
            _imwrite(seq_dir / depth_rel, np.clip(q, 0, 65535).astype(np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        sem_rel = ""
        if semantic_HW is not None:
            (seq_dir / "semantic").mkdir(exist_ok=True)
            sem_rel = f"semantic/{name}.png"
            _imwrite(seq_dir / sem_rel, np.asarray(semantic_HW, dtype=np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        t, q = position_quat_wxyz_from_T(T)
        row = {
            "name": name,
            "stamp_ns": int(stamp_ns),
            "tx": repr(float(t[0])),
            "ty": repr(float(t[1])),
            "tz": repr(float(t[2])),
            "qw": repr(float(q[0])),
            "qx": repr(float(q[1])),
            "qy": repr(float(q[2])),
            "qz": repr(float(q[3])),
            "fx": repr(camera.fx),
            "fy": repr(camera.fy),
            "cx": repr(camera.cx),
            "cy": repr(camera.cy),
            "width": camera.width,
            "height": camera.height,
            "dist": " ".join(repr(x) for x in camera.dist),
            "rgb": rgb_rel,
            "depth": depth_rel,
            "semantic": sem_rel,
        }
        with self._lock:
            self._rows.setdefault((scene, sequence), []).append(row)
            if f"{scene}/{sequence}" not in self.manifest["sequences"]:
                self.set_sequence(scene, sequence)
            self.manifest["scenes"].setdefault(scene, {})
        return FrameRecord(name, int(stamp_ns), T, camera, rgb_rel, depth_rel, sem_rel, scene, sequence)

    # -- finishing
    def commit(self) -> Path:
        """Write frames.csv files and the manifest, then rename the temporary folder to ``out``."""
        try:
            for (scene, sequence), rows in self._rows.items():
                rows.sort(key=lambda r: (r["stamp_ns"], r["name"]))
                with open(self.tmp / scene / sequence / "frames.csv", "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=FRAME_COLUMNS)
                    w.writeheader()
                    w.writerows(rows)
                self.manifest["sequences"][f"{scene}/{sequence}"]["n_frames"] = len(rows)
            (self.tmp / "manifest.json").write_text(json.dumps(self.manifest, indent=2))
        except BaseException:
            self.abort()
            raise
        self._folder.commit()
        self._committed = True
        return self.out

    def abort(self) -> None:
        self._folder.abort()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._committed:
            self.commit()
        elif exc_type is not None:
            self.abort()


def _imwrite(path: Path, img: np.ndarray, params: list[int]) -> None:
    if not cv2.imwrite(str(path), img, params):
        raise OSError(f"could not write image {path}")


# --------------------------------------------------------------------------------------- reading
class Dataset:
    """Read access to a dataset folder in the visloc layout (frames as :class:`FrameRecord`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        mf = self.root / "manifest.json"
        if not mf.is_file():
            raise DatasetError(
                f"{self.root} is not a visloc dataset (no manifest.json); create one with "
                "`visloc synth`, `visloc convert` or `visloc dataset from-bag`"
            )
        self.manifest = json.loads(mf.read_text())
        if self.manifest.get("format") != FORMAT_NAME:
            raise DatasetError(f"{mf}: format is {self.manifest.get('format')!r}, expected {FORMAT_NAME!r}")
        if int(self.manifest.get("version", 0)) > FORMAT_VERSION:
            raise DatasetError(
                f"{mf}: version {self.manifest['version']} is newer than this visloc reads "
                f"({FORMAT_VERSION}); upgrade visloc"
            )
        self.depth_scale = float(self.manifest.get("depth_scale", DEFAULT_DEPTH_SCALE))
        self._cache: dict[str, list[FrameRecord]] = {}

    @property
    def scenes(self) -> list[str]:
        return sorted(self.manifest["scenes"])

    @property
    def classes(self) -> dict[int, str]:
        return {int(k): v for k, v in self.manifest.get("classes", {}).items()}

    def scene_info(self, scene: str) -> dict:
        return self.manifest["scenes"].get(scene, {})

    def sequences(self, split: str | None = None, scene: str | None = None) -> list[SequenceInfo]:
        """Sequences, optionally those of one split ('train', 'test', ...) and/or one scene."""
        if split is not None:
            if split not in self.manifest["splits"]:
                raise DatasetError(f"{self.root}: no split {split!r}; splits: {', '.join(self.manifest['splits'])}")
            keys = self.manifest["splits"][split]
        else:
            keys = sorted(self.manifest["sequences"])
        out = []
        for key in keys:
            sc, sq = key.split("/", 1)
            if scene is not None and sc != scene:
                continue
            info = dict(self.manifest["sequences"].get(key, {}))
            out.append(SequenceInfo(sc, sq, info.pop("condition", "normal"), info))
        return out

    def frames(
        self, split: str | None = None, scene: str | None = None, condition: str | None = None
    ) -> list[FrameRecord]:
        """All frames of the selected sequences, in sequence then time order."""
        out: list[FrameRecord] = []
        for s in self.sequences(split, scene):
            if condition is not None and s.condition != condition:
                continue
            out.extend(self.sequence_frames(s.scene, s.sequence))
        return out

    def sequence_frames(self, scene: str, sequence: str) -> list[FrameRecord]:
        key = f"{scene}/{sequence}"
        if key not in self._cache:
            path = self.root / scene / sequence / "frames.csv"
            if not path.is_file():
                raise DatasetError(f"{path} is missing (sequence {key} is listed in the manifest)")
            self._cache[key] = list(_read_frames_csv(path, scene, sequence))
        return self._cache[key]

    def path(self, frame: FrameRecord, kind: str = "rgb") -> Path:
        rel = getattr(frame, kind)
        if not rel:
            raise DatasetError(f"frame {frame.key} has no {kind}")
        return self.root / frame.scene / frame.sequence / rel

    def load_rgb(self, frame: FrameRecord) -> np.ndarray:
        """RGB uint8 (H, W, 3)."""
        p = self.path(frame, "rgb")
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"cannot read image {p}")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def load_depth(self, frame: FrameRecord) -> np.ndarray:
        """Depth in metres, float32 (H, W); 0 where invalid."""
        p = self.path(frame, "depth")
        d = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if d is None:
            raise DatasetError(f"cannot read depth {p}")
        return d.astype(np.float32) / self.depth_scale

    def load_semantic(self, frame: FrameRecord) -> np.ndarray:
        """Class ids uint8 (H, W)."""
        p = self.path(frame, "semantic")
        s = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if s is None:
            raise DatasetError(f"cannot read semantic map {p}")
        return s


def _read_frames_csv(path: Path, scene: str, sequence: str) -> Iterator[FrameRecord]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(FRAME_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path}: missing columns {sorted(missing)}")
        for i, r in enumerate(reader):
            try:
                T = T_from_position_quat_wxyz(
                    np.array([float(r["tx"]), float(r["ty"]), float(r["tz"])]),
                    np.array([float(r["qw"]), float(r["qx"]), float(r["qy"]), float(r["qz"])]),
                )
                cam = PinholeCamera(
                    int(r["width"]),
                    int(r["height"]),
                    float(r["fx"]),
                    float(r["fy"]),
                    float(r["cx"]),
                    float(r["cy"]),
                    tuple(float(x) for x in r["dist"].split()) if r["dist"] else (),
                )
                yield FrameRecord(
                    r["name"], int(r["stamp_ns"]), T, cam, r["rgb"], r["depth"], r["semantic"], scene, sequence
                )
            except (ValueError, KeyError) as err:
                raise DatasetError(f"{path}: row {i + 2} is malformed: {err}") from err
