"""What the benchmark scripts share: the repository on sys.path (for the
test registry helper), the modelimage command, a timer, and their section
of docs/benchmarks.md."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MI = [sys.executable, "-m", "modelimage"]
DOC = REPO / "docs" / "benchmarks.md"


def byte_compile(python: str = sys.executable, env: dict[str, str] | None = None) -> None:
    """Byte-compile the modelimage package that ``python`` imports, as ``pip
    install`` does: an editable install under ``PYTHONDONTWRITEBYTECODE=1``
    (set on this machine) keeps no ``.pyc``, so every run compiled its ~120
    modules again (0.15-0.2 s of CPU, a third of a small build's start-up).
    ``env``: the environment to do it in (``PYTHONPATH`` naming another
    checkout compiles that one; None: this process's)."""
    subprocess.run([python, "-c", "import compileall, os, modelimage; "
                    "compileall.compile_dir(os.path.dirname(modelimage.__file__), quiet=2)"], check=True, env=env)


def write_section(name: str, heading: str, block: str) -> None:
    """Put ``block`` between the lines ``<!-- NAME:begin -->`` and
    ``<!-- NAME:end -->`` of docs/benchmarks.md, replacing what was there;
    when they are not there yet, append them under ``heading``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = DOC.read_text()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{block}\n{end}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{heading}\n\n{begin}\n{block}\n{end}\n"
    DOC.write_text(text)


def timed(cmd: list[str], env: dict | None = None) -> float:
    """Seconds ``cmd`` takes (it must succeed)."""
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t
