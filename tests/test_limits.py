"""The registry limits table and the preflight (pure)."""

from __future__ import annotations

import pytest

from modelimage.errors import ConfigError, LayerTooLarge, PlanError
from modelimage.limits import MANIFEST_LIMIT, LayerFacts, check, limits_for

GB, MIB = 10**9, 2**20


@pytest.mark.parametrize(("host", "name", "max_layer", "chunked"), [
    ("ghcr.io", "GitHub Container Registry", 10 * GB, True),
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com", "Amazon ECR", 52_000 * MIB, True),
    ("public.ecr.aws", "Amazon ECR Public", 10_000 * MIB, True),
    ("acme.azurecr.io", "Azure Container Registry", 200 * 2**30, True),
    ("europe-west4-docker.pkg.dev", "Google Artifact Registry", None, False),
    ("gcr.io", "Google Artifact Registry", None, False),
    ("docker.io", "Docker Hub", 10 * GB, True),
    ("quay.io", "Quay.io", 10 * GB, True),
    ("127.0.0.1:5000", "127.0.0.1:5000", None, True),
    ("GHCR.IO", "GitHub Container Registry", 10 * GB, True),
])
def test_table(host, name, max_layer, chunked):
    lim = limits_for(host)
    assert (lim.name, lim.max_layer_size, lim.chunked_uploads) == (name, max_layer, chunked)
    assert lim.max_layers == 125 and lim.max_manifest_size == MANIFEST_LIMIT
    assert lim.source


def test_override_from_config():
    lim = limits_for("harbor.acme.com:8443", {"harbor.acme.com": {"max_layer_size": "5GB", "name": "Harbor"}})
    assert lim.max_layer_size == 5 * GB and lim.name == "Harbor" and "overridden" in lim.source
    with pytest.raises(ConfigError, match="unknown key"):
        limits_for("h", {"h": {"max_layer_sise": "5GB"}})
    with pytest.raises(ConfigError, match="not valid"):
        limits_for("h", {"h": {"max_layers": -1}})


@pytest.mark.parametrize(("layers", "manifest", "base", "error", "match"), [
    ([11 * GB], 1000, 0, LayerTooLarge, r"layer 1 \(w\) is 11 GB; ghcr\.io .* at most 10 GB .* --max-layer-size 10GB"),
    ([GB] * 126, 1000, 0, PlanError, "126 layers.*at most 125"),
    ([GB] * 100, 1000, 30, PlanError, r"130 layers \(30 from the base\)"),
    ([GB], 5 * MIB, 0, PlanError, "manifest would be"),
])
def test_preflight_refuses(layers, manifest, base, error, match):
    with pytest.raises(error, match=match) as e:
        check("ghcr.io", limits_for("ghcr.io"), [LayerFacts("w", s) for s in layers], manifest_size=manifest,
              base_layers=base)
    assert "\n" not in str(e.value)


def test_upload_timeout_warning():
    facts = [LayerFacts("w", 9 * GB)]
    assert check("ghcr.io", limits_for("ghcr.io"), facts, manifest_size=1000) == []  # no bandwidth: no guess
    warnings = check("ghcr.io", limits_for("ghcr.io"), facts, manifest_size=1000, upload_bps=12.5e6)
    assert len(warnings) == 1 and "10.0 min" in warnings[0] and "--max-layer-size" in warnings[0]
    assert check("ghcr.io", limits_for("ghcr.io"), facts, manifest_size=1000, upload_bps=1.25e9) == []


# ---------------------------------------------------------------- the commands

def test_limits_command(capsys):
    import json

    from modelimage.cli import main

    assert main(["limits", "ghcr.io", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["host"] == "ghcr.io" and d["max_layer_size"] == 10 * GB and d["upload_timeout"] == 600
    assert main(["limits"]) == 0
    out = capsys.readouterr().out
    for name in ("GitHub Container Registry", "Amazon ECR", "Azure Container Registry", "Google Artifact Registry"):
        assert name in out


def test_plan_for_a_registry_uses_and_checks_its_limit(llama_dir, tmp_path, capsys):
    import json

    from modelimage.cli import main

    cfg = tmp_path / "modelimage.toml"
    cfg.write_text('[registries."harbor.acme.com"]\nmax_layer_size = "900KB"\n')
    assert main(["plan", str(llama_dir), "--registry", "harbor.acme.com", "--config", str(cfg), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["max_layer_size"] == 900_000 and all(layer["size"] <= 900_000 for layer in plan["layers"])
    assert main(["plan", str(llama_dir), "--registry", "harbor.acme.com", "--config", str(cfg),
                 "--max-layer-size", "2MB"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: layer 1") and "harbor.acme.com accepts at most 900 kB" in err
    assert err.rstrip().endswith("--max-layer-size 900KB")


def test_estimate_command_json(llama_dir, capsys):
    import json

    from modelimage.cli import main

    assert main(["estimate", str(llama_dir), "--bandwidth", "1Gbit/s", "--engine", "podman", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["total_seconds"] > 0 and {"link", "engine"} <= set(d["phases"])
    assert d["calibrated"] is False and "built-in" in d["basis"]
    assert d["bandwidth_bps"] == 125e6
    assert [o["name"].split(" ")[0] for o in d["storage_options"]]
    assert main(["estimate", str(llama_dir)]) == 0
    out = capsys.readouterr().out
    assert "100 Mbit/s" in out and "10 Gbit/s" in out and "object storage" in out
