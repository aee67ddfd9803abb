"""Absolute pose regression models; each module registers itself in ``models.registry.APR_MODELS``."""
