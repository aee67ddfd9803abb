"""Image retrieval for the relpose localizer: a faiss inner-product index over L2-normalised global
descriptors, and paper 003's reference selection (top-N with the spacing rule [a, b]).

Spacing rule (paper 003 sec. 2.1, after Zhou et al. 2020): "starting with the top retrieved image,
we iteratively select the next image that has a distance within [a, b] metres to all previously
selected images" (a = 3, b = 50 outdoors). The distance is between camera centres. Here a and b
are config keys (``retrieval.spacing_m``), to be scaled to the scene (indoor e.g. [0.3, 5]).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import ConfigSection

log = logging.getLogger(__name__)


@dataclass
class RetrievalConfig(ConfigSection):
    """``retrieval:`` keys of a relpose config."""

    section = "retrieval"

    num_references: int = 5  # N, references passed to the relative-pose estimator (paper: 5)
    num_candidates: int = 50  # ranked list searched by the spacing rule
    spacing_m: tuple[float, float] = (3.0, 50.0)  # [a, b] pairwise distance of selected centres (paper)
    fill: bool = True  # when fewer than N satisfy the rule, fill up with the best remaining candidates
    prior_radius_m: float | None = None  # with a prior pose: only keyframes within this radius (None = off)

    def validate(self) -> None:
        a, b = (float(x) for x in self.spacing_m)
        if not (0 <= a <= b):
            raise ValueError(f"retrieval.spacing_m must be [a, b] with 0 <= a <= b metres, got {self.spacing_m}")
        self.spacing_m = (a, b)
        if self.num_references < 1:
            raise ValueError("retrieval.num_references must be >= 1")


def select_references(
    ranked: np.ndarray, centers_N3: np.ndarray, n: int, spacing_m: tuple[float, float], fill: bool = True
) -> list[int]:
    """Paper 003's reference selection over a ranked candidate list (best first).

    Returns up to ``n`` keyframe indices: the top one, then each next candidate whose centre is at
    distance in [a, b] from ALL already selected ones. With ``fill``, if fewer than n qualify, the
    best remaining candidates are appended (in rank order) so the estimator still gets n references.
    """
    ranked = [int(i) for i in ranked]
    if not ranked or n <= 0:
        return []
    a, b = spacing_m
    c = np.asarray(centers_N3, dtype=np.float64)
    chosen = [ranked[0]]
    for i in ranked[1:]:
        if len(chosen) >= n:
            break
        d = np.linalg.norm(c[chosen] - c[i], axis=1)
        if np.all((d >= a) & (d <= b)):
            chosen.append(i)
    if fill and len(chosen) < n:
        for i in ranked:
            if len(chosen) >= n:
                break
            if i not in chosen:
                chosen.append(i)
    return chosen


class DescriptorIndex:
    """faiss IndexFlatIP over L2-normalised descriptors (inner product = cosine similarity)."""

    def __init__(self, descriptors_ND: np.ndarray) -> None:
        import faiss

        x = np.ascontiguousarray(descriptors_ND, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"need a non-empty (N, D) descriptor matrix, got {x.shape}")
        self.index = faiss.IndexFlatIP(x.shape[1])
        self.index.add(x)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, query_D: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (indices, similarities), best first; ``allowed`` (N,) bool restricts the result."""
        q = np.ascontiguousarray(np.asarray(query_D, np.float32).reshape(1, -1))
        if allowed is None:
            sims, idx = self.index.search(q, min(k, self.size))
            keep = idx[0] >= 0
            return idx[0][keep], sims[0][keep]
        sims, idx = self.index.search(q, self.size)  # maps here are small: filter the full ranking
        idx, sims = idx[0], sims[0]
        keep = (idx >= 0) & allowed[np.clip(idx, 0, None)]
        return idx[keep][:k], sims[keep][:k]

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path) -> DescriptorIndex:
        import faiss

        obj = cls.__new__(cls)
        obj.index = faiss.read_index(str(path))
        return obj
