"""Small but realistic synthetic models, written with the real writers.

``make demo``, the tests and the benchmarks use these instead of downloads:
a llama-shaped Hugging Face checkpoint (config, tokenizer, sharded
safetensors with an index, written by the ``safetensors`` library), the same
model as a Q4_K_M GGUF (written by ``gguf``'s GGUFWriter with real K-quant
block layouts), a diffusers pipeline folder, and a single-file Stable
Diffusion checkpoint. Random weights, deterministic for a seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LlamaShape:
    vocab: int = 16384
    hidden: int = 256
    layers: int = 4
    intermediate: int = 768
    heads: int = 4
    kv_heads: int = 2
    context: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, numpy shape) in Hugging Face naming, file order."""
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * self.head_dim
        out = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [
                (p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (i, h)),
                (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)),
            ]
        out += [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]
        return out

    @property
    def parameters(self) -> int:
        return sum(int(np.prod(s)) for _, s in self.tensors())


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _tokens(vocab: int) -> list[str]:
    special = ["<unk>", "<s>", "</s>"]
    return special + [f"tok{n}" for n in range(vocab - len(special))]


def write_tokenizer(directory: Path, vocab: int) -> None:
    tokens = _tokens(vocab)
    tokenizer = {
        "version": "1.0",
        "added_tokens": [{"id": i, "content": t, "special": True} for i, t in enumerate(tokens[:3])],
        "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []},
    }
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 2048,
        "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
    }, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))


