"""modelimage.inspect: files, weight sets, parameters, dtypes, components."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelimage import synth
from modelimage.errors import FormatError, SourceError
from modelimage.inspect import (
    BYTES_PER_PARAM_AS,
    VRAM_FACTOR,
    ModelInfo,
    inspect_model,
)

SHAPE = synth.LlamaShape(vocab=1024, hidden=256, layers=2, intermediate=512)
TOKENIZER_FILES = ("special_tokens_map.json", "tokenizer.json", "tokenizer_config.json")


def n(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inspect")


@pytest.fixture(scope="module")
def llama_sharded(base: Path) -> Path:
    return synth.write_llama_safetensors(base / "llama-sharded", SHAPE, shards=2)


@pytest.fixture(scope="module")
def llama_single(base: Path) -> Path:
    return synth.write_llama_safetensors(base / "llama-single", SHAPE, shards=1)


@pytest.fixture(scope="module")
def gguf_path(base: Path) -> Path:
    return synth.write_llama_gguf(base / "gguf" / "llama-demo-Q4_K_M.gguf", SHAPE)


@pytest.fixture(scope="module")
def diffusers_dir(base: Path) -> Path:
    return synth.write_diffusers(base / "diffusers")


@pytest.fixture(scope="module")
def sd_file(base: Path) -> Path:
    return synth.write_sd_single_file(base / "sd" / "sd-demo.safetensors")


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- llama safetensors


@pytest.mark.parametrize("which", ["llama_sharded", "llama_single"])
def test_llama_safetensors(request: pytest.FixtureRequest, which: str) -> None:
    d: Path = request.getfixturevalue(which)
    m = inspect_model(d)
    params = SHAPE.parameters
    assert m.name == d.name
    assert m.format == "safetensors"
    assert m.kind == "language-model"
    assert m.architecture == "LlamaForCausalLM"
    assert m.parameters == params
    assert m.dtypes == {"F16": params}
    assert m.quantization == "F16"
    assert m.weight_bytes == params * 2
    assert m.bytes_per_parameter == 2.0
    assert m.vram_bytes == int(params * 2 * VRAM_FACTOR) == int(m.weight_bytes * 1.25)
    assert m.vram_as("q4") == int(params * 0.5 * 1.25)
    assert m.vram_as("f32") == int(params * 4 * 1.25)
    assert m.bytes == sum(p.stat().st_size for p in d.iterdir())
    assert [f.name for f in m.files] == sorted(p.name for p in d.iterdir())
    assert m.notes == ()

    comps = {c.name: c for c in m.components}
    assert [c.name for c in m.components] == ["tokenizer", "embedding", "token-prediction"]
    assert sum(c.parameters for c in m.components) == params
    assert comps["embedding"].parameters == SHAPE.vocab * SHAPE.hidden
    assert comps["embedding"].bytes == SHAPE.vocab * SHAPE.hidden * 2
    assert comps["token-prediction"].parameters == params - SHAPE.vocab * SHAPE.hidden  # lm_head is not embedding
    assert comps["tokenizer"].parameters == 0
    assert comps["tokenizer"].bytes == sum((d / f).stat().st_size for f in TOKENIZER_FILES)

    (w,) = m.weight_sets
    assert w.format == "safetensors"
    if which == "llama_sharded":
        assert w.members == ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
        assert w.index_file == "model.safetensors.index.json"
        assert w.stem == "model"
    else:
        assert w.members == ("model.safetensors",)
        assert w.index_file is None


def test_to_json_and_as_precision(llama_sharded: Path) -> None:
    m = inspect_model(llama_sharded)
    d = json.loads(json.dumps(m.to_json("q4")))
    assert d["parameters"] == SHAPE.parameters
    assert d["vram_bytes"] == m.vram_bytes
    assert d["vram_as"] == {"precision": "q4", "bytes": int(SHAPE.parameters * 0.5 * 1.25)}
    assert d["dtypes"] == {"F16": SHAPE.parameters}
    assert [c["name"] for c in d["components"]] == ["tokenizer", "embedding", "token-prediction"]
    assert {f["path"] for f in d["files"]} == {p.name for p in llama_sharded.iterdir()}
    assert d["weight_sets"] == [{"format": "safetensors", "index": "model.safetensors.index.json",
                                 "files": ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]}]
    assert "vram_as" not in m.to_json()


@pytest.mark.parametrize("precision", sorted(BYTES_PER_PARAM_AS))
def test_vram_as_every_precision(llama_single: Path, precision: str) -> None:
    m = inspect_model(llama_single)
    assert m.vram_as(precision) == int(SHAPE.parameters * BYTES_PER_PARAM_AS[precision] * 1.25)


def test_name_option_and_default_name(tmp_path: Path, llama_single: Path) -> None:
    d = copy_tree(llama_single, tmp_path / "My Model_v1.0!")
    assert inspect_model(d).name == "my-model_v1.0"
    assert inspect_model(d, name="custom").name == "custom"


# ---------------------------------------------------------------- gguf


@pytest.mark.parametrize("as_file", [False, True])
def test_gguf(gguf_path: Path, as_file: bool) -> None:
    m = inspect_model(gguf_path if as_file else gguf_path.parent)
    h, i, kv, L = SHAPE.hidden, SHAPE.intermediate, SHAPE.kv_heads * SHAPE.head_dim, SHAPE.layers
    q6 = L * (kv * h + h * i) + SHAPE.vocab * h  # attn_v, ffn_down, output
    f32 = 2 * L * h + h  # norms
    assert m.name == ("llama-demo-q4_k_m" if as_file else "gguf")
    assert m.format == "gguf"
    assert m.kind == "language-model"
    assert m.architecture == "llama"
    assert m.quantization == "Q4_K_M"
    assert m.parameters == SHAPE.parameters
    assert m.dtypes == {"Q4_K": SHAPE.parameters - q6 - f32, "Q6_K": q6, "F32": f32}
    assert list(m.dtypes) == ["Q4_K", "Q6_K", "F32"]  # biggest first
    comps = {c.name: c for c in m.components}
    assert [c.name for c in m.components] == ["tokenizer", "embedding", "token-prediction"]
    assert comps["tokenizer"].bytes > SHAPE.vocab * 4  # the embedded vocab
    assert comps["tokenizer"].parameters == 0
    assert comps["embedding"].parameters == SHAPE.vocab * h
    assert sum(c.parameters for c in m.components) == m.parameters
    # weight bytes are the tensor bytes; Q4_K_M is ~4.8 bits per weight
    assert m.weight_bytes == sum(c.bytes for c in m.components if c.name != "tokenizer")
    assert 0.5 < m.bytes_per_parameter < 0.75
    assert m.vram_bytes == int(m.weight_bytes * 1.25)
    assert [f.name for f in m.files] == [gguf_path.name]


# ---------------------------------------------------------------- diffusion


DIFFUSERS_PARAMS = {
    "text_encoder": n((4096, 192)) + n((192, 192)),
    "text_encoder_2": n((4096, 320)) + n((320, 320)),
    "denoiser": n((320, 4, 3, 3)) + n((320, 320, 3, 3)) + n((640, 640)) + n((4, 320, 3, 3)),
    "vae": n((128, 3, 3, 3)) + n((3, 128, 3, 3)) + n((512, 512)),
}


def test_diffusers(diffusers_dir: Path) -> None:
    m = inspect_model(diffusers_dir)
    assert m.kind == "diffusion"
    assert m.format == "safetensors"
    assert m.architecture == "StableDiffusionXLPipeline"
    assert [c.name for c in m.components] == ["tokenizer", "text_encoder", "text_encoder_2", "denoiser", "vae"]
    comps = {c.name: c for c in m.components}
    for name, params in DIFFUSERS_PARAMS.items():
        assert comps[name].parameters == params, name
        assert comps[name].bytes == params * 2
    assert m.parameters == sum(DIFFUSERS_PARAMS.values())
    assert m.dtypes == {"F16": m.parameters}
    assert m.quantization == "F16"
    tok = [p for t in ("tokenizer", "tokenizer_2") for p in (diffusers_dir / t).iterdir()]
    assert comps["tokenizer"].bytes == sum(p.stat().st_size for p in tok)
    assert len(m.weight_sets) == 4
    assert m.notes == ()


def test_diffusers_fp16_variant_not_counted_twice(tmp_path: Path) -> None:
    d = synth.write_diffusers(tmp_path / "pipe")
    plain = inspect_model(d)
    synth.write_diffusers(d, variant="fp16")
    both = inspect_model(d)
    assert len(both.weight_sets) == 8  # both variants are files of the model...
    assert both.parameters == plain.parameters  # ...but the same weights
    assert both.components == plain.components
    assert both.dtypes == plain.dtypes
    assert both.bytes > plain.bytes
    assert len(both.notes) == 4
    assert all("fp16" in note and "not counted twice" in note for note in both.notes)


def test_only_a_variant_is_counted(tmp_path: Path) -> None:
    d = synth.write_diffusers(tmp_path / "pipe", variant="fp16")
    m = inspect_model(d)
    assert m.parameters == sum(DIFFUSERS_PARAMS.values())
    assert m.notes == ()
    assert {w.variant for w in m.weight_sets} == {"fp16"}


def test_sd_single_file(sd_file: Path) -> None:
    m = inspect_model(sd_file.parent)
    assert m.kind == "diffusion"
    assert m.architecture is None
    comps = {c.name: c.parameters for c in m.components}
    assert [c.name for c in m.components] == ["text_encoder", "denoiser", "vae"]
    assert comps == {
        "denoiser": n((320, 4, 3, 3)) + n((640, 640)),
        "vae": n((128, 3, 3, 3)) + n((3, 128, 3, 3)),
        "text_encoder": n((4096, 192)) + n((768,)),
    }
    assert m.parameters == sum(comps.values())
    assert inspect_model(sd_file).components == m.components


# ---------------------------------------------------------------- quantized safetensors


def _quantized(d: Path, config: dict, config_name: str = "config.json") -> int:
    """A tiny GPTQ-style checkpoint; returns the F16 parameter count."""
    d.mkdir(parents=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    if config_name == "config.json":
        cfg.update(config)
    else:
        (d / config_name).write_text(json.dumps(config))
    (d / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    tensors = {
        "model.embed_tokens.weight": rng.standard_normal((256, 64)).astype(np.float16),
        "model.layers.0.mlp.down_proj.qweight": rng.integers(0, 2**31, (64, 256), dtype=np.int32),
        "model.layers.0.mlp.down_proj.qzeros": rng.integers(0, 2**31, (4, 32), dtype=np.int32),
        "model.layers.0.mlp.down_proj.scales": rng.standard_normal((4, 256)).astype(np.float16),
        "model.layers.0.mlp.down_proj.g_idx": np.arange(512, dtype=np.int32),
        "lm_head.weight": rng.standard_normal((256, 64)).astype(np.float16),
    }
    save_file(tensors, str(d / "model.safetensors"))
    return 2 * 256 * 64


@pytest.mark.parametrize(
    ("config", "config_name", "label", "per_int32"),
    [
        ({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}, "config.json", "GPTQ-4bit", 8),
        ({"quantization_config": {"quant_method": "gptq", "bits": 8}}, "config.json", "GPTQ-8bit", 4),
        ({"quantization_config": {"quant_method": "awq", "bits": 4}}, "config.json", "AWQ-4bit", 8),
        ({"bits": 4, "group_size": 128, "desc_act": False}, "quantize_config.json", "GPTQ-4bit", 8),
    ],
)
def test_packed_quantization(tmp_path: Path, config: dict, config_name: str, label: str, per_int32: int) -> None:
    f16 = _quantized(tmp_path / "q", config, config_name)
    m = inspect_model(tmp_path / "q")
    packed = 64 * 256 * per_int32
    assert m.quantization == label
    assert m.parameters == f16 + packed  # qzeros, scales and g_idx are not parameters
    bits = 32 // per_int32
    assert m.dtypes == {f"INT{bits}": packed, "F16": f16}
    assert m.kind == "language-model"
    assert sum(c.parameters for c in m.components) == m.parameters


def test_unquantized_int_tensors_are_not_parameters(tmp_path: Path) -> None:
    f16 = _quantized(tmp_path / "q", {})
    m = inspect_model(tmp_path / "q")
    # without a quantization config, int tensors are not weights; F16 "scales" are
    assert m.parameters == f16 + 4 * 256
    assert m.dtypes == {"F16": f16 + 4 * 256}
    assert m.quantization == "F16"


# ---------------------------------------------------------------- other kinds


def test_embedding_model(tmp_path: Path) -> None:
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (d / "modules.json").write_text("[]")
    save_file({
        "embeddings.word_embeddings.weight": np.zeros((100, 32), np.float32),
        "encoder.layer.0.attention.self.query.weight": np.zeros((32, 32), np.float32),
    }, str(d / "model.safetensors"))
    m = inspect_model(d)
    assert m.kind == "embedding"
    assert {c.name: c.parameters for c in m.components} == {"embedding": 3200, "encoder": 1024}
    assert m.quantization == "F32"


def test_pytorch_bin_only(tmp_path: Path) -> None:
    d = tmp_path / "old"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    (d / "pytorch_model.bin").write_bytes(b"\0" * 10_000)
    m = inspect_model(d)
    assert m.format == "pytorch"
    assert m.kind == "language-model"
    assert m.parameters == 0
    assert m.weight_bytes == 10_000
    assert m.vram_bytes == 12_500
    assert m.quantization == "unknown"
    assert any("parameters unknown" in note for note in m.notes)


# ---------------------------------------------------------------- listing, include/exclude


def test_include_exclude(llama_sharded: Path) -> None:
    only = inspect_model(llama_sharded, include=["*.safetensors"])
    assert [f.name for f in only.files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert only.parameters == SHAPE.parameters
    assert only.weight_sets[0].index_file is None
    no_docs = inspect_model(llama_sharded, exclude=["*.md", "LICENSE"])
    assert {f.name for f in no_docs.files} == {f.name for f in inspect_model(llama_sharded).files} - {
        "README.md", "LICENSE"}
    with pytest.raises(SourceError, match="after include/exclude"):
        inspect_model(llama_sharded, include=["*.gguf"])


def test_include_exclude_diffusers_paths(diffusers_dir: Path) -> None:
    m = inspect_model(diffusers_dir, exclude=["text_encoder_2/*", "tokenizer_2/*"])
    assert not any(f.name.startswith(("text_encoder_2/", "tokenizer_2/")) for f in m.files)
    assert "text_encoder_2" not in {c.name for c in m.components}
    assert m.parameters == sum(v for k, v in DIFFUSERS_PARAMS.items() if k != "text_encoder_2")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("missing", [1, 2])
def test_missing_shard(tmp_path: Path, llama_sharded: Path, missing: int) -> None:
    d = copy_tree(llama_sharded, tmp_path / "m")
    (d / f"model-0000{missing}-of-00002.safetensors").unlink()
    with pytest.raises(SourceError) as exc:
        inspect_model(d)
    msg = str(exc.value)
    assert f"model-0000{missing}-of-00002.safetensors" in msg
    assert "missing" in msg
    assert "\n" not in msg


def test_index_names_a_missing_shard(tmp_path: Path, llama_sharded: Path) -> None:
    d = copy_tree(llama_sharded, tmp_path / "m")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["extra.weight"] = "model-00003-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SourceError, match=r"model-00003-of-00002\.safetensors: missing \(named by model\.safetensors\.index\.json\)"):
        inspect_model(d)


@pytest.mark.parametrize("setup", ["empty", "hidden-only", "absent"])
def test_nothing_to_inspect(tmp_path: Path, setup: str) -> None:
    d = tmp_path / "m"
    if setup != "absent":
        d.mkdir()
    if setup == "hidden-only":
        (d / ".gitattributes").write_text("x")
    with pytest.raises(SourceError) as exc:
        inspect_model(d)
    assert str(d) in str(exc.value)


@pytest.mark.parametrize("keep", [4, 7, 100, 0.5, 0.999])
def test_truncated_safetensors(tmp_path: Path, llama_single: Path, keep: float) -> None:
    d = copy_tree(llama_single, tmp_path / "m")
    f = d / "model.safetensors"
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(int(size * keep) if isinstance(keep, float) else keep)
    with pytest.raises(FormatError) as exc:
        inspect_model(d)
    msg = str(exc.value)
    assert str(f) in msg
    assert "\n" not in msg
    assert exc.value.path == str(f)


@pytest.mark.parametrize("keep", [3, 30, 5000, 0.999])
def test_truncated_gguf(tmp_path: Path, gguf_path: Path, keep: float) -> None:
    d = tmp_path / "m"
    d.mkdir()
    data = gguf_path.read_bytes()
    f = d / gguf_path.name
    f.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(FormatError) as exc:
        inspect_model(d)
    assert str(f) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_bad_config_json(tmp_path: Path, llama_single: Path) -> None:
    d = copy_tree(llama_single, tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(FormatError, match="config.json: not valid JSON"):
        inspect_model(d)


def test_info_is_deterministic(diffusers_dir: Path) -> None:
    a: ModelInfo = inspect_model(diffusers_dir)
    b: ModelInfo = inspect_model(diffusers_dir)
    assert a.to_json() == b.to_json()


def test_dotted_names_are_not_variants(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    save_file({"a": np.zeros((10, 10), np.float16)}, str(d / "model-v1.0.safetensors"))
    save_file({"b": np.zeros((20, 10), np.float16)}, str(d / "model-v1.1.safetensors"))
    m = inspect_model(d)
    assert m.parameters == 300
    assert m.notes == ()


# ---------------------------------------------------------------- adapters and projectors (issue 22)


def test_adapters_and_projectors_are_components(tmp_path: Path) -> None:
    """inspect names them, with the base architecture and rank their files
    say, and the GPU-memory estimate counts their bytes."""
    from modelimage import synth

    shape = synth.LlamaShape(vocab=1024, hidden=256, layers=2, intermediate=512)
    synth.write_llama_gguf(tmp_path / "mm" / "tiny-Q4_K_M.gguf", shape)
    synth.write_mmproj(tmp_path / "mm" / "mmproj-tiny-f16.gguf", hidden=64, blocks=1)
    alone = inspect_model(tmp_path / "mm", include=("tiny-*",))
    mm = inspect_model(tmp_path / "mm")
    (proj,) = [c for c in mm.components if c.name == "projector"]
    assert proj.file == "mmproj-tiny-f16.gguf" and proj.architecture == "gemma3"
    assert mm.architecture == "llama" and mm.quantization == "Q4_K_M" and mm.kind == "language-model"
    assert mm.vram_bytes == int((alone.weight_bytes + proj.bytes) * 1.25)
    assert mm.parameters == alone.parameters + proj.parameters
    assert mm.to_json()["components"][-1] == {"name": "projector", "parameters": proj.parameters,
                                               "bytes": proj.bytes, "file": "mmproj-tiny-f16.gguf",
                                               "architecture": "gemma3"}

    synth.write_gguf_lora(tmp_path / "lora" / "tiny-lora.gguf", shape, rank=4)
    lora = inspect_model(tmp_path / "lora")
    assert lora.kind == "adapter" and lora.architecture == "llama"
    (a,) = lora.components
    assert (a.name, a.rank, a.architecture, a.file) == ("adapter", 4, "llama", "tiny-lora.gguf")
    assert lora.vram_bytes == int(a.bytes * 1.25) > 0

    synth.write_peft_adapter(tmp_path / "peft", shape, rank=8, base="org/tiny")
    peft = inspect_model(tmp_path / "peft")
    (a,) = peft.components
    assert (a.name, a.rank, a.base_model, a.file) == ("adapter", 8, "org/tiny", "adapter_model.safetensors")
    assert peft.kind == "adapter" and peft.vram_bytes > 0


@pytest.mark.integration
def test_a_hub_models_config_json_is_read_once(hub, tmp_path) -> None:
    """inspect of an hf:// model reads config.json from the Hub once (for
    its architecture and its quantization_config alike), not once for each."""
    import os
    import subprocess
    import sys

    d = synth.write_random_shards(tmp_path / "q", 0.001, 2)
    config = json.loads((d / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (d / "config.json").write_text(json.dumps(config))
    hub.commit("acme/gptq-once", {p.name: p.read_bytes() for p in d.iterdir()})
    start = len(hub.requests)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELIMAGE_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
    proc = subprocess.run([sys.executable, "-m", "modelimage", "inspect", "hf://acme/gptq-once", "--json"],
                          capture_output=True, text=True, env=env, check=True)
    assert json.loads(proc.stdout)["quantization"] == "GPTQ-4bit"
    assert len([p for m, p in hub.requests[start:] if p.endswith("/config.json")]) == 1
