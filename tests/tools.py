"""Helpers for tests that run real external programs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from modelimage import synth

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SMALL = synth.LlamaShape(vocab=1024, hidden=256, layers=2, intermediate=512)


def need(tool: str) -> str:
    """Path of ``tool``; fail under CI, skip otherwise."""
    path = shutil.which(tool)
    if path is None:
        msg = f"{tool} is not installed (make test installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output when it fails."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


