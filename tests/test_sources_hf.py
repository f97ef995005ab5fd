"""hf:// sources: a real huggingface_hub cache, filled by huggingface_hub
itself from a loopback Hub (tests.hubserver), then built offline.

The repositories carry the names of examples/modelimage.toml, so the
example entries (their include/exclude globs) are what is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects

from modelimage import synth
from modelimage.config import load_config
from modelimage.errors import SourceError
from modelimage.sources import hf
from modelimage.sources.files import selected

from .hubserver import HubServer
from .images import read_image
from .tools import SMALL

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "modelimage.toml"
LLAMA_REPO = "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF"
SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"


# ---------------------------------------------------------------- unit: URLs and globs


@pytest.mark.parametrize("url, repo, rev", [
    ("hf://org/repo", "org/repo", None),
    ("hf://org/repo@main", "org/repo", "main"),
    ("hf://org/Repo.v1-GGUF@" + "a" * 40, "org/Repo.v1-GGUF", "a" * 40),
    ("hf://gpt2", "gpt2", None),
    ("hf://org/repo/", "org/repo", None),
])
def test_parse_url(url: str, repo: str, rev: str | None) -> None:
    assert hf.parse_url(url) == (repo, rev)


@pytest.mark.parametrize("url", ["hf://", "hf://a/b/c", "hf://a/../b", "hf://a--b/c", "s3://a/b"])
def test_parse_url_refuses(url: str) -> None:
    with pytest.raises(SourceError):
        hf.parse_url(url)


# Abridged file lists of the example repositories (the files that decide
# what the globs pick: every variant and quantization beside the wanted one).
REPO_FILES = {
    "llama-8b-q4": [
        ".gitattributes", "README.md", "Meta-Llama-3.1-8B-Instruct.imatrix",
        *(f"Meta-Llama-3.1-8B-Instruct-{q}.gguf"
          for q in ("Q4_K_M", "Q4_K_L", "Q4_K_S", "IQ4_XS", "Q5_K_M", "Q6_K", "Q8_0", "f32")),
    ],
    "sdxl": [
        "model_index.json", "sd_xl_base_1.0.safetensors", "sd_xl_base_1.0_0.9vae.safetensors",
        "sd_xl_offset_example-lora_1.0.safetensors", "01.png", "LICENSE.md", "README.md",
        "scheduler/scheduler_config.json",
        *(f"{te}/{f}" for te in ("text_encoder", "text_encoder_2") for f in (
            "config.json", "model.safetensors", "model.fp16.safetensors", "model.onnx", "openvino_model.bin",
            "openvino_model.xml", "flax_model.msgpack")),
        *(f"{tok}/{f}" for tok in ("tokenizer", "tokenizer_2") for f in (
            "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")),
        *(f"{m}/{f}" for m in ("unet", "vae", "vae_1_0") for f in (
            "config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")),
        "unet/model.onnx", "unet/model.onnx_data", "unet/openvino_model.bin",
        "vae/diffusion_flax_model.msgpack", "vae_decoder/config.json", "vae_decoder/model.onnx",
        "vae_encoder/config.json", "vae_encoder/model.onnx",
    ],
    "flux-schnell": [
        "model_index.json", "ae.safetensors", "flux1-schnell.safetensors", "schnell_grid.jpeg", "README.md",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors",
        "text_encoder_2/config.json", "text_encoder_2/model-00001-of-00002.safetensors",
        "text_encoder_2/model-00002-of-00002.safetensors", "text_encoder_2/model.safetensors.index.json",
        "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json", "tokenizer_2/special_tokens_map.json", "tokenizer_2/spiece.model",
        "tokenizer_2/tokenizer.json", "tokenizer_2/tokenizer_config.json",
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors.index.json",
        *(f"transformer/diffusion_pytorch_model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)),
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    ],
    "minilm": [
        ".gitattributes", "1_Pooling/config.json", "README.md", "config.json", "config_sentence_transformers.json",
        "data_config.json", "model.safetensors", "modules.json", "pytorch_model.bin", "rust_model.ot",
        "sentence_bert_config.json", "special_tokens_map.json", "tf_model.h5", "tokenizer.json",
        "tokenizer_config.json", "train_script.py", "vocab.txt", "onnx/model.onnx", "onnx/model_O4.onnx",
        "openvino/openvino_model.bin", "openvino/openvino_model.xml",
    ],
}


def _example_selection(name: str) -> tuple[list[str], list[str]]:
    """(what huggingface_hub downloads, what inspect keeps) for an example entry."""
    entry = load_config(EXAMPLES).models[name]
    files = REPO_FILES[name]
    downloaded = sorted(filter_repo_objects(files, allow_patterns=hf.patterns(entry.include) or None,
                                            ignore_patterns=hf.patterns(entry.exclude) or None))
    kept = sorted(f for f in files if selected(f, entry.include, entry.exclude) and not f.startswith("."))
    return downloaded, kept


@pytest.mark.parametrize("name", sorted(REPO_FILES))
def test_example_globs_download_what_inspect_keeps(name: str) -> None:
    """The globs mean the same to huggingface_hub (allow/ignore patterns,
    fnmatch on whole paths) as to inspect (names without '/' match anywhere)."""
    downloaded, kept = _example_selection(name)
    assert downloaded == kept


def test_example_globs_select_what_they_say() -> None:
    llama, _ = _example_selection("llama-8b-q4")
    assert llama == ["Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"]
    sdxl, _ = _example_selection("sdxl")
    weights = [f for f in sdxl if f.endswith((".safetensors", ".onnx", ".bin", ".msgpack"))]
    assert weights == sorted(f"{m}/{n}.fp16.safetensors" for m, n in (
        ("text_encoder", "model"), ("text_encoder_2", "model"), ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model")))
    assert {"model_index.json", "scheduler/scheduler_config.json", "tokenizer_2/vocab.json"} <= set(sdxl)
    flux, _ = _example_selection("flux-schnell")
    assert "flux1-schnell.safetensors" not in flux and "ae.safetensors" not in flux
    assert sum(f.startswith("transformer/diffusion_pytorch_model-") for f in flux) == 3
    assert "tokenizer_2/spiece.model" in flux and "text_encoder_2/model.safetensors.index.json" in flux
    minilm, _ = _example_selection("minilm")
    assert [f for f in minilm if f.endswith((".safetensors", ".bin", ".onnx", ".h5", ".ot"))] == ["model.safetensors"]
    assert {"1_Pooling/config.json", "modules.json", "vocab.txt", "tokenizer.json"} <= set(minilm)


# ---------------------------------------------------------------- against a loopback Hub


@pytest.fixture(scope="module")
def llama_repo(hub: HubServer, tmp_path_factory) -> tuple[dict[str, bytes], str]:
    """The llama-8b-q4 example's repository, with tiny GGUFs of every quantization."""
    d = tmp_path_factory.mktemp("gguf-repo")
    files: dict[str, bytes] = {".gitattributes": b"*.gguf filter=lfs diff=lfs merge=lfs -text\n",
                               "README.md": b"# Llama 3.1 8B Instruct GGUF (tiny stand-in)\n"}
    for seed, q in enumerate(("Q4_K_M", "Q4_K_L", "Q8_0", "f32")):
        name = f"Meta-Llama-3.1-8B-Instruct-{q}.gguf"
        files[name] = synth.write_llama_gguf(d / name, SMALL, seed=seed).read_bytes()
    return files, hub.commit(LLAMA_REPO, files)


