"""Regenerate requirements/lock.txt from the working .venv (run with .venv/bin/python).

Skips the distributions that ROS wheels carry inside them (no INSTALLER record: not installable
on their own), visloc itself, the no-deps packages of requirements/nodeps.txt, and packages
installed from local folders (launch, ros2cli, ... from ros-src: scripts/ros_src.sh installs them).
"""

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nodeps = {re.split("[=<>]", line)[0].lower() for line in (root / "requirements/nodeps.txt").read_text().split()}
inside_wheels = {d.metadata["Name"].lower() for d in md.distributions() if d.read_text("INSTALLER") is None}
frozen = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
lines = []
for line in frozen.splitlines():
    name = re.split("[=<>@ ]", line)[0].lower()
    from_folder = " @ file:" in line
    if not line or line.startswith("-e") or from_folder or name in inside_wheels | nodeps or name.startswith("visloc"):
        continue
    lines.append("torch==2.13.0" if name == "torch" else line)
header = (
    "# Full pinned environment of .venv, installed by scripts/setup_env.sh; regenerate with\n"
    "# .venv/bin/python scripts/freeze_lock.py. torch is the CPU build 2.13.0 (see README).\n"
)
(root / "requirements/lock.txt").write_text(header + "\n".join(sorted(lines, key=str.lower)) + "\n")
print(f"{len(lines)} pins written")
