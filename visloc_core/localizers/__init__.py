"""Localizers: the interface, the registry and ``load_localizer(artifact_dir)``."""

from .base import LocalizationResult, Localizer, Status
from .loading import LOCALIZERS, load_localizer

__all__ = ["LOCALIZERS", "LocalizationResult", "Localizer", "Status", "load_localizer"]
