"""Parts of the ``visloc`` CLI that live outside visloc_core, found through Python entry points.

visloc_core imports nothing from visloc_ros (the ROS layer sits on top of the core). The commands
and benchmarks that need ROS are declared as entry points by the distribution that ships
visloc_ros (pyproject.toml), and the CLI looks them up here by group and name:

- ``visloc.runners``: ``name = "module:function"``, e.g. ``replay = "visloc_ros.replay:replay"``
  (``visloc replay`` parses its arguments in the core and hands a ``ReplayOptions`` to it);
- ``visloc.benchmarks``: ``name = "module"``, a module with ``HELP``, ``add_arguments`` and ``run``
  like those of evaluation/bench (e.g. ``node = "visloc_ros.bench_node"``).

A missing or unloadable plugin raises :class:`PluginUnavailableError` whose message says what to build
and source. To add one: the module in visloc_ros plus one line in pyproject.toml, then re-install
(``make env``: ``pip install -e .`` rewrites the entry points).
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Any

log = logging.getLogger(__name__)

RUNNERS = "visloc.runners"
BENCHMARKS = "visloc.benchmarks"

#: what a user does when a ROS plugin is missing (said by every PluginUnavailableError)
ROS_HINT = (
    "it comes with the ROS package visloc_ros: install visloc with `make env build` (pip install -e . "
    "declares the plugin; scripts/build_ros.sh builds the messages), then `source install/local_setup.bash`"
)


class PluginUnavailableError(RuntimeError):
    """A plugin that is not declared, or whose module cannot be imported here."""


def declared(group: str) -> dict[str, EntryPoint]:
    """name -> entry point of ``group``. The same name declared twice with the same value (e.g. an
    editable install and a copy of its metadata) counts once; different values: the first one wins."""
    out: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        seen = out.get(ep.name)
        if seen is None:
            out[ep.name] = ep
        elif seen.value != ep.value:
            log.warning(
                "plugin %s %r declared twice (%s, %s); using %s", group, ep.name, seen.value, ep.value, seen.value
            )
    return out


def load(group: str, name: str, what: str) -> Any:
    """The object of plugin ``name`` in ``group`` (``what`` names it for the user, e.g. 'visloc replay')."""
    ep = declared(group).get(name)
    if ep is None:
        raise PluginUnavailableError(f"{what} is not available: no {group} plugin {name!r} is installed; {ROS_HINT}")
    try:
        return ep.load()
    except ImportError as err:
        raise PluginUnavailableError(f"{what} is not available here ({ep.value}: {err}); {ROS_HINT}") from err
