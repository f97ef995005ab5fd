"""sources.files: the one include/exclude glob rule every source applies."""

from __future__ import annotations

import pytest

from modelimage.sources.files import selected


@pytest.mark.parametrize(
    ("path", "include", "exclude", "expected"),
    [
        ("model.safetensors", [], [], True),
        ("model.safetensors", ["*.safetensors"], [], True),
        ("sub/model.safetensors", ["*.safetensors"], [], True),  # no '/': matches the name anywhere
        ("config.json", ["*.safetensors"], [], False),
        ("config.json", ["*.safetensors", "*.json"], [], True),
        ("README.md", [], ["*.md"], False),
        ("docs/README.md", [], ["*.md"], False),
        ("unet/config.json", [], ["unet/*"], False),  # with '/': the whole path
        ("vae/unet/config.json", [], ["unet/*"], True),
        ("unet/diffusion_pytorch_model.fp16.safetensors", [], ["*.fp16.*"], False),
        ("x-Q4_K_M.gguf", ["*Q4_K_M.gguf"], [], True),
        ("x-Q8_0.gguf", ["*Q4_K_M.gguf"], [], False),
        ("model.safetensors", ["*.safetensors"], ["model.*"], False),  # exclude wins
        ("Model.Safetensors", ["*.safetensors"], [], False),  # case-sensitive
    ],
)
def test_selected(path: str, include: list[str], exclude: list[str], expected: bool) -> None:
    assert selected(path, include, exclude) is expected
