"""visloc_ros: the thin ROS 2 layer of visloc (nodes, message conversion, parameters).

The generated message module ``visloc_ros.msg`` exists only after ``colcon build`` (see README).
"""

import os
from pkgutil import extend_path

# The hand-written modules live in the source tree and the generated ``visloc_ros.msg`` in the
# colcon install tree (install/visloc_ros/lib/python3.X/site-packages/visloc_ros). Whichever copy
# Python imports first (the working directory wins when run from the repository root), let it
# see the other one too, so ``from visloc_ros.msg import LocalizationResult`` works from both.
__path__ = extend_path(__path__, __name__)

# With ``colcon build --symlink-install`` the installed __init__.py is a link into the sources:
# also search the source folder, so modules added since the last build are found.
_source_dir = os.path.dirname(os.path.realpath(__file__))
if _source_dir not in __path__:
    __path__.append(_source_dir)
