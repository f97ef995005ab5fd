"""modelimage.filelist: the manifest stays small for any number of files
(issue 14, input 3), and pull, ``--include`` and verify keep working from
the file-list layer. Checked against the real registry, skopeo and podman."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from modelimage import filelist
from modelimage.cli import main
from modelimage.limits import MANIFEST_LIMIT
from modelimage.oci import ANNOTATION_FILES
from modelimage.pull import pull, verify
from modelimage.tarstream import FileDigest, write_layer

from .tools import need, run

N_FILES = 20_000


@pytest.fixture(scope="module")
def many_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with an assets folder of 20,000 small files (as some
    repositories have), and a config."""
    d = tmp_path_factory.mktemp("many") / "assets-model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["Demo"]}))
    for i in range(N_FILES):
        sub = d / "assets" / f"{i // 1000:02d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        (sub / f"token-{i:05d}.txt").write_text(f"{i}\n")
    return d


def test_the_list_layer_round_trips(tmp_path: Path) -> None:
    files = [FileDigest(f"models/x/f{i}", i, "sha256:" + f"{i:064x}") for i in range(3)]
    stream = filelist.list_stream([("sha256:" + "a" * 64, files)], mtime=5)
    sink = io.BytesIO()
    write_layer(stream.entries, sink, mtime=5, compression="none")
    own, by_digest = filelist.read_list_layer([sink.getvalue()])
    assert by_digest == {"sha256:" + "a" * 64: [{"path": "/models/x/f0", "size": 0, "sha256": "sha256:" + "0" * 64},
                                                 {"path": "/models/x/f1", "size": 1, "sha256": "sha256:" + f"{1:064x}"},
                                                 {"path": "/models/x/f2", "size": 2, "sha256": "sha256:" + f"{2:064x}"}]}
    assert own[0]["path"].startswith("/.modelimage/files-") and own[0]["path"].endswith(".json")
    for bad in (b"", b"not a tar" * 100):
        with pytest.raises(ValueError):
            filelist.read_list_layer([bad])


def test_few_files_stay_inline() -> None:
    files = [FileDigest(f"models/x/f{i}", 1, "sha256:" + "0" * 64) for i in range(100)]
    assert not filelist.needs_layer([files])
    assert filelist.needs_layer([files * 60])


def test_twenty_thousand_files_build_push_and_pull(many_files: Path, registry, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], podman_env) -> None:
    """20,000 small files: the lists would make a ~4.5 MB manifest; they go
    to the file-list layer, the manifest stays small, skopeo copies the
    image and podman pulls it, and modelimage's pull, --include and verify
    work from the list."""
    ref = f"{registry.host}/many/assets:v1"
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["build", str(many_files), "--push", ref, "--json"]) == 0
    built = json.loads(out.getvalue())
    capsys.readouterr()
    # the manifest: small, every layer but the list without a per-file annotation
    skopeo = need("skopeo")
    raw = run(skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}").stdout
    assert len(raw) < MANIFEST_LIMIT // 100, len(raw)
    manifest = json.loads(raw)
    lists = [la for la in manifest["layers"] if filelist.ANNOTATION_FILELIST in la.get("annotations", {})]
    assert len(lists) == 1 and lists[0] is manifest["layers"][-1]
    assert not any(ANNOTATION_FILES in la.get("annotations", {}) for la in manifest["layers"])
    assert sum(len(layer["files"]) for layer in built["layers"]) == N_FILES + 1 + 1  # + config.json + the list
    # independent clients take it: skopeo copies every blob (digests checked), podman pulls it
    run(skopeo, "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'copy'}:v1")
    podman = need("podman")
    run(podman, "pull", "--tls-verify=false", ref, env=podman_env)
    run(podman, "rmi", "-f", ref, env=podman_env)

    # pull: every file, not the list
    dest = tmp_path / "dest"
    result = pull(ref, dest)
    assert len(result.files) == N_FILES + 1
    assert (dest / "assets" / "07" / "token-07123.txt").read_text() == "7123\n"
    assert not (dest / ".modelimage").exists()
    assert verify(ref, dest).ok
    os.unlink(dest / "assets" / "00" / "token-00001.txt")
    bad = verify(ref, dest)
    assert bad.missing == ("assets/00/token-00001.txt",)
    # --include: only the layers holding the wanted files
    some = tmp_path / "some"
    result = pull(ref, some, include=["config.json"])
    assert sorted(p.name for p in some.iterdir() if not p.name.startswith(".")) == ["config.json"]
    assert result.layers_fetched == 1
