"""``visloc bench NAME [options] --out DIR``: run one benchmark of visloc_core/evaluation/bench.

Benchmarks are the modules named by ``evaluation.bench.BENCHMARKS`` and those other packages declare
as ``visloc.benchmarks`` entry points (the ROS ones, see visloc_core/plugins.py); each has ``HELP``,
``add_arguments(parser)`` and ``run(args) -> dict``. The command runs one, adds ``bench_meta`` (name,
command line, start time, duration, machine facts of evaluation/bench/timing.py) to its dict, writes
``DIR/<name>.json`` atomically (temporary file, then rename; infinite/NaN numbers become null) and
prints the numbers as a table.

``visloc bench --list`` shows every benchmark and whether its module is available.
``visloc bench all --out DIR [--skip NAME ...] [-- OPTIONS]`` runs every available benchmark with its
defaults, forwarding OPTIONS after ``--`` to each benchmark that accepts them (others ignore them),
writes each ``DIR/<name>.json`` as soon as it finishes (an interruption keeps the finished ones) and
``DIR/all.json`` with the status of each. Benchmarks measure; they never assert on time.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import logging
import math
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from .. import plugins
from ..evaluation.bench import BENCHMARKS as CORE_BENCHMARKS

log = logging.getLogger(__name__)

_PACKAGE = "visloc_core.evaluation.bench"
MAX_TABLE_ROWS = 80


def _all_benchmarks() -> dict[str, str]:
    """The core's benchmarks, then the plugins' (a plugin cannot replace a core benchmark)."""
    table = dict(CORE_BENCHMARKS)
    for name, ep in plugins.declared(plugins.BENCHMARKS).items():
        if name in table:
            log.warning("benchmark plugin %r (%s) ignored: a core benchmark has that name", name, ep.value)
        else:
            table[name] = ep.value
    return table


#: name -> module: a plain name is a module of visloc_core/evaluation/bench, a dotted one a plugin's module
BENCHMARKS: dict[str, str] = _all_benchmarks()


def module_path(name: str) -> str:
    """Full module name of benchmark ``name``: a dotted entry of BENCHMARKS is absolute (a plugin's
    module, e.g. visloc_ros.bench_node), a plain one is a module of visloc_core/evaluation/bench."""
    entry = BENCHMARKS[name]
    return entry if "." in entry else f"{_PACKAGE}.{entry}"


def load_benchmark(name: str) -> ModuleType:
    """Import the module of benchmark ``name``; ValueError (naming what exists) when it cannot."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} (see `visloc bench --list`)")
    module_name = module_path(name)
    try:
        mod = importlib.import_module(module_name)
    except ImportError as err:
        hint = f"; {plugins.ROS_HINT}" if name not in CORE_BENCHMARKS else ""
        if isinstance(err, ModuleNotFoundError) and err.name == module_name:
            raise ValueError(
                f"benchmark {name!r} is not available: module {module_name} does not exist yet{hint}"
            ) from err
        raise ValueError(f"benchmark {name!r} is not available: {err}{hint}") from err
    missing = [a for a in ("HELP", "add_arguments", "run") if not hasattr(mod, a)]
    if missing:
        raise ValueError(
            f"benchmark module {module_name} lacks {', '.join(missing)} (see evaluation/bench/__init__.py)"
        )
    return mod


def availability() -> dict[str, tuple[bool, str]]:
    """name -> (available, HELP or the reason it is not). Imports every benchmark module."""
    out = {}
    for name in BENCHMARKS:
        try:
            out[name] = (True, str(load_benchmark(name).HELP))
        except Exception as err:  # an import error of one benchmark must not hide the others
            out[name] = (False, str(err))
    return out


def static_help(name: str) -> str | None:
    """The module's HELP string read from its source WITHOUT importing it (benchmark modules may import
    torch at the top; building the CLI parser must stay fast). None when the module does not exist."""
    try:
        spec = importlib.util.find_spec(module_path(name))
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    try:
        tree = ast.parse(Path(spec.origin).read_text())
    except (OSError, SyntaxError):
        return ""
    for node in tree.body:
        is_help = isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "HELP" for t in node.targets)
        if is_help and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return node.value.value
    return ""


