"""rosbag2 tools (sqlite3 and mcap, through the pure-Python ``rosbags``; no ROS needed).

- :mod:`.read`: a bag -> a dataset in the visloc layout (``visloc dataset from-bag``).
- :mod:`.write`: a dataset / synthetic scene -> a bag as a robot records it (``visloc synth --bag``).
"""
