"""Headless OpenGL renderer (moderngl, EGL on Mesa llvmpipe): RGB, metric depth and class id in one pass.

One draw writes three render targets (multiple render targets): colour (RGBA8), the camera-frame
z of the visible surface in metres (R32F, 0 where nothing was hit) and the integer class id
(R8UI). The camera is an OpenCV pinhole: the GL projection is built from (fx, fy, cx, cy) so that
the pixel (u, v) of OpenCV (origin at the centre of the top-left pixel, v down) is the window pixel
(u, v) of the framebuffer read back row by row, i.e. ``PinholeCamera.project`` of a camera-frame
point lands exactly on the pixel that shows it. No flip is needed on readback because the
projection maps v to window y directly (that mirrors GL's usual winding, so back-face culling is
off and lighting is two-sided).

Poses: ``T_world_cam`` maps OpenCV optical camera points to the world (z up), metres.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...geometry import PinholeCamera, invert_T
from .conditions import ConditionSpec, sun_direction
from .geometry import VERTEX_FLOATS
from .textures import TEXTURE_SIZE, texture_stack

if TYPE_CHECKING:
    import moderngl

log = logging.getLogger(__name__)

_VERTEX = """
#version 330
uniform mat4 u_cam_from_obj;   // OpenCV camera <- object
uniform mat4 u_world_from_obj; // world <- object (lighting)
uniform mat4 u_proj;           // OpenCV camera -> clip
in vec3 in_pos; in vec3 in_normal; in vec2 in_uv; in float in_layer; in vec3 in_tint; in float in_class;
out vec3 v_world; out vec3 v_normal; out vec2 v_uv; out vec3 v_tint; out float v_z;
flat out float v_layer; flat out uint v_class;
void main() {
    vec4 p_cam = u_cam_from_obj * vec4(in_pos, 1.0);
    gl_Position = u_proj * p_cam;
    v_z = p_cam.z;
    v_world = (u_world_from_obj * vec4(in_pos, 1.0)).xyz;
    v_normal = mat3(u_world_from_obj) * in_normal;
    v_uv = in_uv; v_tint = in_tint; v_layer = in_layer; v_class = uint(in_class + 0.5);
}
"""

_FRAGMENT = """
#version 330
uniform sampler2DArray u_tex;
uniform vec3 u_cam_pos;
uniform vec3 u_ambient;      // colour * intensity
uniform vec3 u_sun_dir;      // towards the light, world
uniform vec3 u_sun;          // colour * intensity
uniform float u_headlamp;
uniform float u_headlamp_range;
uniform float u_exposure;
in vec3 v_world; in vec3 v_normal; in vec2 v_uv; in vec3 v_tint; in float v_z;
flat in float v_layer; flat in uint v_class;
layout(location = 0) out vec4 f_color;
layout(location = 1) out float f_depth;
layout(location = 2) out uint f_class;
void main() {
    vec3 albedo = texture(u_tex, vec3(v_uv, v_layer)).rgb * v_tint;
    vec3 to_cam = u_cam_pos - v_world;
    float dist = length(to_cam);
    vec3 n = normalize(v_normal);
    if (dot(n, to_cam) < 0.0) n = -n;   // two-sided: light the side the camera sees
    vec3 light = u_ambient + u_sun * max(dot(n, u_sun_dir), 0.0);
    float r = dist / u_headlamp_range;
    light += vec3(u_headlamp * max(dot(n, to_cam / max(dist, 1e-6)), 0.0) / (1.0 + r * r));
    f_color = vec4(clamp(albedo * light * u_exposure, 0.0, 1.0), 1.0);
    f_depth = v_z;
    f_class = v_class;
}
"""

_BG_VERTEX = """
#version 330
in vec2 in_xy;
void main() { gl_Position = vec4(in_xy, 1.0, 1.0); }  // z = w: the far plane
"""

# Background: a sky gradient by the elevation of each pixel's ray; depth 0 (= no hit).
_BG_FRAGMENT = """
#version 330
uniform mat3 u_world_from_pixel;  // R_world_cam * K^-1
uniform vec3 u_zenith; uniform vec3 u_horizon; uniform uint u_class; uniform float u_exposure;
layout(location = 0) out vec4 f_color;
layout(location = 1) out float f_depth;
layout(location = 2) out uint f_class;
void main() {
    vec3 d = normalize(u_world_from_pixel * vec3(gl_FragCoord.x - 0.5, gl_FragCoord.y - 0.5, 1.0));
    float e = sqrt(clamp(d.z, 0.0, 1.0));
    f_color = vec4(clamp(mix(u_horizon, u_zenith, e) * u_exposure, 0.0, 1.0), 1.0);
    f_depth = 0.0;
    f_class = u_class;
}
"""


def projection_from_intrinsics(camera: PinholeCamera, near: float, far: float) -> np.ndarray:
    """4x4 clip <- OpenCV camera matrix: window pixel (u + 0.5, v + 0.5) for the OpenCV pixel (u, v).

    x_ndc = (2u + 1) / W - 1 with u = fx x / z + cx (and the same for v with H), z_ndc = -1 at
    ``near`` and +1 at ``far`` (metres), w_clip = z.
    """
    W, H = camera.width, camera.height
    P = np.zeros((4, 4))
    P[0, 0] = 2 * camera.fx / W
    P[0, 2] = (2 * camera.cx + 1) / W - 1
    P[1, 1] = 2 * camera.fy / H
    P[1, 2] = (2 * camera.cy + 1) / H - 1
    P[2, 2] = (far + near) / (far - near)
    P[2, 3] = -2 * far * near / (far - near)
    P[3, 2] = 1.0
    return P


@dataclass
class RenderOutput:
    rgb_HW3: np.ndarray  # noqa: N815  (shape suffix, STYLE.md) uint8 RGB
    depth_HW: np.ndarray  # noqa: N815  float32 metres along the optical axis (z), 0 = no surface
    class_HW: np.ndarray  # noqa: N815  uint8 class ids (spec.CLASSES)


class RendererUnavailableError(RuntimeError):
    """No headless OpenGL (EGL) context could be made; the message says what to install."""


def create_context() -> moderngl.Context:
    """A standalone headless GL 3.3 context (EGL). Raises with the install hint when EGL is missing."""
    import moderngl

    try:
        return moderngl.create_standalone_context(backend="egl")
    except Exception as err:  # moderngl raises plain Exception subclasses from glcontext
        raise RendererUnavailableError(
            f"cannot create a headless OpenGL context with EGL ({err}); install Mesa's EGL: "
            "`apt-get install -y libegl1 libgl1-mesa-dri`"
        ) from err


class Renderer:
    """Renders a static mesh plus moving actor meshes from OpenCV cameras at one image size.

    ``static_mesh``: (N, VERTEX_FLOATS) world-frame triangles; ``actor_meshes``: name ->
    actor-local triangles, placed per frame by ``T_world_actor``. ``background_class`` fills pixels
    that hit nothing (sky outdoors, void indoors); ``sky=False`` leaves them black (closed rooms).
    """

    def __init__(
        self,
        width: int,
        height: int,
        static_mesh: np.ndarray,
        actor_meshes: dict[str, np.ndarray] | None = None,
        background_class: int = 0,
        ctx=None,
        sky: bool = True,
    ) -> None:
        import moderngl

        self.width, self.height = int(width), int(height)
        self._own_ctx = ctx is None  # release() closes a context made here, not one passed in
        self.ctx = ctx or create_context()
        ctx = self.ctx
        self.prog = ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
        self.bg_prog = ctx.program(vertex_shader=_BG_VERTEX, fragment_shader=_BG_FRAGMENT)
        tex = texture_stack()
        self.texture = ctx.texture_array((TEXTURE_SIZE, TEXTURE_SIZE, len(tex)), 3, tex.tobytes())
        self.texture.build_mipmaps()
        self.texture.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
        self.texture.repeat_x = self.texture.repeat_y = True
        self.prog["u_tex"].value = 0
        self._vaos: dict[str, tuple] = {}
        self._add_mesh("__static__", static_mesh)
        for name, mesh in (actor_meshes or {}).items():
            self._add_mesh(name, mesh)
        bg = np.array([-1, -1, 3, -1, -1, 3], dtype="f4")
        self._bg_vbo = ctx.buffer(bg.tobytes())
        self._bg_vao = ctx.vertex_array(self.bg_prog, [(self._bg_vbo, "2f", "in_xy")])
        self.background_class = int(background_class)
        # Without sky (closed rooms) the background pass is skipped: clearing all targets to 0 gives
        # black, depth 0 (= no hit) and class 0 (void) directly, one full-screen pass less.
        self.sky = bool(sky) or self.background_class != 0
        size = (self.width, self.height)
        self._color = ctx.renderbuffer(size, 4, dtype="f1")
        self._depth = ctx.renderbuffer(size, 1, dtype="f4")
        self._class = ctx.renderbuffer(size, 1, dtype="u1")
        self._zbuf = ctx.depth_renderbuffer(size)
        self.fbo = ctx.framebuffer([self._color, self._depth, self._class], self._zbuf)

    def _add_mesh(self, name: str, mesh: np.ndarray) -> None:
        mesh = np.ascontiguousarray(mesh, dtype="f4")
        if mesh.ndim != 2 or mesh.shape[1] != VERTEX_FLOATS or len(mesh) % 3:
            raise ValueError(f"mesh {name}: expected (3k, {VERTEX_FLOATS}) float32 triangles, got {mesh.shape}")
        if len(mesh) == 0:
            return
        vbo = self.ctx.buffer(mesh.tobytes())
        vao = self.ctx.vertex_array(
            self.prog,
            [(vbo, "3f 3f 2f 1f 3f 1f", "in_pos", "in_normal", "in_uv", "in_layer", "in_tint", "in_class")],
        )
        self._vaos[name] = (vbo, vao)

    def draw(
        self,
        T_world_cam: np.ndarray,
        camera: PinholeCamera,
        cond: ConditionSpec,
        actors: list[tuple[str, np.ndarray]] = (),
        near: float = 0.05,
        far: float = 300.0,
    ) -> None:
        """Render one frame into the framebuffer (no readback). ``actors``: (mesh name, T_world_actor)."""
        import moderngl

        if (camera.width, camera.height) != (self.width, self.height):
            raise ValueError(
                f"camera is {camera.width}x{camera.height} but the renderer was made for {self.width}x{self.height}"
            )
        ctx = self.ctx
        self.fbo.use()
        ctx.viewport = (0, 0, self.width, self.height)
        ctx.disable(moderngl.CULL_FACE)
        T_cam_world = invert_T(np.asarray(T_world_cam, dtype=np.float64))
        # geometry first (depth test), then the sky only where nothing was drawn (see below)
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.depth_func = "<"
        self.fbo.depth_mask = True
        self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        p = self.prog
        p["u_proj"].write(projection_from_intrinsics(camera, near, far).T.astype("f4").tobytes())
        p["u_cam_pos"].value = tuple(float(x) for x in T_world_cam[:3, 3])
        p["u_ambient"].value = tuple(float(cond.ambient) * np.asarray(cond.ambient_color))
        p["u_sun_dir"].value = tuple(sun_direction(cond))
        p["u_sun"].value = tuple(float(cond.sun_intensity) * np.asarray(cond.sun_color))
        p["u_headlamp"].value = float(cond.headlamp)
        p["u_headlamp_range"].value = float(cond.headlamp_range)
        p["u_exposure"].value = float(cond.exposure)
        self.texture.use(0)
        draws = [("__static__", np.eye(4)), *actors]
        for name, T_world_obj in draws:
            if name not in self._vaos:
                if name == "__static__":
                    continue
                raise KeyError(f"no actor mesh named {name!r}")
            T_world_obj = np.asarray(T_world_obj, dtype=np.float64)
            # composed in float64 so the GPU sees one float32 matrix (keeps depth/pose error ~1e-7)
            p["u_cam_from_obj"].write((T_cam_world @ T_world_obj).T.astype("f4").tobytes())
            p["u_world_from_obj"].write(T_world_obj.T.astype("f4").tobytes())
            self._vaos[name][1].render(moderngl.TRIANGLES)
        if self.sky:
            # The sky triangle lies at window depth 1 (the far plane); with "<=" against the
            # cleared depth 1 it only shades pixels no geometry covered (early depth rejection
            # skips the rest), and it does not write depth.
            Kinv = np.linalg.inv(camera.K)
            self.bg_prog["u_world_from_pixel"].write((T_world_cam[:3, :3] @ Kinv).T.astype("f4").tobytes())
            self.bg_prog["u_zenith"].value = tuple(cond.sky_zenith)
            self.bg_prog["u_horizon"].value = tuple(cond.sky_horizon)
            self.bg_prog["u_class"].value = self.background_class
            self.bg_prog["u_exposure"].value = float(cond.exposure)
            ctx.depth_func = "<="
            self.fbo.depth_mask = False
            self._bg_vao.render(moderngl.TRIANGLES)
            self.fbo.depth_mask = True
            ctx.depth_func = "<"

    def read(self) -> RenderOutput:
        """Read back the three targets of the last draw (row 0 = top image row, OpenCV v = 0)."""
        h, w = self.height, self.width
        rgb = np.frombuffer(self.fbo.read(components=3, attachment=0), np.uint8).reshape(h, w, 3)
        depth = np.frombuffer(self.fbo.read(components=1, attachment=1, dtype="f4"), np.float32).reshape(h, w)
        cls = np.frombuffer(self.fbo.read(components=1, attachment=2, dtype="u1"), np.uint8).reshape(h, w)
        return RenderOutput(rgb.copy(), depth.copy(), cls.copy())

    def read_rgb(self) -> np.ndarray:
        h, w = self.height, self.width
        return np.frombuffer(self.fbo.read(components=3, attachment=0), np.uint8).reshape(h, w, 3).copy()

    def render(self, T_world_cam: np.ndarray, camera: PinholeCamera, cond: ConditionSpec, **kw) -> RenderOutput:
        """draw() then read()."""
        self.draw(T_world_cam, camera, cond, **kw)
        return self.read()

    def finish(self) -> None:
        """Wait for the GPU (benchmarks: so a render-only timing includes the work)."""
        self.ctx.finish()

    def release(self) -> None:
        for vbo, vao in self._vaos.values():
            vao.release()
            vbo.release()
        self._vaos.clear()
        for obj in (self._bg_vao, self._bg_vbo, self.fbo, self._color, self._depth, self._class, self._zbuf):
            obj.release()
        self.texture.release()
        self.prog.release()
        self.bg_prog.release()
        if self._own_ctx:
            self.ctx.release()
