"""Image retrieval for the relpose localizer: a faiss inner-product index over L2-normalised global
descriptors, and paper 003's reference selection (top-N with the spacing rule [a, b]).

Spacing rule (paper 003 sec. 2.1, after Zhou et al. 2020): "starting with the top retrieved image,
we iteratively select the next image that has a distance within [a, b] metres to all previously
selected images" (a = 3, b = 50 outdoors). The distance is between camera centres. Here a and b
are config keys (``retrieval.spacing_m``), to be scaled to the scene (default [0.3, 5] for rooms).
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
    # [a, b] pairwise distance of selected centres (m): the rooms every shipped config maps; the paper's
    # outdoor scenes use [3, 50]. The one default of this key (DEFAULT_CONFIG leaves retrieval to this class).
    spacing_m: tuple[float, float] = (0.3, 5.0)
    fill: bool = True  # when fewer than N satisfy the rule, fill up with the best remaining candidates
    prior_radius_m: float | None = None  # with a prior pose: only keyframes within this radius (None = off)
    # Index over the keyframe descriptors (INDEX_KINDS): "auto" = exact "flat" up to index_flat_max
    # keyframes, above it the compressed index chosen by `visloc bench map` (docs/relpose.md, "Large maps").
    index: str = "auto"
    index_flat_max: int = 20000
    hnsw_ef_search: int = 64  # hnsw: candidates explored per query (recall vs time)
    ivf_nprobe: int = 16  # ivf: inverted lists visited per query
    rerank: int = 4  # approximate indexes: k * rerank candidates re-scored exactly from descriptors.npy

    def validate(self) -> None:
        a, b = (float(x) for x in self.spacing_m)
        if not (0 <= a <= b):
            raise ValueError(f"retrieval.spacing_m must be [a, b] with 0 <= a <= b metres, got {self.spacing_m}")
        self.spacing_m = (a, b)
        if self.num_references < 1:
            raise ValueError("retrieval.num_references must be >= 1")
        if self.index not in ("auto", *INDEX_KINDS):
            raise ValueError(f"retrieval.index must be auto or one of {', '.join(INDEX_KINDS)}, got {self.index!r}")
        if self.index_flat_max < 0 or self.hnsw_ef_search < 1 or self.ivf_nprobe < 1 or self.rerank < 1:
            raise ValueError("retrieval.index_flat_max must be >= 0; hnsw_ef_search, ivf_nprobe, rerank >= 1")

    def index_kind(self, n_keyframes: int) -> str:
        """The index a map of ``n_keyframes`` gets: ``index``, or for auto flat up to index_flat_max."""
        if self.index != "auto":
            return self.index
        return "flat" if n_keyframes <= self.index_flat_max else AUTO_LARGE_INDEX


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


# kind -> faiss index_factory string (inner product on L2-normalised vectors = cosine similarity).
# The approximate kinds re-score their candidates exactly on the full vectors (``rerank``):
# hnsw = HNSW graph (32 links), ivf = inverted lists (~4 sqrt(N) lists, ``ivf_nprobe`` visited).
INDEX_KINDS = ("flat", "hnsw", "ivf")
AUTO_LARGE_INDEX = "hnsw"  # chosen by `visloc bench map` (docs/relpose.md, "Large maps")


def _factory_string(kind: str, n: int, dim: int) -> str:
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return "HNSW32,Flat"
    if kind == "ivf":
        nlist = int(max(16, min(4 * np.sqrt(n), n // 39)))  # faiss wants >= 39 training points per list
        return f"IVF{nlist},Flat"
    raise ValueError(f"unknown retrieval index {kind!r}; known: {', '.join(INDEX_KINDS)}")


def _base_index(index):
    """The index behind a PCA pre-transform (or the index itself), downcast to its class."""
    import faiss

    index = faiss.downcast_index(index)
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index


class DescriptorIndex:
    """faiss index over L2-normalised descriptors (inner product = cosine similarity).

    ``kind``: ``flat`` (exact, IndexFlatIP), ``hnsw`` (graph) or ``ivf`` (inverted lists), see INDEX_KINDS. The approximate kinds re-score their
    ``k * rerank`` best candidates exactly against ``vectors_ND`` (the map's descriptors.npy,
    memory-mapped), so the order they return is the exact one over those candidates."""

    def __init__(self, descriptors_ND: np.ndarray, kind: str = "flat", seed: int = 0) -> None:
        import faiss

        x = np.ascontiguousarray(descriptors_ND, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"need a non-empty (N, D) descriptor matrix, got {x.shape}")
        if kind != "flat" and len(x) < 39 * 16:
            kind = "flat"  # too few vectors to train the quantisers: a map this small is searched exactly
        self.kind = kind
        self.index = faiss.index_factory(
            x.shape[1], _factory_string(kind, len(x), x.shape[1]), faiss.METRIC_INNER_PRODUCT
        )
        if not self.index.is_trained:
            # faiss k-means has a fixed default seed; the training sample is drawn with ours
            sample = x[np.sort(np.random.default_rng(seed).permutation(len(x))[:50000])]
            self.index.train(sample)
        self.index.add(x)
        self.vectors_ND: np.ndarray | None = x
        self.configure()

    def configure(self, ef_search: int = 64, nprobe: int = 16, rerank: int = 4) -> DescriptorIndex:
        """Search parameters of the approximate kinds (RetrievalConfig keys); returns self."""
        import faiss

        self.rerank = int(rerank)
        if self.kind == "hnsw":
            _base_index(self.index).hnsw.efSearch = int(ef_search)
        elif self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = int(nprobe)
        return self

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def search(self, query_D: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (indices, similarities), best first; ``allowed`` (N,) bool restricts the result."""
        q = np.ascontiguousarray(np.asarray(query_D, np.float32).reshape(1, -1))
        k = min(int(k), self.size)
        if self.kind == "flat":
            if allowed is None:
                sims, idx = self.index.search(q, k)
                keep = idx[0] >= 0
                return idx[0][keep], sims[0][keep]
            sims, idx = self.index.search(q, self.size)  # exact: filter the full ranking
            idx, sims = idx[0], sims[0]
            keep = (idx >= 0) & allowed[np.clip(idx, 0, None)]
            return idx[keep][:k], sims[keep][:k]
        if allowed is not None and self.vectors_ND is not None:
            # a prior pose leaves a neighbourhood of the map: score it exactly
            cand = np.flatnonzero(allowed)
        else:
            if allowed is not None:
                log.warning(
                    "no descriptors to filter %s results by the prior exactly: searching the whole map", self.kind
                )
            sims, idx = self.index.search(q, min(self.size, k * self.rerank))
            cand = idx[0][idx[0] >= 0]
            if self.vectors_ND is None:
                return cand[:k], sims[0][: len(cand)][:k]
        cand = np.sort(cand)  # ascending rows: sequential reads of a memory-mapped matrix
        s = np.asarray(self.vectors_ND[cand], np.float32) @ q[0]
        order = np.argsort(-s, kind="stable")[:k]
        return cand[order], s[order]

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, vectors_ND: np.ndarray | None = None) -> DescriptorIndex:
        """Read ``path`` (index.faiss); ``vectors_ND`` (e.g. memory-mapped descriptors.npy) for the
        exact re-scoring of the approximate kinds."""
        import faiss

        obj = cls.__new__(cls)
        obj.index = faiss.read_index(str(path))
        kind = type(_base_index(obj.index)).__name__
        obj.kind = "hnsw" if "HNSW" in kind else "ivf" if "IVF" in kind else "flat"
        obj.vectors_ND = vectors_ND
        obj.configure()
        return obj
