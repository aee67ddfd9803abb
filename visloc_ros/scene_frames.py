"""The map frame each scene's poses are published in (node parameters ``map_frame``, ``scene_frames``).

One artifact may serve several scenes (a multi-scene APR model, a relocalization map built from
several scenes); each scene has its own world frame, so a pose must carry the frame of the scene the
localizer picked (``LocalizationResult.scene``):

- ``map_frame`` may contain ``{scene}``, replaced by the scene name: ``map_{scene}`` publishes
  indoor_room poses in ``map_indoor_room`` and plaza poses in ``map_plaza``;
- ``scene_frames`` maps scenes to frames explicitly, ``"indoor_room=map, plaza=plaza_map"``
  (comma-separated ``scene=frame`` pairs); scenes it does not name follow ``map_frame``.

Without either, every scene is published in ``map_frame`` (right when the scenes were mapped in one
world frame, e.g. the floors of one surveyed building). A result that names no scene the artifact
knows gets the first scene's frame (its pose, if any, is not LOCALIZED).
"""

from __future__ import annotations

import re

_FRAME_RE = re.compile(r"^/?[A-Za-z_][A-Za-z0-9_/]*$")  # a tf2 frame id (no spaces, no braces)


def _check_frame(frame: str, what: str) -> str:
    if not _FRAME_RE.match(frame):
        raise ValueError(
            f"{what} {frame!r} is not a valid frame id (letters, digits, '_' and '/', not starting with a digit)"
        )
    return frame


def parse_scene_frames(text: str) -> dict[str, str]:
    """``"a=map_a, b=map_b"`` -> ``{"a": "map_a", "b": "map_b"}``; empty text -> {}."""
    out: dict[str, str] = {}
    for item in (x.strip() for x in str(text).split(",")):
        if not item:
            continue
        scene, sep, frame = (x.strip() for x in item.partition("="))
        if not sep or not scene or not frame:
            raise ValueError(f"scene_frames entry {item!r}: write scene=frame pairs separated by commas")
        if scene in out:
            raise ValueError(f"scene_frames names scene {scene!r} twice")
        out[scene] = _check_frame(frame, f"scene_frames frame of {scene!r}")
    return out


class SceneFrames:
    """Resolve the output frame of a scene; validated against the artifact's scenes at construction."""

    def __init__(self, map_frame: str, scene_frames: str, scenes: list[str]) -> None:
        if not scenes:
            raise ValueError("the artifact names no scene")
        self.scenes = list(scenes)
        explicit = parse_scene_frames(scene_frames)
        unknown = sorted(set(explicit) - set(self.scenes))
        if unknown:
            raise ValueError(f"scene_frames names {unknown}, not scenes of the artifact; its scenes: {self.scenes}")
        rest = map_frame.replace("{scene}", "")
        if "{" in rest or "}" in rest:
            raise ValueError(f"map_frame {map_frame!r}: the only placeholder is {{scene}}")
        self._frames = {}
        for s in self.scenes:
            frame = explicit.get(s, map_frame.replace("{scene}", s))
            self._frames[s] = _check_frame(frame, f"frame of scene {s!r} (map_frame {map_frame!r})")

    def frame_for(self, scene: str) -> str:
        """The frame of ``scene``; the first scene's for a scene the artifact does not know."""
        return self._frames.get(scene, self._frames[self.scenes[0]])

    @property
    def frames(self) -> set[str]:
        """Every output frame (e.g. the frames an initialpose may be given in)."""
        return set(self._frames.values())

    def shared_frame_warning(self) -> str | None:
        """A warning when several scenes end up in one frame (fine only if they share one world frame)."""
        if len(self.scenes) > 1 and len(self.frames) == 1:
            frame = next(iter(self.frames))
            return (
                f"the artifact serves {len(self.scenes)} scenes {self.scenes} and all are published in {frame!r}: "
                "right only if they were mapped in one world frame; otherwise set map_frame:=map_{scene} "
                "or scene_frames:='scene=frame,...'"
            )
        return None
