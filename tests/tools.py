"""Helpers for tests that run real external programs."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from modelimage import synth
from modelimage.content import FileRange, Literal, VirtualFile

T = TypeVar("T")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SMALL = synth.LlamaShape(vocab=1024, hidden=256, layers=2, intermediate=512)
# containers.conf for podman on these machines: runc, no rlimits (see ENVIRONMENT.md)
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'


def unavailable(msg: str) -> NoReturn:
    """The test cannot run here (``msg`` says why): a failure under CI
    (where everything a test needs is installed), a skip otherwise."""
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def need(tool: str) -> str:
    """Path of ``tool``; fail under CI, skip otherwise."""
    path = shutil.which(tool)
    if path is None:
        unavailable(f"{tool} is not installed (make test installs it)")
    return path


def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``1m``, ``16m``) mounted at ``where`` (made
    here) for a fixture to yield, unmounted after; needs root (a failure,
    not a skip, under CI=true)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        unavailable("mounting a tmpfs for the full-disk tests needs root")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def header_or_none(read: Callable[[Path], T], path: Path, data: bytes) -> T | None:
    """Fuzzing a codec: ``data`` written to ``path`` and read with ``read``.
    Its result, or None when it refused the file with a FormatError that
    names ``path``; any other exception fails the test."""
    from modelimage.errors import FormatError

    path.write_bytes(data)
    try:
        return read(path)
    except FormatError as e:
        assert str(path) in str(e)
        return None


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output when it fails."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc




def virtual_bytes(vf: VirtualFile) -> bytes:
    """The content of a VirtualFile: its segments, concatenated."""
    out = bytearray()
    for seg in vf.segments:
        if isinstance(seg, Literal):
            out += seg.data
        else:
            assert isinstance(seg, FileRange)
            with open(seg.path, "rb") as f:
                f.seek(seg.offset)
                data = f.read(seg.length)
            assert len(data) == seg.length
            out += data
    assert len(out) == vf.size
    return bytes(out)


def write_virtual(vf: VirtualFile, root: Path) -> Path:
    """Write a VirtualFile under ``root`` (at its name) and return the path."""
    dest = root / vf.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(virtual_bytes(vf))
    return dest


def start_daemon(cmd: list[str], sock: Path, log: Path, env: dict | None = None,
                 timeout: float = 20) -> subprocess.Popen:
    """Start a daemon that listens on the unix socket ``sock``; wait for it."""
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{cmd[0]} did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return proc


def stop_daemon(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def podman_pull_export(ref: str, env: dict, *pull_args: str) -> tuple[str, bytes, float]:
    """``podman pull`` REF, export a container of it as a tar, remove both:
    (image ID, the root filesystem tar, seconds the pull took)."""
    import time

    start = time.monotonic()
    image = run("podman", "pull", "-q", *pull_args, ref, env=env).stdout.strip()
    pull_s = time.monotonic() - start
    try:
        cid = run("podman", "create", image, "/bin/true", env=env).stdout.strip()
        try:
            export = subprocess.run(["podman", "export", cid], capture_output=True, env=env, check=True).stdout
        finally:
            run("podman", "rm", "-f", cid, env=env)
    finally:
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True, env=env)
    return image, export, pull_s
