"""config: modelimage.toml read and checked before anything else is (every
error names the file and the entry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelimage.config import load_config, resolve
from modelimage.errors import ConfigError, SourceError


def write(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "modelimage.toml"
    cfg.write_text(text)
    return cfg


def test_entry_fields_and_relative_sources(tmp_path):
    cfg = write(tmp_path, '[models.llama]\nsource = "weights/llama"\ninclude = "*.gguf"\nmax_layer_size = "2GB"\n'
                          'platform = "linux/arm64"\ncompression = "gzip"\ntag = "q4"\n'
                          '[registries."harbor.acme.com"]\nmax_layer_size = "5GB"\n')
    config = load_config(cfg)
    e = config.models["llama"]
    assert (e.source, e.include, e.max_layer_size, e.platform, e.compression, e.tag) == (
        str(tmp_path / "weights/llama"), ("*.gguf",), 2 * 10**9, "linux/arm64", "gzip", "q4")
    assert e.defined_in == str(cfg) and config.registries == {"harbor.acme.com": {"max_layer_size": "5GB"}}


@pytest.mark.parametrize("text, message", [
    ('[models.x]\nsource = "a"\nplatform = "arm64"\n', r"\[models.x\]: platform 'arm64': expected OS/ARCH"),
    ('[models.x]\nsource = "a"\ncompression = "lz4"\n', r"\[models.x\]: compression 'lz4': choose one of none, gzip"),
    ('[models.x]\nsource = "a"\ntag = 1\n', r"\[models.x\]: tag must be a string"),
    ('[models.x]\nsource = "a"\nendpoint = "s3.example.com"\n', "endpoint must be an http"),
    ('[models.x]\nsource = "a"\nendpoint = "https://r2.example.com"\n', "endpoint applies to s3:// sources only"),
    ('[models.X]\nsource = "a"\n', "names are lowercase"),
    ('[models.x]\nsource = "a"\ncolour = "red"\n', r"unknown key\(s\) colour"),
    ("models = 1\n", r"\[models\] must be a table"),
    ('registries = {"h" = 1}\n', r"\[registries\] must hold"),
])
def test_bad_entries_name_the_file(tmp_path, text, message):
    cfg = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as e:
        load_config(cfg)
    assert str(e.value).startswith(str(cfg))


def test_missing_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(None).models == {}
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "other.toml")


def test_resolve_names_paths_and_remote_sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(write(tmp_path, '[models.llama]\nsource = "/models/llama"\n'))
    assert resolve("llama", config).source == "/models/llama"
    (tmp_path / "llama").mkdir()
    assert resolve("llama", config).source == "llama"  # a folder of that name is the folder
    assert resolve("hf://acme/x", config).source == "hf://acme/x"
    with pytest.raises(SourceError, match="no such file, folder or named model"):
        resolve("nothing", config)


def test_packing_settings_set_on_the_command_line_win_over_the_entry():
    """One Packing type: a config entry and the command-line Options share
    its fields, and what Options set (not None, not empty) replaces the entry's."""
    from modelimage.config import ModelEntry
    from modelimage.job import Options

    entry = ModelEntry(name="m", source="/m", include=("*.gguf",), target="/entry", platform="linux/arm64",
                       compression="gzip", max_layer_size=10**6, image="ghcr.io/a/m", tag="q4")
    assert entry.overridden_by(Options()) == entry
    got = entry.overridden_by(Options(exclude=("*.txt",), target="/cli", max_layer_size=2 * 10**6))
    assert (got.include, got.exclude, got.target, got.platform, got.compression, got.max_layer_size) == (
        ("*.gguf",), ("*.txt",), "/cli", "linux/arm64", "gzip", 2 * 10**6)
    assert (got.name, got.source, got.image, got.tag) == ("m", "/m", "ghcr.io/a/m", "q4")  # not packing settings
