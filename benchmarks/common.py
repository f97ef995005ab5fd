"""What the benchmark scripts share: the repository on sys.path (for the
test registry helper), the modelimage command, a timer."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MI = [sys.executable, "-m", "modelimage"]


def timed(cmd: list[str], env: dict | None = None) -> float:
    """Seconds ``cmd`` takes (it must succeed)."""
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t
