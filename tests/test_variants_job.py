"""Every variant of an entry inspected and planned, and the choice
``render`` makes (modelimage.variants.job): ``inspect NAME``, ``render k8s
NAME --gpu-memory``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from modelimage.errors import VariantError
from modelimage.job import Options, prepare
from modelimage.variants.job import pick_variant, prepare_variants

from .variantkit import QUANTS, cli, write_config, write_model

GIB = 2**30


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("variants")
    return write_config(root / "modelimage.toml", write_model(root / "llama"), "ghcr.io/acme/llama:v2")


def test_inspect_name_lists_each_variants_own_facts(config):
    rc, out, err = cli("inspect", "llama", "--config", str(config), "--json")
    assert rc == 0, err
    variants = json.loads(out)["variants"]
    assert [v["quantization"] for v in variants] == list(QUANTS.values())
    assert len({v["parameters"] for v in variants}) == 1  # not the three files summed
    rc, out, _ = cli("inspect", "llama", "--config", str(config))
    assert out.splitlines()[1].split()[:2] == ["q4_k_m", "Q4_K_M"] and out.splitlines()[1].endswith("default")


@pytest.mark.parametrize("name, gpu, expected", [
    (None, None, "q4_k_m"), ("q8_0", None, "q8_0"), (None, GIB, "f16"), (None, "q8_0", "q8_0"),
    (None, "f16-1", "q8_0"),
])
def test_pick_variant_follows_the_rule(config, name, gpu, expected):
    job = prepare("llama", Options(config=config))
    need = {v.name: v.facts.vram_bytes for v in prepare_variants(job, job.entry.variants)}
    if isinstance(gpu, str):
        gpu = need[gpu.split("-")[0]] - (1 if gpu.endswith("-1") else 0)
    picked, choice = pick_variant(job, name, gpu)
    assert picked.name == expected and choice.variant.name == expected


def test_render_k8s_uses_the_same_choice(config):
    rc, out, err = cli("render", "k8s", "llama", "--config", str(config), "--gpu-memory", "4MB",
                       "--serve-image", "ghcr.io/ggml-org/llama.cpp:server")
    assert rc == 0, err
    assert err.startswith("variant q8_0 (Q8_0") and "the highest precision that fits 4 MB" in err
    deployment = yaml.safe_load(out)
    spec = deployment["spec"]["template"]["spec"]
    assert spec["volumes"][0]["image"]["reference"] == "ghcr.io/acme/llama:v2-q8_0"
    assert "/models/llama/llama-Q8_0.gguf" in spec["containers"][0]["args"]
    rc, out, err = cli("render", "k8s", "llama", "--config", str(config), "--variant", "f16")
    assert rc == 0 and "ghcr.io/acme/llama:v2-f16" in out
    rc, _, err = cli("render", "k8s", "llama", "--config", str(config), "--gpu-memory", "1MB")
    assert rc == 1 and err.startswith("error: llama: no variant fits 1 MB of GPU memory; the smallest, q4_k_m")


def test_a_model_without_variants_must_fit(config):
    job = prepare(str(Path(config).parent / "llama" / "llama-Q8_0.gguf"), Options())
    assert pick_variant(job, None, GIB) is None
    with pytest.raises(VariantError, match="needs ~.* of GPU memory, more than the 1 MB given"):
        pick_variant(job, None, 10**6)
    with pytest.raises(VariantError, match="has no variants"):
        pick_variant(job, "q8_0", None)
