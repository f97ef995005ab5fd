"""Safetensors headers, and resharding the way Hugging Face does.

A safetensors file is an 8-byte little-endian length ``N``, ``N`` bytes of
JSON header, then the raw tensor data. This module reads and validates the
header only (tensor data is never read), and plans a re-split of a weight set
into size-bounded shards as :class:`~modelimage.content.VirtualFile` objects:
a regenerated header followed by byte ranges of the source files, so a shard
is byte-identical tensor data under a new header and never has to be written
to disk before it is streamed into a layer.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from modelimage.content import FileRange, Literal, Segment, Source, VirtualFile, coalesce, is_remote
from modelimage.errors import FormatError, LayerTooLarge

__all__ = [
    "DTYPE_BITS",
    "DTYPE_ORDER",
    "FLOAT_DTYPES",
    "MAX_HEADER_SIZE",
    "SHARD_RE",
    "SafetensorsHeader",
    "TensorInfo",
    "index_json",
    "index_name",
    "index_shards",
    "read_header",
    "read_index",
    "serialize_header",
    "shard_header_size",
    "shard_name",
    "shard_order",
    "split",
]

#: Bits per element of every dtype the reference library knows.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}

#: Real floating-point dtypes (all ``F*`` codes and ``BF16``, including the
#: exponent-only ``F8_E8M0`` scale format). ``C64`` (complex) is excluded:
#: it is not a real float and is not what "floating-point weights" means.
FLOAT_DTYPES: frozenset[str] = frozenset(
    d for d in DTYPE_BITS if d.startswith("F") or d == "BF16"
)

#: The reference library refuses headers longer than this.
MAX_HEADER_SIZE = 100_000_000

#: ``<stem>-00001-of-00004.safetensors``; groups ``stem``, ``index``, ``total``.
SHARD_RE = re.compile(
    r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.safetensors$"
)

_LEN = struct.Struct("<Q")
_METADATA_KEY = "__metadata__"
_MAX_INDEX_SIZE = 100_000_000


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor of a safetensors file; ``begin``/``end`` are absolute file
    offsets of its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def parameter_count(self) -> int:
        """Number of elements (1 for a scalar)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Size of the tensor data in bytes."""
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """The validated header of one safetensors file."""

    path: Source
    file_size: int
    header_size: int
    metadata: dict[str, str]
    tensors: tuple[TensorInfo, ...]

    @property
    def data_start(self) -> int:
        """Absolute offset of the data section."""
        return 8 + self.header_size


# --------------------------------------------------------------------------
# Reading


def _expected_nbytes(dtype: str, shape: Sequence[int], cap: int) -> int | None:
    """Bytes a tensor of ``dtype`` and ``shape`` takes (rounded up for
    sub-byte dtypes), or None if that is more than ``cap``. The cap keeps a
    hostile shape from making us multiply huge integers."""
    if 0 in shape:
        return 0
    bits, limit = DTYPE_BITS[dtype], 8 * cap
    elements = 1
    for dim in shape:
        elements *= dim
        if elements * bits > limit:
            return None
    return (elements * bits + 7) // 8


def _short(text: str, limit: int = 80) -> str:
    """``repr`` of a name or value from a file, cut to keep messages short."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _shape_text(shape: Sequence[int]) -> str:
    return str(list(shape)) if len(shape) <= 8 else f"<{len(shape)} dims>"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _parse_json(path: Path, raw: bytes, what: str) -> Any:
    """Decode UTF-8 JSON, turning every failure into a FormatError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(path, f"{what} is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise FormatError(path, f"{what} has duplicate key {_short(exc.key)}") from None
    except json.JSONDecodeError as exc:
        raise FormatError(path, f"{what} is not valid JSON ({exc.msg} at char {exc.pos})") from None
    except (ValueError, RecursionError) as exc:
        # ValueError: e.g. an integer too long to convert; RecursionError:
        # absurdly deep nesting.
        if isinstance(exc, RecursionError):
            reason = "nested too deeply"
        else:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise FormatError(path, f"{what} is not valid JSON ({reason})") from None


def _parse_metadata(path: Path, value: object) -> dict[str, str]:
    if value is None:  # the reference library accepts null
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise FormatError(path, f"{_METADATA_KEY} must be an object of strings to strings")
    return dict(value)


def _parse_tensor(
    path: Path, name: str, entry: object, data_start: int, data_size: int
) -> TensorInfo:
    label = _short(name)
    if not isinstance(entry, dict):
        raise FormatError(path, f"tensor {label}: entry is not an object")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise FormatError(path, f"tensor {label}: missing {', '.join(missing)}")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        shown = _short(dtype) if isinstance(dtype, str) else f"of type {type(dtype).__name__}"
        raise FormatError(path, f"tensor {label}: unknown dtype {shown}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise FormatError(path, f"tensor {label}: shape must be a list of non-negative integers")
    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise FormatError(
            path, f"tensor {label}: data_offsets must be two integers 0 <= begin <= end"
        )
    begin, end = offsets
    if end > data_size:
        raise FormatError(
            path,
            f"tensor {label} ends at data offset {end} but the data section is only "
            f"{data_size} bytes (file truncated?)",
        )
    cap = max(end - begin, 1 << 64)
    expected = _expected_nbytes(dtype, shape, cap)
    if end - begin != expected:
        needs = f"{expected} bytes" if expected is not None else f"more than {cap} bytes"
        raise FormatError(
            path,
            f"tensor {label}: {dtype} {_shape_text(shape)} needs {needs} "
            f"but data_offsets span {end - begin}",
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _source(path: Source) -> tuple[Source, int, Callable[[], BinaryIO]]:
    """``(path, size, opener)`` of a local file (which must be a regular
    file) or a remote object (opened for ranged reads)."""
    if is_remote(path):
        return path, path.size, path.open
    local = Path(path)
    try:
        size = _regular_file_size(local)
    except OSError as exc:
        raise FormatError(local, f"cannot read file: {exc.strerror or exc}") from None
    return local, size, lambda: open(local, "rb")


def _regular_file_size(path: Path) -> int:
    """Size of ``path``; FormatError unless it is a regular file (opening a
    FIFO or device could block or never end)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(path, "not a regular file")
    return st.st_size


