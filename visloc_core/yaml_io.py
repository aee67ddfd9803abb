"""Reading YAML config files (model configs, relpose configs, scene files) with errors that name
the file, the line and the column, and say what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_yaml_file(path: str | Path) -> Any:
    """Parse the YAML file ``path`` (UTF-8 text). Raises ValueError naming the file when it is not
    text (e.g. an image given by mistake) or not valid YAML (with the line and column)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            return yaml.safe_load(f)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not a YAML text file (binary data at byte {err.start}); give a .yaml config"
        ) from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where}: {problem}; fix the file's syntax") from err
