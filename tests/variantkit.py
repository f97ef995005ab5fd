"""One small llama-shaped model at three quantizations (GGUF files written
by gguf-py), its tokenizer files, and a modelimage.toml entry with a
variant per quantization: the input of the variants tests."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

from modelimage import synth

# K-quant rows need multiples of 256 columns; small enough for MBs
SHAPE = synth.LlamaShape(vocab=2048, hidden=256, layers=2, intermediate=512)
QUANTS = {"q4_k_m": "Q4_K_M", "q8_0": "Q8_0", "f16": "F16"}  # variant name -> quantization, default first
TOML = """[models.llama]
source = "{source}"
image = "{image}"

[models.llama.variants.q4_k_m]
include = ["*Q4_K_M.gguf"]

[models.llama.variants.q8_0]
include = ["*Q8_0.gguf"]

[models.llama.variants.f16]
include = ["*F16.gguf"]
"""


def write_model(directory: Path, *, seed: int = 0) -> Path:
    """``llama-{Q4_K_M,Q8_0,F16}.gguf`` plus tokenizer files (shared by every variant)."""
    for quant in QUANTS.values():
        synth.write_llama_gguf(directory / f"llama-{quant}.gguf", SHAPE, seed=seed, quant=quant, name="llama")
    synth.write_tokenizer(directory, SHAPE.vocab)
    (directory / "README.md").write_text("# llama (test)\n")
    return directory


def write_config(path: Path, source: Path, image: str = "localhost/none/llama:latest") -> Path:
    path.write_text(TOML.format(source=source, image=image))
    return path


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def blob_puts(log: str, repository: str) -> Counter:
    """How many times each blob digest was uploaded to ``repository``: the
    closing ``PUT .../blobs/uploads/ID?digest=...`` lines of a CNCF
    registry's access log (monolithic or chunked, one per upload)."""
    uploads = re.findall(rf'http\.request\.method=PUT .*?http\.request\.uri="?/v2/{re.escape(repository)}'
                         r'/blobs/uploads/[^ "]*?digest=(sha256(?::|%3A)[0-9a-f]{64})', log)
    return Counter(d.replace("%3A", ":") for d in uploads)


def cli(*args: str) -> tuple[int, str, str]:
    """``modelimage ARGS`` in this process: (exit code, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from modelimage.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def push_variants(registry, model: Path, root: Path, repository: str) -> tuple[str, dict]:
    """Build the three variants of ``model`` and push them to
    ``registry``'s ``repository:latest``: (the index REF, build --json)."""
    import json

    ref = f"{registry.host}/{repository}:latest"
    config = write_config(root / "modelimage.toml", model, ref)
    rc, out, err = cli("build", "llama", "--config", str(config), "--push", "--json")
    assert rc == 0, err
    return ref, json.loads(out)
