"""A TF frame graph read from a bag's /tf and /tf_static, queried at timestamps.

Convention: an edge ``parent -> child`` stores ``T_parent_child`` (maps child-frame points into the
parent frame), as a ROS ``geometry_msgs/TransformStamped`` with ``header.frame_id = parent`` and
``child_frame_id = child`` does. Static edges hold one transform; dynamic edges a time series
(int nanoseconds) interpolated with :func:`visloc_core.geometry.interpolate_poses` (linear in
translation, SLERP in rotation, no extrapolation). As in tf2, frames form a tree (each frame has one
parent) and a lookup composes the edges on the path through the lowest common ancestor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...geometry import interpolate_poses, invert_T
from ..messages import PoseSample, T_from_samples


class TFLookupError(ValueError):
    """Frames not connected, or a dynamic edge has no sample near the requested time."""


@dataclass
class _Edge:
    parent: str
    child: str
    static: bool
    T_static: np.ndarray | None = None
    stamps: list[int] = field(default_factory=list)
    poses: list = field(default_factory=list)  # 4x4 arrays or PoseSample (converted in one call)
    _stamps: np.ndarray | None = None
    _T_all: np.ndarray | None = None

    def finalize(self) -> None:
        """Sort samples by stamp; at duplicate stamps the last message wins (as tf2's buffer does)."""
        if self.static or self._stamps is not None:
            return
        order = np.argsort(np.asarray(self.stamps, dtype=np.int64), kind="stable")
        s = np.asarray(self.stamps, dtype=np.int64)[order]
        if all(isinstance(p, PoseSample) for p in self.poses):
            T_all = T_from_samples(self.poses)
        else:
            T_all = np.array([p.T_parent_child if isinstance(p, PoseSample) else p for p in self.poses])
        T = np.asarray(T_all, dtype=np.float64).reshape(-1, 4, 4)[order]
        keep = np.ones(s.size, dtype=bool)
        keep[:-1] = s[1:] != s[:-1]  # the last of each run of equal stamps
        self._stamps, self._T_all = s[keep], T[keep]

    def at(self, stamps_ns: np.ndarray, max_gap_ns: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(T_parent_child (M, 4, 4), valid (M,)) at the stamps."""
        q = np.asarray(stamps_ns, dtype=np.int64)
        if self.static:
            return np.broadcast_to(self.T_static, (q.size, 4, 4)).copy(), np.ones(q.size, dtype=bool)
        self.finalize()
        return interpolate_poses(self._stamps, self._T_all, q, max_gap_ns)


class FrameGraph:
    """TF tree built from TransformStamped samples; ``lookup(a, b, stamps)`` gives ``T_a_b``."""

    def __init__(self) -> None:
        self._edges: dict[str, _Edge] = {}  # child -> edge from its parent

    @staticmethod
    def _norm(frame: str) -> str:
        # tf2 ignores a leading slash (ROS 1 style names)
        return frame.lstrip("/")

    def add(
        self, parent: str, child: str, T_parent_child: np.ndarray | PoseSample, stamp_ns: int, static: bool
    ) -> None:
        """Add one transform (a 4x4 array, or a PoseSample whose matrix is built later together with
        the other samples of its edge). A child re-parented to another frame is an error (TF is a tree)."""
        parent, child = self._norm(parent), self._norm(child)
        if not parent or not child or parent == child:
            raise ValueError(f"invalid transform {parent!r} -> {child!r} (empty or self-referencing frame id)")
        e = self._edges.get(child)
        if e is not None and e.parent != parent:
            raise ValueError(f"frame {child!r} has two parents ({e.parent!r} and {parent!r}); TF must be a tree")
        T = T_parent_child
        if e is None or e.static != static:
            # A static transform replaces dynamic samples of the same edge and vice versa (last source wins).
            e = _Edge(parent, child, static)
            self._edges[child] = e
        if static:
            # /tf_static is latched and may be re-sent; the last one counts
            e.T_static = T.T_parent_child if isinstance(T, PoseSample) else np.asarray(T, dtype=np.float64)
        else:
            e.stamps.append(int(stamp_ns))
            e.poses.append(T)
            e._stamps = None

    @property
    def frames(self) -> set[str]:
        out = set(self._edges)
        out.update(e.parent for e in self._edges.values())
        return out

    @property
    def n_dynamic_samples(self) -> int:
        """Number of time-stamped transforms over all dynamic edges."""
        return sum(len(e.stamps) for e in self._edges.values() if not e.static)

    def describe(self) -> str:
        """One line per edge: 'parent -> child (static | N samples)'."""
        lines = []
        for e in sorted(self._edges.values(), key=lambda e: (e.parent, e.child)):
            kind = "static" if e.static else f"{len(e.stamps)} samples"
            lines.append(f"{e.parent} -> {e.child} ({kind})")
        return "\n".join(lines)

    def _ancestors(self, frame: str) -> list[str]:
        chain = [frame]
        seen = {frame}
        while chain[-1] in self._edges:
            p = self._edges[chain[-1]].parent
            if p in seen:
                raise ValueError(f"TF has a cycle through {p!r}")
            chain.append(p)
            seen.add(p)
        return chain

    def path(self, a: str, b: str) -> tuple[list[_Edge], list[_Edge]]:
        """Edges from a up to the common ancestor, and from b up to it.

        T_a_b = inv(T_anc_a) @ T_anc_b with T_anc_x the product of x's upward edges."""
        a, b = self._norm(a), self._norm(b)
        known = self.frames
        for f in (a, b):
            if f not in known:
                raise TFLookupError(
                    f"frame {f!r} is not in the TF tree; frames: {', '.join(sorted(known)) or '(none)'}"
                )
        up_a, up_b = self._ancestors(a), self._ancestors(b)
        common = next((f for f in up_a if f in set(up_b)), None)
        if common is None:
            raise TFLookupError(f"frames {a!r} and {b!r} are not connected in the TF tree:\n{self.describe()}")
        edges_a = [self._edges[f] for f in up_a[: up_a.index(common)]]
        edges_b = [self._edges[f] for f in up_b[: up_b.index(common)]]
        return edges_a, edges_b

    def is_static_path(self, a: str, b: str) -> bool:
        ea, eb = self.path(a, b)
        return all(e.static for e in ea + eb)

    def connected(self, a: str, b: str) -> bool:
        try:
            self.path(a, b)
        except TFLookupError:
            return False
        return True

    def lookup(
        self, a: str, b: str, stamps_ns: np.ndarray, max_gap_ns: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """T_a_b (M, 4, 4) at each stamp and a validity mask (M,) (False where any dynamic edge on
        the path has no samples around the stamp within ``max_gap_ns``; those poses are NaN)."""
        q = np.atleast_1d(np.asarray(stamps_ns, dtype=np.int64))
        edges_a, edges_b = self.path(a, b)
        valid = np.ones(q.size, dtype=bool)

        def up(edges: list[_Edge]) -> np.ndarray:
            # T_anc_x = T_anc_p1 @ T_p1_p2 @ ... @ T_pn_x, edges listed from x upward
            nonlocal valid
            T = np.broadcast_to(np.eye(4), (q.size, 4, 4)).copy()
            for e in edges:
                Te, v = e.at(q, max_gap_ns)
                valid &= v
                T = Te @ T
            return T

        T_anc_a = up(edges_a)
        T_anc_b = up(edges_b)
        T_a_b = invert_T(np.nan_to_num(T_anc_a)) @ T_anc_b
        T_a_b[~valid] = np.nan
        return T_a_b, valid
