"""``visloc bench map``: how a relpose map's retrieval, queries, build, memory and disk grow with the
number of keyframes, and which faiss index keeps retrieval cheap (retrieval.py ``retrieval.index``).

Maps beyond what we can render are synthetic, written in the real map format 3 (mapping.py,
store.py) so the real reader, index and lazy keyframe store are measured:

- global descriptors (``--dim``, default 4096 = xfeat_vlad): a camera path through a low-dimensional
  latent "place" space (``--latent`` dims, smooth random walk) mapped to ``dim`` by a fixed random
  matrix, plus isotropic noise, L2-normalised. Queries are points of the same path between
  keyframes, with their own noise. Recall is measured against the exact (flat) search of the SAME
  vectors, so it does not depend on the descriptors being realistic; how hard the search is does
  (clustered low-dimensional data is what real place descriptors look like).
- local features: ``--keypoints`` per keyframe (512 = relpose_xfeat.yaml) as XFeat caches
  (keypoints float32, 64-d descriptors float16, scores float16); 3D points: 40 % of the keypoints
  linked to points shared by ~3 keyframes (points.npz, as a triangulated map).

Per map size (each in a fresh process, so RSS is that of one map):

- ``build``: seconds (wall and CPU) to write the map files, train + fill each index kind, and to
  hash the map (the sha256 table checked at every load, visloc_core/integrity.py);
- ``disk``: bytes per keyframe of each file;
- ``retrieval``: per index kind, latency of one top-``--k`` search (faiss on 1 thread, wall and CPU
  ms, median and p95) and recall@1/10/k of its ranking against the exact flat index;
- ``query``: end-to-end map-side cost of a query: retrieval (the chosen index), paper 003's
  reference selection, and for the 5 references reading their features and 3D points from the lazy
  store and matching them (MNN) against query features. Query feature extraction and PnP / filtering
  do not depend on the map size and are measured by ``visloc bench relpose``;
- ``memory``: RSS (anonymous and file-backed) after loading the map lazily, and after every
  ``--queries`` / 10 queries (does it stay flat?), plus RSS of an eager load (``--eager-max``).

Measures, never asserts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

HELP = (
    "relpose map scaling: retrieval latency + recall per faiss index, query cost, build, RSS, disk (1e3..1e5 keyframes)"
)
KINDS = ("flat", "hnsw", "ivf")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keyframes", default="1000,10000,100000", help="map sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=4096, help="global descriptor size (4096 = xfeat_vlad)")
    parser.add_argument("--latent", type=int, default=32, help="latent place dimensions of the synthetic path")
    parser.add_argument("--keypoints", type=int, default=512, help="local features per keyframe")
    parser.add_argument("--queries", type=int, default=2000, help="end-to-end queries per map (RSS sampled 10x)")
    parser.add_argument("--search-queries", type=int, default=300, help="queries timed per index kind")
    parser.add_argument("--k", type=int, default=50, help="retrieved candidates (retrieval.num_candidates)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="index kinds to compare")
    parser.add_argument("--eager-max", type=int, default=10000, help="also measure an eager load up to this size")
    parser.add_argument(
        "--localizer-queries",
        type=int,
        default=200,
        help="images localized by the real RelposeLocalizer on the synthetic map (0 = skip)",
    )
    parser.add_argument("--work", default=None, help="folder for the synthetic maps (default OUT/maps; deleted)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic maps")


# ------------------------------------------------------------------------------------ synthetic map
def _latent_path(n: int, latent: int, rng: np.random.Generator) -> np.ndarray:
    """(n, latent) smooth random walk: consecutive keyframes see similar places."""
    steps = rng.normal(size=(n, latent)) * 0.15
    z = np.cumsum(steps, axis=0)
    z -= z.mean(0)
    return z


def synth_descriptors(z: np.ndarray, W: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    x = np.tanh(z) @ W + noise * rng.normal(size=(len(z), W.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_synthetic_map(out: Path, n: int, dim: int, latent: int, n_kp: int, seed: int = 0) -> dict:
    """A format-3 relpose map of ``n`` synthetic keyframes at ``out`` (no index yet); returns what the
    queries need (latent path, projection)."""
    from ...geometry import PinholeCamera
    from ...localizers.relpose.mapping import FORMAT_VERSION
    from ...localizers.relpose.store import OFFSETS

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    z = _latent_path(n, latent, rng)
    W = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    desc = np.lib.format.open_memmap(out / "descriptors.npy", "w+", np.float32, (n, dim))
    for a in range(0, n, 4096):
        desc[a : a + 4096] = synth_descriptors(z[a : a + 4096], W, 0.3, rng)
    desc.flush()
    feats = out / "features"
    feats.mkdir()
    total = n * n_kp
    shapes = {"xfeat_keypoints": ((total, 2), np.float32), "xfeat_descriptors": ((total, 64), np.float16),
              "xfeat_scores": ((total,), np.float16)}  # fmt: skip
    for key, (shape, dtype) in shapes.items():
        arr = np.lib.format.open_memmap(feats / f"{key}.npy", "w+", dtype, shape)
        for a in range(0, total, 1 << 20):
            b = min(total, a + (1 << 20))
            if key == "xfeat_keypoints":
                arr[a:b] = rng.uniform(0, 320, size=(b - a, 2))
            elif key == "xfeat_descriptors":
                d = rng.normal(size=(b - a, 64)).astype(np.float32)
                arr[a:b] = d / np.linalg.norm(d, axis=1, keepdims=True)
            else:
                arr[a:b] = rng.uniform(0, 1, size=b - a)
        arr.flush()
        del arr
    np.save(feats / "xfeat_image_size.npy", np.tile(np.int32([320, 240]), n))
    kp_off = np.arange(n + 1, dtype=np.int64) * n_kp
    np.savez(feats / OFFSETS, xfeat_keypoints=kp_off, xfeat_descriptors=kp_off, xfeat_scores=kp_off,
             xfeat_image_size=np.arange(n + 1, dtype=np.int64) * 2, __scalar__=np.array([], dtype=str))  # fmt: skip
    # 3D points: 40 % of each keyframe's keypoints, each point seen by ~3 consecutive keyframes
    per_kf = int(0.4 * n_kp)
    n_pts = max(1, n * per_kf // 3)
    ids = np.full((n, n_kp), -1, np.int32)
    for k in range(n):
        base = (k * per_kf) // 3
        ids[k, :per_kf] = (base + np.arange(per_kf)) % n_pts
    np.savez(out / "points.npz", source=np.array("triangulated"),
             xyz=rng.uniform(-50, 50, size=(n_pts, 3)).astype(np.float32),
             track_length=np.full(n_pts, 3, np.int32), error_px=np.full(n_pts, 0.5, np.float32),
             angle_deg=np.full(n_pts, 5.0, np.float32), kf_point_ids=ids.ravel(),
             kf_offsets=kp_off)  # fmt: skip
    cam = PinholeCamera(320, 240, 250.0, 250.0, 160.0, 120.0).to_dict()
    centers = np.cumsum(rng.normal(size=(n, 3)) * [0.3, 0.3, 0.0], axis=0)
    recs = []
    for k in range(n):
        T = np.eye(4)
        T[:3, 3] = centers[k]
        recs.append({"key": f"synth/{k:06d}", "scene": "synth", "T_world_cam": T.ravel().tolist(), "camera": cam,
                     "stamp_ns": k, "image": f"images/{k:06d}.png", "depth": "", "semantic": ""})  # fmt: skip
    (out / "keyframes.json").write_text(json.dumps(recs))
    meta = {"kind": "relpose", "format_version": FORMAT_VERSION, "estimator": "xfeat", "n_keyframes": n}
    (out / "artifact.json").write_text(json.dumps(meta))
    return {"z": z, "W": W}


# ------------------------------------------------------------------------------------- measuring
def _rss_mb() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        for key in ("VmRSS", "RssAnon", "RssFile"):
            if line.startswith(key + ":"):
                out[key] = int(line.split()[1]) / 1024.0
    return {"rss_mb": out.get("VmRSS"), "rss_anon_mb": out.get("RssAnon"), "rss_file_mb": out.get("RssFile")}


class _Clock:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w
        self.cpu = time.process_time() - self.c


def _stats(ms: list[float]) -> dict:
    x = np.asarray(ms)
    return {"median": float(np.median(x)), "p95": float(np.percentile(x, 95)), "n": len(x)}


def _recall(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    return len(set(approx[:k].tolist()) & set(exact[:k].tolist())) / max(1, min(k, len(exact)))


def measure_size(n: int, args: argparse.Namespace, work: Path) -> dict:
    """Everything for one map size (run in its own process)."""
    import faiss

    from ...integrity import file_digests
    from ...localizers.relpose.mapping import load_keyframes
    from ...localizers.relpose.retrieval import DescriptorIndex, select_references
    from ...models.features import LocalFeatures, match_mutual_nn

    faiss.omp_set_num_threads(1)
    res: dict = {"keyframes": n}
    m = work / f"map_{n}"
    if m.exists():
        shutil.rmtree(m)
    with _Clock() as c:
        syn = write_synthetic_map(m, n, args.dim, args.latent, args.keypoints)
    res["build"] = {"write_files_s": c.wall, "write_files_cpu_s": c.cpu}
    rng = np.random.default_rng(1)
    nq = int(args.search_queries)
    t = rng.uniform(0, n - 1, nq)
    lo = np.floor(t).astype(int)
    zq = syn["z"][lo] + (t - lo)[:, None] * (syn["z"][np.minimum(lo + 1, n - 1)] - syn["z"][lo])
    queries = synth_descriptors(zq, syn["W"], 0.3, rng)
    desc = np.load(m / "descriptors.npy", mmap_mode="r")
    k = int(args.k)
    res["retrieval"] = {}
    exact = None
    for kind in args.kinds.split(","):
        with _Clock() as c:
            index = DescriptorIndex(np.asarray(desc), kind)
        index.vectors_ND = desc
        index.save(m / f"index_{kind}.faiss")
        wall, cpu, ranks = [], [], []
        for q in queries:
            with _Clock() as c2:
                idx, _ = index.search(q, k)
            wall.append(1e3 * c2.wall)
            cpu.append(1e3 * c2.cpu)
            ranks.append(idx)
        if kind == "flat":
            exact = ranks
        r = {"build_s": c.wall, "build_cpu_s": c.cpu, "index_bytes_per_keyframe": (m / f"index_{kind}.faiss").stat().st_size / n,
             "wall_ms": _stats(wall), "cpu_ms": _stats(cpu)}  # fmt: skip
        if exact is not None:
            for kk in (1, 10, k):
                r[f"recall@{kk}"] = float(np.mean([_recall(a, e, kk) for a, e in zip(ranks, exact)]))
        res["retrieval"][kind] = r
        log.info("%d keyframes, %s: %s", n, kind, {x: r[x] for x in r if "recall" in x or x == "wall_ms"})
        del index
    # hashing: what every load verifies (integrity.verify_files)
    for p in m.glob("index_*.faiss"):
        if p.name != f"index_{args.chosen}.faiss":
            p.unlink()
    (m / f"index_{args.chosen}.faiss").rename(m / "index.faiss")
    with _Clock() as c:
        file_digests(m)
    res["build"]["sha256_s"] = c.wall
    res["disk_bytes_per_keyframe"] = {
        p.relative_to(m).as_posix(): p.stat().st_size / n for p in sorted(m.rglob("*")) if p.is_file()
    }
    res["disk_bytes_per_keyframe"]["total"] = sum(res["disk_bytes_per_keyframe"].values())
    del desc
    # lazy load + end-to-end queries, RSS sampled along the way
    import gc

    gc.collect()
    mem = {"before_load": _rss_mb()}
    with _Clock() as c:
        kfs = load_keyframes(m, lazy=True)
        vec = np.load(m / "descriptors.npy", mmap_mode="r")
        index = DescriptorIndex.load(m / "index.faiss", vec)
        centers = np.stack([kf.T_world_cam[:3, 3] for kf in kfs])
    res["load_s"] = c.wall
    mem["after_load"] = _rss_mb()
    qf = LocalFeatures(rng.uniform(0, 320, (args.keypoints, 2)).astype(np.float32),
                       (lambda d: d / np.linalg.norm(d, axis=1, keepdims=True))(rng.normal(size=(args.keypoints, 64))).astype(np.float32),
                       np.ones(args.keypoints, np.float32), (320, 240))  # fmt: skip
    stages: dict[str, list[float]] = {"retrieval": [], "select": [], "features": [], "match": [], "total": []}
    cpu_total = []
    samples = []
    n_e2e = int(args.queries)
    for i in range(n_e2e):
        q = queries[i % len(queries)]
        c0 = time.process_time()
        t0 = time.perf_counter()
        idx, _ = index.search(q, k)
        t1 = time.perf_counter()
        refs = select_references(idx, centers, 5, (0.3, 5.0))
        t2 = time.perf_counter()
        fr = [LocalFeatures.from_npz_dict(kfs[j].cache, prefix="xfeat_") for j in refs]
        pts = [kfs[j].points_world_N3 for j in refs]
        t3 = time.perf_counter()
        for f, p in zip(fr, pts):
            mt = match_mutual_nn(qf.descriptors_ND, f.descriptors_ND, 0.82)
            _ = p[mt[:, 1]] if len(mt) else p[:0]
        t4 = time.perf_counter()
        cpu_total.append(1e3 * (time.process_time() - c0))
        for name, a, b in (("retrieval", t0, t1), ("select", t1, t2), ("features", t2, t3), ("match", t3, t4),
                           ("total", t0, t4)):  # fmt: skip
            stages[name].append(1e3 * (b - a))
        if (i + 1) % max(1, n_e2e // 10) == 0:
            samples.append({"queries": i + 1, **_rss_mb()})
    res["query_ms"] = {s: _stats(v) for s, v in stages.items()} | {"total_cpu": _stats(cpu_total)}
    mem["during_queries"] = samples
    del kfs, index
    gc.collect()
    if args.localizer_queries and args.dim == 4096:
        res["localizer"] = _real_localizer(m, int(args.localizer_queries))
    if n <= int(args.eager_max):
        gc.collect()
        before = _rss_mb()
        with _Clock() as c:
            load_keyframes(m, lazy=False)
        mem["eager_load"] = {"seconds": c.wall, "anon_mb_added": _rss_mb()["rss_anon_mb"] - before["rss_anon_mb"]}
    res["memory"] = mem
    if not args.keep:
        shutil.rmtree(m)
    return res


def _blob_image(rng: np.random.Generator, w: int = 320, h: int = 240) -> np.ndarray:
    """A textured test image (blurred noise at two scales): XFeat finds keypoints all over it."""
    import cv2

    a = cv2.resize(rng.uniform(0, 255, (h // 8, w // 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    b = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 1.5)
    return np.clip(0.6 * a + 0.4 * b, 0, 255).astype(np.uint8)


def _real_localizer(m: Path, n_queries: int) -> dict:
    """The real RelposeLocalizer (relpose_xfeat.yaml, xfeat_vlad with a vocabulary fitted on textured
    images) on the synthetic map: load time, RSS, and full localize() latency on textured images
    (they localize nowhere: the map is random; what is measured is the cost and the memory)."""
    import yaml

    from ...geometry import PinholeCamera
    from ...localizers.relpose.localizer import RelposeLocalizer
    from ...localizers.relpose.mapping import load_config
    from ...models.descriptors import build_descriptor

    rng = np.random.default_rng(3)
    cfg = load_config(Path(__file__).resolve().parents[3] / "config/models/relpose_xfeat.yaml")
    cfg["calibration"] = {"enabled": False}
    (m / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    desc = build_descriptor(cfg["descriptor"])
    imgs = [_blob_image(rng) for _ in range(16)]
    desc.fit(iter(imgs), len(imgs))
    desc.save(m / "descriptor")
    meta = json.loads((m / "artifact.json").read_text())
    meta.update(descriptor=desc.name, image_size=[320, 240], structure="triangulate")
    (m / "artifact.json").write_text(json.dumps(meta))
    before = _rss_mb()
    with _Clock() as c:
        loc = RelposeLocalizer(m)
    out = {"load_s": c.wall, "rss_before_load": before, "rss_after_load": _rss_mb()}
    cam = PinholeCamera(320, 240, 250.0, 250.0, 160.0, 120.0)
    wall, cpu, samples = [], [], []
    queries = [_blob_image(rng) for _ in range(8)]
    for i in range(n_queries):
        with _Clock() as c:
            loc.localize(queries[i % len(queries)], cam, i)
        wall.append(1e3 * c.wall)
        cpu.append(1e3 * c.cpu)
        if (i + 1) % max(1, n_queries // 5) == 0:
            samples.append({"queries": i + 1, **_rss_mb()})
    out |= {"localize_wall_ms": _stats(wall), "localize_cpu_ms": _stats(cpu), "rss_during_queries": samples}
    return out


def _table(results: list[dict], chosen: str) -> None:
    for r in results:
        log.info(
            "%7d keyframes: %s; query total %.1f ms; RSS after load %.0f MB (anon %.0f), after %d queries %.0f MB; "
            "disk %.0f KB/keyframe",
            r["keyframes"],
            ", ".join(f"{k} {v['wall_ms']['median']:.2f} ms r@1 {v.get('recall@1', float('nan')):.3f}"
                      for k, v in r["retrieval"].items()),
            r["query_ms"]["total"]["median"], r["memory"]["after_load"]["rss_mb"],
            r["memory"]["after_load"]["rss_anon_mb"], r["memory"]["during_queries"][-1]["queries"],
            r["memory"]["during_queries"][-1]["rss_mb"], r["disk_bytes_per_keyframe"]["total"] / 1024,
        )  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    from ...localizers.relpose.retrieval import AUTO_LARGE_INDEX

    sizes = [int(s) for s in str(args.keyframes).split(",") if s.strip()]
    if not sizes or min(sizes) < 100:
        raise ValueError(f"--keyframes needs sizes >= 100, got {args.keyframes!r}")
    unknown = set(args.kinds.split(",")) - set(KINDS)
    if unknown or "flat" not in args.kinds.split(","):
        raise ValueError(f"--kinds must include flat (the exact reference) and only {KINDS}, got {args.kinds!r}")
    work = Path(args.work or Path(args.out) / "maps")
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for n in sizes:
        # one process per size: its RSS is that of this map alone
        cmd = [sys.executable, "-m", __name__, json.dumps(vars(args) | {"n": n, "work": str(work)}, default=str)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
        if out.returncode != 0:
            raise RuntimeError(f"bench map at {n} keyframes failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        _table(results[-1:], AUTO_LARGE_INDEX)
    if not args.keep and work.exists() and not any(work.iterdir()):
        work.rmdir()
    return {
        "sizes": results,
        "dim": args.dim,
        "keypoints": args.keypoints,
        "k": args.k,
        "auto_large_index": AUTO_LARGE_INDEX,
    }


if __name__ == "__main__":  # worker: one map size
    from ...localizers.relpose.retrieval import RetrievalConfig

    a = argparse.Namespace(**json.loads(sys.argv[1]))
    a.chosen = RetrievalConfig().index_kind(a.n)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    print(json.dumps(measure_size(a.n, a, Path(a.work))))
