"""The scene description read from ``config/scenes/*.yaml`` (what ``visloc synth`` renders).

Conventions:
- The world frame is the ROS ``map`` frame: x, y horizontal, z UP, metres.
- The robot's ``base_link`` follows REP-103 (x forward, y left, z up); the camera is mounted on it
  by ``mount`` (base_link -> camera_link, roll/pitch/yaw in degrees about x/y/z, applied as
  R = Rz(yaw) Ry(pitch) Rx(roll); positive pitch looks DOWN). camera_link -> camera_optical_frame
  is the REP-103 rotation (``geometry.ROS_OPTICAL_TO_BODY``); the dataset pose is that optical
  frame (OpenCV: x right, y down, z forward).
- Angles in the YAML are degrees, times seconds, rates Hz, colours linear RGB in [0, 1].

Every key is checked: an unknown key or a wrong type is an error that names the key and the file.
See config/scenes/indoor_room.yaml for a fully commented example.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...geometry import ROS_OPTICAL_TO_BODY, PinholeCamera, T_from_R_t
from ...yaml_io import load_yaml_file
from .conditions import BUILTIN_CONDITIONS, ConditionSpec

# Semantic classes written to every synthetic dataset (id -> name). Ids are stable across scenes
# so a model trained on one preset reads the other's labels.
CLASSES: dict[int, str] = {
    0: "void",
    1: "wall",
    2: "floor",
    3: "ceiling",
    4: "object",
    5: "person",
    6: "vehicle",
    7: "sky",
    8: "ground",
    9: "building",
    10: "picture",
}
CLASS_IDS: dict[str, int] = {v: k for k, v in CLASSES.items()}


class SceneSpecError(ValueError):
    """A scene YAML that cannot be rendered; the message names the file, the key and the fix."""


# ------------------------------------------------------------------------------------ helpers
def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def R_from_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rotation Rz(yaw) Ry(pitch) Rx(roll) (radians), the ROS/URDF fixed-axis rpy convention."""
    return _rot_z(yaw) @ _rot_y(pitch) @ _rot_x(roll)