def _modelimage(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "modelimage", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"modelimage {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _hf_env(hub: HubServer, cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(cache), HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


@pytest.mark.integration
def test_named_example_downloads_one_quantization_then_builds_offline(hub, llama_repo, tmp_path) -> None:
    """`modelimage build llama-8b-q4` with the example file streams the
    Q4_K_M file only from the Hub (the Hugging Face cache stays empty);
    `render dockerfile` (a build context) has huggingface_hub fill its cache
    with that one file; with HF_HUB_OFFLINE=1 the build reads the cache
    alone and gives the same image, whose one file is byte for byte the
    repository's, labelled with the commit."""
    files, sha = llama_repo
    cache = tmp_path / "hf-cache"
    before = len(hub.requests)
    _modelimage("build", "llama-8b-q4", "--config", str(EXAMPLES), "-o", f"oci:{tmp_path}/online:v1",
                env=_hf_env(hub, cache))
    assert hub.downloads()[-1:] == ["Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"]
    assert [p for p in hub.downloads() if "Q4_K_M" not in p] == []
    assert not list(cache.rglob("*.gguf"))  # streamed: nothing staged
    _modelimage("render", "dockerfile", "llama-8b-q4", "--config", str(EXAMPLES), env=_hf_env(hub, cache))
    blobs = list((cache / "models--bartowski--Meta-Llama-3.1-8B-Instruct-GGUF" / "blobs").iterdir())
    assert [b.stat().st_size for b in blobs] == [len(files["Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"])]
    assert [p for p in hub.downloads() if "Q4_K_M" not in p] == []
    online = len(hub.requests)
    assert online > before

    _modelimage("build", "llama-8b-q4", "--config", str(EXAMPLES), "-o", f"oci:{tmp_path}/offline:v1",
                env=_hf_env(hub, cache, HF_HUB_OFFLINE="1"))
    assert len(hub.requests) == online  # nothing asked of the Hub

    manifest, config, image_files = read_image(tmp_path / "offline", "v1")
    assert read_image(tmp_path / "online", "v1")[0] == manifest  # same manifest, same digests
    assert image_files == {"models/llama-8b-q4/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf":
                           files["Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"]}
    labels = config["config"]["Labels"]
    for where in (labels, manifest["annotations"]):
        assert where["dev.modelimage.source"] == f"hf://{LLAMA_REPO}"
        assert where["dev.modelimage.revision"] == sha
        assert where["org.opencontainers.image.revision"] == sha
        assert where["org.opencontainers.image.source"] == f"{hub.url}/{LLAMA_REPO}"
        assert where["dev.modelimage.quantization"] == "Q4_K_M"


@pytest.mark.integration
def test_offline_without_the_files_is_one_line(hub, llama_repo, tmp_path) -> None:
    proc = _modelimage("inspect", f"hf://{LLAMA_REPO}", "--include", "*Q8_0.gguf",
                       env=_hf_env(hub, tmp_path / "empty-cache", HF_HUB_OFFLINE="1"), check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: hf://{LLAMA_REPO}: not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE" in proc.stderr and "Traceback" not in proc.stderr
    proc = _modelimage("inspect", "hf://acme/no-such-repo", env=_hf_env(hub, tmp_path / "c"), check=False)
    assert proc.returncode == 1 and "HF_TOKEN" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.integration
def test_revision_is_pinned_to_the_commit(hub, tmp_path) -> None:
    """@SHA builds that commit's bytes even after main moved; @main (and no
    revision) builds the newest; the label always names the commit."""
    d = tmp_path / "w"
    old = {"tiny-Q4_K_M.gguf": synth.write_llama_gguf(d / "a.gguf", SMALL, seed=10).read_bytes()}
    new = {"tiny-Q4_K_M.gguf": synth.write_llama_gguf(d / "b.gguf", SMALL, seed=11).read_bytes()}
    sha1 = hub.commit("acme/tiny-GGUF", old)
    sha2 = hub.commit("acme/tiny-GGUF", new)
    assert sha1 != sha2
    env = _hf_env(hub, tmp_path / "cache")
    for rev, sha, files in ((f"@{sha1}", sha1, old), ("@main", sha2, new), ("", sha2, new)):
        out = tmp_path / f"out{rev.replace('@', '-')}"
        _modelimage("build", f"hf://acme/tiny-GGUF{rev}", "-o", f"oci:{out}:v1", env=env)
        manifest, config, image_files = read_image(out, "v1")
        assert manifest["annotations"]["dev.modelimage.revision"] == sha
        assert config["config"]["Labels"]["org.opencontainers.image.revision"] == sha
        assert image_files == {"models/tiny-gguf/tiny-Q4_K_M.gguf": files["tiny-Q4_K_M.gguf"]}
    proc = _modelimage("inspect", "hf://acme/tiny-GGUF@v9", env=env, check=False)
    assert proc.returncode == 1 and "has no revision 'v9'" in proc.stderr


@pytest.mark.integration
def test_sdxl_example_takes_the_fp16_variant_only(hub, tmp_path) -> None:
    """A diffusers repository with fp32 and fp16 weights, single-file
    checkpoints and an extra VAE: the sdxl example downloads and packs the
    fp16 pipeline only."""
    d = tmp_path / "sdxl"
    synth.write_diffusers(d, seed=1)
    synth.write_diffusers(d, seed=1, variant="fp16")
    synth.write_sd_single_file(d / "sd_xl_base_1.0.safetensors")
    synth.write_diffusers(tmp_path / "extra", seed=2, variant="fp16")
    files = {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    files["vae_1_0/config.json"] = (tmp_path / "extra/vae/config.json").read_bytes()
    files["vae_1_0/diffusion_pytorch_model.fp16.safetensors"] = (
        tmp_path / "extra/vae/diffusion_pytorch_model.fp16.safetensors").read_bytes()
    files["vae_decoder/config.json"] = b"{}"
    files["vae_decoder/model.onnx"] = b"onnx" * 1000
    sha = hub.commit(SDXL_REPO, files)
    start = len(hub.requests)
    proc = _modelimage("inspect", "sdxl", "--config", str(EXAMPLES), "--json", env=_hf_env(hub, tmp_path / "cache"))
    info = json.loads(proc.stdout)
    names = [f["path"] for f in info["files"]]
    weights = sorted(n for n in names if n.endswith(".safetensors"))
    assert weights == ["text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
                       "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"]
    # streamed: inspect reads the weights' headers and the small files it describes the model by
    asked = {p.split("/resolve/", 1)[1].split("/", 1)[1] for _, p in hub.requests[start:] if "/resolve/" in p}
    assert asked <= set(names) and set(weights) <= asked  # nothing fetched that is not packed
    assert info["kind"] == "diffusion" and info["architecture"] == "StableDiffusionXLPipeline"
    assert info["dtypes"] == {"F16": info["parameters"]}
    assert sha in hub.repos[SDXL_REPO].commits


@pytest.mark.integration
def test_a_mirror_password_in_hf_endpoint_never_lands_in_the_image_or_output(hub, tmp_path) -> None:
    """HF_ENDPOINT=http://USER:PASSWORD@mirror (a private mirror's basic
    auth): the image's source label names the mirror without them, and
    neither the layout, stdout/--json nor an error line holds the password."""
    files = {"config.json": b'{"model_type": "llama"}\n', "tokenizer.json": b"{}\n"}
    hub.commit("acme/secret-mirror", files)
    endpoint = hub.url.replace("http://", "http://mirror-user:mirrorSEKRIT42@")
    env = {**_hf_env(hub, tmp_path / "cache"), "HF_ENDPOINT": endpoint}
    out = tmp_path / "out"
    proc = _modelimage("build", "hf://acme/secret-mirror", "-o", f"oci:{out}:v1", "--json", env=env)
    manifest, config, _ = read_image(out, "v1")
    assert config["config"]["Labels"]["org.opencontainers.image.source"] == f"{hub.url}/acme/secret-mirror"
    leaked = [p for p in out.rglob("*") if p.is_file() and b"mirrorSEKRIT42" in p.read_bytes()]
    assert leaked == [] and "mirrorSEKRIT42" not in proc.stdout + proc.stderr
    missing = _modelimage("inspect", "hf://acme/no-such-repo", env=env, check=False)
    assert missing.returncode == 1 and "mirrorSEKRIT42" not in missing.stdout + missing.stderr, missing.stderr
