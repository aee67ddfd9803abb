"""visloc_core: visual relocalization without ROS (geometry, data, models, localizers, training, evaluation)."""

import logging

__version__ = "0.1.0"

logger = logging.getLogger("visloc")
logger.addHandler(logging.NullHandler())
