"""modelimage.plan: files + limits -> ordered, size-bounded layers.

Synthetic models (real safetensors/gguf writers) are inspected with
:func:`modelimage.inspect.inspect_model` and planned with
:func:`modelimage.plan.make_plan`; every plan is checked against the planner's
invariants, and resharded plans are materialized through the real layer
writer and loaded back with the reference readers.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from gguf import GGUFReader
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from modelimage import synth
from modelimage.content import FileRange, Literal
from modelimage.errors import LayerTooLarge, PlanError
from modelimage.inspect import ModelInfo, inspect_model
from modelimage.plan import OWN_LAYER_MIN, Plan, PlanSettings, blob_budget, make_plan
from modelimage.tarstream import layer_size, write_layer
from modelimage.units import parse_size

SHAPE = synth.LlamaShape(vocab=1024, hidden=256, layers=2, intermediate=512)
TARGET = "/models/x"
ROOT = "models/x"
GGUF_NAME = "llama-demo-Q4_K_M.gguf"

# ---------------------------------------------------------------- synthetic models


def _bigger_unet(directory: Path, *, variant: str | None = None) -> None:
    """Replace the toy unet with one of many 512 KiB tensors (4 MiB in all),
    so it is the one file over a 3 MB limit."""
    rng = np.random.default_rng(7)
    tensors = {
        f"down_blocks.{i}.resnets.0.conv1.weight": rng.standard_normal((512, 512), dtype=np.float32).astype(np.float16)
        for i in range(8)
    }
    suffix = f".{variant}" if variant else ""
    for old in (directory / "unet").glob("*.safetensors"):
        old.unlink()
    save_file(tensors, str(directory / "unet" / f"diffusion_pytorch_model{suffix}.safetensors"))


def _six_shards(d: Path) -> None:
    synth.write_llama_safetensors(d, SHAPE, shards=6)


def _bin_model(d: Path) -> None:
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (d / "pytorch_model.bin").write_bytes(os.urandom(2_000_000))


BUILDERS: dict[str, Callable[[Path], object]] = {
    "llama-sharded": lambda d: synth.write_llama_safetensors(d, SHAPE, shards=2),
    "llama-single": lambda d: synth.write_llama_safetensors(d, SHAPE, shards=1),
    "llama-6-shards": _six_shards,
    "gguf": lambda d: synth.write_llama_gguf(d / GGUF_NAME, SHAPE),
    "diffusers": lambda d: (synth.write_diffusers(d), _bigger_unet(d)),
    "diffusers-fp16": lambda d: (synth.write_diffusers(d, variant="fp16"), _bigger_unet(d, variant="fp16")),
    "sd-single-file": lambda d: synth.write_sd_single_file(d / "sd-demo.safetensors"),
    "pytorch-bin": _bin_model,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], ModelInfo]:
    """Build each synthetic model once per module, on first use."""
    base = tmp_path_factory.mktemp("models")
    cache: dict[str, ModelInfo] = {}

    def get(name: str) -> ModelInfo:
        if name not in cache:
            d = base / name
            BUILDERS[name](d)
            cache[name] = inspect_model(d)
        return cache[name]

    return get


# ---------------------------------------------------------------- invariants


def check_plan(model: ModelInfo, plan: Plan, *, merged: bool = False) -> None:
    """What every plan must satisfy."""
    s = plan.settings
    budget = blob_budget(s.max_layer_size, s.compression)
    assert budget <= s.max_layer_size
    paths = [e.path for e in plan.files]
    assert len(paths) == len(set(paths)), "a file is in two layers"
    assert len(plan.layers) <= s.max_layers - s.base_layers
    for layer in plan.layers:
        assert layer.entries
        assert layer.size <= budget, (layer.title, layer.size, budget)
        assert layer.size == layer_size(layer.entries, s.mtime)
        for e in layer.entries:
            assert e.path == (f"{s.root}/{e.content.name}" if s.root else e.content.name)
            if s.target == TARGET:
                assert e.path.startswith(ROOT + "/"), e.path
    # weight layers first, then small-file layers
    kinds = [layer.kind for layer in plan.layers]
    assert kinds == sorted(kinds, key=lambda k: k != "weights"), kinds
    weights = [layer for layer in plan.layers if layer.kind == "weights"]
    small = [layer for layer in plan.layers if layer.kind == "files"]
    weight_paths = [e.path for layer in weights for e in layer.entries]
    assert weight_paths == sorted(weight_paths)
    small_paths = [e.path for layer in small for e in layer.entries]
    assert small_paths == sorted(small_paths)
    # each weight file (or shard) alone in its layer, unless the layer-count limit merged them
    weight_suffixes = (".safetensors", ".gguf", ".bin")
    for layer in plan.layers:
        if any(e.path.endswith(weight_suffixes) for e in layer.entries):
            assert layer.kind == "weights"
            if not merged:
                assert len(layer.entries) == 1, [e.path for e in layer.entries]
    # every source file is planned once, unless a reshard replaced it
    replaced = {n for r in plan.reshards for n in r.sources}
    produced = {n for r in plan.reshards for n in r.outputs}
    expected = {f.name for f in model.files if f.name not in replaced} | produced
    assert {e.content.name for e in plan.files} == expected
    # untouched files are copied whole
    for e in plan.files:
        if e.content.name not in produced:
            src = model.file(e.content.name)
            assert e.content.segments == ((FileRange(src.path, 0, src.size),) if src.size else ())


def names(plan: Plan) -> list[str]:
    return [e.content.name for e in plan.files]


def shard_names(stem: str, n: int, ext: str = "safetensors") -> list[str]:
    return [f"{stem}-{k:05d}-of-{n:05d}.{ext}" for k in range(1, n + 1)]


def unet_in_two(variant: str) -> dict[str, list[str]]:
    """A diffusers unet (``variant`` "" or ".fp16") resharded in two: its
    shards, then its index (diffusers names it ``...safetensors.index{variant}.json``)."""
    stem = f"diffusion_pytorch_model{variant}"
    return {f"unet/{stem}.safetensors": [f"unet/{n}" for n in shard_names(stem, 2)]
            + [f"unet/diffusion_pytorch_model.safetensors.index{variant}.json"]}


def literal_bytes(plan: Plan, name: str) -> bytes:
    entry = next(e for e in plan.files if e.content.name == name)
    assert all(isinstance(s, Literal) for s in entry.content.segments)
    return b"".join(s.data for s in entry.content.segments)  # type: ignore[union-attr]


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    model: str
    max_layer_size: int
    compression: str = "none"
    reshard: dict[str, list[str]] = field(default_factory=dict)  # source name -> shard names (index last)
    weight_layers: int | None = None


LLAMA_IN_FOUR = {"model-00001-of-00002.safetensors": shard_names("model", 4) + ["model.safetensors.index.json"]}
CASES = [
    Case("llama-sharded fits", "llama-sharded", 10 * 10**9, weight_layers=2),
    Case("llama-sharded fits tightly", "llama-sharded", 1_720_000, weight_layers=2),
    Case("llama-single fits", "llama-single", 4_000_000, weight_layers=1),
    Case("gguf fits", "gguf", 2_000_000, weight_layers=1),
    Case("diffusers fits", "diffusers", 10**8, weight_layers=4),
    Case("sd single file fits", "sd-single-file", 10**8, weight_layers=1),
    Case("bin fits", "pytorch-bin", 3_000_000, weight_layers=1),
    Case("llama-sharded resharded", "llama-sharded", 1_000_000, reshard=LLAMA_IN_FOUR, weight_layers=4),
    Case("llama-sharded resharded, gzip budget", "llama-sharded", 1_000_000, "gzip", reshard=LLAMA_IN_FOUR),
    Case("llama-single resharded with a new index", "llama-single", 1_000_000, weight_layers=5,
         reshard={"model.safetensors": shard_names("model", 5) + ["model.safetensors.index.json"]}),
    Case("gguf split", "gguf", 600_000, reshard={GGUF_NAME: shard_names("llama-demo-Q4_K_M", 2, "gguf")},
         weight_layers=2),
    Case("gguf split in many", "gguf", 300_000, reshard={GGUF_NAME: shard_names("llama-demo-Q4_K_M", 5, "gguf")}),
    Case("diffusers unet resharded", "diffusers", 3_000_000, reshard=unet_in_two(""), weight_layers=5),
    Case("diffusers fp16 variant unet resharded", "diffusers-fp16", 3_000_000, reshard=unet_in_two(".fp16")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan_table(models: Callable[[str], ModelInfo], case: Case) -> None:
    model = models(case.model)
    settings = PlanSettings(max_layer_size=case.max_layer_size, target=TARGET, compression=case.compression)
    plan = make_plan(model, settings)
    check_plan(model, plan)

    assert {r.sources[0]: list(r.outputs) for r in plan.reshards} == case.reshard
    if case.weight_layers is not None:
        assert sum(layer.kind == "weights" for layer in plan.layers) == case.weight_layers
    for r in plan.reshards:
        for src in r.sources:
            if src not in r.outputs:  # an upstream index is regenerated under its own name
                assert src not in names(plan)
        # shards in their own layers; the regenerated index with the small files
        for out in r.outputs:
            layer = next(layer for layer in plan.layers if any(e.content.name == out for e in layer.entries))
            assert layer.kind == ("files" if out.endswith(".json") else "weights")
        assert str(case.max_layer_size) in r.reason
    if not case.reshard:
        # nothing is resharded that did not need it
        assert plan.reshards == ()
        assert sorted(names(plan)) == sorted(f.name for f in model.files)


@pytest.mark.parametrize("case", [c for c in CASES if c.reshard and "gguf" not in c.model], ids=lambda c: c.id)
def test_regenerated_index_matches_shards(models: Callable[[str], ModelInfo], case: Case) -> None:
    model = models(case.model)
    plan = make_plan(model, PlanSettings(max_layer_size=case.max_layer_size, target=TARGET))
    (r,) = plan.reshards
    *shards, index_name = r.outputs
    index = json.loads(literal_bytes(plan, index_name))
    weight_map = index["weight_map"]
    sources = [w for w in model.weight_sets if w.members[0] == r.sources[0]]
    (w,) = sources
    assert set(weight_map) == {t.name for t in w.tensors}
    assert set(weight_map.values()) == {s.rsplit("/", 1)[-1] for s in shards}
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in w.tensors)
    if w.index:  # an upstream index keeps its other metadata
        for k, v in w.index.get("metadata", {}).items():
            if k != "total_size":
                assert index["metadata"][k] == v


def test_gzip_budget_is_tighter(models: Callable[[str], ModelInfo]) -> None:
    model = models("llama-sharded")
    limit = 1_710_000  # the bigger shard's tar is 1,709,568 bytes
    assert make_plan(model, PlanSettings(max_layer_size=limit, target=TARGET)).reshards == ()
    gz = make_plan(model, PlanSettings(max_layer_size=limit, target=TARGET, compression="gzip"))
    check_plan(model, gz)
    assert gz.reshards, "the gzip worst case does not fit, so the planner reshards"
    assert blob_budget(limit, "gzip") < limit
    assert blob_budget(limit, "none") == limit


@pytest.mark.parametrize("n", [100_000, 1_000_000, 4_000_000])
def test_gzip_budget_holds_for_incompressible_data(tmp_path: Path, n: int) -> None:
    """A tar of random bytes that just fits the gzip budget is, compressed,
    no bigger than the limit."""
    d = tmp_path / "m"
    d.mkdir()
    (d / "weights.bin").write_bytes(os.urandom(n))
    model = inspect_model(d)
    tar = make_plan(model, PlanSettings(max_layer_size=10**9, target=TARGET)).layers[0].size
    limit = tar
    while blob_budget(limit, "gzip") < tar:
        limit += max(1, (tar - blob_budget(limit, "gzip")) // 2)
    plan = make_plan(model, PlanSettings(max_layer_size=limit, target=TARGET, compression="gzip"))
    (layer,) = plan.layers
    res = write_layer(layer.entries, io.BytesIO(), compression="gzip")
    assert res.tar_size == tar
    assert res.size <= limit, (res.size, limit)
    with pytest.raises(LayerTooLarge):
        make_plan(model, PlanSettings(max_layer_size=limit - 64, target=TARGET, compression="gzip"))


# ---------------------------------------------------------------- too large


def test_bin_over_the_limit(models: Callable[[str], ModelInfo]) -> None:
    model = models("pytorch-bin")
    limit = 1_000_000
    with pytest.raises(LayerTooLarge) as exc:
        make_plan(model, PlanSettings(max_layer_size=limit, target=TARGET))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("pytorch_model.bin ")
    assert "2000000 bytes" in msg
    assert f"{limit} bytes" in msg
    m = re.search(r"--max-layer-size (\S+)$", msg)
    assert m, msg
    # the suggestion works
    plan = make_plan(model, PlanSettings(max_layer_size=parse_size(m.group(1)), target=TARGET))
    check_plan(model, plan)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_too_large_suggestion_allows_for_compression(tmp_path: Path, compression: str) -> None:
    """A tar just under a round size: with gzip's worst case the round size
    is not enough, and the suggestion must say so."""
    d = tmp_path / "m"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(os.urandom(1_998_264))
    model = inspect_model(d)
    assert make_plan(model, PlanSettings()).layers[0].size == 1_999_872
    with pytest.raises(LayerTooLarge) as exc:
        make_plan(model, PlanSettings(max_layer_size=1_000_000, compression=compression))
    suggested = parse_size(re.search(r"--max-layer-size (\S+)$", str(exc.value)).group(1))  # type: ignore[union-attr]
    plan = make_plan(model, PlanSettings(max_layer_size=suggested, compression=compression))
    check_plan(model, plan)
    (layer,) = plan.layers
    assert write_layer(layer.entries, io.BytesIO(), compression=compression).size <= suggested


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_small_file_suggestion_allows_for_compression(tmp_path: Path, compression: str) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "vocab.txt").write_bytes(os.urandom(998_000))
    model = inspect_model(d)
    with pytest.raises(LayerTooLarge, match="vocab.txt needs a") as exc:
        make_plan(model, PlanSettings(max_layer_size=500_000, compression=compression, target=TARGET))
    suggested = parse_size(re.search(r"--max-layer-size (\S+)$", str(exc.value)).group(1))  # type: ignore[union-attr]
    check_plan(model, make_plan(model, PlanSettings(max_layer_size=suggested, compression=compression, target=TARGET)))


def test_big_non_weight_file_gets_its_own_layer(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "a.json").write_text("{}")
    with open(d / "big.dat", "wb") as f:  # sparse: planning never reads it
        f.truncate(OWN_LAYER_MIN)
    (d / "z.txt").write_text("z")
    model = inspect_model(d)
    plan = make_plan(model, PlanSettings(target=TARGET))
    check_plan(model, plan)
    assert [[e.content.name for e in layer.entries] for layer in plan.layers] == [["big.dat"], ["a.json", "z.txt"]]
    with pytest.raises(LayerTooLarge, match=r"big\.dat .*not a weight file.*--max-layer-size \d+MB$"):
        make_plan(model, PlanSettings(max_layer_size=OWN_LAYER_MIN, target=TARGET))


@pytest.mark.parametrize(
    ("model_name", "limit", "tensors"),
    [
        ("llama-sharded", 400_000, ("model.embed_tokens.weight", "lm_head.weight")),  # 512 KiB each
        ("llama-single", 400_000, ("model.embed_tokens.weight", "lm_head.weight")),
        ("gguf", 100_000, ("output.weight",)),  # 210 KiB of Q6_K, the biggest
        ("gguf", 200_000, ("output.weight",)),
        ("diffusers", 2_000_000, ("text_model.embeddings.token_embedding.weight",)),  # text_encoder_2: 2.5 MiB
    ],
)
def test_tensor_bigger_than_the_limit(models: Callable[[str], ModelInfo], model_name: str, limit: int,
                                      tensors: tuple[str, ...]) -> None:
    model = models(model_name)
    with pytest.raises(LayerTooLarge) as exc:
        make_plan(model, PlanSettings(max_layer_size=limit, target=TARGET))
    msg = str(exc.value)
    assert "\n" not in msg
    assert any(f"tensor {t} " in msg for t in tensors), msg
    m = re.search(r"--max-layer-size (\S+)$", msg)
    assert m, msg
    # the suggestion is enough for the biggest tensor
    plan = make_plan(model, PlanSettings(max_layer_size=parse_size(m.group(1)), target=TARGET))
    check_plan(model, plan)


def test_small_files_share_layers_in_path_order(tmp_path: Path) -> None:
    d = tmp_path / "m"
    for i in range(20):
        (d / f"sub{i % 3}").mkdir(parents=True, exist_ok=True)
        (d / f"sub{i % 3}" / f"f{i:02d}.json").write_bytes(b"x" * (1000 + 100 * i))
    model = inspect_model(d)
    one = make_plan(model, PlanSettings(target=TARGET))
    assert len(one.layers) == 1 and one.layers[0].kind == "files"
    plan = make_plan(model, PlanSettings(max_layer_size=12_000, target=TARGET))
    check_plan(model, plan)
    assert len(plan.layers) > 2
    assert all(layer.kind == "files" for layer in plan.layers)
    # greedy: each layer is full enough that the next file would not have fit
    for a, b in zip(plan.layers, plan.layers[1:]):
        assert layer_size(a.entries + b.entries[:1], 0) > 12_000
    with pytest.raises(LayerTooLarge, match=r"--max-layer-size \S+$"):
        make_plan(model, PlanSettings(max_layer_size=3_000, target=TARGET))


# ---------------------------------------------------------------- layer count


def test_layer_count_limit_merges_neighbours(models: Callable[[str], ModelInfo]) -> None:
    model = models("llama-6-shards")
    free = make_plan(model, PlanSettings(target=TARGET))
    assert [layer.kind for layer in free.layers] == ["weights"] * 6 + ["files"]
    plan = make_plan(model, PlanSettings(target=TARGET, max_layers=3))
    check_plan(model, plan, merged=True)
    assert len(plan.layers) == 3
    assert names(plan) == names(free)  # same files, same order, fewer layers
    assert [layer.kind for layer in plan.layers] == ["weights", "weights", "files"]
    assert sum(len(layer.entries) for layer in plan.layers[:2]) == 6
    assert plan.to_json()["max_layers"] == 3


def test_layer_count_limit_respects_the_size_limit(models: Callable[[str], ModelInfo]) -> None:
    model = models("llama-6-shards")
    plan = make_plan(model, PlanSettings(target=TARGET, max_layers=5, max_layer_size=1_300_000))
    check_plan(model, plan, merged=True)
    assert len(plan.layers) == 5


@pytest.mark.parametrize(
    ("max_layers", "limit"),
    [(3, 1_000_000), (2, 1_500_000)],
)
def test_layer_count_impossible(models: Callable[[str], ModelInfo], max_layers: int, limit: int) -> None:
    model = models("llama-6-shards")
    with pytest.raises(PlanError) as exc:
        make_plan(model, PlanSettings(target=TARGET, max_layers=max_layers, max_layer_size=limit))
    msg = str(exc.value)
    assert "\n" not in msg
    assert f"at most {max_layers} fit" in msg
    m = re.search(r"--max-layer-size (\S+)$", msg)
    assert m, msg
    parse_size(m.group(1))


def test_one_layer_holds_everything_when_it_fits(models: Callable[[str], ModelInfo]) -> None:
    """Weight and small-file layers merge too when nothing else fits."""
    model = models("llama-6-shards")
    plan = make_plan(model, PlanSettings(target=TARGET, max_layers=1, max_layer_size=10**10))
    assert len(plan.layers) == 1
    assert len(plan.layers[0].entries) == len(model.files)


def test_layer_count_suggestion_works(models: Callable[[str], ModelInfo]) -> None:
    model = models("llama-6-shards")
    with pytest.raises(PlanError) as exc:
        make_plan(model, PlanSettings(target=TARGET, max_layers=3, max_layer_size=1_000_000))
    suggested = re.search(r"--max-layer-size (\S+)$", str(exc.value)).group(1)  # type: ignore[union-attr]
    plan = make_plan(model, PlanSettings(target=TARGET, max_layers=3, max_layer_size=parse_size(suggested)))
    check_plan(model, plan, merged=True)
    assert len(plan.layers) <= 3


def test_base_layers_are_counted(models: Callable[[str], ModelInfo]) -> None:
    model = models("llama-6-shards")
    plan = make_plan(model, PlanSettings(target=TARGET, max_layers=5, base_layers=2))
    check_plan(model, plan, merged=True)
    assert len(plan.layers) == 3
    assert plan.to_json()["max_layers"] == 3
    assert len(make_plan(model, PlanSettings(target=TARGET, max_layers=10, base_layers=2)).layers) == 7
    with pytest.raises(PlanError, match="2 used by the base"):
        make_plan(model, PlanSettings(target=TARGET, max_layers=3, base_layers=2, max_layer_size=1_000_000))
    with pytest.raises(PlanError, match="base image already has 5 layers"):
        make_plan(model, PlanSettings(target=TARGET, max_layers=5, base_layers=5))


def test_default_layer_limit_is_the_engines() -> None:
    assert PlanSettings().max_layers == 125


# ---------------------------------------------------------------- determinism and JSON


@pytest.mark.parametrize("case", [c for c in CASES if c.reshard], ids=lambda c: c.id)
def test_deterministic(models: Callable[[str], ModelInfo], case: Case, tmp_path: Path) -> None:
    model = models(case.model)
    settings = PlanSettings(max_layer_size=case.max_layer_size, target=TARGET, compression=case.compression)
    a, b = make_plan(model, settings), make_plan(model, settings)
    assert a == b
    assert a.to_json() == b.to_json()
    assert json.dumps(a.to_json(), sort_keys=True) == json.dumps(b.to_json(), sort_keys=True)
    # inspecting again gives the same plan too
    again = make_plan(inspect_model(model.root), settings)
    assert again.to_json() == a.to_json()
    assert [[e.content for e in layer.entries] for layer in again.layers] == [
        [e.content for e in layer.entries] for layer in a.layers
    ]


def test_to_json_shape(models: Callable[[str], ModelInfo]) -> None:
    model = models("llama-sharded")
    plan = make_plan(model, PlanSettings(max_layer_size=1_000_000, target="/models/x/"))
    d = json.loads(json.dumps(plan.to_json()))
    assert d["target"] == "/models/x"
    assert d["max_layer_size"] == 1_000_000
    assert d["compression"] == "none"
    assert d["total_size"] == sum(layer["size"] for layer in d["layers"])
    assert d["layers"], d
    for layer in d["layers"]:
        assert isinstance(layer["size"], int) and layer["size"] <= 1_000_000
        assert layer["kind"] in ("weights", "files")
        assert layer["files"] and all(f.startswith("/models/x/") for f in layer["files"])
    assert d["layers"][0]["files"] == ["/models/x/model-00001-of-00004.safetensors"]
    assert d["reshards"] == [
        {
            "from": ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json"],
            "to": shard_names("model", 4) + ["model.safetensors.index.json"],
            "reason": d["reshards"][0]["reason"],
        }
    ]


@pytest.mark.parametrize(("target", "root"), [("/models/x", "models/x"), ("models/x/", "models/x"),
                                              ("/", ""), ("", ""), ("/a/./b", "a/b")])
def test_target_normalization(models: Callable[[str], ModelInfo], target: str, root: str) -> None:
    plan = make_plan(models("gguf"), PlanSettings(target=target))
    assert plan.settings.root == root
    assert plan.files[0].path == (f"{root}/{GGUF_NAME}" if root else GGUF_NAME)


def test_target_with_dotdot_is_refused(models: Callable[[str], ModelInfo]) -> None:
    from modelimage.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\.\."):
        make_plan(models("gguf"), PlanSettings(target="/models/../etc"))


# ---------------------------------------------------------------- materialized reshards


def materialize(plan: Plan, dest: Path) -> Path:
    """Write every layer with the real layer writer, extract them in order."""
    for layer in plan.layers:
        sink = io.BytesIO()
        res = write_layer(layer.entries, sink, mtime=plan.settings.mtime, compression=plan.settings.compression)
        assert res.tar_size == layer.size
        assert res.size <= plan.settings.max_layer_size
        sink.seek(0)
        with tarfile.open(fileobj=sink) as tf:
            tf.extractall(dest, filter="data")
    return dest / plan.settings.root


def st_tensors(paths: list[Path]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for p in paths:
        with safe_open(str(p), framework="np") as f:
            for k in f.keys():
                assert k not in out
                t = f.get_tensor(k)
                out[k] = (str(t.dtype), t.shape, t.tobytes())  # type: ignore[assignment]
    return out


def gguf_tensors(paths: list[Path]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for p in paths:
        r = GGUFReader(str(p))
        for t in r.tensors:
            assert t.name not in out
            out[t.name] = (int(t.tensor_type), tuple(int(x) for x in t.shape), np.asarray(t.data).tobytes())
    return out


@pytest.mark.parametrize("case", [c for c in CASES if c.reshard], ids=lambda c: c.id)
def test_materialized_reshard_loads_back(models: Callable[[str], ModelInfo], case: Case, tmp_path: Path) -> None:
    model = models(case.model)
    settings = PlanSettings(max_layer_size=case.max_layer_size, target=TARGET, compression=case.compression)
    plan = make_plan(model, settings)
    out = materialize(plan, tmp_path / "image")

    # the folder holds exactly the planned files, untouched files byte-identical
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted(names(plan))
    produced = {n for r in plan.reshards for n in r.outputs}
    for f in model.files:
        if f.name in on_disk and f.name not in produced:
            assert (out / f.name).read_bytes() == f.path.read_bytes()

    for r in plan.reshards:
        src = [model.file(n).path for n in r.sources if not n.endswith(".json")]
        shards = [out / n for n in r.outputs if not n.endswith(".json")]
        for s in shards:
            assert s.stat().st_size <= settings.max_layer_size
        if r.outputs[0].endswith(".gguf"):
            before, after = gguf_tensors(src), gguf_tensors(shards)
            assert list(after) == list(before)  # same tensors, same order
            assert after == before
            first = GGUFReader(str(shards[0]))
            fields = {k: first.fields[k] for k in first.fields}
            assert int(fields["split.count"].parts[-1][0]) == len(shards)
            assert int(fields["split.tensors.count"].parts[-1][0]) == len(before)
            orig = GGUFReader(str(src[0]))
            for key in orig.fields:
                if key.startswith("GGUF."):
                    continue
                assert key in fields, key
                assert [bytes(p) for p in orig.fields[key].parts] == [bytes(p) for p in fields[key].parts], key
            for k, s in enumerate(shards):
                meta = GGUFReader(str(s)).fields
                assert int(meta["split.no"].parts[-1][0]) == k
        else:
            before, after = st_tensors(src), st_tensors(shards)
            assert after == before
            index = json.loads((out / r.outputs[-1]).read_text())
            for s in shards:
                with safe_open(str(s), framework="np") as f:
                    keys = set(f.keys())
                    meta = f.metadata()
                assert keys == {k for k, v in index["weight_map"].items() if v == s.name}
                with safe_open(str(src[0]), framework="np") as f:
                    assert meta == f.metadata()

    # the materialized model inspects the same, and fits without resharding
    again = inspect_model(out)
    assert again.parameters == model.parameters
    assert again.dtypes == model.dtypes
    assert again.quantization == model.quantization
    assert [(c.name, c.parameters) for c in again.components] == [(c.name, c.parameters) for c in model.components]
    replan = make_plan(again, settings)
    assert replan.reshards == ()
    assert len(replan.layers) == len(plan.layers)


def test_materialized_plain_plan_is_the_source(models: Callable[[str], ModelInfo], tmp_path: Path) -> None:
    model = models("diffusers")
    plan = make_plan(model, PlanSettings(target=TARGET))
    out = materialize(plan, tmp_path / "image")
    for f in model.files:
        assert (out / f.name).read_bytes() == f.path.read_bytes()
    assert math.isclose(plan.total_size, sum(layer.size for layer in plan.layers))


@pytest.mark.parametrize(("max_layers", "limit"), [(1, 1_000_000), (2, 1_000_000)])
def test_layer_count_suggestion_always_works(models: Callable[[str], ModelInfo], max_layers: int, limit: int) -> None:
    model = models("llama-6-shards")
    with pytest.raises(PlanError) as exc:
        make_plan(model, PlanSettings(target=TARGET, max_layers=max_layers, max_layer_size=limit))
    m = re.search(r"--max-layer-size (\S+)$", str(exc.value))
    assert m, "no size can help here, and the message should say so instead"
    make_plan(model, PlanSettings(target=TARGET, max_layers=max_layers, max_layer_size=parse_size(m.group(1))))


def test_reshard_index_name_for_dotted_stem(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    rng = np.random.default_rng(0)
    save_file({f"t{i}": rng.standard_normal((256, 256)).astype(np.float16) for i in range(8)},
              str(d / "sd_xl_base_1.0.safetensors"))
    plan = make_plan(inspect_model(d), PlanSettings(max_layer_size=400_000, target=TARGET))
    (r,) = plan.reshards
    assert r.outputs == (*shard_names("sd_xl_base_1.0", 3), "sd_xl_base_1.0.safetensors.index.json")


def test_many_small_files_plan_in_linear_time(tmp_path: Path, monkeypatch) -> None:
    """Small files are packed by adding each file's tar cost: planning 3,000
    files builds a bounded number of tar headers per file (counted, not
    timed: CI machines differ; benchmarks/ times it), into layers whose
    planned sizes are exact."""
    from modelimage import plan as plan_module
    from modelimage import tarstream
    from modelimage.tarstream import layer_size

    for i in range(3000):
        d = tmp_path / "m" / f"part{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:05d}.txt").write_text("x" * (i % 300))
    model = inspect_model(tmp_path / "m")
    calls = 0
    real_header = tarstream.header

    def counting(*args, **kw):
        nonlocal calls
        calls += 1
        return real_header(*args, **kw)

    monkeypatch.setattr(tarstream, "header", counting)
    monkeypatch.setattr(plan_module, "header", counting)
    plan = make_plan(model, PlanSettings(max_layer_size=100_000, target="/models/m"))
    monkeypatch.undo()
    assert calls <= 10 * 3000, f"{calls} tar headers built for 3000 files: planning is not linear"
    assert len(plan.files) == 3000 and len(plan.layers) > 5
    for layer in plan.layers:
        assert layer.size == layer_size(layer.entries) <= 100_000


# ---------------------------------------------------------------- issue 14: layouts real repositories have


def _sharded_pair(d: Path, *, consolidated: bool, mtp: bool = False) -> dict[str, np.ndarray]:
    """A transformers-style folder: two shards, their index, and (like many
    repositories) the consolidated model.safetensors beside them; with
    ``mtp`` the index also names model-mtp.safetensors (an extra head)."""
    rng = np.random.default_rng(14)
    d.mkdir(parents=True)
    tensors = {f"model.layers.{i}.mlp.weight": rng.standard_normal((128, 256)).astype(np.float16) for i in range(4)}
    halves = [dict(list(tensors.items())[:2]), dict(list(tensors.items())[2:])]
    weight_map = {}
    for k, half in enumerate(halves, 1):
        name = f"model-{k:05d}-of-00002.safetensors"
        save_file(half, str(d / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(half, name))
    everything = dict(tensors)
    if mtp:
        head = {"model.mtp.0.proj.weight": rng.standard_normal((48, 256)).astype(np.float32),
                "model.mtp.0.eh_proj.weight": rng.standard_normal((48, 256)).astype(np.float32),
                "model.mtp.0.norm.weight": np.ones(256, np.float32)}
        save_file(head, str(d / "model-mtp.safetensors"), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(head, "model-mtp.safetensors"))
        everything.update(head)
    total = sum(a.nbytes for a in everything.values())
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total, "total_parameters": sum(a.size for a in everything.values())},
         "weight_map": weight_map}))
    if consolidated:
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return everything


def test_consolidated_beside_shards_is_kept_whole_when_nothing_is_resharded(tmp_path: Path) -> None:
    _sharded_pair(tmp_path / "m", consolidated=True)
    model = inspect_model(tmp_path / "m")
    plan = make_plan(model, PlanSettings(target=TARGET))
    check_plan(model, plan)
    assert sorted(names(plan)) == sorted(f.name for f in model.files)


def test_consolidated_and_shards_resharded_to_one_name_is_an_error_naming_both(tmp_path: Path) -> None:
    """Issue 14, input 1: both sets resharded to model-0000k-of-0000n and
    both writing the index gave one layer the same path twice, exit 0."""
    _sharded_pair(tmp_path / "m", consolidated=True)
    model = inspect_model(tmp_path / "m")
    with pytest.raises(PlanError) as exc:
        make_plan(model, PlanSettings(max_layer_size=100_000, target=TARGET))
    msg = str(exc.value)
    assert "\n" not in msg
    assert "model.safetensors " in msg and "model-00001-of-00002.safetensors" in msg, msg
    assert "--exclude 'model.safetensors'" in msg and "transformers loads model.safetensors" in msg, msg
    # the fix it names works
    model = inspect_model(tmp_path / "m", exclude=("model.safetensors",))
    plan = make_plan(model, PlanSettings(max_layer_size=100_000, target=TARGET))
    check_plan(model, plan)


def test_index_entries_outside_the_shard_pattern_survive_a_reshard(tmp_path: Path) -> None:
    """Issue 14, input 2: the rewritten index dropped model-mtp.safetensors'
    entries. Every entry of the original index is kept, pointing where its
    tensor now is, and every tensor loads through the new index."""
    tensors = _sharded_pair(tmp_path / "m", consolidated=False, mtp=True)
    model = inspect_model(tmp_path / "m")
    (w,) = model.weight_sets
    assert w.extras == ("model-mtp.safetensors",)
    plan = make_plan(model, PlanSettings(max_layer_size=110_000, target=TARGET))
    check_plan(model, plan)
    assert "model-mtp.safetensors" in names(plan)  # it fits: kept as it is
    out = materialize(plan, tmp_path / "out")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert index["weight_map"]["model.mtp.0.proj.weight"] == "model-mtp.safetensors"
    assert index["metadata"]["total_parameters"] == sum(a.size for a in tensors.values())  # other keys kept
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in tensors.values())
    for name, file in index["weight_map"].items():
        with safe_open(str(out / file), framework="np") as f:
            assert f.get_tensor(name).tobytes() == tensors[name].tobytes()
    # an extra file that does not fit is resharded with the rest, its entries following its tensors
    plan = make_plan(model, PlanSettings(max_layer_size=80_000, target=TARGET))
    check_plan(model, plan)
    assert "model-mtp.safetensors" not in names(plan)
    out = materialize(plan, tmp_path / "out2")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    for name, file in index["weight_map"].items():
        with safe_open(str(out / file), framework="np") as f:
            assert f.get_tensor(name).tobytes() == tensors[name].tobytes()


def test_stale_shards_of_another_count_collide_with_an_error(tmp_path: Path) -> None:
    """Two shard sets of one stem (model-0000k-of-00002 and a leftover
    -of-00003 set) both resharded would write the same names."""
    d = tmp_path / "m"
    _sharded_pair(d, consolidated=False)
    rng = np.random.default_rng(3)
    for k in range(1, 5):
        save_file({f"old.{k}": rng.standard_normal((10, 256)).astype(np.float32)},
                  str(d / f"model-{k:05d}-of-00004.safetensors"))
    model = inspect_model(d)
    stale = next(w for w in model.weight_sets if w.members[0].endswith("-of-00004.safetensors"))
    assert stale.index_file is None  # the index names the other set's shards only
    with pytest.raises(PlanError, match=r"^model-00001-of-00004\.safetensors: .* collide"):
        make_plan(model, PlanSettings(max_layer_size=100_000, target=TARGET))


def test_every_planned_path_is_unique(models: Callable[[str], ModelInfo]) -> None:
    """No two entries for one path, whatever the model and limit."""
    for name in ("llama-sharded", "llama-6-shards", "gguf", "diffusers", "diffusers-fp16"):
        model = models(name)
        for limit in (10**8, 3_000_000, 1_000_000):
            try:
                plan = make_plan(model, PlanSettings(max_layer_size=limit, target=TARGET))
            except (LayerTooLarge, PlanError):
                continue
            paths = [e.path for e in plan.files]
            assert len(paths) == len(set(paths)), (name, limit)


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=1, max_size=120).filter(lambda s: "\0" not in s and "/" not in s),
       size=st.one_of(st.integers(0, 10**6), st.integers(8**11 - 2, 8**11 + 2)),
       mtime=st.sampled_from([0, 1700000000, 8**11 + 5]), directory=st.booleans())
def test_header_size_is_the_headers_length(name: str, size: int, mtime: int, directory: bool) -> None:
    """plan's quick header size equals the length of the header tarstream writes."""
    from modelimage.plan import _header_size
    from modelimage.tarstream import header

    path = f"models/x/{name}"
    assert _header_size(path, size, mtime, directory=directory) == len(
        header(path, size, directory=directory, mtime=mtime))