def write_llama_safetensors(directory: Path, shape: LlamaShape = LlamaShape(), *, shards: int = 2,
                            seed: int = 0, name: str = "llama-demo") -> Path:
    """A Hugging Face llama checkpoint: float16 weights in ``shards`` shards
    with ``model.safetensors.index.json`` (or one ``model.safetensors``)."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    tensors = {n: (rng.standard_normal(s, dtype=np.float32) * 0.02).astype(np.float16) for n, s in shape.tensors()}
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float16",
        "vocab_size": shape.vocab, "hidden_size": shape.hidden, "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "max_position_embeddings": shape.context,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    }, indent=2))
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2))
    write_tokenizer(directory, shape.vocab)
    (directory / "README.md").write_text(f"# {name}\n\nA synthetic llama-shaped model with random weights.\n")
    (directory / "LICENSE").write_text("Apache License 2.0 (synthetic test model)\n")

    names = list(tensors)
    if shards <= 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory
    # shard like transformers' save_pretrained: consecutive tensors, balanced by bytes
    total = sum(t.nbytes for t in tensors.values())
    groups: list[list[str]] = [[]]
    acc = 0
    for n in names:
        if groups[-1] and acc + tensors[n].nbytes > total / shards * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(n)
        acc += tensors[n].nbytes
    weight_map = {}
    for k, group in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(directory / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True))
    return directory


# llama.cpp block layouts (ggml-common.h): bytes per 256-element super-block
_Q4_K_BLOCK, _Q6_K_BLOCK, _QK = 144, 210, 256


def _k_quant_blocks(rng: np.random.Generator, rows: int, cols: int, kind: str) -> np.ndarray:
    """Random but well-formed Q4_K / Q6_K blocks (finite fp16 scales)."""
    nblocks = rows * cols // _QK
    size = _Q4_K_BLOCK if kind == "Q4_K" else _Q6_K_BLOCK
    blocks = rng.integers(0, 256, size=(nblocks, size), dtype=np.uint8)
    scale = np.full(nblocks, 0.002, dtype=np.float16).view(np.uint8).reshape(nblocks, 2)
    if kind == "Q4_K":  # d, dmin (fp16) lead the block
        blocks[:, 0:2] = scale
        blocks[:, 2:4] = scale
    else:  # Q6_K: d (fp16) ends the block
        blocks[:, -2:] = scale
    return blocks.reshape(rows, cols // _QK * size)


GGUF_QUANTS = ("Q4_K_M", "Q8_0", "F16")


def write_llama_gguf(path: Path, shape: LlamaShape = LlamaShape(), *, seed: int = 0,
                     name: str = "llama-demo", alignment: int | None = None, quant: str = "Q4_K_M") -> Path:
    """The same llama shape as a GGUF at ``quant`` (:data:`GGUF_QUANTS`):
    ``Q4_K_M`` (Q4_K weights, Q6_K for attn_v, ffn_down and output, as
    llama.cpp's Q4_K_M mix), ``Q8_0`` (weights quantized by gguf-py's own
    Q8_0 quantizer) or ``F16``; F32 norms in all."""
    import gguf

    if quant not in GGUF_QUANTS:
        raise ValueError(f"quant {quant!r}: one of {', '.join(GGUF_QUANTS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{quant}"))
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_context_length(shape.context)
    w.add_embedding_length(shape.hidden)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.intermediate)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("llama")
    tokens = _tokens(shape.vocab)
    w.add_token_list(tokens)
    w.add_token_scores([float(-i) for i in range(len(tokens))])
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_chat_template("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")

    Q = gguf.GGMLQuantizationType
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_heads * shape.head_dim

    def weights(tname: str, rows: int, cols: int, kind: str) -> None:
        if quant == "Q4_K_M":
            w.add_tensor(tname, _k_quant_blocks(rng, rows, cols, kind), raw_dtype=Q[kind])
            return
        values = rng.standard_normal((rows, cols), dtype=np.float32) * 0.02
        if quant == "F16":
            w.add_tensor(tname, values.astype(np.float16))
        else:
            w.add_tensor(tname, gguf.quants.quantize(values, Q.Q8_0), raw_dtype=Q.Q8_0)

    def norm(tname: str, n: int) -> None:
        w.add_tensor(tname, np.ones(n, dtype=np.float32) + rng.standard_normal(n, dtype=np.float32) * 0.01)

    weights("token_embd.weight", shape.vocab, h, "Q4_K")
    for n in range(shape.layers):
        p = f"blk.{n}."
        norm(p + "attn_norm.weight", h)
        weights(p + "attn_q.weight", h, h, "Q4_K")
        weights(p + "attn_k.weight", kv, h, "Q4_K")
        weights(p + "attn_v.weight", kv, h, "Q6_K")
        weights(p + "attn_output.weight", h, h, "Q4_K")
        norm(p + "ffn_norm.weight", h)
        weights(p + "ffn_gate.weight", i, h, "Q4_K")
        weights(p + "ffn_up.weight", i, h, "Q4_K")
        weights(p + "ffn_down.weight", h, i, "Q6_K")
    norm("output_norm.weight", h)
    weights("output.weight", shape.vocab, h, "Q6_K")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_diffusers(directory: Path, *, seed: int = 0, variant: str | None = None) -> Path:
    """A tiny diffusers pipeline folder (SDXL-shaped names, toy sizes)."""
    from safetensors.numpy import save_file

    rng = _rng(seed)
    suffix = f".{variant}" if variant else ""

    def weights(sub: str, fname: str, shapes: dict[str, tuple[int, ...]], config: dict) -> None:
        d = directory / sub
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(config, indent=2))
        save_file({n: rng.standard_normal(s, dtype=np.float32).astype(np.float16) for n, s in shapes.items()},
                  str(d / f"{fname}{suffix}.safetensors"))

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.30.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    }, indent=2))
    weights("unet", "diffusion_pytorch_model", {
        "conv_in.weight": (320, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3),
        "mid_block.attentions.0.proj_in.weight": (640, 640), "conv_out.weight": (4, 320, 3, 3),
    }, {"_class_name": "UNet2DConditionModel", "sample_size": 128})
    weights("vae", "diffusion_pytorch_model", {
        "encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3),
        "decoder.mid_block.attentions.0.to_q.weight": (512, 512),
    }, {"_class_name": "AutoencoderKL"})
    for te, width in (("text_encoder", 768), ("text_encoder_2", 1280)):
        weights(te, "model", {
            "text_model.embeddings.token_embedding.weight": (4096, width // 4),
            "text_model.encoder.layers.0.self_attn.q_proj.weight": (width // 4, width // 4),
        }, {"architectures": ["CLIPTextModel"]})
    for tok in ("tokenizer", "tokenizer_2"):
        d = directory / tok
        d.mkdir(exist_ok=True)
        (d / "vocab.json").write_text(json.dumps({t: n for n, t in enumerate(_tokens(1000))}))
        (d / "merges.txt").write_text("#version: 0.2\n")
        (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    (directory / "scheduler").mkdir(exist_ok=True)
    scheduler = {"_class_name": "EulerDiscreteScheduler"}
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return directory


def write_sd_single_file(path: Path, *, seed: int = 0) -> Path:
    """A single-file Stable Diffusion checkpoint (A1111/ComfyUI prefixes)."""
    from safetensors.numpy import save_file

    rng = _rng(seed)
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.middle_block.1.proj_in.weight": (640, 640),
        "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
        "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (4096, 192),
        "cond_stage_model.model.ln_final.weight": (768,),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({n: rng.standard_normal(s, dtype=np.float32).astype(np.float16) for n, s in shapes.items()}, str(path))
    return path


def write_random_shards(directory: Path, gib: float, shards: int, *, seed: int = 0) -> Path:
    """A benchmark-sized model: ``gib`` GiB of random fp16 (incompressible,
    like real weights) in ``shards`` safetensors files written by the
    ``safetensors`` library, plus a config.json."""
    from safetensors.numpy import save_file

    rng = _rng(seed)
    per_tensor = int(gib * 2**30 / shards / 8) // 2048 * 2048  # whole rows of 1024 fp16
    directory.mkdir(parents=True)
    for k in range(shards):
        tensors = {f"l{k}.w{i}": np.frombuffer(rng.bytes(per_tensor), dtype=np.float16).reshape(-1, 1024)
                   for i in range(8)}
        save_file(tensors, str(directory / f"model-{k + 1:05d}-of-{shards:05d}.safetensors"))
    (directory / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    return directory


# ---------------------------------------------------------------- adapters and projectors

# the llama.cpp names of the projections a LoRA adapter usually targets, and
# their (in, out) sizes for a LlamaShape
def _lora_targets(shape: LlamaShape) -> list[tuple[str, str, int, int]]:
    """(gguf name, Hugging Face module, in, out) per projection of one block."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_heads * shape.head_dim
    return [("attn_q", "self_attn.q_proj", h, h), ("attn_k", "self_attn.k_proj", h, kv),
            ("attn_v", "self_attn.v_proj", h, kv), ("attn_output", "self_attn.o_proj", h, h),
            ("ffn_gate", "mlp.gate_proj", h, i), ("ffn_up", "mlp.up_proj", h, i), ("ffn_down", "mlp.down_proj", i, h)]


