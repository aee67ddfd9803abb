"""Configs: one merge, one strict key check, one ``--set key.sub=value``, one way to log what a stage runs with.

A stage's config is its defaults (a ``DEFAULT_CONFIG``-style dict, the one place each default lives)
merged with the user's YAML and then with ``--set`` overrides. Unknown keys are an error naming the
key and the valid ones: a typo must not fall back to a default silently.
"""

from __future__ import annotations

import argparse
import copy
import logging
from collections.abc import Iterable
from typing import Any


class UnknownConfigKeyError(ValueError):
    """A config key its section does not have; the message names the dotted key and the valid ones."""


def deep_merge(
    base: dict, override: dict | None, *, strict: bool = False, open_sections: Iterable[str] = (), path: str = ""
) -> dict:
    """``base`` updated with ``override`` recursively (override wins; dicts merge, anything else is
    replaced); returns a new dict and leaves both inputs untouched.

    With ``strict``, a key of ``override`` that ``base`` lacks raises :class:`UnknownConfigKeyError`
    ("unknown config key 'train.lrr'; known here: epochs, lr, ..."), except inside ``open_sections``
    (dotted paths like ``"model"`` whose keys their owner checks, e.g. a model factory)."""
    open_sections = tuple(open_sections)
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        where = f"{path}{k}"
        if strict and k not in base:
            raise UnknownConfigKeyError(
                f"unknown config key '{where}'; known here: {', '.join(sorted(map(str, base)))}"
            )
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            is_open = where in open_sections
            out[k] = deep_merge(
                base[k], v, strict=strict and not is_open, open_sections=open_sections, path=where + "."
            )
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value parsed as YAML: ``1`` int, ``[1, 2]`` list, ``null`` None)."""
    import yaml

    if "=" not in item:
        raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
    key, val = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"--set {key}: empty part in the dotted key")
    return parts, yaml.safe_load(val)  # a yaml.YAMLError: the CLI names its line and column


def apply_overrides(cfg: dict, items: Iterable[str]) -> dict:
    """Apply ``--set a.b=value`` overrides to ``cfg`` in place (and return it): the value replaces
    ``cfg["a"]["b"]``; missing sections are created (the stage's strict merge then names an unknown key)."""
    for item in items:
        parts, value = parse_set(item)
        node = cfg
        for i, p in enumerate(parts[:-1]):
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ValueError(f"--set {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is not a section")
        node[parts[-1]] = value
    return cfg


def add_set_argument(parser: argparse.ArgumentParser, example: str) -> None:
    """The ``--set KEY=VALUE`` option (repeatable), applied with :func:`apply_overrides`."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, dotted path, YAML value (e.g. --set {example}); repeatable; "
        "an unknown key is an error naming the valid ones",
    )


def log_config(logger: logging.Logger, stage: str, cfg: dict) -> None:
    """Log the merged config a stage runs with (INFO, one YAML block), so a log says what ran."""
    import json

    import yaml

    plain = json.loads(json.dumps(cfg, default=str))  # tuples -> lists, paths -> strings
    logger.info("%s config (defaults + file + --set):\n%s", stage, yaml.safe_dump(plain, sort_keys=False).rstrip())