def _add_out(parser: argparse.ArgumentParser) -> None:
    if "--out" not in parser._option_string_actions:
        parser.add_argument("--out", required=True, help="folder for <name>.json (created if needed)")


def _state_defaults(parser: argparse.ArgumentParser) -> None:
    """Append '(default X)' to the help of options whose text does not give their default."""
    for action in parser._actions:
        if action.help and action.default not in (None, False, argparse.SUPPRESS) and "default" not in action.help:
            action.help += " (default %(default)s)"


class _LazyBenchParser(argparse.ArgumentParser):
    """Subparser of one benchmark that imports the module and adds its options only when that
    benchmark is actually parsed or its --help shown (not for every `visloc` invocation)."""

    bench_name: str | None = None
    _loaded = False

    def _load(self) -> None:
        if self._loaded or self.bench_name is None:
            return
        self._loaded = True
        try:
            mod = load_benchmark(self.bench_name)
        except ValueError:
            pass  # unavailable: run() reports why, with --out still accepted
        else:
            mod.add_arguments(self)
            _state_defaults(self)
        _add_out(self)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._load()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._load()
        return super().format_help()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="list the benchmarks and whether each is available")
    # Every subparser is lazy: a benchmark's module is imported only when that benchmark is used.
    sub = parser.add_subparsers(dest="bench_name", metavar="NAME", parser_class=_LazyBenchParser)
    for name in BENCHMARKS:
        text = static_help(name)
        p = sub.add_parser(name, help=text if text is not None else "(unavailable: module not written yet)",
                           description=text or None)  # fmt: skip
        p.bench_name = name
    p_all = sub.add_parser(
        "all",
        help="run every available benchmark with its defaults",
        description="Run every available benchmark with its defaults; options after `--` go to each benchmark "
        "that accepts them (e.g. `visloc bench all --out DIR -- --data DATASET --threads 1`).",
    )
    _add_out(p_all)
    p_all.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="benchmarks not to run")
    p_all.add_argument(
        "forward", nargs=argparse.REMAINDER, help="after `--`: options forwarded to every benchmark that knows them"
    )


# ------------------------------------------------------------------------------------ output
def _json_safe(x: Any) -> Any:
    import numpy as np

    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)  # Paths, enums, ...: their text


