"""modelimage.weights: weight sets, their kinds, and never splitting what
loaders cannot read split (issue 22).

Adapters and projectors are written the way their upstream writers write
them (synth: llama.cpp's convert_lora_to_gguf.py / convert_hf_to_gguf.py
--mmproj layouts with gguf's GGUFWriter; PEFT's save_pretrained layout with
safetensors).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelimage import synth
from modelimage.cli import main
from modelimage.errors import LayerTooLarge
from modelimage.inspect import inspect_model
from modelimage.plan import PlanSettings, make_plan
from modelimage.units import parse_size
from modelimage.weights import LOADERS, find_weight_sets

from . import upstream

SHAPE = synth.LlamaShape(vocab=1024, hidden=256, layers=4, intermediate=768)
TARGET = "/models/x"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("kinds")
    out = {
        "gguf-lora": synth.write_gguf_lora(base / "lora" / "demo-lora-f16.gguf", SHAPE, rank=8).parent,
        "peft-adapter": synth.write_peft_adapter(base / "peft", SHAPE, rank=8),
        "sd-single-file": synth.write_sd_single_file(base / "sd" / "sd-demo.safetensors").parent,
    }
    mm = base / "multimodal"
    synth.write_llama_gguf(mm / "demo-Q4_K_M.gguf", SHAPE)
    synth.write_mmproj(mm / "mmproj-demo-f16.gguf", hidden=128, blocks=2)
    out["multimodal"] = mm
    return out


def test_kinds_and_what_the_files_say(folders: dict[str, Path]) -> None:
    lora = inspect_model(folders["gguf-lora"])
    (w,) = lora.weight_sets
    assert w.kind == "gguf-lora" and not w.rule.splittable
    assert w.adapter is not None and w.adapter.base_architecture == "llama" and w.adapter.rank == 8
    assert w.adapter.alpha == 16.0
    peft = inspect_model(folders["peft-adapter"])
    (w,) = peft.weight_sets
    assert w.kind == "peft-adapter"
    assert w.adapter is not None and w.adapter.rank == 8 and w.adapter.base_model == "example/llama-demo"
    mm = inspect_model(folders["multimodal"])
    kinds = {w.members[0]: w.kind for w in mm.weight_sets}
    assert kinds == {"demo-Q4_K_M.gguf": "model", "mmproj-demo-f16.gguf": "mmproj"}
    proj = next(w for w in mm.weight_sets if w.kind == "mmproj")
    assert proj.adapter is not None and proj.adapter.base_architecture == "gemma3"
    sd = inspect_model(folders["sd-single-file"])
    assert [w.kind for w in sd.weight_sets] == ["diffusion-checkpoint"]


def test_every_kind_names_its_loader() -> None:
    for kind, rule in LOADERS.items():
        assert rule.kind == kind and rule.loader and rule.what
    assert [k for k, r in LOADERS.items() if r.splittable] == ["model"]


@pytest.mark.parametrize(("folder", "member"), [
    ("gguf-lora", "demo-lora-f16.gguf"),  # issue 22, input 1
    ("peft-adapter", "adapter_model.safetensors"),  # issue 22, input 2
    ("multimodal", "mmproj-demo-f16.gguf"),
    ("sd-single-file", "sd-demo.safetensors"),
])
def test_never_split_what_loaders_cannot_read_split(folders: dict[str, Path], folder: str, member: str) -> None:
    """A file whose loaders cannot read it split, over the limit, is one
    error naming it, its size and the smallest --max-layer-size that keeps
    it whole; that size plans it whole."""
    model = inspect_model(folders[folder])
    f = model.file(member)
    limit = f.size // 2  # for "multimodal", the language model could be split at that size, the projector not
    with pytest.raises(LayerTooLarge) as exc:
        make_plan(model, PlanSettings(max_layer_size=limit, target=TARGET))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{member} is ") and f"({f.size} bytes)" in msg and "cannot be split" in msg, msg
    m = re.search(r"--max-layer-size (\S+) or more", msg)
    assert m, msg
    suggested = parse_size(m.group(1))
    plan = make_plan(model, PlanSettings(max_layer_size=suggested, target=TARGET))
    assert member in [e.content.name for e in plan.files]  # whole, under its own name
    assert not any(member in r.sources for r in plan.reshards)
    # and it is the smallest whole MB that does
    if suggested > 10**6:
        with pytest.raises(LayerTooLarge):
            make_plan(model, PlanSettings(max_layer_size=suggested - 10**6, target=TARGET))


def test_the_cli_refuses_with_one_line(folders: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """build exits non-zero, writes nothing, and says it in one line."""
    out = tmp_path / "out"
    rc = main(["build", str(folders["gguf-lora"]), "--max-layer-size", "200KB", "-o", f"oci:{out}"])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert err.count("\n") == 0 and err.startswith("error: demo-lora-f16.gguf is "), err
    assert not out.exists()


def test_a_split_model_beside_a_whole_projector(folders: dict[str, Path]) -> None:
    """The language model splits; the projector, which fits, stays whole."""
    model = inspect_model(folders["multimodal"])
    proj = model.file("mmproj-demo-f16.gguf")
    plan = make_plan(model, PlanSettings(max_layer_size=proj.size + 10**5, target=TARGET))
    names = [e.content.name for e in plan.files]
    assert "mmproj-demo-f16.gguf" in names
    assert [n for n in names if n.startswith("demo-Q4_K_M-")] and "demo-Q4_K_M.gguf" not in names


def test_peft_folder_after_plan_loads_by_peft_rules(folders: dict[str, Path], tmp_path: Path) -> None:
    """PEFT reads adapter_config.json and adapter_model.safetensors, nothing
    else: the planned folder (whole, with a limit that fits) loads."""
    from .test_plan import materialize

    model = inspect_model(folders["peft-adapter"])
    plan = make_plan(model, PlanSettings(max_layer_size=model.bytes + 10**5, target=TARGET))
    out = materialize(plan, tmp_path / "out")
    config, tensors = upstream.peft_load(out)
    assert config["r"] == 8
    _, original = upstream.peft_load(folders["peft-adapter"])
    assert {k: v.tobytes() for k, v in tensors.items()} == {k: v.tobytes() for k, v in original.items()}


def test_a_consolidated_file_named_by_an_index_is_not_counted_twice(tmp_path: Path) -> None:
    """find_weight_sets: an index's extra file is a member of the sharded
    set, not a set of its own."""
    d = tmp_path / "m"
    d.mkdir()
    save_file({"a": np.zeros(4, np.float32)}, str(d / "model-00001-of-00001.safetensors"))
    save_file({"head": np.zeros(4, np.float32)}, str(d / "model-mtp.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 32}, "weight_map": {"a": "model-00001-of-00001.safetensors",
                                                        "head": "model-mtp.safetensors"}}))
    model = inspect_model(d)
    sets = find_weight_sets(model.files)
    assert [(w.members, w.extras) for w in sets] == [
        (("model-00001-of-00001.safetensors", "model-mtp.safetensors"), ("model-mtp.safetensors",))]
    assert model.parameters == 8


def test_remote_shard_headers_are_read_at_once_in_order_and_in_context(tmp_path) -> None:
    """The shards of a remote weight set have their headers read at once
    (each read waits until a second one has started: read in turn, they
    would never meet), in the caller's context (the registry transport's
    options reach each read), the headers in shard order; two bad shards:
    the error names the first, as reading them in turn would."""
    import threading
    from dataclasses import dataclass, field

    from modelimage.content import RangedObject
    from modelimage.errors import FormatError
    from modelimage.registry.transport import TransportOptions, current_options, using

    d = synth.write_random_shards(tmp_path / "m", 0.001, 4)
    meet = threading.Barrier(2, timeout=10)
    options = TransportOptions(timeout=7.5)

    @dataclass(frozen=True)
    class Remote(RangedObject):
        local: Path
        data: bytes
        seen: list = field(default_factory=list)

        def __str__(self) -> str:
            return f"mem://bucket/m/{self.local.name}"

        @property
        def size(self) -> int:
            return len(self.data)

        def get(self, offset: int, length: int) -> bytes:
            self.check_range(offset, length)
            self.seen.append(current_options().timeout)
            if offset == 0:
                meet.wait()
            return self.data[offset:offset + length]

    from modelimage.formats.safetensors import read_header
    from modelimage.sources.files import SourceFile

    shards = sorted(d.glob("*.safetensors"))
    files = [SourceFile(p.name, Remote(p, p.read_bytes()), p.stat().st_size) for p in shards]
    with using(options):
        (ws,) = find_weight_sets(files)
    assert ws.members == tuple(p.name for p in shards)
    assert [h.tensors for h in ws.headers] == [read_header(p).tensors for p in shards]
    assert all(f.path.seen and set(f.path.seen) == {7.5} for f in files)

    meet.reset()
    bad = [SourceFile(f.name, Remote(f.path.local, b"\xff" * 16 + f.path.data[16:]) if i in (1, 2) else f.path,
                      f.size) for i, f in enumerate(files)]
    with pytest.raises(FormatError, match=re.escape(f"mem://bucket/m/{shards[1].name}")):
        find_weight_sets(bad)
