"""The upstream writers and loaders, where they can run here without torch.

CI cannot afford torch (transformers' and PEFT's loaders need it), so the
loader rules are re-stated here from their sources, each with where it comes
from; ``make check-loaders`` (benchmarks/upstream_loaders.py) runs the real
transformers and PEFT on the same kind of output, outside CI.

Writers that do run here:

* :func:`hf_save_sharded` is transformers' ``save_pretrained(max_shard_size=)``
  path without the model: huggingface_hub's ``split_state_dict_into_shards_factory``
  (the function ``split_torch_state_dict_into_shards`` wraps, which
  transformers calls), ``safetensors.numpy.save_file(shard, metadata={"format":
  "pt"})`` per shard, and the index written as transformers writes it
  (``json.dumps(index, indent=2, sort_keys=True) + "\\n"``, modeling_utils
  ``save_pretrained``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import split_state_dict_into_shards_factory
from safetensors import safe_open
from safetensors.numpy import save_file

# transformers utils/__init__.py (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME);
# peft utils/constants.py (SAFETENSORS_WEIGHTS_NAME, CONFIG_NAME)
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
# transformers modeling_utils load_state_dict: the formats a shard's metadata may name
ALLOWED_FORMATS = ("pt", "tf", "flax", "mlx")


class LoadError(Exception):
    """What the real loader would raise."""


def _add_variant(name: str, variant: str | None) -> str:
    """transformers modeling_utils ``_add_variant``: model.safetensors -> model.fp16.safetensors."""
    if variant is None:
        return name
    parts = name.split(".")
    return ".".join(parts[:-1] + [variant] + parts[-1:])


def _load_file(path: Path) -> dict[str, np.ndarray]:
    """transformers ``load_state_dict``: a shard's ``__metadata__``, when
    there is one, must name a known format."""
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
        if meta is not None and meta.get("format") not in ALLOWED_FORMATS:
            raise LoadError(f"{path}: metadata format {meta.get('format')!r} is not one transformers loads")
        return {k: f.get_tensor(k) for k in f.keys()}


def transformers_load(folder: Path, variant: str | None = None) -> dict[str, np.ndarray]:
    """The state dict transformers' ``from_pretrained(folder)`` would read.

    modeling_utils ``_get_resolved_checkpoint_files`` on a local folder:
    ``model.safetensors`` if it is there, else the sharded index; then
    utils/hub.py ``get_checkpoint_shard_files``: ``index["metadata"]`` must
    exist, the shards are ``sorted(set(index["weight_map"].values()))``, each
    one must exist and is loaded whole."""
    single = folder / _add_variant(SAFE_WEIGHTS_NAME, variant)
    if single.is_file():
        return _load_file(single)
    index_file = folder / _add_variant(SAFE_WEIGHTS_INDEX_NAME, variant)
    if not index_file.is_file():
        raise LoadError(f"{folder}: no {single.name} and no {index_file.name}")
    index = json.loads(index_file.read_text())
    if "metadata" not in index:  # get_checkpoint_shard_files: sharded_metadata = index["metadata"]
        raise LoadError(f"{index_file}: no metadata (KeyError in transformers)")
    state: dict[str, np.ndarray] = {}
    for shard in sorted(set(index["weight_map"].values())):
        path = folder / shard
        if not path.is_file():
            raise LoadError(f"{path}: named by the index, missing")
        state.update(_load_file(path))
    missing = set(index["weight_map"]) - set(state)
    if missing:
        raise LoadError(f"{index_file}: names tensors no shard holds: {sorted(missing)[:3]}")
    return state


def peft_load(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What PEFT's ``PeftModel.from_pretrained(base, folder)`` reads: the
    config (``PeftConfig.from_pretrained``: ``adapter_config.json``) and
    the weights (utils/save_and_load.py ``load_peft_weights``:
    ``adapter_model.safetensors`` if it exists, else ``adapter_model.bin``;
    nothing else, no index)."""
    config_file = folder / PEFT_CONFIG_NAME
    if not config_file.is_file():
        raise LoadError(f"{folder}: no {PEFT_CONFIG_NAME}")
    config = json.loads(config_file.read_text())
    weights = folder / PEFT_WEIGHTS_NAME
    if not weights.is_file():
        raise LoadError(f"{folder}: no {PEFT_WEIGHTS_NAME} (PEFT reads no other name, no shards)")
    with safe_open(str(weights), framework="np") as f:
        return config, {k: f.get_tensor(k) for k in f.keys()}


def hf_save_sharded(state_dict: dict[str, np.ndarray], folder: Path, max_shard_size: int,
                    metadata: dict[str, str] | None = None) -> list[str]:
    """transformers' sharded save of ``state_dict`` (see the module
    docstring); returns the shard names, in order."""
    split = split_state_dict_into_shards_factory(
        state_dict, get_storage_size=lambda a: a.nbytes, filename_pattern="model{suffix}.safetensors",
        max_shard_size=max_shard_size)
    folder.mkdir(parents=True, exist_ok=True)
    for name, keys in split.filename_to_tensors.items():
        save_file({k: state_dict[k] for k in keys}, str(folder / name),
                  metadata=metadata if metadata is not None else {"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return list(split.filename_to_tensors)


def tensor_offsets(path: Path) -> tuple[int, dict[str, tuple[str, int, int]]]:
    """(data start, {name: (dtype, begin, end)}) of a safetensors file, from its raw header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return 8 + n, {k: (v["dtype"], *v["data_offsets"]) for k, v in header.items()}


def file_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(os.path.getsize(path))