def read_header(path: Source) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file at ``path`` (a
    local path, or a remote object read by range).

    Only the header bytes are read. Every problem with the file raises
    :class:`FormatError` naming the file.
    """
    path, file_size, opener = _source(path)
    try:
        with opener() as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise FormatError(
                    path, f"file is {file_size} bytes, too short for a safetensors header"
                )
            (n,) = _LEN.unpack(prefix)
            if n == 0:
                raise FormatError(path, "header length is 0")
            if n > MAX_HEADER_SIZE:
                raise FormatError(
                    path, f"header length {n} exceeds the {MAX_HEADER_SIZE}-byte limit"
                )
            if 8 + n > file_size:
                raise FormatError(
                    path, f"header length {n} exceeds file size {file_size} (file truncated?)"
                )
            raw = f.read(n)
    except FormatError:
        raise
    except OSError as exc:
        raise FormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    if len(raw) != n:
        raise FormatError(path, f"header truncated: read {len(raw)} of {n} bytes")

    obj = _parse_json(path, raw, "header")
    if not isinstance(obj, dict):
        raise FormatError(path, "header is not a JSON object")

    data_start = 8 + n
    data_size = file_size - data_start
    metadata: dict[str, str] = {}
    tensors: list[TensorInfo] = []
    for name, entry in obj.items():
        if name == _METADATA_KEY:
            metadata = _parse_metadata(path, entry)
        else:
            tensors.append(_parse_tensor(path, name, entry, data_start, data_size))

    tensors.sort(key=lambda t: (t.begin, t.end, t.name))
    covered_to, covered_by = data_start, ""
    for t in tensors:
        if t.nbytes == 0:  # an empty tensor overlaps nothing
            continue
        if t.begin < covered_to:
            raise FormatError(path, f"tensors {_short(covered_by)} and {_short(t.name)} overlap")
        covered_to, covered_by = t.end, t.name

    return SafetensorsHeader(path, file_size, n, metadata, tuple(tensors))


def read_index(path: Source) -> dict[str, Any]:
    """Parse a ``*.safetensors.index.json`` file.

    The result has a ``weight_map`` object of tensor name -> shard file name
    and, if present, a ``metadata`` object; other keys are kept as they are.
    """
    path, size, opener = _source(path)
    try:
        if size > _MAX_INDEX_SIZE:
            raise FormatError(path, f"index is {size} bytes, over the {_MAX_INDEX_SIZE}-byte limit")
        with opener() as f:
            raw = f.read(_MAX_INDEX_SIZE + 1)
    except FormatError:
        raise
    except OSError as exc:
        raise FormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    obj = _parse_json(path, raw, "index")
    if not isinstance(obj, dict):
        raise FormatError(path, "index is not a JSON object")
    weight_map = obj.get("weight_map")
    if not isinstance(weight_map, dict):
        raise FormatError(path, "index has no weight_map object")
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise FormatError(path, "index weight_map values must be shard file names")
    if "metadata" in obj and not isinstance(obj["metadata"], dict | None):
        raise FormatError(path, "index metadata must be an object")
    return obj


def index_shards(index: Mapping[str, Any]) -> list[str]:
    """The shard file names an index refers to, sorted (shard order for the
    standard ``-00001-of-0000N`` names)."""
    return sorted(set(index["weight_map"].values()))


# --------------------------------------------------------------------------
# Splitting


def shard_name(stem: str, k: int, n: int) -> str:
    """Name of shard ``k`` (1-based) of ``n``: ``model-00001-of-00004.safetensors``."""
    return f"{stem}-{k:05d}-of-{n:05d}.safetensors"


def index_name(stem: str) -> str:
    """Name of the index of a sharded set: ``model.safetensors.index.json``."""
    return f"{stem}.safetensors.index.json"


def _dumps(obj: object) -> str:
    """The one JSON serialization used for generated headers."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _entry(t: TensorInfo, offset: int) -> bytes:
    """``"name":{...}`` for ``t`` placed at data offset ``offset``."""
    info = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
    return f"{_dumps(t.name)}:{_dumps(info)}".encode()


