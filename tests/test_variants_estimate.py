"""Each variant's pull time: ``estimate REF`` of an index of variants (its
manifests) and ``estimate NAME`` of an entry with variants (its plans)
(modelimage.variants.estimate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelimage.estimate import STANDARD_LINKS
from modelimage.variants.estimate import estimate_variants, variant_layers

from .variantkit import QUANTS, cli, push_variants, write_config, write_model


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("variants") / "llama")


@pytest.mark.integration
def test_estimate_ref_gives_each_variants_pull_time(registry, model, tmp_path):
    ref, built = push_variants(registry, model, tmp_path, "estimate/llama")
    rc, out, err = cli("estimate", ref, "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert [v["name"] for v in report["variants"]] == list(QUANTS)
    for v, b in zip(report["variants"], built["variants"]):
        assert v["layers"] == len(b["layers"])
        assert v["image_bytes"] == sum(layer["size"] for layer in b["layers"])
        assert set(v["links"]) == set(STANDARD_LINKS)
    seconds = [v["links"]["100 Mbit/s"]["total_seconds"] for v in report["variants"]]
    assert seconds[0] < seconds[1] < seconds[2]  # more bytes, longer pulls over the same link
    rc, out, _ = cli("estimate", ref, "--bandwidth", "1Gbit/s", "--engine", "podman")
    lines = out.splitlines()
    assert lines[0] == f"{ref}: 3 variants, pulled by podman"
    assert [line.split()[0] for line in lines[2:]] == list(QUANTS)


def test_estimate_name_plans_each_variant(model, tmp_path):
    config = write_config(tmp_path / "modelimage.toml", model)
    found = variant_layers("llama", config=config)
    assert [f.name for f, _ in found] == list(QUANTS)
    # each variant: its own weight layer and the shared small-file layer, not the pool of all three
    assert [len(specs) for _, specs in found] == [2, 2, 2]
    rows = estimate_variants(found, bandwidth=125e6)
    assert [list(r.links) for r in rows] == [["given"]] * 3
    assert rows[0].bytes < rows[2].bytes
    rc, out, err = cli("estimate", "llama", "--config", str(config))
    assert rc == 0 and out.startswith("llama: 3 variants, pulled by containerd"), err


def test_no_variants_no_rows(model):
    assert variant_layers(str(model)) is None
