"""Registries of plugins picked by name from YAML configs or the command line.

Each family is declared once, next to its interface, with the module that defines each member:

- APR models: ``models/registry.py`` (``APR_MODELS``),
- global descriptors: ``models/descriptors.py`` (``GLOBAL_DESCRIPTORS``),
- relative-pose estimators: ``localizers/relpose/base.py`` (``RELPOSE_ESTIMATORS``),
- localizers (artifact kinds): ``localizers/loading.py`` (``LOCALIZERS``),
- dataset converters: ``data/convert/__init__.py`` (``CONVERTERS``).

A registry imports a member's module the first time the member is asked for, so ``names()`` and the
unknown-name error list every member without importing all of them (torch models, faiss, ...).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError, KeyError):
    """A name no registry member has; the message names it, the config key it came from and the known ones.
    A ValueError (what the CLI reports as a one-line error) and a KeyError (what a lookup raises)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A name -> factory table. Use ``@REGISTRY.register("name")`` on a class or function.

    ``modules`` maps a name to the module that registers it on import (``{"posenet":
    "visloc_core.models.apr.posenet"}``); ``get`` imports it on first use. ``key`` is where a name comes
    from (``"model.name"``), named in the unknown-name error.
    """

    def __init__(self, kind: str, modules: Mapping[str, str] | None = None, key: str | None = None) -> None:
        self.kind = kind
        self.key = key
        self._modules: dict[str, str] = dict(modules or {})
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items and self._items[name] is not factory:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = factory
            return factory

        return deco

    def check(self, name: str) -> str:
        """``name`` if it is known (without importing its module), else UnknownNameError naming the known ones."""
        if name not in self:
            where = f" ({self.key})" if self.key else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{where}; known: {', '.join(self.names()) or 'none'}")
        return name

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            self.check(name)
            importlib.import_module(self._modules[name])
            if name not in self._items:
                raise ImportError(f"{self._modules[name]} was imported but registers no {self.kind} {name!r}")
        return self._items[name]

    def build(self, name: str, *args, **kwargs) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """Every known name (declared in ``modules`` or registered), in declaration order; imports nothing."""
        return [*self._modules, *(n for n in self._items if n not in self._modules)]

    def module(self, name: str) -> str | None:
        """The module declared for ``name`` (None for a member registered without one)."""
        return self._modules.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self._modules
