"""``modelimage build NAME`` for a model with variants: one OCI image index,
one manifest and one tag per variant, shared files in identical layers,
stored and pushed once; read back with skopeo, podman and oras-py
(modelimage.variants.build, .job, .layers)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from modelimage.cli import main
from modelimage.job import Options, prepare
from modelimage.oci import MEDIA_TYPE_INDEX
from modelimage.variants.job import prepare_variants
from modelimage.variants.layers import group_shared
from modelimage.variants.spec import VariantSpec, parse_option

from .tools import need, podman_pull_export, run
from .variantkit import QUANTS, blob_puts, sha256_file, write_config, write_model

SPECS = parse_option([f"{name}=*{quant}.gguf" for name, quant in QUANTS.items()])


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("variants") / "llama")


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    """The index written to a layout from a modelimage.toml entry with three variants."""
    root = tmp_path_factory.mktemp("built")
    config = write_config(root / "modelimage.toml", model)
    layout = root / "oci"
    out, err = io.StringIO(), io.StringIO()
    from contextlib import redirect_stderr, redirect_stdout

    with redirect_stdout(out), redirect_stderr(err):
        assert main(["build", "llama", "--config", str(config), "-o", f"oci:{layout}", "--json"]) == 0
    return layout, json.loads(out.getvalue())


def _blob(layout: Path, digest: str) -> dict:
    return json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())


def test_plans_share_small_files_and_own_weights(model):
    variants = prepare_variants(prepare(str(model), Options(name="llama")), SPECS)
    assert [v.name for v in variants] == list(QUANTS)
    assert [v.facts.quantization for v in variants] == list(QUANTS.values())
    assert len({v.facts.parameters for v in variants}) == 1  # one model at three precisions
    assert variants[0].facts.vram_bytes < variants[1].facts.vram_bytes < variants[2].facts.vram_bytes
    small = [[layer.entries for layer in v.plan.layers if layer.kind == "files"] for v in variants]
    assert small[0] == small[1] == small[2]  # the same tar entries: the same layer
    for v, quant in zip(variants, QUANTS.values()):
        weights = [e.content.name for layer in v.plan.layers if layer.kind == "weights" for e in layer.entries]
        assert weights == [f"llama-{quant}.gguf"]
        assert all(layer.entries[0].path.startswith("models/llama/") for layer in v.plan.layers)


def test_a_variants_own_small_file_gets_a_layer_of_its_own(model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in model.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    (src / "q8-notes.md").write_text("only in q8_0\n")
    specs = (VariantSpec("q4_k_m", ("*Q4_K_M.gguf",)), VariantSpec("q8_0", ("*Q8_0.gguf", "q8-*")))
    q4, q8 = prepare_variants(prepare(str(src), Options(name="llama")), specs)
    q4_small = [layer for layer in q4.plan.layers if layer.kind == "files"]
    q8_small = [layer for layer in q8.plan.layers if layer.kind == "files"]
    assert len(q4_small) == 1 and len(q8_small) == 2
    assert q8_small[0].entries == q4_small[0].entries  # the shared group first, identical
    assert [e.content.name for e in q8_small[1].entries] == ["q8-notes.md"]
    # without the regrouping, the notes would have changed the shared layer
    assert "q8-notes.md" in [e.content.name for e in q8.job.plan().layers[-1].entries]


def test_grouping_gives_up_when_layers_would_not_fit(model):
    job = prepare(str(model), Options(name="llama"))
    plan = job.plan()
    tight = type(plan)(plan.layers, type(plan.settings)(**{**plan.settings.__dict__, "max_layers": len(plan.layers)}),
                       plan.reshards)
    regrouped = group_shared(tight, lambda e: (e.content.name,), ["a"])  # one group per file: too many layers
    assert regrouped is tight


@pytest.mark.integration
def test_layout_index_tags_and_annotations(built):
    layout, result = built
    index_json = json.loads((layout / "index.json").read_bytes())
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index_json["manifests"]}
    assert set(tags) == {"latest", *QUANTS}
    assert tags["latest"]["mediaType"] == MEDIA_TYPE_INDEX and tags["latest"]["digest"] == result["digest"]
    index = _blob(layout, result["digest"])
    assert [m["annotations"]["dev.modelimage.variant"] for m in index["manifests"]] == list(QUANTS)
    for entry, (name, quant) in zip(index["manifests"], QUANTS.items()):
        assert tags[name]["digest"] == entry["digest"]
        assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
        ann = entry["annotations"]
        assert ann["dev.modelimage.quantization"] == quant and ann["dev.modelimage.format"] == "gguf"
        manifest = _blob(layout, entry["digest"])
        assert manifest["annotations"]["dev.modelimage.variant"] == name
        assert int(ann["dev.modelimage.parameters"]) == int(manifest["annotations"]["dev.modelimage.parameters"])
        assert ann["dev.modelimage.vram-bytes"] == manifest["annotations"]["dev.modelimage.vram-bytes"]
    # skopeo reads the index and the variants by tag
    need("skopeo")
    raw = json.loads(run("skopeo", "inspect", "--raw", f"oci:{layout}:latest").stdout)
    assert raw["manifests"] == index["manifests"]
    q8 = json.loads(run("skopeo", "inspect", f"oci:{layout}:q8_0").stdout)
    assert q8["Labels"]["dev.modelimage.quantization"] == "Q8_0"


@pytest.mark.integration
def test_layout_stores_shared_layers_once_and_says_what_it_saved(built):
    layout, result = built
    layers = [layer for v in result["variants"] for layer in v["layers"]]
    digests = {layer["digest"] for layer in layers}
    assert len(layers) == 6 and len(digests) == 4  # 3 weight layers + 1 shared small layer
    assert result["shared_layers"] == 1
    shared = next(layer for layer in layers if sum(x["digest"] == layer["digest"] for x in layers) == 3)
    assert result["saved_bytes"] == 2 * shared["size"]
    assert [layer["action"] for layer in result["variants"][1]["layers"]].count("exists") == 1
    on_disk = {p.name for p in (layout / "blobs" / "sha256").iterdir()}
    configs = {_blob(layout, v["digest"])["config"]["digest"] for v in result["variants"]}
    assert on_disk == {d.split(":")[1] for d in digests | configs | {v["digest"] for v in result["variants"]}
                       | {result["digest"]}}


@pytest.mark.integration
def test_tags_follow_the_index_tag(model, tmp_path, capsys):
    assert main(["build", str(model), "--name", "llama", *[f"--variant={s.name}={s.include[0]}" for s in SPECS],
                 "-o", f"oci:{tmp_path}/o:v1"]) == 0
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]
            for m in json.loads((tmp_path / "o" / "index.json").read_bytes())["manifests"]}
    assert tags == {"v1", "v1-q4_k_m", "v1-q8_0", "v1-f16"}
    err = capsys.readouterr().err
    assert "an index of 3 variants" in err and "1 shared layer stored once" in err and "saved" in err


@pytest.mark.parametrize("args, message", [
    (["--variant", "q2=*Q2_K.gguf"], "variant q2: include *Q2_K.gguf matches none of its"),
    (["--variant", "q4=*Q4_K_M.gguf", "--variant", "also=*Q4_K_M.gguf"], "variants q4 and also hold the same files"),
    (["--variant", "q4"], "expected NAME=GLOB"),
    (["--variant", "q4=*Q4_K_M.gguf", "-o", "oci-archive:{tmp}/a.tar"], "an oci-archive holds one image"),
])
def test_bad_variants_one_line_nothing_written(model, tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = tmp_path / "out"
    rc = main(["build", str(model), *args, *(["-o", f"oci:{out}"] if "-o" not in args else [])])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert rc != 0 and len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "a.tar").exists()


@pytest.fixture(scope="module")
def registry():
    """A registry of this module's own: counting blob PUTs needs one that no
    other module pushed the same blobs to (those would be mounted, not sent)."""
    from .registry import start_registry

    reg = start_registry()
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def pushed(registry, model, tmp_path_factory):
    """The three variants pushed to the real registry under vt/llama:latest."""
    root = tmp_path_factory.mktemp("pushed")
    ref = f"{registry.host}/variants/llama:latest"
    config = write_config(root / "modelimage.toml", model, ref)
    out, err = io.StringIO(), io.StringIO()
    from contextlib import redirect_stderr, redirect_stdout

    with redirect_stdout(out), redirect_stderr(err):
        assert main(["build", "llama", "--config", str(config), "--push", "--json"]) == 0
    return ref, json.loads(out.getvalue())


@pytest.mark.integration
def test_push_uploads_shared_layers_once(registry, pushed):
    ref, result = pushed
    puts = blob_puts(registry.log.read_text(), "variants/llama")
    layers = {layer["digest"] for v in result["variants"] for layer in v["layers"]}
    assert layers <= set(puts) and all(puts[d] == 1 for d in layers)
    assert len(layers) == 4 and result["shared_layers"] == 1
    assert result["reference"] == f"{registry.host}/variants/llama@{result['digest']}"


@pytest.mark.integration
def test_skopeo_sees_the_index_annotations_and_every_tag(registry, pushed):
    ref, result = pushed
    need("skopeo")
    raw = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}").stdout)
    assert raw["mediaType"] == MEDIA_TYPE_INDEX
    entries = {m["annotations"]["dev.modelimage.variant"]: m for m in raw["manifests"]}
    assert list(entries) == list(QUANTS)
    for v in result["variants"]:
        ann = entries[v["name"]]["annotations"]
        assert entries[v["name"]]["digest"] == v["digest"]
        assert ann == {"dev.modelimage.variant": v["name"], "dev.modelimage.quantization": v["quantization"],
                       "dev.modelimage.parameters": str(v["parameters"]), "dev.modelimage.bytes": str(v["bytes"]),
                       "dev.modelimage.vram-bytes": str(v["vram_bytes"]), "dev.modelimage.format": "gguf"}
        tagged = run("skopeo", "inspect", "--raw", "--tls-verify=false",
                     f"docker://{registry.host}/variants/llama:{v['name']}").stdout
        assert json.loads(tagged)["annotations"]["dev.modelimage.variant"] == v["name"]


@pytest.mark.integration
def test_podman_pulls_the_index_as_the_default_variant(model, pushed, podman_env):
    ref, result = pushed
    need("podman")
    _, export, _ = podman_pull_export(ref, podman_env, "--tls-verify=false")
    with tarfile.open(fileobj=io.BytesIO(export)) as tar:
        names = {m.name.lstrip("./") for m in tar.getmembers() if m.isfile()}
        data = tar.extractfile("models/llama/llama-Q4_K_M.gguf").read()  # type: ignore[union-attr]
    assert "models/llama/llama-Q8_0.gguf" not in names and "models/llama/tokenizer.json" in names
    assert "sha256:" + __import__("hashlib").sha256(data).hexdigest() == sha256_file(model / "llama-Q4_K_M.gguf")


@pytest.mark.integration
def test_oras_pulls_a_variant_by_digest(registry, model, pushed, tmp_path):
    import oras.provider

    ref, result = pushed
    q8 = next(v for v in result["variants"] if v["name"] == "q8_0")
    client = oras.provider.Registry(hostname=registry.host, insecure=True)
    paths = client.pull(target=f"{registry.host}/variants/llama@{q8['digest']}", outdir=str(tmp_path))
    files = {}
    for p in paths:
        with tarfile.open(p) as tar:
            for m in tar.getmembers():
                if m.isfile():
                    files[m.name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    assert set(files) == {f"models/llama/{n}" for n in
                          ("llama-Q8_0.gguf", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                           "README.md")}
    digest = "sha256:" + __import__("hashlib").sha256(files["models/llama/llama-Q8_0.gguf"]).hexdigest()
    assert digest == sha256_file(model / "llama-Q8_0.gguf")


def test_a_weight_file_no_variant_claims_is_left_out_and_said(model, tmp_path, capsys):
    assert main(["build", str(model), "--name", "llama", "--variant", "q4=*Q4_K_M.gguf", "--variant",
                 "q8=*Q8_0.gguf", "-o", f"oci:{tmp_path}/o", "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning: llama-F16.gguf: a weight file no variant's include matches; left out of every variant" \
        in captured.err
    result = json.loads(captured.out)
    files = {f["path"] for v in result["variants"] for layer in v["layers"] for f in layer["files"]}
    assert "/models/llama/llama-F16.gguf" not in files


@pytest.mark.integration
def test_containerd_unpacks_the_default_variant(pushed, containerd, tmp_path):
    """containerd (what Kubernetes nodes run) matches the platform and
    unpacks the first entry of those that match: the default variant. (ctr's
    pull fetches every entry that matches the platform first: ctr fetches
    without a limit, the CRI's pull takes one manifest.)"""
    ref, result = pushed
    run("ctr", "--address", containerd, "images", "pull", "--plain-http", ref)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        run("ctr", "--address", containerd, "images", "mount", ref, str(mnt))
        try:
            files = {p.name for p in (mnt / "models" / "llama").iterdir()}
        finally:
            run("ctr", "--address", containerd, "images", "unmount", "--rm", str(mnt))
        assert "llama-Q4_K_M.gguf" in files and "llama-Q8_0.gguf" not in files and "tokenizer.json" in files
    finally:
        run("ctr", "--address", containerd, "images", "rm", "--sync", ref)
