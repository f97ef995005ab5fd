"""modelspec: which file of a model is which ModelPack / Docker model-spec
layer, and the config fields (table-driven; the artifacts themselves are
tested in test_artifact.py)."""

from __future__ import annotations

import pytest

from modelimage.modelspec import (
    DOCKER_CHAT_TEMPLATE,
    DOCKER_CONFIG_TAR,
    DOCKER_GGUF,
    DOCKER_LICENSE,
    DOCKER_SAFETENSORS,
    MODELPACK_CODE,
    MODELPACK_DATASET,
    MODELPACK_DOC,
    MODELPACK_WEIGHT,
    MODELPACK_WEIGHT_CONFIG,
    docker_media_type,
    modelpack_media_type,
    param_size,
    parameter_label,
    precision,
)


@pytest.mark.parametrize(("name", "size", "expected", "tested"), [
    ("model-00001-of-00002.safetensors", 10, MODELPACK_WEIGHT, True),
    ("llama-Q4_K_M.gguf", 10, MODELPACK_WEIGHT, True),
    ("pytorch_model.bin", 10, MODELPACK_WEIGHT, True),
    ("unet/diffusion_pytorch_model.safetensors", 10, MODELPACK_WEIGHT, True),
    ("config.json", 10, MODELPACK_WEIGHT_CONFIG, True),
    ("model.safetensors.index.json", 10, MODELPACK_WEIGHT_CONFIG, True),
    ("tokenizer.model", 10, MODELPACK_WEIGHT_CONFIG, True),
    ("merges.txt", 10, MODELPACK_WEIGHT_CONFIG, True),
    ("chat_template.jinja", 10, MODELPACK_WEIGHT_CONFIG, True),
    ("README.md", 10, MODELPACK_DOC, True),
    ("LICENSE", 10, MODELPACK_DOC, True),
    ("LICENSE.txt", 10, MODELPACK_DOC, True),
    ("USE_POLICY.md", 10, MODELPACK_DOC, True),
    ("figures/arch.png", 10, MODELPACK_DOC, True),
    ("modeling_custom.py", 10, MODELPACK_CODE, True),
    ("eval/sample.jsonl", 10, MODELPACK_DATASET, True),
    ("odd.blob", 10, MODELPACK_WEIGHT_CONFIG, False),
    ("odd.blob", 64 * 2**20, MODELPACK_WEIGHT, False),
])
def test_modelpack_media_types(name, size, expected, tested):
    assert modelpack_media_type(name, size) == (expected, tested)


@pytest.mark.parametrize(("name", "expected"), [
    ("model.gguf", DOCKER_GGUF),
    ("model-00001-of-00002.safetensors", DOCKER_SAFETENSORS),
    ("LICENSE", DOCKER_LICENSE),
    ("LICENSE.md", DOCKER_LICENSE),
    ("NOTICE", DOCKER_LICENSE),
    ("chat_template.jinja", DOCKER_CHAT_TEMPLATE),
    ("config.json", DOCKER_CONFIG_TAR),
    ("tokenizer.model", DOCKER_CONFIG_TAR),
    ("README.md", DOCKER_CONFIG_TAR),
])
def test_docker_media_types(name, expected):
    assert docker_media_type(name) == expected


@pytest.mark.parametrize(("parameters", "expected"), [
    (8_030_261_248, "8B"), (6_738_415_616, "6.7B"), (1_705_216, "1.7M"), (999_960_000, "1B"),
    (70_553_706_496, "70.6B"), (1_000_000_000_000, "1T"), (137_000_000, "137M"), (500, None), (0, None),
])
def test_param_size_is_count_and_scale(parameters, expected):
    assert param_size(parameters) == expected


@pytest.mark.parametrize(("dtypes", "expected"), [
    ({"F16": 100}, "fp16"), ({"BF16": 990, "F32": 10}, "bf16"), ({"Q4_K": 65, "Q6_K": 35}, "mixed"),
    ({"Q8_0": 99, "F32": 1}, "int8"), ({"INT4": 100}, "int4"), ({}, None),
])
def test_precision(dtypes, expected):
    assert precision(dtypes) == expected


@pytest.mark.parametrize(("parameters", "expected"), [
    (1_100_048_384, "1.10 B"), (8_030_261_248, "8.03 B"), (137_000_000, "137.00 M"), (1_500, "1.50 K"),
    (999, "999"), (0, None),
])
def test_parameter_label_is_dockers(parameters, expected):
    assert parameter_label(parameters) == expected
