"""The real upstream loaders on what modelimage builds and pulls: outside CI.

CI cannot afford torch (about 700 MB installed; the suite already takes
most of CI's minutes), so tests/upstream.py re-states transformers' and
PEFT's loader rules from their sources and this script runs the real ones:

* ``transformers``: a llama model (synthetic, fp16) resharded by modelimage
  to fit small layers, pushed to an OCI layout, pulled back; transformers
  loads the pulled folder to the same state dict and the same logits as the
  original, and every shard is byte for byte what transformers' own save
  (``save_pretrained`` -> ``safetensors.torch.save_file(..., metadata={"format":
  "pt"})``) writes for the same tensors;
* ``peft``: a PEFT LoRA adapter built on its base model's image (``build
  ADAPTER --base``), pulled: ``PeftModel.from_pretrained`` on the pulled
  folders gives the same logits as on the originals; a sharded adapter (what
  modelimage used to make of an adapter over the layer limit) does not load;
* ``llama-cpp``: a GGUF model and a GGUF LoRA adapter written as llama.cpp's
  converters write them, the adapter built on the model's image and pulled;
  llama.cpp (llama-cpp-python, built from source) generates the same tokens
  with the pulled adapter as with the original, and different ones when
  given only the first file of a split adapter (why modelimage refuses to
  split one).

``make check-loaders`` / ``make check-llama-cpp`` make the virtualenv
(build/loaders-venv) and run it; prints one line per check, exits 1 on a
failure. Run: ``python benchmarks/upstream_loaders.py transformers peft llama-cpp``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modelimage import synth
from modelimage.cli import main as modelimage

SHAPE = synth.LlamaShape(vocab=1024, hidden=256, layers=2, intermediate=512)
FAILED: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)
    if not ok:
        FAILED.append(name)


def run(*args: str) -> None:
    rc = modelimage(list(args))
    if rc != 0:
        raise SystemExit(f"modelimage {' '.join(args)} exited {rc}")


def check_transformers(work: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    src = synth.write_llama_safetensors(work / "llama", SHAPE, shards=1)
    run("build", str(src), "--max-layer-size", "700KB", "-o", f"oci:{work / 'oci'}:llama")
    run("pull", f"oci:{work / 'oci'}:llama", str(work / "pulled"))
    shards = sorted(p.name for p in (work / "pulled").glob("model-*-of-*.safetensors"))
    check("transformers: the model was resharded", len(shards) > 1, f"{len(shards)} shards")
    a = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float16)
    b = AutoModelForCausalLM.from_pretrained(work / "pulled", dtype=torch.float16)
    sa, sb = a.state_dict(), b.state_dict()
    check("transformers: same state dict", sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa))
    ids = torch.tensor([[1, 5, 42, 7, 99, 3]])
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    check("transformers: same logits", torch.equal(la, lb))
    same = True
    for shard in shards:
        with safe_open(str(work / "pulled" / shard), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        save_file(tensors, str(work / "theirs.safetensors"), metadata={"format": "pt"})
        same &= (work / "theirs.safetensors").read_bytes() == (work / "pulled" / shard).read_bytes()
    check("transformers: each shard is what transformers' save writes for its tensors", same)
    index = json.loads((work / "pulled" / "model.safetensors.index.json").read_text())
    check("transformers: index total_size", index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                                                    for t in sa.values()))


def check_peft(work: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    src = synth.write_llama_safetensors(work / "base", SHAPE, shards=1)
    adapter = synth.write_peft_adapter(work / "my-lora", SHAPE, rank=8, base=str(src))
    run("build", str(src), "-o", f"oci:{work / 'oci'}:base")
    run("build", str(adapter), "--base", f"oci:{work / 'oci'}:base", "-o", f"oci:{work / 'oci'}:lora")
    run("pull", f"oci:{work / 'oci'}:lora", str(work / "pulled"))
    ids = torch.tensor([[1, 5, 42, 7, 99, 3]])

    def logits(base_dir: Path, adapter_dir: Path) -> torch.Tensor:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, str(adapter_dir))
        with torch.no_grad():
            return model(ids).logits

    want = logits(src, adapter)
    got = logits(work / "pulled", work / "pulled" / "adapters" / "my-lora")
    check("peft: the pulled base + adapter give the same logits", torch.equal(want, got))
    base_only = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        check("peft: the adapter changes them", not torch.equal(want, base_only(ids).logits))
    # what a split adapter would be: shards + index, no adapter_model.safetensors
    sharded = work / "sharded"
    sharded.mkdir()
    (sharded / "adapter_config.json").write_bytes((adapter / "adapter_config.json").read_bytes())
    from modelimage.content import Literal
    from modelimage.formats import safetensors as st

    for vf in st.split([st.read_header(adapter / "adapter_model.safetensors")], stem="adapter_model", directory="",
                       max_shard_size=60_000):
        with open(sharded / vf.name, "wb") as out:
            for seg in vf.segments:
                if isinstance(seg, Literal):
                    out.write(seg.data)
                else:
                    with open(seg.path, "rb") as f:
                        f.seek(seg.offset)
                        out.write(f.read(seg.length))
    try:
        logits(src, sharded)
        check("peft: a sharded adapter does not load", False, "it loaded")
    except Exception as e:  # noqa: BLE001 (whatever PEFT raises)
        check("peft: a sharded adapter does not load", True, f"{type(e).__name__}: {str(e)[:100]}")


def check_llama_cpp(work: Path) -> None:
    import gguf
    from llama_cpp import Llama

    base = synth.write_llama_gguf(work / "base" / "tiny-Q4_K_M.gguf", SHAPE)
    lora = synth.write_gguf_lora(work / "lora" / "tiny-lora-f16.gguf", SHAPE, rank=8, alpha=16.0)
    run("build", str(base.parent), "-o", f"oci:{work / 'oci'}:base")
    run("build", str(lora.parent), "--base", f"oci:{work / 'oci'}:base", "-o", f"oci:{work / 'oci'}:lora")
    run("pull", f"oci:{work / 'oci'}:lora", str(work / "pulled"))

    def tokens(model: Path, adapter: Path | None) -> tuple[list[int], bytes]:
        """16 greedy tokens and the prompt's last logits (as bytes). Token ids in
        and out: the synthetic vocabulary has no byte tokens to tokenize text with."""
        llm = Llama(model_path=str(model), lora_path=str(adapter) if adapter else None, n_ctx=64, seed=0,
                    verbose=False, logits_all=True)
        llm.eval([1, 5, 42, 7])
        logits = llm.scores[llm.n_tokens - 1].tobytes()
        llm.reset()
        out: list[int] = []
        for token in llm.generate([1, 5, 42, 7], top_k=1, temp=0.0):
            out.append(token)
            if len(out) == 16:
                break
        return out, logits

    want = tokens(base, lora)
    got = tokens(work / "pulled" / base.name, work / "pulled" / "adapters" / "lora" / lora.name)
    check("llama.cpp: the pulled base + adapter generate the same tokens and logits", want == got,
          f"{want[0][:8]}...")
    check("llama.cpp: the adapter changes the logits", want[1] != tokens(base, None)[1])
    # a split adapter: llama.cpp takes the first file as the whole adapter, silently
    r = gguf.GGUFReader(lora)
    w = gguf.GGUFWriter(work / "split" / "tiny-lora.gguf", "llama", split_max_tensors=len(r.tensors) // 2)
    (work / "split").mkdir()
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 16.0)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=tuple(int(x) for x in reversed(t.shape)), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    first = sorted((work / "split").glob("tiny-lora-00001-of-*.gguf"))[0]
    try:
        partial = tokens(base, first)
        check("llama.cpp: the first split of a split adapter loads without an error and gives other logits "
              "(what modelimage refuses to make)", partial[1] != want[1])
    except Exception as e:  # noqa: BLE001
        check("llama.cpp: the first split of a split adapter does not load", True, str(e)[:100])


CHECKS = {"transformers": check_transformers, "peft": check_peft, "llama-cpp": check_llama_cpp}


def main(argv: list[str]) -> int:
    names = argv or list(CHECKS)
    print(f"# upstream loaders, {time.strftime('%Y-%m-%d')}, {platform.node()} ({platform.machine()}, "
          f"Python {platform.python_version()})")
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"loaders-{name}-") as tmp:
            t0 = time.monotonic()
            CHECKS[name](Path(tmp))
            print(f"     {name}: {time.monotonic() - t0:.1f} s", flush=True)
    for pkg in ("torch", "transformers", "peft", "llama_cpp_python", "safetensors", "gguf"):
        v = subprocess.run([sys.executable, "-m", "pip", "show", pkg.replace("_", "-")], capture_output=True,
                           text=True).stdout
        line = next((ln for ln in v.splitlines() if ln.startswith("Version:")), None)
        if line:
            print(f"#   {pkg} {line.split()[1]}")
    print(f"{len(FAILED)} failed" if FAILED else "all passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
