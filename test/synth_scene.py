"""A tiny synthetic scene for tests (64x48, a bare 6 x 5 m room, two actors, 5 frames):
``parse_scene(tiny())`` gives a SceneSpec; ``tiny(key=value)`` replaces top-level keys."""

from __future__ import annotations

import copy

ROOM = [6.0, 5.0, 2.8]  # x, y, height of the test room (centred, floor at z = 0)

TINY = {
    "name": "tiny",
    "description": "a test room",
    "kind": "indoor",
    "seed": 3,
    "camera": {"width": 64, "height": 48, "hfov_deg": 70, "rate_hz": 10},
    "mount": {"xyz": [0.1, 0.02, 0.3], "rpy_deg": [1.0, 6.0, -2.0]},
    "room": {
        "size": ROOM,
        "floor": {"texture": "gravel"},
        "ceiling": {"texture": "plain"},
        "walls": ["brick", {"texture": "astronaut", "fit": True}, "coins", "moon"],
    },
    "actors": [
        {"name": "p1", "kind": "person", "path": [[1.2, -1.5], [1.2, 1.5]], "speed": 1.0},
        {"name": "v1", "kind": "vehicle", "path": [[2.0, -2.0], [2.0, 2.0]], "speed": 2.0},
    ],
    "sequences": [
        {
            "name": "map",
            "split": "train",
            "condition": "day",
            "n_frames": 3,
            "trajectory": {"radii": [0.6, 0.4], "height": 1.0, "look": "outward", "yaw_wobble_deg": 20},
        },
        {
            "name": "query_night",
            "split": "test",
            "condition": "night",
            "n_frames": 2,
            "trajectory": {"radii": [0.3, 0.2], "height": 1.2, "look": "forward", "laps": 0.5},
        },
    ],
}


def tiny(**changes) -> dict:
    d = copy.deepcopy(TINY)
    d.update(changes)
    return d
