"""``modelimage build`` (modelimage/cli/build.py): layouts and archives, determinism, errors that leave nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from modelimage.cli import main
from modelimage.errors import SourceError
from tests.clikit import (  # noqa: F401  (fixtures)
    EPOCH,
    blob,
    clean_env,
    error_line,
    layer_tars,
    llama,
    manifest_of,
    models,
    nothing_left,
    run,
    run_json,
    tagged,
)


def test_build_oci_layout(llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "layout"
    d = run_json("build", str(llama), "-o", f"oci:{out}:v1")
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    digest, manifest = manifest_of(out, "v1")
    assert d["digest"] == digest
    assert d["reference"] == f"oci:{out}:v1"
    assert manifest["schemaVersion"] == 2
    assert [layer["digest"] for layer in manifest["layers"]] == [layer["digest"] for layer in d["layers"]]
    config = json.loads(blob(out, manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == [layer["diff_id"] for layer in d["layers"]]
    assert config["created"] == "1970-01-01T00:00:00Z"
    assert config["config"]["WorkingDir"] == "/models/llama"
    # the layers hold the model, byte for byte, under the target
    seen = {}
    for tf in layer_tars(out, manifest):
        for m in tf.getmembers():
            assert m.mtime == 0 and m.uid == 0 and m.gid == 0
            if m.isfile():
                seen[m.name] = tf.extractfile(m).read()
    assert seen == {f"models/llama/{p.name}": p.read_bytes() for p in llama.iterdir()}

    # without --json: the digest alone on stdout, a note on stderr
    result = run("build", str(llama), "-o", f"oci:{out}:v2")
    assert result.stdout == digest + "\n"
    assert "wrote" in result.stderr
    assert tagged(out, "v2")["digest"] == digest
    assert tagged(out, "v1")["digest"] == digest  # the other tag is kept


def test_build_is_deterministic_across_copies(llama: Path, tmp_path: Path) -> None:
    a = shutil.copytree(llama, tmp_path / "a" / "llama")
    b = shutil.copytree(llama, tmp_path / "b" / "llama")
    for i, p in enumerate(sorted(b.rglob("*"))):
        os.utime(p, (1_000_000 + i, 2_000_000_000 - i))
    os.utime(b, (5, 5))
    ra = run_json("build", str(a), "-o", f"oci:{tmp_path / 'out-a'}")
    rb = run_json("build", str(b), "-o", f"oci:{tmp_path / 'out-b'}")
    assert ra["digest"] == rb["digest"]
    assert ra["layers"] == rb["layers"]
    assert manifest_of(tmp_path / "out-a", "latest")[0] == ra["digest"]
    # same source, built again into the same layout: same digest
    again = run_json("build", str(a), "-o", f"oci:{tmp_path / 'out-a'}")
    assert again["digest"] == ra["digest"]


def test_source_date_epoch(llama: Path, tmp_path: Path) -> None:
    plain = run_json("build", str(llama), "-o", f"oci:{tmp_path / 'plain'}")
    dated = run_json("build", str(llama), "-o", f"oci:{tmp_path / 'dated'}", env={"SOURCE_DATE_EPOCH": str(EPOCH)})
    assert dated["digest"] != plain["digest"]
    # the file contents are the same, only the metadata moved
    assert [[f["sha256"] for f in layer["files"]] for layer in dated["layers"]] == [
        [f["sha256"] for f in layer["files"]] for layer in plain["layers"]]
    again = run_json("build", str(llama), "-o", f"oci:{tmp_path / 'again'}", env={"SOURCE_DATE_EPOCH": str(EPOCH)})
    assert again["digest"] == dated["digest"]
    _, manifest = manifest_of(tmp_path / "dated", "latest")
    for tf in layer_tars(tmp_path / "dated", manifest):
        members = tf.getmembers()
        assert members
        assert {m.mtime for m in members} == {EPOCH}
    config = json.loads(blob(tmp_path / "dated", manifest["config"]["digest"]))
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert all(h["created"] == "2023-11-14T22:13:20Z" for h in config["history"])
    assert manifest["annotations"]["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"


def test_oci_archive_matches_layout(llama: Path, tmp_path: Path) -> None:
    layout = run_json("build", str(llama), "-o", f"oci:{tmp_path / 'layout'}:t")
    archive = tmp_path / "sub" / "model.tar"
    result = run("build", str(llama), "-o", f"oci-archive:{archive}:t")
    assert result.stdout.strip() == layout["digest"]
    assert tarfile.is_tarfile(archive)
    with tarfile.open(archive) as tf:
        names = tf.getnames()
        assert "index.json" in names and "oci-layout" in names
        assert all(n in ("blobs", "index.json", "oci-layout") or n.startswith("blobs/") for n in names)
        tf.extractall(tmp_path / "unpacked", filter="data")
    assert not list(archive.parent.glob(".*partial*"))
    digest, manifest = manifest_of(tmp_path / "unpacked", "t")
    assert digest == layout["digest"]
    # every blob in the archive is there once and is what its name says
    blobs = sorted(p.name for p in (tmp_path / "unpacked" / "blobs" / "sha256").iterdir())
    expected = sorted({digest.split(":")[1], manifest["config"]["digest"].split(":")[1],
                       *(layer["digest"].split(":")[1] for layer in manifest["layers"])})
    assert blobs == expected
    for name in blobs:
        blob(tmp_path / "unpacked", "sha256:" + name)


def test_gzip_build(llama: Path, tmp_path: Path) -> None:
    d = run_json("build", str(llama), "-o", f"oci:{tmp_path / 'gz'}", "--compression", "gzip")
    _, manifest = manifest_of(tmp_path / "gz", "latest")
    assert {layer["mediaType"] for layer in manifest["layers"]} == {"application/vnd.oci.image.layer.v1.tar+gzip"}
    assert all(layer["digest"] != layer["diff_id"] for layer in d["layers"])
    for layer in layer_tars(tmp_path / "gz", manifest):
        assert layer.getmembers()


def test_named_model_from_config(llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copytree(llama, proj / "weights" / "llama")
    cfg = proj / "modelimage.toml"
    cfg.write_text(
        '[models.tiny-llama]\n'
        'source = "weights/llama"\n'  # relative to the toml file
        'target = "/opt/tiny"\n'
        'max_layer_size = "1MB"\n'
        'exclude = ["*.md"]\n'
        'tag = "v3"\n'
    )
    p = run_json("plan", "tiny-llama", "--config", str(cfg))
    assert p["target"] == "/opt/tiny"
    assert p["max_layer_size"] == 1_000_000
    assert p["reshards"]
    assert all(layer["size"] <= 1_000_000 for layer in p["layers"])
    assert not any(f.endswith(".md") for layer in p["layers"] for f in layer["files"])
    # the command line wins over the entry
    p2 = run_json("plan", "tiny-llama", "--config", str(cfg), "--max-layer-size", "2MB", "--target", "/x")
    assert (p2["target"], p2["max_layer_size"]) == ("/x", 2_000_000)

    # -o oci:DIR without a TAG: the entry's tag (issue 16), an explicit one wins
    d = run_json("build", "tiny-llama", "--config", str(cfg), "-o", f"oci:{tmp_path / 'out'}")
    _, manifest = manifest_of(tmp_path / "out", "v3")
    run("build", "tiny-llama", "--config", str(cfg), "-o", f"oci:{tmp_path / 'out'}:mine")
    assert tagged(tmp_path / "out", "mine")["digest"] == d["digest"]
    assert manifest["annotations"]["dev.modelimage.name"] == "tiny-llama"
    assert manifest["annotations"]["dev.modelimage.target"] == "/opt/tiny"
    assert all(layer["size"] <= 1_000_000 for layer in manifest["layers"])
    files = [f["path"] for layer in d["layers"] for f in layer["files"]]
    assert files and all(f.startswith("/opt/tiny/") for f in files)
    assert "/opt/tiny/model-00001-of-00004.safetensors" in files

    # ./modelimage.toml is read without --config; default output oci:build/NAME:TAG
    monkeypatch.chdir(proj)
    result = run("build", "tiny-llama")
    assert tagged(proj / "build" / "tiny-llama", "v3")["digest"] == result.stdout.strip() == d["digest"]


@pytest.fixture
def truncated(llama: Path, tmp_path: Path) -> Path:
    d = shutil.copytree(llama, tmp_path / "broken")
    f = d / "model-00002-of-00002.safetensors"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    return d


@pytest.mark.parametrize("command", ["inspect", "plan", "build"])
@pytest.mark.parametrize("output", ["oci:{out}/layout", "oci-archive:{out}/image.tar"])
def test_truncated_safetensors(truncated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               command: str, output: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = [command, str(truncated)] + (["-o", output.format(out=out)] if command == "build" else [])
    assert main(args) == 1
    line = error_line(capsys)
    assert line.startswith("error: ")
    assert "model-00002-of-00002.safetensors" in line
    nothing_left(out)
    nothing_left(Path.cwd())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["build", "{tmp}/nope", "-o", "oci:{out}/x"], "nope: no such file or folder"),
        (["inspect", "{tmp}/nope"], "nope: no such file or folder"),
        (["inspect", "nope"], "nope: no such file, folder or named model (no modelimage.toml here)"),
        (["build", "{llama}", "-o", "bogus:{out}/x"], "expected oci:DIR[:TAG] or oci-archive:FILE[:TAG]"),
        (["build", "{llama}", "-o", "oci:"], "expected oci:DIR[:TAG]"),
        (["build", "{llama}", "-o", "oci:{out}/x:bad tag!"], "is not a valid tag"),
        (["build", "{llama}", "-o", "oci:{out}/x", "--platform", "amd64"], "expected OS/ARCH"),
        (["build", "{llama}", "-o", "oci:{out}/x", "--target", "/a/../b"], "must not contain '..'"),
        (["build", "{llama}", "-o", "oci:{out}/x", "--max-layer-size", "100KB"], "--max-layer-size"),
        (["plan", "{llama}", "--max-layer-size", "100KB"], "cannot be split"),
        (["build", "{llama}", "--config", "{tmp}/missing.toml", "-o", "oci:{out}/x"], "missing.toml: no such file"),
    ],
)
def test_bad_input_is_one_error_line(llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     args: list[str], expected: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    argv = [a.format(tmp=tmp_path, out=out, llama=llama) for a in args]
    assert main(argv) == 1
    line = error_line(capsys)
    assert line.startswith("error: ")
    assert expected in line
    nothing_left(out)
    nothing_left(Path.cwd())


def test_bad_source_date_epoch(llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert main(["build", str(llama), "-o", f"oci:{tmp_path}/x"]) == 1
    assert error_line(capsys).startswith("error: SOURCE_DATE_EPOCH='yesterday'")
    assert not (tmp_path / "x").exists()


class _Boom:
    """Make the second layer fail half-way, as if a source changed under us."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, 0

    def __call__(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.calls == 2:
            return self._fail()
        return self.real(*args, **kw)

    @staticmethod
    def _fail() -> Any:
        yield b"x" * 1000
        raise SourceError("model-00002-of-00002.safetensors: changed while building")


class _BoomFd:
    """The same fault for layers the kernel copies into the blob file."""

    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, 0

    def __call__(self, stream: Any, digester: Any, fd: int, progress: Any = None) -> Any:
        self.calls += 1
        if self.calls == 2:
            os.write(fd, b"x" * 1000)
            raise SourceError("model-00002-of-00002.safetensors: changed while building")
        return self.real(stream, digester, fd, progress)


def _break_second_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    import modelimage.layout.blobs as blobs

    monkeypatch.setenv("MODELIMAGE_NO_CACHE", "1")
    monkeypatch.setattr(blobs, "blob_chunks", _Boom(blobs.blob_chunks))
    monkeypatch.setattr(blobs, "write_layer_fd", _BoomFd(blobs.write_layer_fd))


@pytest.mark.parametrize("output", ["oci:{out}/deep/layout", "oci:{out}/layout", "oci-archive:{out}/image.tar",
                                    "oci-archive:{out}/a/b/image.tar"])
def test_failed_build_leaves_nothing(llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch, output: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _break_second_layer(monkeypatch)
    assert main(["build", str(llama), "-o", output.format(out=out)]) == 1
    assert "changed while building" in error_line(capsys)
    leftovers = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert leftovers == [], leftovers


def test_failed_build_keeps_an_existing_layout(llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "layout"
    good = run_json("build", str(llama), "-o", f"oci:{out}:good")
    before = sorted(p.name for p in (out / "blobs" / "sha256").iterdir())
    _break_second_layer(monkeypatch)
    assert main(["build", str(llama), "-o", f"oci:{out}:bad"]) == 1
    error_line(capsys)
    assert sorted(p.name for p in (out / "blobs" / "sha256").iterdir()) == before  # no partial blobs
    assert tagged(out, "good")["digest"] == good["digest"]
    assert "bad" not in (out / "index.json").read_text()


def test_existing_non_layout_directory_is_refused(llama: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "notalayout"
    out.mkdir()
    (out / "index.json").write_text("this is not json")
    assert main(["build", str(llama), "-o", f"oci:{out}"]) == 1
    assert "not an OCI image index" in error_line(capsys)
    assert (out / "index.json").read_text() == "this is not json"


def test_a_layout_build_loads_no_http_client_templates_or_hub(llama: Path, tmp_path: Path) -> None:
    """Start-up is most of what a small build costs (issue 20: raw formats
    at copy speed): a build into a layout or an archive, in every format,
    imports neither httpx (the registry transport, ~0.15 s) nor jinja2
    (render) nor huggingface_hub; each still writes its image."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from modelimage.cli import main\n"
            "for i, fmt in enumerate(('image', 'modelpack', 'docker-model')):\n"
            "    for out in (f'oci:{sys.argv[2]}/layout-{i}:v1', f'oci-archive:{sys.argv[2]}/archive-{i}.tar:v1'):\n"
            "        assert main(['build', sys.argv[1], '--format', fmt, '-o', out, '-q']) == 0, (fmt, out)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'jinja2', 'huggingface_hub')))\n")
    result = subprocess.run([sys.executable, "-c", code, str(llama), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
    assert sorted(p.name for p in tmp_path.glob("[al]*-*")) == [
        "archive-0.tar", "archive-1.tar", "archive-2.tar", "layout-0", "layout-1", "layout-2"]
