"""build: image assembly from a plan (config, manifest, platform, the
predicted manifest size) into a real OCI layout sink."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelimage.build import build_image, manifest_size, source_date_epoch
from modelimage.errors import ConfigError
from modelimage.image import open_image
from modelimage.job import Options, prepare
from modelimage.layout import LayoutRef, open_sink


def model(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text('{"architectures": ["TinyForCausalLM"]}')
    (root / "weights.bin").write_bytes(bytes(range(256)) * 40)
    (root / "README.md").write_text("tiny")
    return root


def build(src: Path, out: Path, **options):
    job = prepare(str(src), Options(**options))
    plan = job.plan()
    ref = LayoutRef.parse(f"oci:{out}:v1")
    return job, plan, build_image(job.model, plan, open_sink(ref), settings=job.image_settings, reference=str(ref))


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_manifest_size_is_predicted_exactly(tmp_path, compression):
    job, plan, result = build(model(tmp_path / "m"), tmp_path / "out", compression=compression)
    if compression == "none":  # gzip sizes are known only once written; the digests' length never changes
        assert manifest_size(job.model, plan, job.image_settings) == result.manifest.size
    assert (tmp_path / "out" / "blobs" / "sha256" / result.manifest.hex).stat().st_size == result.manifest.size


def test_config_and_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    _, plan, result = build(model(tmp_path / "m"), tmp_path / "out", platform="linux/arm64/v8", target="/srv/m")
    image = open_image(f"oci:{tmp_path / 'out'}:v1")
    c = image.config
    assert (c["os"], c["architecture"], c["variant"], c["created"]) == ("linux", "arm64", "v8", "1970-01-02T00:00:00Z")
    assert c["config"]["WorkingDir"] == "/srv/m" and c["config"]["Labels"]["dev.modelimage.target"] == "/srv/m"
    assert c["rootfs"]["diff_ids"] == [b.diff_id for b in result.layers]
    assert [h["created_by"] for h in c["history"]] == [f"modelimage build: {layer.title}" for layer in plan.layers]
    index = json.loads((tmp_path / "out" / "index.json").read_text())["manifests"][0]
    assert index["platform"] == {"os": "linux", "architecture": "arm64", "variant": "v8"}
    assert image.manifest["annotations"]["org.opencontainers.image.created"] == "1970-01-02T00:00:00Z"
    files = [f["path"] for layer in image.layers for f in json.loads(layer.annotations["dev.modelimage.files"])]
    assert sorted(files) == ["/srv/m/README.md", "/srv/m/config.json", "/srv/m/weights.bin"]


@pytest.mark.parametrize("value, ok", [("", 0), ("1700000000", 1700000000), ("-1", None), ("soon", None)])
def test_source_date_epoch(monkeypatch, value, ok):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    if ok is None:
        with pytest.raises(ConfigError, match="must be a whole number of seconds"):
            source_date_epoch()
    else:
        assert source_date_epoch() == ok
