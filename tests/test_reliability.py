"""Builds that meet trouble: files changing underneath, a full disk, a
build killed mid-write, two builds into one layout at once."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from modelimage.cli import main
from modelimage.errors import SourceError
from modelimage.job import Options, prepare


def one_line_error(capsys) -> str:
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_file_changed_after_inspect_stops_the_build(llama_dir, tmp_path, capsys, monkeypatch):
    """A weight file rewritten between inspect and streaming is refused."""
    d = tmp_path / "m"
    shutil.copytree(llama_dir, d)
    import modelimage.api._write as cli_module

    real_prepare = cli_module.prepare

    def prepare_then_touch(*a, **kw):
        job = real_prepare(*a, **kw)
        target = d / "model-00001-of-00002.safetensors"
        os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
        return job

    monkeypatch.setenv("MODELIMAGE_NO_CACHE", "1")
    monkeypatch.setattr(cli_module, "prepare", prepare_then_touch)
    out = tmp_path / "out"
    assert main(["build", str(d), "-o", f"oci:{out}"]) == 1
    assert "changed while building" in one_line_error(capsys)
    assert not out.exists()


class _FullDisk:
    """A file that fills up after 100 kB (fault injection: ENOSPC)."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, data):
        self.n += len(data)
        if self.n > 100_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


@pytest.mark.parametrize("output", ["oci:{out}", "oci-archive:{out}.tar"])
def test_full_disk_is_one_line_and_leaves_nothing(llama_dir, tmp_path, capsys, monkeypatch, output):
    import modelimage.layerfile as layerfile

    real_fdopen = os.fdopen
    monkeypatch.setenv("MODELIMAGE_NO_CACHE", "1")
    monkeypatch.setattr(os, "fdopen", lambda *a, **kw: _FullDisk(real_fdopen(*a, **kw)))
    written = [0]

    def full_copy(src, dst, count, offset_src=None, offset_dst=None):  # the kernel-copy path fills up too
        written[0] += count
        if written[0] > 100_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(src, dst, count, offset_src, offset_dst)

    real_copy = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", full_copy)
    monkeypatch.setattr(layerfile, "_write_all", lambda fd, data: _FullDisk(None).write(b"x" * 200_000))
    out = tmp_path / "out"
    assert main(["build", str(llama_dir), "-o", output.format(out=out)]) == 1
    assert "No space left on device" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_zero_byte_and_empty_inputs(tmp_path, capsys):
    d = tmp_path / "m"
    d.mkdir()
    assert main(["inspect", str(d)]) == 1
    assert "no files to pack" in one_line_error(capsys)
    (d / "empty.safetensors").write_bytes(b"")
    assert main(["inspect", str(d)]) == 1
    assert "empty.safetensors" in one_line_error(capsys)
    (d / "empty.safetensors").unlink()
    (d / "notes.txt").write_bytes(b"")
    out = tmp_path / "out"
    assert main(["build", str(d), "-o", f"oci:{out}"]) == 0  # an empty non-weight file is just a file
    capsys.readouterr()


_KILL_SCRIPT = """
import sys, time
import modelimage.tarstream as t
real = t._read_range
def slow(*a, **kw):
    for item in real(*a, **kw):
        time.sleep(0.02)
        yield item
t._read_range = slow
from modelimage.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_build_leaves_no_complete_looking_layout_and_rerun_completes(llama_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "MODELIMAGE_NO_CACHE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, "build", str(llama_dir), "-o", f"oci:{out}:v1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30

    def writing() -> bool:
        return bool(list((out / "blobs" / "sha256").glob(".partial-*")))

    while not writing():  # wait until a blob is half-written, then kill
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "index.json").exists() and not (out / "oci-layout").exists()
    assert main(["build", str(llama_dir), "-o", f"oci:{out}:v1"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == ["v1"]
    # the killed run's temporary blob is gone or harmless; every named blob matches its digest
    import hashlib

    for blob in (out / "blobs" / "sha256").iterdir():
        if not blob.name.startswith("."):
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_two_builds_into_one_layout_at_once(llama_dir, gguf_file, tmp_path):
    out = tmp_path / "shared"
    env = {**os.environ, "MODELIMAGE_NO_CACHE": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "modelimage", "build", str(src), "-o", f"oci:{out}:{tag}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for src, tag in ((llama_dir, "a"), (gguf_file, "b"), (llama_dir, "c"))]
    digests = {}
    for p, tag in zip(procs, "abc"):
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr.decode()
        digests[tag] = stdout.decode().strip()
    index = json.loads((out / "index.json").read_text())
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}
    assert tags == digests and digests["a"] == digests["c"]
    need_skopeo = shutil.which("skopeo")
    if need_skopeo:
        for tag in "abc":
            subprocess.run(["skopeo", "inspect", f"oci:{out}:{tag}"], check=True, capture_output=True)


def test_build_refuses_a_source_that_shrank(llama_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(llama_dir, d)
    job = prepare(str(d), Options())
    with open(d / "model-00002-of-00002.safetensors", "r+b") as f:
        f.truncate(100)
    from modelimage.build import build_image
    from modelimage.cache import DigestCache
    from modelimage.layout import LayoutRef, open_sink

    ref = LayoutRef.parse(f"oci:{tmp_path / 'out'}")
    with pytest.raises(SourceError, match="shorter than planned|changed while building"):
        build_image(job.model, job.plan(), open_sink(ref), settings=job.image_settings, reference=str(ref),
                    cache=DigestCache(enabled=False))
    assert not (tmp_path / "out").exists()