def _metadata_entry(metadata: Mapping[str, str]) -> list[bytes]:
    return [f"{_dumps(_METADATA_KEY)}:{_dumps(dict(metadata))}".encode()] if metadata else []


def _padded(json_len: int) -> int:
    """Header JSON length after space-padding to a multiple of 8."""
    return -(-json_len // 8) * 8


def _header_json_len(entries: Sequence[bytes]) -> int:
    """Length of ``{e1,e2,...}`` without building it."""
    return 2 + sum(len(e) for e in entries) + max(len(entries) - 1, 0)


def serialize_header(tensors: Sequence[TensorInfo], metadata: Mapping[str, str]) -> bytes:
    """The 8-byte length plus padded header JSON of a file holding ``tensors``
    contiguously in this order (data offsets recomputed from 0)."""
    entries = _metadata_entry(metadata)
    offset = 0
    for t in tensors:
        entries.append(_entry(t, offset))
        offset += t.nbytes
    body = b"{" + b",".join(entries) + b"}"
    body += b" " * (_padded(len(body)) - len(body))
    return _LEN.pack(len(body)) + body


def shard_header_size(tensors: Sequence[TensorInfo], metadata: Mapping[str, str]) -> int:
    """Size in bytes of :func:`serialize_header` ``(tensors, metadata)``."""
    entries = _metadata_entry(metadata)
    offset = 0
    for t in tensors:
        entries.append(_entry(t, offset))
        offset += t.nbytes
    return 8 + _padded(_header_json_len(entries))


def _join(directory: str, name: str) -> str:
    directory = directory.strip("/")
    return f"{directory}/{name}" if directory else name


def _digits(n: int) -> int:
    return len(str(n))


def _plan_shards(
    items: Sequence[tuple[SafetensorsHeader, TensorInfo]],
    metadata: Mapping[str, str],
    max_shard_size: int,
) -> list[list[tuple[SafetensorsHeader, TensorInfo]]]:
    """Greedy grouping in the given order, as huggingface_hub's
    ``split_state_dict_into_shards_factory`` (which transformers'
    ``save_pretrained`` uses) groups a state dict: a new shard starts when the
    next tensor would make the current shard file exceed ``max_shard_size``.
    Unlike huggingface_hub, the size counted is the whole file (header
    included), since the file must fit a layer.

    The writer orders each shard's tensors by dtype (see :func:`shard_order`),
    so data offsets are not known while grouping: each header entry is sized
    with offsets as long as the shard's data size, an upper bound."""
    base = _metadata_entry(metadata)
    shards: list[list[tuple[SafetensorsHeader, TensorInfo]]] = []
    current: list[tuple[SafetensorsHeader, TensorInfo]] = []
    fixed = _header_json_len(base)  # header JSON of `current` without the offset digits
    count = len(base)  # entries in that header
    data = 0  # data bytes of `current`
    offsets = 0  # tensors whose two offsets are not counted in `fixed`

    def bound(fixed: int, offsets: int, data: int) -> int:
        return 8 + _padded(fixed + 2 * offsets * _digits(data)) + data

    for src, t in items:
        entry_len = len(_entry(t, 0)) - 1 - _digits(t.nbytes)  # without the offsets' digits
        size = bound(fixed + entry_len + (count > 0), offsets + 1, data + t.nbytes)
        if size > max_shard_size:  # the bound says no: the exact size decides
            grown = shard_order([c for _, c in current] + [t])
            size = shard_header_size(grown, metadata) + data + t.nbytes
        if size > max_shard_size and current:
            shards.append(current)
            current, fixed, count, data, offsets = [], _header_json_len(base), len(base), 0, 0
            size = shard_header_size([t], metadata) + t.nbytes
        if size > max_shard_size:
            raise LayerTooLarge(
                f"{src.path}: tensor {_short(t.name)} is {t.nbytes} bytes; it cannot fit a "
                f"{max_shard_size}-byte shard (with its header the shard file would be "
                f"{size} bytes); raise the layer size limit"
            )
        current.append((src, t))
        fixed += entry_len + (count > 0)
        count += 1
        offsets += 1
        data += t.nbytes

    if current:
        shards.append(current)
    return shards


#: The order of the reference library's ``Dtype`` enum (safetensors
#: ``safetensors/src/tensor.rs``); its writer sorts a file's tensors by this
#: rank, largest first, then by name.
DTYPE_ORDER: tuple[str, ...] = (
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
    "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64",
)
_DTYPE_RANK = {d: i for i, d in enumerate(DTYPE_ORDER)}


def shard_order(tensors: Sequence[TensorInfo]) -> list[TensorInfo]:
    """``tensors`` in the order the reference writer (``safetensors``
    ``serialize``/``save_file``) lays them out: descending dtype rank, then
    name. Wider dtypes come first, so every tensor's data offset is a
    multiple of its element size (up to 8 bytes: the data section starts
    8-aligned, the header being space-padded to a multiple of 8)."""
    return sorted(tensors, key=lambda t: (-_DTYPE_RANK[t.dtype], t.name.encode("utf-8")))


def split(
    headers: Sequence[SafetensorsHeader],
    *,
    stem: str,
    directory: str,
    max_shard_size: int,
    index: Mapping[str, Any] | None = None,
    keep: Sequence[SafetensorsHeader] = (),
) -> list[VirtualFile]:
    """Re-split one weight set into shards of at most ``max_shard_size`` bytes,
    as transformers' ``save_pretrained(max_shard_size=...)`` writes them.

    ``headers`` are the files to re-split, in order (one file, or every shard
    of a sharded set in shard order); ``keep`` are other files of the set
    that stay as they are (an index's ``model-mtp.safetensors``): their
    tensors keep their index entries. Returns the shards
    ``<directory>/<stem>-0000k-of-0000n.safetensors`` followed by the index
    ``<directory>/<stem>.safetensors.index.json``.

    Tensors are grouped in order, greedily (huggingface_hub's
    ``split_state_dict_into_shards_factory``); each shard is laid out
    exactly as ``safetensors.save_file`` writes those tensors with that
    ``__metadata__`` (tensor order by dtype then name, offsets from 0,
    header space-padded to 8 bytes), its tensor bytes ranges of the source
    files. ``__metadata__`` comes from the first source file that has any
    and goes into every shard (transformers writes ``{"format": "pt"}`` into
    each). The index is the original one (every other key kept) with a new
    ``weight_map`` and ``metadata.total_size`` (tensor bytes of the whole
    set), written as transformers writes it (``json.dumps(indent=2,
    sort_keys=True)`` and a newline). A set without tensors gives a single
    shard holding only the header. Raises :class:`LayerTooLarge` when one
    tensor cannot fit a shard of its own, :class:`FormatError` when a tensor
    name is in two files.
    """
    if not headers:
        raise ValueError("split() needs at least one safetensors header")
    metadata = next((h.metadata for h in list(headers) + list(keep) if h.metadata), {})

    items: list[tuple[SafetensorsHeader, TensorInfo]] = []
    seen: dict[str, Path] = {}
    resharded = {id(h) for h in headers}
    for h in list(keep) + list(headers):
        for t in h.tensors:
            if t.name in seen:
                raise FormatError(h.path, f"tensor {_short(t.name)} is also in {seen[t.name]}")
            seen[t.name] = h.path
            if id(h) in resharded:
                items.append((h, t))

    groups = _plan_shards(items, metadata, max_shard_size)
    if not groups:  # a set without tensors: one header-only shard
        size = len(serialize_header([], metadata))
        if size > max_shard_size:
            raise LayerTooLarge(
                f"{headers[0].path}: the header alone is {size} bytes; "
                f"it cannot fit a {max_shard_size}-byte shard"
            )
        groups = [[]]
    n = len(groups)
    files: list[VirtualFile] = []
    weight_map: dict[str, str] = {t.name: h.path.name for h in keep for t in h.tensors}
    for k, group in enumerate(groups, start=1):
        name = shard_name(stem, k, n)
        where = {t.name: src for src, t in group}
        tensors = shard_order([t for _, t in group])
        segments: list[Segment] = [Literal(serialize_header(tensors, metadata))]
        segments += [FileRange(where[t.name].path, t.begin, t.nbytes) for t in tensors]
        sources = dict.fromkeys(_join(directory, src.path.name) for src, _ in group)
        if not group:
            sources = dict.fromkeys(_join(directory, h.path.name) for h in headers)
        files.append(
            VirtualFile(_join(directory, name), coalesce(segments), origin=",".join(sources))
        )
        for t in tensors:
            weight_map[t.name] = name

    out_index: dict[str, Any] = dict(index) if index else {}
    old_meta = out_index.get("metadata")
    new_meta = dict(old_meta) if isinstance(old_meta, dict) else {}
    new_meta["total_size"] = sum(t.nbytes for h in list(keep) + list(headers) for t in h.tensors)
    out_index["metadata"] = new_meta
    out_index["weight_map"] = weight_map
    files.append(
        VirtualFile(
            _join(directory, index_name(stem)),
            (Literal(index_json(out_index)),),
            origin=",".join(dict.fromkeys(_join(directory, h.path.name) for h in headers)),
        )
    )
    return files


def index_json(index: Mapping[str, Any]) -> bytes:
    """An index file's bytes as transformers writes them (``save_pretrained``:
    ``json.dumps(index, indent=2, sort_keys=True) + "\\n"``)."""
    return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
