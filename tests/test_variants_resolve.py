"""Variants read back: ``pull REF --variant NAME`` / ``--gpu-memory SIZE``
against the real registry and from a layout, ``--include`` inside a
variant, ``verify --variant``, ``inspect REF`` (modelimage.variants.resolve)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelimage.errors import VariantError
from modelimage.variants.resolve import Picker, on_platform, read_index

from .variantkit import QUANTS, cli, push_variants, sha256_file, write_model

pytestmark = pytest.mark.integration
TOKENIZER = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "README.md"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("variants") / "llama")


@pytest.fixture(scope="module")
def pushed(registry, model, tmp_path_factory):
    return push_variants(registry, model, tmp_path_factory.mktemp("pushed"), "resolve/llama")


@pytest.fixture(scope="module")
def vram(pushed) -> dict[str, int]:
    return {v["name"]: v["vram_bytes"] for v in pushed[1]["variants"]}


def _files(dest: Path) -> set[str]:
    return {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()
            and not p.relative_to(dest).as_posix().startswith(".modelimage-pull")}


# (pull options as a function of the variants' GPU-memory needs) -> the variant pulled, and why
CASES = [
    (lambda v: [], "q4_k_m", "the default (first) variant of 3"),
    (lambda v: ["--variant", "q8_0"], "q8_0", "asked for by name"),
    (lambda v: ["--variant", "F16"], "f16", "asked for by name"),
    (lambda v: ["--gpu-memory", "24GiB"], "f16", "the highest precision that fits"),
    (lambda v: ["--gpu-memory", str(v["f16"])], "f16", "the highest precision that fits"),
    (lambda v: ["--gpu-memory", str(v["f16"] - 1)], "q8_0", "(f16 needs ~"),
    (lambda v: ["--gpu-memory", str(v["q8_0"] - 1)], "q4_k_m", "(q8_0 needs ~"),
]


@pytest.mark.parametrize("options, expected, reason", CASES)
def test_pull_picks_by_name_and_by_gpu_memory(model, pushed, vram, tmp_path, options, expected, reason):
    ref, _ = pushed
    dest = tmp_path / "dest"
    rc, out, err = cli("pull", ref, str(dest), *options(vram))
    assert rc == 0, err
    picked = err.splitlines()[0]
    assert picked.startswith(f"variant {expected} ({QUANTS[expected]}, ~") and reason in picked
    gguf = f"llama-{QUANTS[expected]}.gguf"
    assert _files(dest) == TOKENIZER | {gguf}
    assert sha256_file(dest / gguf) == sha256_file(model / gguf)


@pytest.mark.parametrize("options, message", [
    (lambda v: ["--gpu-memory", str(v["q4_k_m"] - 1)],
     "no variant fits {q4} of GPU memory; the smallest, q4_k_m (Q4_K_M), needs ~{q4}"),
    (lambda v: ["--gpu-memory", "1"], "no variant fits 1 B of GPU memory; the smallest, q4_k_m (Q4_K_M), needs ~"),
    (lambda v: ["--variant", "q2_k"], "no variant 'q2_k' (it has: q4_k_m, q8_0, f16)"),
    (lambda v: ["--variant", "q8_0", "--gpu-memory", "8GiB"], "use either --variant or --gpu-memory, not both"),
    (lambda v: ["--gpu-memory", "lots"], "Invalid value for '--gpu-memory'"),
])
def test_pull_nothing_fits_one_line_nothing_written(pushed, vram, tmp_path, options, message):
    from modelimage.units import format_size

    ref, _ = pushed
    dest = tmp_path / "dest"
    rc, out, err = cli("pull", ref, str(dest), *options(vram))
    assert rc != 0 and message.format(q4=format_size(vram["q4_k_m"])).split("{")[0] in err
    assert "Traceback" not in err
    if "Usage:" not in err:  # click's usage errors come with their usage lines
        assert err.count("\n") == 1
    assert not dest.exists()


def test_include_inside_a_variant(model, pushed, tmp_path):
    ref, _ = pushed
    rc, _, err = cli("pull", ref, str(tmp_path / "d"), "--variant", "q8_0", "--include", "*.gguf")
    assert rc == 0, err
    assert _files(tmp_path / "d") == {"llama-Q8_0.gguf"}
    assert "1 layer fetched, 1 skipped" in err  # the shared tokenizer layer is not fetched
    rc, _, err = cli("pull", ref, str(tmp_path / "t"), "--gpu-memory", "1GB", "--include", "tokenizer*")
    assert rc == 0 and _files(tmp_path / "t") == {"tokenizer.json", "tokenizer_config.json"}


def test_verify_checks_the_variant_pulled(pushed, tmp_path):
    ref, _ = pushed
    dest = tmp_path / "d"
    assert cli("pull", ref, str(dest), "--variant", "f16")[0] == 0
    rc, _, err = cli("verify", ref, str(dest), "--variant", "f16")
    assert rc == 0, err
    rc, out, _ = cli("verify", ref, str(dest))  # the default variant differs
    assert rc == 1 and "missing llama-Q4_K_M.gguf" in out and "extra llama-F16.gguf" in out


def test_a_variant_tag_is_a_single_image(pushed, vram, tmp_path):
    ref, _ = pushed
    q8 = ref.replace(":latest", ":q8_0")
    rc, _, err = cli("pull", q8, str(tmp_path / "a"), "--variant", "f16")
    assert rc != 0 and "a single image, not an index of variants; --variant f16 does not apply (it is q8_0)" in err
    rc, _, err = cli("pull", q8, str(tmp_path / "b"), "--gpu-memory", str(vram["q8_0"] - 1))
    assert rc != 0 and "needs ~" in err and "more than the" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    rc, _, err = cli("pull", q8, str(tmp_path / "c"), "--variant", "Q8_0")
    assert rc == 0 and "llama-Q8_0.gguf" in _files(tmp_path / "c")


def test_pull_from_a_layout_by_gpu_memory(model, tmp_path, vram):
    from .variantkit import write_config

    config = write_config(tmp_path / "modelimage.toml", model)
    assert cli("build", "llama", "--config", str(config), "-o", f"oci:{tmp_path}/oci")[0] == 0
    rc, _, err = cli("pull", f"oci:{tmp_path}/oci", str(tmp_path / "d"), "--gpu-memory", str(vram["q8_0"]))
    assert rc == 0 and err.startswith("variant q8_0 (Q8_0")
    assert "llama-Q8_0.gguf" in _files(tmp_path / "d")


def test_inspect_ref_lists_variants_sizes_and_gpu_memory(pushed, vram):
    ref, result = pushed
    rc, out, err = cli("inspect", ref)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{ref}: an index of 3 variants ({result['digest'][:19]})")
    rows = [line.split() for line in lines[2:5]]
    assert [r[0] for r in rows] == list(QUANTS) and [r[1] for r in rows] == list(QUANTS.values())
    assert lines[2].endswith("default") and "1 layer (" in out and "shared between variants" in out
    rc, out, _ = cli("inspect", ref, "--json")
    view = json.loads(out)
    assert [v["vram_bytes"] for v in view["variants"]] == [vram[n] for n in QUANTS]
    assert [v["digest"] for v in view["variants"]] == [v["digest"] for v in result["variants"]]
    for v, built in zip(view["variants"], result["variants"]):
        assert 0 < v["image_bytes"] - sum(layer["size"] for layer in built["layers"]) < 4096  # + the config
    assert view["shared_layers"] == 1


def test_read_index_of_a_single_image_and_the_picker_without_variants(pushed):
    ref, _ = pushed
    view = read_index(ref.replace(":latest", ":f16"))
    assert view.variants == () and view.annotations["dev.modelimage.variant"] == "f16"
    plain = {"manifests": [{"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
                           {"digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": "arm64"}}]}
    assert Picker("x", platform="linux/arm64")(plain)["digest"] == "sha256:" + "2" * 64
    with pytest.raises(VariantError, match="an index without variants"):
        Picker("x", name="q8_0")(plain)


@pytest.mark.parametrize("platforms, want, expected", [
    (["linux/amd64", "linux/arm64"], "linux/arm64", [1]),
    (["linux/amd64", "linux/amd64"], None, [0, 1]),
    (["linux/arm64", "linux/arm64"], None, [0, 1]),  # nothing runs here: all (files do not run)
    ([None, "linux/arm64"], "linux/arm64", [0, 1]),
])
def test_on_platform(platforms, want, expected):
    entries = [{"digest": str(i), **({"platform": dict(zip(("os", "architecture"), p.split("/")))} if p else {})}
               for i, p in enumerate(platforms)]
    assert [int(e["digest"]) for e in on_platform(entries, want)] == expected


def test_on_platform_asked_for_and_missing():
    with pytest.raises(VariantError, match="no linux/s390x variant in the index"):
        on_platform([{"digest": "0", "platform": {"os": "linux", "architecture": "amd64"}}], "linux/s390x")
