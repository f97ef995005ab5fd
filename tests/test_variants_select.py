"""The index entry's annotations and the rule that picks a variant
(modelimage.variants.select): by name, by GPU memory, or the default."""

from __future__ import annotations

import pytest

from modelimage.errors import VariantError
from modelimage.variants.select import VariantFacts, facts_from_descriptor, select

GIB = 2**30
P = 8_000_000_000  # an 8B model: vram = P x bits / 8 x 1.25


def v(name: str, bits: float, *, params: int = P, quant: str | None = None, extra: int = 0) -> VariantFacts:
    weight = int(params * bits / 8)
    return VariantFacts(name, quant or name.upper(), params, weight + extra, int(weight * 1.25), "gguf")


LLAMA = [v("q4_k_m", 4.85), v("q8_0", 8.5), v("f16", 16)]  # ~6.1, ~10.6, ~20 GB of GPU memory


@pytest.mark.parametrize("variants, kw, picked, reason", [
    # no choice: the index's first entry
    (LLAMA, {}, "q4_k_m", "the default (first) variant of 3"),
    # by name, case-insensitive
    (LLAMA, {"name": "q8_0"}, "q8_0", "asked for by name"),
    (LLAMA, {"name": "F16"}, "f16", "asked for by name"),
    # by GPU memory: the highest precision that fits
    (LLAMA, {"gpu_memory": 24 * GIB}, "f16", "the highest precision that fits 25.8 GB of GPU memory"),
    (LLAMA, {"gpu_memory": 16 * GIB}, "q8_0", "(f16 needs ~20 GB)"),
    (LLAMA, {"gpu_memory": 8 * GIB}, "q4_k_m", "(q8_0 needs ~10.6 GB)"),
    (LLAMA, {"gpu_memory": LLAMA[1].vram_bytes}, "q8_0", "the highest precision"),  # exactly fits
    (LLAMA, {"gpu_memory": LLAMA[1].vram_bytes - 1}, "q4_k_m", "the highest precision"),
    # order in the index does not matter to the rule
    (LLAMA[::-1], {"gpu_memory": 16 * GIB}, "q8_0", "highest precision"),
    # equal precision: the smaller variant, then the earlier entry
    ([v("q4-mmproj", 4.85, extra=900_000_000), v("q4", 4.85), v("q2", 2.6)], {"gpu_memory": 8 * GIB}, "q4",
     "highest precision"),
    ([v("a", 4.85), v("b", 4.851), v("q2", 2.6)], {"gpu_memory": 8 * GIB}, "a", "highest precision"),
    # a bigger model at lower precision loses to a smaller one at higher precision
    ([v("70b-q2", 2.6, params=70 * 10**9), v("8b-f16", 16)], {"gpu_memory": 40 * GIB}, "8b-f16", "precision"),
    # without parameter counts precision is the GPU-memory estimate itself
    ([VariantFacts("a", vram_bytes=5 * GIB), VariantFacts("b", vram_bytes=10 * GIB)], {"gpu_memory": 48 * GIB}, "b",
     "highest precision"),
    # a variant whose need is unknown is left out, and the reason says so
    ([VariantFacts("odd"), v("q4", 4.85)], {"gpu_memory": 8 * GIB}, "q4", "odd left out: GPU memory unknown"),
])
def test_select(variants, kw, picked, reason):
    choice = select(variants, source="reg/llama", **kw)
    assert choice.variant.name == picked
    assert variants[choice.index] is choice.variant
    assert reason in choice.reason and "\n" not in choice.reason


@pytest.mark.parametrize("variants, kw, message", [
    # nothing fits: one line naming the smallest variant's need
    (LLAMA, {"gpu_memory": 4 * GIB},
     "reg/llama: no variant fits 4.29 GB of GPU memory; the smallest, q4_k_m (Q4_K_M), needs ~6.06 GB"),
    (LLAMA[::-1], {"gpu_memory": 1}, "the smallest, q4_k_m (Q4_K_M), needs ~6.06 GB"),
    (LLAMA, {"name": "q2_k"}, "reg/llama: no variant 'q2_k' (it has: q4_k_m, q8_0, f16)"),
    (LLAMA, {"name": "q8_0", "gpu_memory": GIB}, "use either --variant or --gpu-memory, not both"),
    ([VariantFacts("a"), VariantFacts("b")], {"gpu_memory": GIB},
     "reg/llama: no variant says how much GPU memory it needs; choose one with --variant (a, b)"),
    ([], {}, "reg/llama: has no variants"),
])
def test_select_errors(variants, kw, message):
    with pytest.raises(VariantError) as e:
        select(variants, source="reg/llama", **kw)
    assert str(e.value).endswith(message) and "\n" not in str(e.value)


def test_annotations_round_trip():
    facts = v("q8_0", 8.5, quant="Q8_0")
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "a" * 64,
            "size": 1234, "annotations": facts.annotations()}
    assert desc["annotations"] == {
        "dev.modelimage.variant": "q8_0", "dev.modelimage.quantization": "Q8_0",
        "dev.modelimage.parameters": "8000000000", "dev.modelimage.bytes": "8500000000",
        "dev.modelimage.vram-bytes": "10625000000", "dev.modelimage.format": "gguf",
    }
    back = facts_from_descriptor(desc)
    assert back == VariantFacts("q8_0", "Q8_0", P, 8_500_000_000, 10_625_000_000, "gguf", "sha256:" + "a" * 64)
    assert back.bits_per_parameter == pytest.approx(8.5)


@pytest.mark.parametrize("annotations, expected", [
    ({}, None),
    ({"dev.modelimage.variant": ""}, None),
    ({"dev.modelimage.variant": "x", "dev.modelimage.vram-bytes": "lots", "dev.modelimage.parameters": "-5"},
     VariantFacts("x")),
    ({"dev.modelimage.variant": "x", "dev.modelimage.bytes": 12}, VariantFacts("x")),  # not a string: unknown
])
def test_someone_elses_annotations_never_raise(annotations, expected):
    assert facts_from_descriptor({"annotations": annotations, "size": "n/a"}) == expected


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_variant = st.builds(
    lambda name, params, bits, extra: v(name, bits, params=params, extra=extra),
    st.sampled_from(["a", "b", "c", "d", "e", "f"]), st.sampled_from([10**9, 7 * 10**9, 70 * 10**9]),
    st.sampled_from([2.6, 4.5, 4.85, 5.5, 6.56, 8.5, 16.0]), st.integers(0, 10**9))


@settings(max_examples=60, deadline=None)
@given(st.lists(_variant, min_size=1, max_size=6, unique_by=lambda x: x.name), st.integers(1, 200 * GIB))
def test_gpu_memory_choice_is_the_best_that_fits(variants, gpu):
    """The pick fits; nothing that fits has a higher precision; among equal
    precisions nothing that fits is smaller; and when the pick fails, nothing fits."""
    try:
        choice = select(variants, gpu_memory=gpu)
    except VariantError as e:
        from modelimage.units import format_size

        assert all(x.vram_bytes > gpu for x in variants)
        assert str(e).endswith(f"needs ~{format_size(min(x.vram_bytes for x in variants))}")
        return
    best = choice.variant
    assert best.vram_bytes <= gpu
    fits = [x for x in variants if x.vram_bytes <= gpu]
    top = max(round(x.bits_per_parameter, 2) for x in fits)
    assert round(best.bits_per_parameter, 2) == top
    assert best.bytes == min(x.bytes for x in fits if round(x.bits_per_parameter, 2) == top)