# ---------------------------------------------------------------- failures seen in peers' trackers


def test_deprecated_diffusers_variant_shards_are_never_renamed(tmp_path: Path) -> None:
    """diffusers once wrote variant shards as NAME-00001-of-00002.fp16.safetensors
    with NAME.safetensors.fp16.index.json (accelerate#2946, diffusers#9253
    deprecated it). Resharding such a set would rename files the index (and
    older diffusers) name: it is kept whole, or refused with the size that
    keeps it whole; never resharded into names nothing reads."""
    d = tmp_path / "transformer"
    d.mkdir()
    rng = np.random.default_rng(0)
    weight_map = {}
    for k in (1, 2):
        name = f"diffusion_pytorch_model-0000{k}-of-00002.fp16.safetensors"
        tensors = {f"blocks.{k}.{i}.weight": rng.standard_normal((64, 64)).astype(np.float16) for i in range(3)}
        save_file(tensors, str(d / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    (d / "diffusion_pytorch_model.safetensors.fp16.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 6 * 64 * 64 * 2}, "weight_map": weight_map}))
    model = inspect_model(d)
    (w,) = model.weight_sets
    assert w.kind == "legacy-variant-shards" and len(w.members) == 2
    assert w.index_file == "diffusion_pytorch_model.safetensors.fp16.index.json"
    assert model.parameters == 6 * 64 * 64
    plan = make_plan(model, PlanSettings(target=TARGET))
    assert sorted(e.content.name for e in plan.files) == sorted(f.name for f in model.files)
    with pytest.raises(LayerTooLarge, match=r"deprecated variant shard names.*--max-layer-size \S+ or more"):
        make_plan(model, PlanSettings(max_layer_size=20_000, target=TARGET))


def test_an_index_naming_a_missing_shard_is_refused(tmp_path: Path) -> None:
    """An incomplete download (sglang#32279: loaders that glob load what is
    there, silently): the plan refuses in one line naming the file."""
    from modelimage.errors import SourceError

    d = tmp_path / "m"
    synth.write_llama_safetensors(d, SHAPE, shards=3)
    (d / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(SourceError, match=r"^model-00002-of-00003\.safetensors: missing"):
        inspect_model(d)


def test_a_tensor_in_two_files_of_one_set_is_refused_when_resharding(tmp_path: Path) -> None:
    """A shard reused from another checkpoint that also holds a tensor the
    index assigns to another shard (vllm#54230: the stale copy silently
    overwrote the right one): resharding would have to pick one; refused,
    naming both files."""
    from modelimage.errors import FormatError

    d = tmp_path / "m"
    d.mkdir()
    a = {"x": np.ones(40_000, np.float16), "y": np.ones(10, np.float16)}
    b = {"y": np.zeros(10, np.float16), "z": np.ones(40_000, np.float16)}
    save_file(a, str(d / "model-00001-of-00002.safetensors"))
    save_file(b, str(d / "model-00002-of-00002.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "x": "model-00001-of-00002.safetensors", "y": "model-00001-of-00002.safetensors",
        "z": "model-00002-of-00002.safetensors"}}))
    model = inspect_model(d)
    with pytest.raises(FormatError, match=r"tensor 'y' is also in .*model-00001-of-00002\.safetensors"):
        make_plan(model, PlanSettings(max_layer_size=60_000, target=TARGET))


def test_an_unaligned_source_reshards_to_aligned_shards(tmp_path: Path) -> None:
    """Some safetensors files have a header whose length is not a multiple
    of 8 (llama.cpp#18291 found such models on the Hub): the data section is
    unaligned. Resharded, the shards are laid out as save_file lays them out
    (aligned) and hold the same tensors."""
    from safetensors.numpy import load_file

    d = tmp_path / "m"
    d.mkdir()
    tensors = {"a": np.arange(30_000, dtype=np.float32), "b": np.arange(30_000, dtype=np.float64)}
    header = {"a": {"dtype": "F32", "shape": [30_000], "data_offsets": [0, 120_000]},
              "b": {"dtype": "F64", "shape": [30_000], "data_offsets": [120_000, 360_000]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-(len(raw) + 3) % 8 or 3)  # deliberately not a multiple of 8
    assert len(raw) % 8
    with open(d / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + tensors["a"].tobytes() + tensors["b"].tobytes())
    model = inspect_model(d)
    plan = make_plan(model, PlanSettings(max_layer_size=300_000, target=TARGET))
    out = materialize(plan, tmp_path / "out")
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) == 2
    got = {}
    for s in shards:
        n = int.from_bytes(s.read_bytes()[:8], "little")
        assert n % 8 == 0
        got.update(load_file(str(s)))
    assert {k: v.tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in tensors.items()}
