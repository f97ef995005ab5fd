"""``modelimage inspect``, ``plan`` and ``example-model`` (modelimage/cli/model.py)."""

from __future__ import annotations

from pathlib import Path

from tests.clikit import SHAPE, clean_env, llama, models, run, run_json  # noqa: F401  (fixtures)


def test_inspect_json(llama: Path) -> None:
    d = run_json("inspect", str(llama))
    assert d["format"] == "safetensors"
    assert isinstance(d["parameters"], int) and d["parameters"] == SHAPE.parameters
    assert isinstance(d["bytes"], int) and d["bytes"] == sum(p.stat().st_size for p in llama.iterdir())
    assert d["dtypes"] == {"F16": SHAPE.parameters}
    assert isinstance(d["quantization"], str) and d["quantization"] == "F16"
    assert isinstance(d["vram_bytes"], int) and d["vram_bytes"] == int(SHAPE.parameters * 2 * 1.25)
    assert isinstance(d["components"], list) and d["components"]
    for c in d["components"]:
        assert set(c) >= {"name", "parameters", "bytes"}
        assert isinstance(c["name"], str) and isinstance(c["parameters"], int) and isinstance(c["bytes"], int)
    assert sum(c["parameters"] for c in d["components"]) == d["parameters"]
    assert isinstance(d["files"], list)
    assert {f["path"]: f["bytes"] for f in d["files"]} == {p.name: p.stat().st_size for p in llama.iterdir()}
    assert "vram_as" not in d


def test_inspect_json_as(models: Path) -> None:
    d = run_json("inspect", str(models / "gguf"), "--as", "q8")
    assert d["quantization"] == "Q4_K_M"
    assert d["format"] == "gguf"
    assert d["vram_as"] == {"precision": "q8", "bytes": int(SHAPE.parameters * 1 * 1.25)}


def test_inspect_text(llama: Path) -> None:
    out = run("inspect", str(llama), "--as", "q4").stdout
    assert out.startswith("llama  (safetensors, language model, LlamaForCausalLM)")
    assert "F16" in out and "as q4" in out and "token-prediction" in out
    assert "model-00001-of-00002.safetensors" in out


def test_inspect_include_exclude(llama: Path) -> None:
    d = run_json("inspect", str(llama), "--include", "*.safetensors", "--include", "config.json")
    assert sorted(f["path"] for f in d["files"]) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    d = run_json("inspect", str(llama), "--exclude", "*.md", "--exclude", "LICENSE", "--name", "x")
    assert d["name"] == "x"
    assert not {"README.md", "LICENSE"} & {f["path"] for f in d["files"]}


def test_plan_json(llama: Path) -> None:
    d = run_json("plan", str(llama), "--max-layer-size", "1MB", "--target", "/srv/m")
    assert d["target"] == "/srv/m"
    assert d["max_layer_size"] == 1_000_000
    assert d["layers"]
    for layer in d["layers"]:
        assert isinstance(layer["size"], int) and 0 < layer["size"] <= 1_000_000
        assert layer["files"] and all(f.startswith("/srv/m/") for f in layer["files"])
    assert [r["to"][-1] for r in d["reshards"]] == ["model.safetensors.index.json"]
    default = run_json("plan", str(llama))
    assert default["target"] == "/models/llama"
    assert default["max_layer_size"] == 10 * 10**9
    assert default["reshards"] == []
    assert [len(layer["files"]) for layer in default["layers"]] == [1, 1, 8]


def test_plan_text(llama: Path) -> None:
    out = run("plan", str(llama), "--max-layer-size", "1MB").stdout
    assert out.startswith("llama: 5 layers")
    assert "reshard" in out and "model-00004-of-00004.safetensors" in out


def test_example_model(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    result = run("example-model", str(d), "--kind", "gguf")
    assert result.stdout.strip() == str(d)
    assert run_json("inspect", str(d))["quantization"] == "Q4_K_M"


def test_one_of_a_thing_is_singular(tmp_path: Path) -> None:
    """"1 layer", "1 file" (issue 16: "1 layers")."""
    d = tmp_path / "one"
    run("example-model", str(d), "--kind", "gguf")
    assert "in 1 file\n" in run("inspect", str(d)).stdout
    assert run("plan", str(d)).stdout.startswith("one: 1 layer, ")