def write_gguf_lora(path: Path, shape: LlamaShape = LlamaShape(), *, rank: int = 8, alpha: float = 16.0,
                    seed: int = 0, arch: str = "llama") -> Path:
    """A GGUF LoRA adapter written the way llama.cpp's convert_lora_to_gguf.py
    writes one: ``general.type = adapter``, ``adapter.type = lora``,
    ``adapter.lora.alpha``, and ``blk.N.<proj>.weight.lora_a`` (ggml shape
    ``[in, r]``) / ``lora_b`` (``[r, out]``) pairs in F16 for every
    projection of every block (7 x 2 x layers tensors)."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_name(f"{path.stem}")
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for n in range(shape.layers):
        for gname, _, fan_in, fan_out in _lora_targets(shape):
            base = f"blk.{n}.{gname}.weight"
            w.add_tensor(base + ".lora_a", (rng.standard_normal((rank, fan_in)) * 0.01).astype(np.float16))
            w.add_tensor(base + ".lora_b", (rng.standard_normal((fan_out, rank)) * 0.01).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_mmproj(path: Path, *, hidden: int = 256, blocks: int = 4, projector: str = "gemma3",
                 seed: int = 0) -> Path:
    """A vision projector GGUF as llama.cpp's convert_hf_to_gguf.py --mmproj
    writes one: ``general.architecture = clip``, ``general.type = mmproj``,
    ``clip.has_vision_encoder``, ``clip.projector_type``, ``clip.vision.*``
    and ``v.blk.N.*`` / ``mm.*`` tensors in F16."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_name(path.stem)
    w.add_bool(gguf.Keys.Clip.HAS_VISION_ENCODER, True)
    w.add_string(gguf.Keys.Clip.PROJECTOR_TYPE, projector)
    w.add_uint32("clip.vision.embedding_length", hidden)
    w.add_uint32("clip.vision.block_count", blocks)
    w.add_uint32("clip.vision.image_size", 224)
    w.add_uint32("clip.vision.patch_size", 14)

    def f16(*s: int) -> np.ndarray:
        return (rng.standard_normal(s) * 0.02).astype(np.float16)

    w.add_tensor("v.patch_embd.weight", f16(hidden, 3, 14, 14))
    for n in range(blocks):
        for t in ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_up", "ffn_down"):
            w.add_tensor(f"v.blk.{n}.{t}.weight", f16(hidden, hidden))
    w.add_tensor("mm.input_projection.weight", f16(hidden, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_peft_adapter(directory: Path, shape: LlamaShape = LlamaShape(), *, rank: int = 8, seed: int = 0,
                       base: str = "example/llama-demo") -> Path:
    """A PEFT LoRA adapter folder as ``PeftModel.save_pretrained`` writes it:
    ``adapter_config.json`` and ``adapter_model.safetensors`` (keys
    ``base_model.model.model.layers.N.<module>.lora_A.weight`` ``[r, in]``
    and ``lora_B.weight`` ``[out, r]``, metadata ``{"format": "pt"}``)."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    tensors = {}
    for n in range(shape.layers):
        for _, module, fan_in, fan_out in _lora_targets(shape):
            p = f"base_model.model.model.layers.{n}.{module}"
            tensors[p + ".lora_A.weight"] = (rng.standard_normal((rank, fan_in)) * 0.01).astype(np.float32)
            tensors[p + ".lora_B.weight"] = (rng.standard_normal((fan_out, rank)) * 0.01).astype(np.float32)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": rank,
        "lora_alpha": 2 * rank, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "target_modules": sorted({m.split(".")[-1] for _, m, _, _ in _lora_targets(shape)}),
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory
