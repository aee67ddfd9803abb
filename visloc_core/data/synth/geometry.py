"""Procedural geometry: rooms, boxes, pictures, people and vehicles as textured triangle meshes.

A mesh is float32 (N, VERTEX_FLOATS), three rows per triangle, columns
``x y z | nx ny nz | u v | layer | r g b | class`` (world or actor-local metres, unit normal
pointing to the visible side, texture coordinates in repeats, texture layer index, tint, class id).
World frame: z up (the ROS map frame); actor-local frame: x forward, y left, z up, origin on the
ground at the actor's centre.
"""

from __future__ import annotations

import math

import numpy as np

from .spec import CLASS_IDS, ActorSpec, Material, ObjectSpec, SceneSpec
from .textures import texture_layer

VERTEX_FLOATS = 13
_Z = np.array([0.0, 0.0, 1.0])


def _quad(
    p_bl: np.ndarray,
    right: np.ndarray,
    up: np.ndarray,
    width: float,
    height: float,
    normal: np.ndarray,
    mat: Material,
    cls: str,
    uv0: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Two triangles of the rectangle with bottom-left corner ``p_bl`` (as seen from its front),
    spanning ``width`` along unit ``right`` and ``height`` along unit ``up``.

    Texture: ``fit`` maps the photo once, upright (v = 0 at the top edge); otherwise the texture
    repeats every ``mat.scale`` metres starting at ``uv0`` (metres), so adjacent faces line up.
    """
    corners = [p_bl, p_bl + right * width, p_bl + right * width + up * height, p_bl + up * height]
    if mat.fit:
        uvs = [(0.0, 1.0), (1.0, 1.0), (1.0, 0.0), (0.0, 0.0)]
    else:
        s = mat.scale
        u0, v0 = uv0[0] / s, -uv0[1] / s
        uvs = [(u0, v0), (u0 + width / s, v0), (u0 + width / s, v0 - height / s), (u0, v0 - height / s)]
    layer = float(texture_layer(mat.texture))
    cid = float(CLASS_IDS[cls])
    rows = []
    for i in (0, 1, 2, 0, 2, 3):
        rows.append([*corners[i], *normal, *uvs[i], layer, *mat.tint, cid])
    return np.asarray(rows, dtype=np.float32)


def vertical_quad(
    center: np.ndarray, width: float, height: float, facing_yaw: float, mat: Material, cls: str
) -> np.ndarray:
    """An upright rectangle centred at ``center`` whose front faces the horizontal direction
    ``facing_yaw`` (radians from +x, counter-clockwise)."""
    n = np.array([math.cos(facing_yaw), math.sin(facing_yaw), 0.0])
    right = np.array([-n[1], n[0], 0.0])  # right of a viewer looking at the front (along -n)
    p_bl = np.asarray(center, dtype=np.float64) - right * width / 2 - _Z * height / 2
    return _quad(p_bl, right, _Z, width, height, n, mat, cls, uv0=(float(p_bl @ right), float(p_bl[2])))


def horizontal_quad(
    center: np.ndarray, size_x: float, size_y: float, facing_up: bool, mat: Material, cls: str
) -> np.ndarray:
    """A horizontal rectangle (axis-aligned) at height center[2], visible from above or below."""
    c = np.asarray(center, dtype=np.float64)
    if facing_up:
        right, up, n = np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), _Z
    else:
        right, up, n = np.array([1.0, 0, 0]), np.array([0, -1.0, 0]), -_Z
    p_bl = c - right * size_x / 2 - up * size_y / 2
    return _quad(p_bl, right, up, size_x, size_y, n, mat, cls, uv0=(float(p_bl[0]), float(p_bl @ up)))


def box(
    center_bottom: np.ndarray,
    size: np.ndarray,
    yaw: float,
    mat: Material,
    cls: str,
    side_mat: Material | None = None,
    bottom: bool = False,
) -> np.ndarray:
    """A box resting on ``center_bottom`` (x, y, z of its bottom face centre), sizes (sx, sy, sz)
    along its own axes, turned by ``yaw`` (radians). Sides use ``side_mat`` when given."""
    c = np.asarray(center_bottom, dtype=np.float64)
    sx, sy, sz = (float(v) for v in size)
    side = side_mat or mat
    parts = []
    # The four sides: outward directions +x, +y, -x, -y of the box frame.
    for k, (half, width) in enumerate([(sx / 2, sy), (sy / 2, sx), (sx / 2, sy), (sy / 2, sx)]):
        a = yaw + k * math.pi / 2
        n = np.array([math.cos(a), math.sin(a), 0.0])
        parts.append(vertical_quad(c + n * half + _Z * sz / 2, width, sz, a, side, cls))
    top = horizontal_quad(c + _Z * sz, sx, sy, True, mat, cls)
    parts.append(_rotate_about(top, c, yaw))
    if bottom:
        parts.append(_rotate_about(horizontal_quad(c, sx, sy, False, mat, cls), c, yaw))
    return np.concatenate(parts)


def _rotate_about(mesh: np.ndarray, pivot: np.ndarray, yaw: float) -> np.ndarray:
    """Rotate positions and normals of a mesh by ``yaw`` about the vertical axis through ``pivot``."""
    c, s = math.cos(yaw), math.sin(yaw)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)
    out = mesh.copy()
    out[:, 0:3] = ((mesh[:, 0:3].astype(np.float64) - pivot) @ R.T + pivot).astype(np.float32)
    out[:, 3:6] = (mesh[:, 3:6].astype(np.float64) @ R.T).astype(np.float32)
    return out


def room_mesh(room: dict) -> np.ndarray:
    """Floor (z = 0), ceiling and four walls of a room centred on the origin, all facing inwards.
    Walls in order -y, +x, +y, -x (each faces the room centre)."""
    lx, ly, h = (float(v) for v in room["size"])
    parts = [
        horizontal_quad(np.array([0, 0, 0.0]), lx, ly, True, room["floor"], "floor"),
        horizontal_quad(np.array([0, 0, h]), lx, ly, False, room["ceiling"], "ceiling"),
    ]
    walls = [
        (np.array([0, -ly / 2, h / 2]), lx, math.pi / 2),
        (np.array([lx / 2, 0, h / 2]), ly, math.pi),
        (np.array([0, ly / 2, h / 2]), lx, -math.pi / 2),
        (np.array([-lx / 2, 0, h / 2]), ly, 0.0),
    ]
    for (c, w, yaw), mat in zip(walls, room["walls"], strict=True):
        parts.append(vertical_quad(c, w, h, yaw, mat, "wall"))
    return np.concatenate(parts)


def object_mesh(obj: ObjectSpec) -> np.ndarray:
    yaw = math.radians(obj.yaw_deg)
    if obj.shape == "box":
        return box(obj.center, obj.size, yaw, obj.material, obj.cls, obj.side_material, bottom=obj.center[2] > 1e-3)
    return vertical_quad(obj.center, obj.size[0], obj.size[1], yaw, obj.material, obj.cls)


def static_mesh(scene: SceneSpec) -> np.ndarray:
    """Everything that does not move: the room or the ground, and the objects (world frame)."""
    parts = []
    if scene.room is not None:
        parts.append(room_mesh(scene.room))
    if scene.ground is not None:
        gx, gy = (float(v) for v in scene.ground["size"])
        parts.append(horizontal_quad(np.zeros(3), gx, gy, True, scene.ground["material"], "ground"))
    parts.extend(object_mesh(o) for o in scene.objects)
    return np.concatenate(parts) if parts else np.zeros((0, VERTEX_FLOATS), np.float32)


def actor_mesh(actor: ActorSpec) -> np.ndarray:
    """A person (legs, torso, head ~1.75 m) or a vehicle (body, cabin, wheels ~4.3 m long) in the
    actor's local frame (x forward)."""
    m = actor.material
    dark = Material("plain", (0.12, 0.12, 0.14), 1.0, False)
    if actor.kind == "person":
        skin = Material("plain", (0.85, 0.66, 0.55), 1.0, False)
        return np.concatenate(
            [
                box(np.array([0, 0, 0.0]), np.array([0.25, 0.36, 0.85]), 0.0, dark, "person"),
                box(np.array([0, 0, 0.85]), np.array([0.3, 0.48, 0.62]), 0.0, m, "person"),
                box(np.array([0, 0, 1.5]), np.array([0.22, 0.2, 0.25]), 0.0, skin, "person", bottom=True),
            ]
        )
    glass = Material("plain", (0.25, 0.3, 0.35), 1.0, False)
    parts = [
        box(np.array([0, 0, 0.3]), np.array([4.3, 1.8, 0.75]), 0.0, m, "vehicle", bottom=True),
        box(np.array([-0.3, 0, 1.05]), np.array([2.2, 1.6, 0.55]), 0.0, glass, "vehicle"),
    ]
    for x in (-1.4, 1.4):
        for y in (-0.8, 0.8):
            parts.append(box(np.array([x, y, 0.0]), np.array([0.6, 0.22, 0.6]), 0.0, dark, "vehicle"))
    return np.concatenate(parts)


def actor_pose(actor: ActorSpec, t_s: float) -> np.ndarray:
    """T_world_actor (4x4) at time ``t_s`` (s): on the closed path at arc length phase + speed * t,
    facing along the current segment."""
    path = actor.path
    seg = np.roll(path, -1, axis=0) - path
    lengths = np.linalg.norm(seg, axis=1)
    total = float(lengths.sum())
    d = (actor.phase + actor.speed * t_s) % total
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    i = int(np.clip(np.searchsorted(cum, d, side="right") - 1, 0, len(path) - 1))
    frac = (d - cum[i]) / max(lengths[i], 1e-12)
    p = path[i] + frac * seg[i]
    yaw = math.atan2(seg[i][1], seg[i][0])
    T = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:2, 3] = p
    return T