def write_result(out_dir: Path, name: str, result: dict) -> Path:
    from ..evaluation.report import atomic_write_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    atomic_write_bytes(path, (json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n").encode())
    return path


def flatten(d: Any, prefix: str = "", max_list: int = 6) -> list[tuple[str, str]]:
    """(dotted key, text) rows of a nested result for the table; lists of records and long lists are
    summarised (the JSON file holds everything)."""
    rows: list[tuple[str, str]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            rows += flatten(v, f"{prefix}.{k}" if prefix else str(k), max_list)
    elif isinstance(d, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in d):
        rows.append((prefix, f"[{len(d)} records: see the JSON file]"))
    elif isinstance(d, (list, tuple)) and len(d) > max_list:
        rows.append((prefix, f"[{len(d)} values]"))
    elif isinstance(d, (list, tuple)):
        rows.append((prefix, "[" + ", ".join(_cell(v) for v in d) + "]"))
    else:
        rows.append((prefix, _cell(d)))
    return rows


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def print_table(name: str, result: dict, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"visloc bench {name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    # Machine facts go in the footer line (and the JSON), not the table.
    rows = flatten({k: v for k, v in result.items() if k not in ("bench_meta", "machine")})
    for k, v in rows[:MAX_TABLE_ROWS]:
        table.add_row(k, v)
    if len(rows) > MAX_TABLE_ROWS:
        table.add_row(f"... {len(rows) - MAX_TABLE_ROWS} more rows", "see the JSON file")
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(table)
    meta = result.get("bench_meta", {})
    m = meta.get("machine", {})
    load = m.get("load_average_1_5_15min")
    load_text = "/".join(f"{x:.1f}" for x in load) if load else "?"
    console.print(
        f"{m.get('cpu_model', '?')}, {m.get('usable_cores', '?')} cores, torch threads {m.get('torch_threads', '?')}, "
        f"load (1/5/15 min) {load_text}; took {meta.get('duration_s', 0):.1f} s; written {path}"
    )


# ------------------------------------------------------------------------------------ running
def run_one(name: str, args: argparse.Namespace, argv: list[str]) -> dict:
    """Run benchmark ``name`` with parsed ``args``; returns its dict with ``bench_meta`` added."""
    from ..evaluation.bench.timing import machine_info

    mod = load_benchmark(name)
    started = time.time()
    t0 = time.perf_counter()
    result = mod.run(args)
    if not isinstance(result, dict):
        raise TypeError(f"benchmark {name!r}: run(args) must return a dict, got {type(result).__name__}")
    result = dict(result)
    result["bench_meta"] = {
        "name": name,
        "command": "visloc bench " + " ".join([name, *argv]),
        "started_unix": started,
        "duration_s": time.perf_counter() - t0,
        "machine": machine_info(),
        "options": {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("bench_name", "list")},
    }
    return result


def _parse_for(name: str, forward: list[str], out: str) -> tuple[argparse.Namespace, list[str]]:
    """A benchmark's own parser over the forwarded options (unknown ones ignored) plus --out."""
    p = argparse.ArgumentParser(prog=f"visloc bench {name}")
    load_benchmark(name).add_arguments(p)
    _add_out(p)
    ns, unknown = p.parse_known_args([*forward, "--out", out])
    return ns, unknown


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name, (ok, text) in availability().items():
            print(f"{name:10s} {'available  ' if ok else 'unavailable'} {text}")
        return 0
    if not args.bench_name:
        raise ValueError("give a benchmark NAME (or `all`), or --list to see them")
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # before the benchmark runs, not when writing its result
        raise FileExistsError(f"--out {out} is a file; give a folder for <name>.json")
    if args.bench_name != "all":
        # The benchmark's own options as typed (for the record), when run from the shell.
        argv = sys.argv[sys.argv.index(args.bench_name) + 1 :] if args.bench_name in sys.argv[1:] else []
        result = run_one(args.bench_name, args, argv)
        path = write_result(out, args.bench_name, result)
        print_table(args.bench_name, result, path)
        return 0
    forward = [a for a in args.forward if a != "--"]
    unknown_skips = sorted(set(args.skip) - set(BENCHMARKS))
    if unknown_skips:
        raise ValueError(f"--skip {unknown_skips}: unknown benchmarks; known: {', '.join(BENCHMARKS)}")
    status: dict[str, dict] = {}
    failed = False
    try:
        for name, (ok, text) in availability().items():
            if name in args.skip:
                status[name] = {"status": "skipped"}
                continue
            if not ok:
                status[name] = {"status": "unavailable", "reason": text}
                continue
            ns, ignored = _parse_for(name, forward, str(out))
            log.info("bench %s (ignoring forwarded options it does not know: %s)", name, ignored or "none")
            t0 = time.perf_counter()
            try:
                result = run_one(name, ns, forward)
            except Exception as err:  # one failing benchmark must not stop the others
                failed = True
                log.error("bench %s failed: %s", name, err)
                status[name] = {"status": "failed", "error": f"{type(err).__name__}: {err}",
                                "traceback": traceback.format_exc(limit=5)}  # fmt: skip
                continue
            path = write_result(out, name, result)
            print_table(name, result, path)
            status[name] = {"status": "ok", "file": path.name, "duration_s": time.perf_counter() - t0}
    except KeyboardInterrupt:
        status["_interrupted"] = {"status": "interrupted"}
        write_result(out, "all", {"benchmarks": status, "partial": True})
        raise
    write_result(out, "all", {"benchmarks": status, "partial": False})
    for name, s in status.items():
        print(f"{name:10s} {s['status']}" + (f": {s.get('error') or s.get('reason')}" if s["status"] != "ok" else ""))
    return 1 if failed else 0