class _Keys:
    """Reads one YAML mapping, remembering which keys were used so leftovers are reported."""

    def __init__(self, data: Any, where: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SceneSpecError(f"{where}: expected a mapping, got {type(data).__name__}")
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def get(self, key: str, default: Any = None, kind: type | tuple | None = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            return copy.deepcopy(default)
        val = self.data[key]
        if kind is float and isinstance(val, int) and not isinstance(val, bool):
            val = float(val)
        if kind is not None and not isinstance(val, kind):
            raise SceneSpecError(f"{self.where}.{key}: expected {_kind_name(kind)}, got {val!r}")
        return val

    def vec(self, key: str, n: int, default: Any = None) -> np.ndarray | None:
        self.used.add(key)
        if key not in self.data:
            return None if default is None else np.asarray(default, dtype=np.float64)
        val = self.data[key]
        try:
            arr = np.asarray(val, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise SceneSpecError(f"{self.where}.{key}: expected {n} numbers, got {val!r}") from err
        if arr.shape != (n,) or not np.all(np.isfinite(arr)):
            raise SceneSpecError(f"{self.where}.{key}: expected a list of {n} finite numbers, got {val!r}")
        return arr

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise SceneSpecError(
                f"{self.where}: unknown key(s) {extra}; known: {sorted(self.used)} (check the spelling)"
            )


def _kind_name(kind: type | tuple) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


# ------------------------------------------------------------------------------------ the spec
@dataclass
class Material:
    """How a surface looks: a texture layer name (see textures.TEXTURES), a colour tint, and either
    ``scale`` (metres covered by one repeat of the texture) or ``fit`` (the photo spans the face once)."""

    texture: str = "plain"
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = 2.0
    fit: bool = False


@dataclass
class ObjectSpec:
    """A static box (``shape: box``, ``center`` is the centre of its BOTTOM face) or a flat
    rectangle (``shape: quad``, ``center`` is its centre, its front faces along ``yaw_deg``)."""

    name: str
    shape: str
    center: np.ndarray
    size: np.ndarray  # box: (sx, sy, sz); quad: (width, height, 0)
    yaw_deg: float
    cls: str
    material: Material
    side_material: Material | None = None  # box: material of the 4 sides if different from the top


@dataclass
class ActorSpec:
    """A moving occluder (person or vehicle) walking a closed polyline ``path`` (x, y) at ``speed`` m/s."""

    name: str
    kind: str  # "person" | "vehicle"
    path: np.ndarray  # (N, 2) closed loop of waypoints
    speed: float
    phase: float  # metres along the path at t = 0
    material: Material


@dataclass
class TrajectorySpec:
    """A closed path of base_link (type ``ellipse`` or ``waypoints``), its timing and view direction.

    ``look``: forward (along the motion), outward (away from ``center``), inward (towards it);
    then yaw_offset_deg is added and a sinusoidal wobble of yaw/pitch/height over the path.
    """

    type: str = "ellipse"
    center: np.ndarray = field(default_factory=lambda: np.zeros(2))
    radii: np.ndarray = field(default_factory=lambda: np.array([1.5, 1.0]))
    waypoints: np.ndarray | None = None
    height: float = 1.0  # base_link z (metres)
    laps: float = 1.0
    start_deg: float = 0.0
    direction: int = 1  # +1 counter-clockwise, -1 clockwise
    look: str = "outward"
    yaw_offset_deg: float = 0.0
    yaw_wobble_deg: float = 0.0
    pitch_wobble_deg: float = 0.0
    roll_wobble_deg: float = 0.0
    height_wobble: float = 0.0
    wobble_cycles: float = 3.0


@dataclass
class SequenceSpec:
    name: str
    split: str  # train (mapping) | test (query) | val
    condition: str
    n_frames: int
    trajectory: TrajectorySpec
    t0_s: float = 0.0  # start time offset (seconds) for the stamps


@dataclass
class CameraSpec:
    width: int = 320
    height: int = 240
    hfov_deg: float = 70.0
    rate_hz: float = 10.0
    near: float = 0.05
    far: float = 300.0

    def pinhole(self, width: int | None = None, height: int | None = None) -> PinholeCamera:
        """Intrinsics at (width, height) (default: the spec's size); square pixels, centred."""
        w = int(width or self.width)
        h = int(height or self.height)
        fx = 0.5 * w / math.tan(math.radians(self.hfov_deg) / 2)
        return PinholeCamera(w, h, fx, fx, (w - 1) / 2.0, (h - 1) / 2.0)


@dataclass
class SceneSpec:
    name: str
    description: str
    kind: str  # indoor | outdoor
    seed: int
    camera: CameraSpec
    T_base_cameralink: np.ndarray  # 4x4 mount, base_link -> camera_link
    room: dict | None  # indoor: size and surface materials
    ground: dict | None  # outdoor: ground extent and material
    objects: list[ObjectSpec]
    actors: list[ActorSpec]
    conditions: dict[str, ConditionSpec]
    sequences: list[SequenceSpec]
    odom_rate_factor: int = 2  # odometry published at rate_hz * this (>= 1)
    odom_drift: dict = field(default_factory=dict)
    source_path: str = ""

    @property
    def T_base_optical(self) -> np.ndarray:
        """base_link -> camera_optical_frame: the fixed mount then the REP-103 optical rotation."""
        return self.T_base_cameralink @ ROS_OPTICAL_TO_BODY

    def sequence(self, name: str) -> SequenceSpec:
        for s in self.sequences:
            if s.name == name:
                return s
        raise KeyError(f"scene {self.name} has no sequence {name!r}; has {[s.name for s in self.sequences]}")


# ------------------------------------------------------------------------------------ parsing
def _material(data: Any, where: str, default: Material | None = None) -> Material:
    from .textures import TEXTURES  # local: textures imports skimage

    base = copy.deepcopy(default) if default is not None else Material()
    if data is None:
        return base
    if isinstance(data, str):
        data = {"texture": data}
    k = _Keys(data, where)
    tex = k.get("texture", base.texture, str)
    if tex not in TEXTURES:
        raise SceneSpecError(f"{where}.texture: unknown texture {tex!r}; known: {sorted(TEXTURES)}")
    tint = k.vec("tint", 3, base.tint)
    scale = k.get("scale", base.scale, float)
    fit = k.get("fit", base.fit, bool)
    k.done()
    if scale <= 0:
        raise SceneSpecError(f"{where}.scale must be > 0 metres, got {scale}")
    return Material(tex, tuple(float(x) for x in tint), float(scale), bool(fit))


def _condition(name: str, data: Any, where: str, base: ConditionSpec) -> ConditionSpec:
    k = _Keys(data, where)
    out = copy.deepcopy(base)
    out.name = name
    for fname, fval in vars(base).items():
        if fname == "name":
            continue
        if isinstance(fval, tuple):
            v = k.vec(fname, 3, fval)
            setattr(out, fname, tuple(float(x) for x in v))
        elif isinstance(fval, bool):
            setattr(out, fname, k.get(fname, fval, bool))
        elif isinstance(fval, int):
            setattr(out, fname, int(k.get(fname, fval, int)))
        else:
            setattr(out, fname, float(k.get(fname, fval, float)))
    k.done()
    if out.blur_samples < 1:
        raise SceneSpecError(f"{where}.blur_samples must be >= 1")
    if out.people < 0 or out.vehicles < 0:
        raise SceneSpecError(f"{where}: people/vehicles must be >= 0")
    return out


def _trajectory(data: Any, where: str) -> TrajectorySpec:
    k = _Keys(data, where)
    t = TrajectorySpec()
    t.type = k.get("type", t.type, str)
    if t.type not in ("ellipse", "waypoints"):
        raise SceneSpecError(f"{where}.type: {t.type!r} is not one of ellipse, waypoints")
    t.center = k.vec("center", 2, t.center)
    t.radii = k.vec("radii", 2, t.radii)
    wp = k.get("waypoints", None, list)
    if wp is not None:
        arr = np.asarray(wp, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < 2:
            raise SceneSpecError(f"{where}.waypoints: expected a list of >= 2 [x, y] points")
        t.waypoints = arr
    if t.type == "waypoints" and t.waypoints is None:
        raise SceneSpecError(f"{where}: type waypoints needs a 'waypoints' list")
    if t.type == "ellipse" and np.any(t.radii <= 0):
        raise SceneSpecError(f"{where}.radii must be > 0, got {t.radii.tolist()}")
    for name in (
        "height",
        "laps",
        "start_deg",
        "yaw_offset_deg",
        "yaw_wobble_deg",
        "pitch_wobble_deg",
        "roll_wobble_deg",
        "height_wobble",
        "wobble_cycles",
    ):
        setattr(t, name, float(k.get(name, getattr(t, name), float)))
    t.direction = int(k.get("direction", t.direction, int))
    if t.direction not in (1, -1):
        raise SceneSpecError(f"{where}.direction must be 1 or -1")
    t.look = k.get("look", t.look, str)
    if t.look not in ("forward", "outward", "inward"):
        raise SceneSpecError(f"{where}.look: {t.look!r} is not one of forward, outward, inward")
    k.done()
    return t


def _closed_path(data: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SceneSpecError(f"{where}: expected a list of [x, y] points") from err
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < 2:
        raise SceneSpecError(f"{where}: expected a list of >= 2 [x, y] points, got {data!r}")
    return arr


def parse_scene(data: dict, source: str = "<dict>") -> SceneSpec:
    """Build a :class:`SceneSpec` from a parsed YAML mapping (``source`` names it in errors)."""
    k = _Keys(data, source)
    name = k.get("name", None, str)
    if not name or "/" in name:
        raise SceneSpecError(f"{source}: 'name' is required (a folder name without '/')")
    description = k.get("description", "", str).strip()
    kind = k.get("kind", "indoor", str)
    if kind not in ("indoor", "outdoor"):
        raise SceneSpecError(f"{source}.kind: {kind!r} is not indoor or outdoor")
    seed = int(k.get("seed", 0, int))
    cam = _parse_camera(k, source)
    T_base_cameralink = _parse_mount(k, source)
    room, ground = _parse_surroundings(k, kind, source)
    objects = _parse_objects(k, source)
    actors = _parse_actors(k, source)
    conditions = _parse_conditions(k, source)
    sequences = _parse_sequences(k, conditions, source)
    _check_actor_counts(actors, conditions, sequences, source)
    odom_rate_factor, drift = _parse_odometry(k, source)
    k.done()
    return SceneSpec(
        name=name,
        description=description,
        kind=kind,
        seed=seed,
        camera=cam,
        T_base_cameralink=T_base_cameralink,
        room=room,
        ground=ground,
        objects=objects,
        actors=actors,
        conditions=conditions,
        sequences=sequences,
        odom_rate_factor=odom_rate_factor,
        odom_drift=drift,
        source_path=source,
    )


def _parse_camera(k: _Keys, source: str) -> CameraSpec:
    """The ``camera`` section: image size (pixels), horizontal field of view (degrees), frame rate
    (Hz) and clip planes (metres), defaults from :class:`CameraSpec`."""
    ck = _Keys(k.get("camera", {}), f"{source}.camera")
    cam = CameraSpec()
    cam.width = int(ck.get("width", cam.width, int))
    cam.height = int(ck.get("height", cam.height, int))
    for f in ("hfov_deg", "rate_hz", "near", "far"):
        setattr(cam, f, float(ck.get(f, getattr(cam, f), float)))
    ck.done()
    if cam.width < 8 or cam.height < 8 or not (10 < cam.hfov_deg < 170) or cam.rate_hz <= 0:
        raise SceneSpecError(f"{source}.camera: need size >= 8x8, 10 < hfov_deg < 170, rate_hz > 0")
    if not (0 < cam.near < cam.far):
        raise SceneSpecError(f"{source}.camera: need 0 < near < far")
    return cam


def _parse_mount(k: _Keys, source: str) -> np.ndarray:
    """The ``mount`` section as T_base_cameralink (4x4): ``xyz`` in metres, ``rpy_deg`` roll, pitch,
    yaw in degrees."""
    mk = _Keys(k.get("mount", {}), f"{source}.mount")
    xyz = mk.vec("xyz", 3, [0.1, 0.0, 0.3])
    rpy = np.radians(mk.vec("rpy_deg", 3, [0.0, 5.0, 0.0]))
    mk.done()
    T_base_cameralink = T_from_R_t(R_from_rpy(*rpy), xyz)
    return T_base_cameralink


def _parse_surroundings(k: _Keys, kind: str, source: str) -> tuple[dict | None, dict | None]:
    """(room, ground): an indoor scene's ``room`` (size [x, y, z] in metres, floor, ceiling and 4 wall
    materials), or an outdoor scene's ``ground`` (size [x, y] in metres, material); the other is None."""
    room = None
    ground = None
    if kind == "indoor":
        rk = _Keys(k.get("room", None), f"{source}.room")
        size = rk.vec("size", 3)
        if size is None or np.any(size <= 0):
            raise SceneSpecError(f"{source}.room.size: an indoor scene needs [length_x, width_y, height_z] > 0")
        walls = rk.get("walls", [], list)
        if len(walls) != 4:
            raise SceneSpecError(f"{source}.room.walls: give 4 wall materials (-y, +x, +y, -x), got {len(walls)}")
        room = {
            "size": size,
            "floor": _material(rk.get("floor"), f"{source}.room.floor"),
            "ceiling": _material(rk.get("ceiling"), f"{source}.room.ceiling"),
            "walls": [_material(w, f"{source}.room.walls[{i}]") for i, w in enumerate(walls)],
        }
        rk.done()
    else:
        gk = _Keys(k.get("ground", None), f"{source}.ground")
        size = gk.vec("size", 2, [80.0, 80.0])
        ground = {"size": size, "material": _material(gk.get("material"), f"{source}.ground.material")}
        gk.done()
    return room, ground


def _parse_objects(k: _Keys, source: str) -> list[ObjectSpec]:
    """The ``objects`` list: boxes and quads (center and size in metres, yaw in degrees, class, materials)."""
    objects = []
    for i, od in enumerate(k.get("objects", [], list)):
        w = f"{source}.objects[{i}]"
        ok = _Keys(od, w)
        shape = ok.get("shape", "box", str)
        if shape not in ("box", "quad"):
            raise SceneSpecError(f"{w}.shape: {shape!r} is not box or quad")
        center = ok.vec("center", 3)
        if center is None:
            raise SceneSpecError(f"{w}: 'center' [x, y, z] is required")
        size = ok.vec("size", 3 if shape == "box" else 2)
        if size is None or np.any(size <= 0):
            raise SceneSpecError(f"{w}.size: required and > 0")
        if shape == "quad":
            size = np.array([size[0], size[1], 0.0])
        cls = ok.get("class", "object" if shape == "box" else "picture", str)
        if cls not in CLASS_IDS:
            raise SceneSpecError(f"{w}.class: {cls!r} unknown; known: {sorted(CLASS_IDS)}")
        default_mat = Material(fit=shape == "quad")
        mat = _material(ok.get("material"), f"{w}.material", default_mat)
        side = ok.get("side_material", None)
        side_mat = _material(side, f"{w}.side_material") if side is not None else None
        objects.append(
            ObjectSpec(
                ok.get("name", f"object{i}", str),
                shape,
                center,
                size,
                float(ok.get("yaw_deg", 0.0, float)),
                cls,
                mat,
                side_mat,
            )
        )
        ok.done()
    return objects


def _parse_actors(k: _Keys, source: str) -> list[ActorSpec]:
    """The ``actors`` list: people and vehicles moving along closed paths (speed in m/s)."""
    actors = []
    for i, ad in enumerate(k.get("actors", [], list)):
        w = f"{source}.actors[{i}]"
        ak = _Keys(ad, w)
        akind = ak.get("kind", "person", str)
        if akind not in ("person", "vehicle"):
            raise SceneSpecError(f"{w}.kind: {akind!r} is not person or vehicle")
        path = _closed_path(ak.get("path", None), f"{w}.path")
        speed = float(ak.get("speed", 1.2 if akind == "person" else 4.0, float))
        actors.append(
            ActorSpec(
                ak.get("name", f"{akind}{i}", str),
                akind,
                path,
                speed,
                float(ak.get("phase", 0.0, float)),
                _material(
                    ak.get("material"),
                    f"{w}.material",
                    Material("astronaut" if akind == "person" else "rocket", fit=True),
                ),
            )
        )
        ak.done()
    return actors


def _parse_conditions(k: _Keys, source: str) -> dict[str, ConditionSpec]:
    """The built-in conditions, updated and extended by the ``conditions`` mapping (each based on
    ``base``, by default itself if built in, else ``day``)."""
    conditions: dict[str, ConditionSpec] = dict(copy.deepcopy(BUILTIN_CONDITIONS))
    for cname, cd in (k.get("conditions", {}, dict) or {}).items():
        cd = dict(cd or {})
        base_name = cd.pop("base", cname if cname in conditions else "day")
        if base_name not in conditions:
            raise SceneSpecError(f"{source}.conditions.{cname}.base: unknown condition {base_name!r}")
        conditions[cname] = _condition(cname, cd, f"{source}.conditions.{cname}", conditions[base_name])
    return conditions


def _parse_sequences(k: _Keys, conditions: dict[str, ConditionSpec], source: str) -> list[SequenceSpec]:
    """The ``sequences`` list (at least one): unique names, split, a known condition, frame count,
    trajectory and start time ``t0_s`` in seconds."""
    sequences = []
    seen = set()
    for i, sd in enumerate(k.get("sequences", [], list)):
        w = f"{source}.sequences[{i}]"
        sk = _Keys(sd, w)
        sname = sk.get("name", None, str)
        if not sname or "/" in sname or sname in seen:
            raise SceneSpecError(f"{w}.name: required, unique, without '/'")
        seen.add(sname)
        split = sk.get("split", "train", str)
        cond = sk.get("condition", "day", str)
        if cond not in conditions:
            raise SceneSpecError(f"{w}.condition: unknown {cond!r}; known: {sorted(conditions)}")
        n = int(sk.get("n_frames", 100, int))
        if n < 1:
            raise SceneSpecError(f"{w}.n_frames must be >= 1")
        traj = _trajectory(sk.get("trajectory", {}), f"{w}.trajectory")
        t0 = float(sk.get("t0_s", 0.0, float))
        sk.done()
        sequences.append(SequenceSpec(sname, split, cond, n, traj, t0))
    if not sequences:
        raise SceneSpecError(f"{source}: 'sequences' is empty; add at least one mapping (split: train) sequence")
    return sequences


def _check_actor_counts(
    actors: list[ActorSpec], conditions: dict[str, ConditionSpec], sequences: list[SequenceSpec], source: str
) -> None:
    """SceneSpecError when a sequence's condition wants more people or vehicles than the scene's actors."""
    n_people = sum(a.kind == "person" for a in actors)
    n_veh = sum(a.kind == "vehicle" for a in actors)
    for s in sequences:
        c = conditions[s.condition]
        if c.people > n_people or c.vehicles > n_veh:
            raise SceneSpecError(
                f"{source}: condition {c.name!r} (sequence {s.name}) wants {c.people} people and {c.vehicles} "
                f"vehicles but the scene defines {n_people} person and {n_veh} vehicle actors; add actors"
            )


def _parse_odometry(k: _Keys, source: str) -> tuple[int, dict]:
    """(``odom_rate_factor`` >= 1, the ``odom_drift`` model: relative scale error, heading bias in
    degrees per metre, random walks in metres and degrees per sqrt(metre))."""
    odom_rate_factor = int(k.get("odom_rate_factor", 2, int))
    if odom_rate_factor < 1:
        raise SceneSpecError(f"{source}.odom_rate_factor must be >= 1")
    dk = _Keys(k.get("odom_drift", {}), f"{source}.odom_drift")
    drift = {
        "scale_error": float(dk.get("scale_error", 0.02, float)),  # relative odometry scale error
        "yaw_bias_deg_per_m": float(dk.get("yaw_bias_deg_per_m", 0.5, float)),  # heading drift per metre
        "trans_noise_m_per_sqrt_m": float(dk.get("trans_noise_m_per_sqrt_m", 0.01, float)),  # random walk
        "yaw_noise_deg_per_sqrt_m": float(dk.get("yaw_noise_deg_per_sqrt_m", 0.2, float)),
    }
    dk.done()
    return odom_rate_factor, drift


def load_scene(path: str | Path) -> SceneSpec:
    """Read and check a scene YAML. A bare name (``indoor_room``) is looked up in config/scenes/."""
    p = Path(path)
    if not p.exists() and p.suffix == "" and (preset_dir() / f"{p.name}.yaml").is_file():
        p = preset_dir() / f"{p.name}.yaml"
    if not p.is_file():
        raise FileNotFoundError(
            f"scene file {path} not found; presets: {', '.join(sorted(x.stem for x in preset_dir().glob('*.yaml')))}"
        )
    try:
        data = load_yaml_file(p)
    except ValueError as err:
        raise SceneSpecError(str(err)) from err
    return parse_scene(data, str(p))


def preset_dir() -> Path:
    """config/scenes/ of the source tree (presets shipped with visloc)."""
    return Path(__file__).resolve().parents[3] / "config" / "scenes"
