"""Where a recorded result came from: the command, the commit, the versions, the threads.

Every results file the book's scripts write (training runs, the int8 table) carries this
record, so that a reader can tell which code and which machine produced a number, and
whether the working tree had changes that no commit holds.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance() -> dict:
    """The command line, the git commit (None outside a clone) and whether tracked files
    had uncommitted changes, the versions of Python, torch, numpy (and onnxruntime if it
    is imported), the CPU thread count and the machine."""
    import numpy

    changes = _git("status", "--porcelain", "--untracked-files=no")
    record = {"command": sys.argv, "commit": _git("rev-parse", "HEAD") or None,
              "uncommitted_changes": None if changes is None else bool(changes),
              "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
              "threads": torch.get_num_threads(), "machine": platform.machine(),
              "processor": platform.processor() or None}
    if "onnxruntime" in sys.modules:
        record["onnxruntime"] = sys.modules["onnxruntime"].__version__
    return record


def write_json(path: str | Path, data: object) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (a reader never sees half a
    file), creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