def clearance_m(scene: SceneSpec, p_world_N3: np.ndarray) -> np.ndarray:
    """Distance (N,) in metres from each point to the nearest static box (horizontal distance to
    its footprint, for points between its bottom and top) or, indoors, to the nearest wall, floor
    or ceiling. Negative inside a box or outside the room. Used to check that camera paths do not
    pass through furniture or buildings."""
    p = np.asarray(p_world_N3, dtype=np.float64).reshape(-1, 3)
    best = np.full(len(p), np.inf)
    if scene.room is not None:
        lx, ly, h = (float(v) for v in scene.room["size"])
        inside = np.stack([lx / 2 - np.abs(p[:, 0]), ly / 2 - np.abs(p[:, 1]), p[:, 2], h - p[:, 2]], 1)
        best = np.minimum(best, inside.min(1))
    for o in scene.objects:
        if o.shape != "box":
            continue
        c, yaw = o.center, math.radians(o.yaw_deg)
        d = p[:, :2] - c[:2]
        cs, sn = math.cos(yaw), math.sin(yaw)
        local = np.stack([cs * d[:, 0] + sn * d[:, 1], -sn * d[:, 0] + cs * d[:, 1]], 1)
        q = np.abs(local) - o.size[:2] / 2
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
        dist = np.where(np.all(q <= 0, axis=1), q.max(1), outside)  # signed: negative inside
        in_height = (p[:, 2] >= c[2]) & (p[:, 2] <= c[2] + o.size[2])
        best = np.minimum(best, np.where(in_height, dist, np.inf))
    return best
