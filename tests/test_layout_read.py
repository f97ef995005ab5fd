"""Layouts and archives other tools wrote, read by pull, verify, push and
--base (issue 13 item 5): skopeo (an untagged copy, oci-archive), podman
(`podman save --format oci-archive`, a multi-platform manifest list
pushed to a layout: nested indexes and variants), umoci, oras-py, and a
layout holding Docker media types as crane writes them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelimage.cli import main
from modelimage.errors import SourceError
from modelimage.image import open_image
from modelimage.layout import LayoutRef, read_layout
from modelimage.oci import ANNOTATION_REF_NAME

from .tools import need, run

pytestmark = pytest.mark.integration
TARGET = "/models/tiny"


def tiny_model(root: Path, text: str = "tiny") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"architectures": ["TinyForCausalLM"], "which": text}))
    (root / "weights.bin").write_bytes(hashlib.sha256(text.encode()).digest() * 200)
    return root


def files(root: Path) -> dict[str, bytes]:
    """The model's files (pull's own dot-folder left out)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).parts[0].startswith(".modelimage")}


def pull(source: str, dest: Path, *args: str) -> dict[str, bytes]:
    assert main(["pull", source, str(dest), "--path", TARGET, *args]) == 0
    return files(dest)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("src") / "tiny")


@pytest.fixture(scope="module")
def layout(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "out"
    assert main(["build", str(model), "-o", f"oci:{out}:v1"]) == 0
    return out


def test_skopeo_untagged_copy_pulls_verifies_and_pushes(layout, model, registry, tmp_path, capsys):
    """`skopeo copy oci:out:v1 oci:b` writes an index entry without a name."""
    need("skopeo")
    run("skopeo", "copy", "-q", f"oci:{layout}:v1", f"oci:{tmp_path / 'b'}")
    entry = json.loads((tmp_path / "b" / "index.json").read_text())["manifests"]
    assert len(entry) == 1 and ANNOTATION_REF_NAME not in entry[0].get("annotations", {})
    assert pull(f"oci:{tmp_path / 'b'}", tmp_path / "dest") == files(model)
    assert main(["verify", f"oci:{tmp_path / 'b'}", str(tmp_path / "dest"), "--path", TARGET]) == 0
    capsys.readouterr()
    ref = f"{registry.host}/layouts/untagged:v1"
    assert main(["push", f"oci:{tmp_path / 'b'}", ref]) == 0
    pushed = capsys.readouterr().out.strip()
    assert pushed == f"{ref.rsplit(':', 1)[0]}@{entry[0]['digest']}"
    inspected = json.loads(run("skopeo", "inspect", "--tls-verify=false", f"docker://{ref}").stdout)
    assert inspected["Digest"] == entry[0]["digest"]


@pytest.mark.parametrize("tag", [None, "v7"])
def test_skopeo_oci_archive_is_read_in_place(layout, model, registry, tmp_path, capsys, tag):
    need("skopeo")
    archive = tmp_path / "a.tar"
    run("skopeo", "copy", "-q", f"oci:{layout}:v1", f"oci-archive:{archive}" + (f":{tag}" if tag else ""))
    source = f"oci-archive:{archive}" + (f":{tag}" if tag else "")
    assert pull(source, tmp_path / "dest") == files(model)
    assert main(["verify", source, str(tmp_path / "dest"), "--path", TARGET]) == 0
    assert main(["push", source, f"{registry.host}/layouts/archive:{tag or 'latest'}"]) == 0
    digest = capsys.readouterr().out.strip().rsplit("@", 1)[1]
    assert open_image(source).digest == digest
    assert not list(tmp_path.glob("*/")) or {p.name for p in tmp_path.iterdir()} == {"a.tar", "dest"}


def test_podman_save_oci_archive(layout, model, podman_env, tmp_path):
    """podman names the image in the archive by its full reference."""
    name = f"localhost/modelimage-test/{uuid.uuid4().hex[:12]}:v1"
    image = run("podman", "pull", "-q", f"oci:{layout}:v1", env=podman_env).stdout.strip()
    try:
        run("podman", "tag", image, name, env=podman_env)
        run("podman", "save", "-q", "--format", "oci-archive", "-o", str(tmp_path / "p.tar"), name, env=podman_env)
    finally:
        subprocess.run(["podman", "rmi", "-f", name, image], capture_output=True, env=podman_env)
    assert pull(f"oci-archive:{tmp_path / 'p.tar'}", tmp_path / "a") == files(model)
    assert pull(f"oci-archive:{tmp_path / 'p.tar'}:{name}", tmp_path / "b") == files(model)


def test_umoci_layout(model, tmp_path):
    """A layout umoci made from scratch (init, new, unpack, repack)."""
    need("umoci")
    lay = tmp_path / "umoci"
    run("umoci", "init", "--layout", str(lay))
    run("umoci", "new", "--image", f"{lay}:m")
    run("umoci", "unpack", "--rootless", "--image", f"{lay}:m", str(tmp_path / "bundle"))
    shutil.copytree(model, tmp_path / "bundle" / "rootfs" / TARGET.lstrip("/"))
    run("umoci", "repack", "--image", f"{lay}:m", str(tmp_path / "bundle"))
    run("umoci", "tag", "--image", f"{lay}:m", "other")
    assert pull(f"oci:{lay}:m", tmp_path / "dest") == files(model)
    assert pull(f"oci:{lay}:other", tmp_path / "dest2") == files(model)


def test_umoci_insert_layer_without_end_of_archive(model, tmp_path):
    """`umoci insert` (Debian's umoci 0.4.7) writes a gzip layer whose tar
    stops right after the last file's data: no padding, no end-of-archive
    blocks (umoci#436, fixed upstream by umoci#534). umoci, podman and
    containerd read it; pull did not ("the layer ends in the middle of a
    file (truncated blob?)")."""
    need("umoci")
    lay = tmp_path / "umoci"
    run("umoci", "init", "--layout", str(lay))
    run("umoci", "new", "--image", f"{lay}:m")
    run("umoci", "insert", "--image", f"{lay}:m", str(model), TARGET)
    assert pull(f"oci:{lay}:m", tmp_path / "dest") == files(model)
    assert main(["verify", f"oci:{lay}:m", str(tmp_path / "dest"), "--path", TARGET]) == 0


def test_oras_py_layout_from_a_registry(layout, model, registry, tmp_path, capsys):
    """oras-py writes a layout of what it pulls (NewLayoutFromRegistry)."""
    import oras.provider
    from oras.layout.layout import NewLayoutFromRegistry

    ref = f"{registry.host}/layouts/oras:v1"
    assert main(["push", f"oci:{layout}:v1", ref]) == 0
    capsys.readouterr()
    NewLayoutFromRegistry(str(tmp_path / "oras"), oras.provider.Registry(registry.host, insecure=True), ref, tag="v1")
    assert pull(f"oci:{tmp_path / 'oras'}:v1", tmp_path / "dest") == files(model)


@pytest.fixture(scope="module")
def multi_platform(podman_env, tmp_path_factory) -> Path:
    """A podman manifest list of four platforms pushed to a layout: index.json
    -> image index -> one manifest per platform (a file says which)."""
    root = tmp_path_factory.mktemp("mp")
    prefix = f"localhost/modelimage-test/mp-{uuid.uuid4().hex[:12]}"
    platforms = ["linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/arm/v6"]
    names = []
    try:
        run("podman", "manifest", "create", f"{prefix}:list", env=podman_env)
        for i, p in enumerate(platforms):
            ctx = root / f"ctx{i}"
            ctx.mkdir()
            (ctx / "which.txt").write_text(p)
            (ctx / "Containerfile").write_text(f"FROM scratch\nCOPY which.txt {TARGET}/which.txt\n")
            names.append(f"{prefix}:{i}")
            run("podman", "build", "-q", "--no-cache", "--platform", p, "-t", names[-1], str(ctx), env=podman_env)
            os_, arch, *variant = p.split("/")  # podman 4.3 builds arm/v6 as arm/v7: say it when adding
            run("podman", "manifest", "add", "--os", os_, "--arch", arch, *(["--variant", variant[0]] if variant else []),
                f"{prefix}:list", f"containers-storage:{names[-1]}", env=podman_env)
        run("podman", "manifest", "push", "-q", "--all", f"{prefix}:list", f"oci:{root / 'lay'}:v1", env=podman_env)
    finally:
        subprocess.run(["podman", "manifest", "rm", f"{prefix}:list"], capture_output=True, env=podman_env)
        subprocess.run(["podman", "rmi", "-f", *names], capture_output=True, env=podman_env)
    return root / "lay"


@pytest.mark.parametrize("asked, want", [
    ("linux/amd64", "linux/amd64"), ("linux/arm64", "linux/arm64/v8"), ("linux/arm64/v8", "linux/arm64/v8"),
    ("linux/aarch64", "linux/arm64/v8"), ("linux/arm/v7", "linux/arm/v7"), ("linux/arm", "linux/arm/v7"),
    ("linux/arm/v6", "linux/arm/v6"),
])
def test_nested_index_and_variants(multi_platform, tmp_path, asked, want):
    top = json.loads((multi_platform / "index.json").read_text())["manifests"]
    assert [m["mediaType"] for m in top] == ["application/vnd.oci.image.index.v1+json"]
    got = pull(f"oci:{multi_platform}:v1", tmp_path / "d", "--platform", asked)
    assert got == {"which.txt": want.encode()}


@pytest.mark.parametrize("arch, variant", [("amd64", None), ("arm64", None), ("arm64", "v8"), ("arm", "v7"),
                                           ("arm", "v6")])
def test_the_same_platform_choice_as_skopeo(multi_platform, arch, variant):
    """Differential: skopeo (containers/image) and modelimage pick the same image."""
    need("skopeo")
    args = ["--override-os", "linux", "--override-arch", arch] + (["--override-variant", variant] if variant else [])
    config = run("skopeo", *args, "inspect", "--config", "--raw", f"oci:{multi_platform}:v1").stdout.encode()
    ours = open_image(f"oci:{multi_platform}:v1", platform="/".join(filter(None, ["linux", arch, variant])))
    assert ours.manifest["config"]["digest"] == "sha256:" + hashlib.sha256(config).hexdigest()


def test_docker_media_types_in_a_layout(layout, model, registry, tmp_path, capsys):
    """go-containerregistry (crane pull --format=oci) keeps Docker schema 2
    manifests and manifest lists as they are in the layouts it writes."""
    need("skopeo")
    ref = f"{registry.host}/layouts/docker:v1"
    run("skopeo", "copy", "-q", "--dest-tls-verify=false", "--format", "v2s2", f"oci:{layout}:v1", f"docker://{ref}")
    run("skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"dir:{tmp_path / 'dir'}")
    manifest = (tmp_path / "dir" / "manifest.json").read_bytes()
    assert json.loads(manifest)["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    lay = tmp_path / "lay"
    (lay / "blobs" / "sha256").mkdir(parents=True)
    for blob in (tmp_path / "dir").iterdir():
        if len(blob.name) == 64:
            shutil.copy(blob, lay / "blobs" / "sha256" / blob.name)
    digest = hashlib.sha256(manifest).hexdigest()
    (lay / "blobs" / "sha256" / digest).write_bytes(manifest)
    docker_list = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
                              "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                                             "digest": f"sha256:{digest}", "size": len(manifest),
                                             "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    list_digest = hashlib.sha256(docker_list).hexdigest()
    (lay / "blobs" / "sha256" / list_digest).write_bytes(docker_list)
    (lay / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (lay / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": f"sha256:{digest}",
         "size": len(manifest), "annotations": {ANNOTATION_REF_NAME: "image"}},
        {"mediaType": "application/vnd.docker.distribution.manifest.list.v2+json", "digest": f"sha256:{list_digest}",
         "size": len(docker_list), "annotations": {ANNOTATION_REF_NAME: "list"}}]}))
    assert pull(f"oci:{lay}:image", tmp_path / "a", "--platform", "linux/amd64") == files(model)
    assert pull(f"oci:{lay}:list", tmp_path / "b", "--platform", "linux/amd64") == files(model)
    capsys.readouterr()
    assert main(["push", f"oci:{lay}:list", f"{registry.host}/layouts/docker-list:v1"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"@sha256:{list_digest}")


def test_a_base_from_a_multi_platform_layout(multi_platform, model, tmp_path, capsys):
    """--base picks the asked platform's image out of the nested index."""
    out = tmp_path / "out"
    assert main(["build", str(model), "--base", f"oci:{multi_platform}:v1", "--platform", "linux/arm64/v8",
                 "-o", f"oci:{out}:v1"]) == 0
    capsys.readouterr()
    image = open_image(f"oci:{out}:v1")
    assert (image.config["architecture"], image.config.get("variant")) == ("arm64", "v8")
    base = open_image(f"oci:{multi_platform}:v1", platform="linux/arm64")
    assert image.layers[: len(base.layers)] == base.layers
    index = json.loads((out / "index.json").read_text())["manifests"][0]
    assert index["platform"] == {"os": "linux", "architecture": "arm64", "variant": "v8"}


@pytest.fixture(scope="module")
def three_images(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Three different images in one layout: its blobs and their index entries."""
    root = tmp_path_factory.mktemp("three")
    for i in range(3):
        assert main(["build", str(tiny_model(root / f"m{i}", f"model {i}")), "-o", f"oci:{root / 'lay'}:t{i}"]) == 0
    entries = json.loads((root / "lay" / "index.json").read_text())["manifests"]
    for e in entries:
        e["annotations"].pop(ANNOTATION_REF_NAME)
    return root / "lay" / "blobs", entries


TAGS = [None, "v1", "v2", "latest"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(TAGS)), min_size=1, max_size=4),
       asked=st.sampled_from([None, "v1", "v2", "latest", "nope"]))
def test_which_image_a_reference_means_agrees_with_skopeo(three_images, tmp_path_factory, entries, asked):
    """Differential (hypothesis): index.json entries with or without names,
    read by skopeo (containers/image) and by modelimage. Where both answer
    they agree; where they differ it is one of the two documented choices:
    no tag and several images -> modelimage takes the one tagged `latest`
    (skopeo refuses), one tag on two different images -> modelimage refuses
    (skopeo takes the first)."""
    need("skopeo")
    blobs, images = three_images
    lay = tmp_path_factory.mktemp("diff")
    shutil.copytree(blobs, lay / "blobs", copy_function=os.link)
    (lay / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = [{**images[i], "annotations": {ANNOTATION_REF_NAME: tag} if tag else {}} for i, tag in entries]
    (lay / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": index}))
    ref = f"oci:{lay}" + (f":{asked}" if asked else "")
    proc = subprocess.run(["skopeo", "inspect", "--raw", ref], capture_output=True)
    theirs = "sha256:" + hashlib.sha256(proc.stdout).hexdigest() if proc.returncode == 0 else None
    try:
        ours: str | None = read_layout(LayoutRef.parse(ref))[0].digest
    except SourceError:
        ours = None
    if theirs == ours:
        return
    named = [e for e in index if e["annotations"].get(ANNOTATION_REF_NAME) == (asked or "latest")]
    if asked is None and theirs is None:  # several images, no tag: modelimage reads `latest`
        assert len(index) > 1 and ours == named[0]["digest"]
    else:  # one tag, two different images: modelimage will not guess
        assert ours is None and theirs == named[0]["digest"] and len({e["digest"] for e in named}) > 1
