"""``visloc bench models``: parameter count and CPU inference time of every registered APR model,
side by side with the ``posenet`` baseline.

Each model is built from its config (``config/models/<name>.yaml``: model options and the network
input size) with random weights (speed and size do not depend on the values; MVL-Loc's text
embeddings are computed during the warm-up, as they are cached thereafter). For every thread count
(default 1 and 2) the median wall time of a batch-1 forward pass (``torch.inference_mode``, eval
mode) over ``--repeats`` runs after ``--warmup`` runs is recorded, the models taking turns run by
run (round robin) so that load from other processes hits all of them alike; ``*_vs_posenet`` are ratios to
the baseline measured in the same run. Parameter counts leave out the ImageNet classifier the
backbones keep for weight checks (pose models never run it); multi-scene models are built for
``--scenes`` scenes. Benchmarks measure, never assert.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from .timing import ratio, set_threads, summarize_ms, time_call

log = logging.getLogger(__name__)

HELP = "parameter count and CPU inference time (batch 1, 1 and 2 threads) of every APR model vs posenet"
BASELINE = "posenet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", nargs="+", default=None, help="model names (default: every model in models/registry.APR_MODELS)"
    )
    parser.add_argument(
        "--config-dir", default="config/models", help="folder of <model>.yaml configs (default config/models)"
    )
    parser.add_argument(
        "--size", default=None, help="WxH network input for every model instead of each config's (e.g. 320x240)"
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (default 1 2)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per model and thread count (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--scenes", type=int, default=2, help="scenes for multi-scene models (default 2)")


def _model_and_size(name: str, config_dir: Path, size: str | None, n_scenes: int) -> tuple[torch.nn.Module, dict]:
    from ...models.registry import SceneSpec, build_apr_model
    from ...training.config import apr_config, load_yaml

    path = config_dir / f"{name}.yaml"
    cfg = apr_config(load_yaml(path) if path.is_file() else {"model": {"name": name}})
    if cfg["model"]["name"] != name:
        raise ValueError(f"{path}: model.name is {cfg['model']['name']!r}, expected {name!r}")
    w, h = int(cfg["data"]["image_width"]), int(cfg["data"]["image_height"])
    if size:
        try:
            w, h = (int(v) for v in size.lower().split("x"))
        except ValueError as err:
            raise ValueError(f"--size must be WxH like 320x240, got {size!r}") from err
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
    model_cfg["pretrained"] = False  # values do not change speed or size; nothing to load
    # Distinct descriptions, as MVL-Loc requires (its embeddings are computed once, during warm-up).
    scenes = [
        SceneSpec(f"scene{i}", f"scene number {i}: a room with a table and {i + 1} chairs") for i in range(n_scenes)
    ]
    model = build_apr_model(name, model_cfg, scenes).eval()
    return model, {"config": str(path) if path.is_file() else None, "width": w, "height": h}


def count_parameters(model: torch.nn.Module) -> dict[str, float | int]:
    names = dict(model.named_parameters())
    unused = [n for n in names if n.startswith(("backbone.classifier", "backbone._fc"))]
    n_all = sum(p.numel() for p in names.values())
    n_used = n_all - sum(names[n].numel() for n in unused)
    n_backbone = sum(p.numel() for n, p in names.items() if n.startswith("backbone.") and n not in unused)
    return {"parameters": n_used, "parameters_backbone": n_backbone, "size_mb_float32": 4.0 * n_used / 1e6}


def run(args: argparse.Namespace) -> dict:
    from ...models.registry import APR_MODELS

    names = list(args.models or APR_MODELS.names())
    if BASELINE not in names:
        names.insert(0, BASELINE)
    unknown = sorted(set(names) - set(APR_MODELS.names()))
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {', '.join(APR_MODELS.names())}")
    config_dir = Path(args.config_dir)
    if not config_dir.is_dir():
        raise FileNotFoundError(
            f"--config-dir {config_dir} is not a folder (it holds <model>.yaml, e.g. config/models)"
        )
    results: dict[str, dict] = {}
    models: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}
    for name in names:
        torch.manual_seed(0)
        model, info = _model_and_size(name, config_dir, args.size, int(args.scenes))
        results[name] = {**info, **count_parameters(model)}
        models[name] = (model, torch.rand(1, 3, info["height"], info["width"]))
    for n in args.threads:
        set_threads(int(n))
        samples: dict[str, list[float]] = {name: [] for name in names}
        with torch.inference_mode():
            for model, x in models.values():
                for _ in range(int(args.warmup)):
                    model(x)
            # Round robin (one run of each model per round): on a shared machine a busy spell then
            # slows every model alike instead of whichever happened to be measured at that moment.
            for _ in tqdm(range(int(args.repeats)), desc=f"{n} thread(s)", unit="round", leave=False):
                for name, (model, x) in models.items():
                    samples[name].append(time_call(lambda m=model, x=x: m(x), warmup=0, repeats=1)["median_ms"])
        for name in names:
            st = summarize_ms(samples[name])
            results[name][f"ms_{n}_thread"] = st["median_ms"]
            results[name][f"p95_ms_{n}_thread"] = st["p95_ms"]
            log.info("%s, %d thread(s): median %.1f ms", name, n, st["median_ms"])
    base = results[BASELINE]
    for entry in results.values():
        entry["parameters_vs_posenet"] = ratio(entry["parameters"], base["parameters"])
        for n in args.threads:
            entry[f"time_{n}_thread_vs_posenet"] = ratio(entry[f"ms_{n}_thread"], base[f"ms_{n}_thread"])
    return {"models": results, "threads": list(args.threads), "baseline": BASELINE}
