"""job: command-line options over modelimage.toml over defaults, settled
before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelimage.errors import ConfigError
from modelimage.job import Options, prepare


def model(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text("{}")
    (root / "a.bin").write_bytes(b"a" * 100)
    (root / "b.gguf.txt").write_text("b")
    return root


def test_options_win_over_the_entry(tmp_path):
    model(tmp_path / "m")
    cfg = tmp_path / "modelimage.toml"
    cfg.write_text('[models.tiny]\nsource = "m"\ntarget = "/entry"\nplatform = "linux/arm64"\n'
                   'compression = "gzip"\nmax_layer_size = "1MB"\nexclude = ["*.txt"]\n')
    entry = prepare("tiny", Options(config=cfg))
    assert (entry.plan_settings.target, entry.image_settings.platform, entry.plan_settings.compression,
            entry.plan_settings.max_layer_size) == ("/entry", "linux/arm64", "gzip", 10**6)
    assert [f.name for f in entry.model.files] == ["a.bin", "config.json"]
    cli = prepare("tiny", Options(config=cfg, target="/cli", platform="linux/amd64", compression="none",
                                  max_layer_size=2 * 10**6, exclude=("*.bin",)))
    assert (cli.plan_settings.target, cli.image_settings.platform, cli.plan_settings.compression,
            cli.plan_settings.max_layer_size) == ("/cli", "linux/amd64", "none", 2 * 10**6)
    assert [f.name for f in cli.model.files] == ["b.gguf.txt", "config.json"]


def test_defaults(tmp_path):
    job = prepare(str(model(tmp_path / "m")))
    assert (job.plan_settings.target, job.image_settings.platform, job.plan_settings.compression) == (
        "/models/m", "linux/amd64", "none")
    assert job.base is None and job.registry is None


@pytest.mark.parametrize("options, message", [
    (Options(platform="amd64"), "expected OS/ARCH"),
    (Options(compression="lz4"), "choose one of none, gzip"),
])
def test_bad_options(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        prepare(str(model(tmp_path / "m")), options)


def test_registry_limits_set_the_default_layer_size(tmp_path):
    job = prepare(str(model(tmp_path / "m")), Options(registry="ghcr.io"))
    assert job.plan_settings.max_layer_size == job.limits.max_layer_size == 10 * 10**9
