"""GGUF: read headers without touching tensor data, and plan split sets.

:func:`read_header` parses a GGUF v2/v3 little-endian header with bounded
reads through a buffered file object, so a truncated or corrupt file gives a
one-line :class:`~modelimage.errors.FormatError` instead of a crash or a huge
allocation. The ``gguf`` package is used only for its tables (type sizes,
enum names, key names).

:func:`split` describes, as :class:`~modelimage.content.VirtualFile` s, the
files llama.cpp's ``gguf-split`` (or gguf-py's ``GGUFWriter(split_max_size=)``)
would produce: split 0 carries every original key/value (copied
byte-for-byte) plus the ``split.*`` keys, later splits only the ``split.*``
keys; tensor data is copied byte-identically from the source file(s).
"""

from __future__ import annotations

import os
import posixpath
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import BinaryIO, Union

from gguf.constants import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGMLQuantizationType,
    GGUFValueType,
    Keys,
    LlamaFileType,
)

from modelimage.content import FileRange, Literal, Segment, Source, VirtualFile, coalesce, is_remote
from modelimage.errors import FormatError, LayerTooLarge, PlanError, SourceError

__all__ = [
    "ArraySummary",
    "GGUFHeader",
    "GGUFTensor",
    "MAX_DECODED_ARRAY",
    "SPLIT_RE",
    "MetadataValue",
    "read_header",
    "split",
    "split_name",
]

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
WRITE_VERSION = 3
MAX_DIMS = 4
MAX_DECODED_ARRAY = 1024
"""Arrays longer than this are summarised as an :class:`ArraySummary`."""
MAX_ARRAY_DEPTH = 8
MAX_SPLITS = 0xFFFF  # split.count is a UINT16

SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
"""Matches split file names such as ``model-00001-of-00003.gguf``."""

KEY_ALIGNMENT = Keys.General.ALIGNMENT
KEY_ARCHITECTURE = Keys.General.ARCHITECTURE
KEY_FILE_TYPE = Keys.General.FILE_TYPE
KEY_SPLIT_NO = Keys.Split.LLM_KV_SPLIT_NO
KEY_SPLIT_COUNT = Keys.Split.LLM_KV_SPLIT_COUNT
KEY_SPLIT_TENSORS_COUNT = Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT
SPLIT_KEY_PREFIX = "split."
TOKENIZER_KEY_PREFIX = "tokenizer."

_CHUNK = 1 << 20  # read size when skipping long string arrays
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")  # magic, version, n_tensors, n_kv

_SCALARS: dict[GGUFValueType, struct.Struct] = {
    GGUFValueType.UINT8: struct.Struct("<B"),
    GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"),
    GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: struct.Struct("<I"),
    GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.FLOAT32: struct.Struct("<f"),
    GGUFValueType.BOOL: struct.Struct("<?"),
    GGUFValueType.UINT64: struct.Struct("<Q"),
    GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT64: struct.Struct("<d"),
}

# Smallest possible encodings, used to reject counts before looping over them.
_MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims=0, type, offset
_MIN_ELEMENT_BYTES = {GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 4 + 8} | {
    t: s.size for t, s in _SCALARS.items()
}


@dataclass(frozen=True, slots=True)
class ArraySummary:
    """A metadata array too long to decode (for example a 128k-token vocab)."""

    element_type: GGUFValueType
    count: int


MetadataValue = Union[int, float, bool, str, list["MetadataValue"], ArraySummary]


@dataclass(frozen=True, slots=True)
class GGUFTensor:
    """One tensor info record of a GGUF file."""

    name: str
    shape: tuple[int, ...]  # as stored: ggml order, ne[0] first
    type_id: int
    type_name: str  # e.g. "Q4_K", "F16"
    offset: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def parameter_count(self) -> int:
        """Number of elements."""
        return prod(self.shape)


@dataclass(frozen=True)
class GGUFHeader:
    """Everything in a GGUF file except the tensor data."""

    path: Source
    file_size: int
    version: int
    alignment: int
    metadata: dict[str, MetadataValue]
    kv_spans: tuple[tuple[str, int, int], ...]  # (key, start, end), absolute, in file order
    tensors: tuple[GGUFTensor, ...]  # in file order
    data_start: int

    @property
    def architecture(self) -> str | None:
        """``general.architecture``, if present and a string."""
        value = self.metadata.get(KEY_ARCHITECTURE)
        return value if isinstance(value, str) else None

    @property
    def file_type_name(self) -> str | None:
        """``general.file_type`` as llama.cpp names it (``"Q4_K_M"``, ``"F32"``)."""
        value = self._int(KEY_FILE_TYPE)
        if value is None:
            return None
        try:
            name = LlamaFileType(value).name
        except ValueError:
            return f"unknown ({value})"
        if name == "ALL_F32":
            return "F32"
        return name.removeprefix("MOSTLY_")

    @property
    def split_no(self) -> int | None:
        """``split.no`` (0-based), or None for an unsplit file."""
        return self._int(KEY_SPLIT_NO)

    @property
    def split_count(self) -> int | None:
        """``split.count``, or None for an unsplit file."""
        return self._int(KEY_SPLIT_COUNT)

    @property
    def split_tensors_count(self) -> int | None:
        """``split.tensors.count`` (tensors in the whole set), or None."""
        return self._int(KEY_SPLIT_TENSORS_COUNT)

    @property
    def parameter_count(self) -> int:
        """Elements in all tensors of this file."""
        return sum(t.parameter_count for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        """Bytes of tensor data (without padding)."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def tokenizer_bytes(self) -> int:
        """Size of the embedded tokenizer (all ``tokenizer.*`` key/values)."""
        return self.kv_bytes(TOKENIZER_KEY_PREFIX)

    def kv_bytes(self, prefix: str = "") -> int:
        """Bytes of the raw key/value records whose key starts with ``prefix``."""
        return sum(end - start for key, start, end in self.kv_spans if key.startswith(prefix))

    def _int(self, key: str) -> int | None:
        value = self.metadata.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------
# Reading


def _pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


class _Cursor:
    """Bounded sequential reads: nothing is read or allocated past the file end."""

    __slots__ = ("_f", "path", "pos", "size")

    def __init__(self, f: BinaryIO, path: Source, size: int):
        self._f = f
        self.path = path
        self.pos = 0
        self.size = size

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def error(self, problem: str) -> FormatError:
        return FormatError(self.path, problem)

    def _need(self, n: int, what: str) -> None:
        if n > self.remaining:
            raise self.error(
                f"truncated: {what} at byte {self.pos} needs {n} bytes, file is {self.size} bytes"
            )

    def take(self, n: int, what: str) -> bytes:
        self._need(n, what)
        data = self._f.read(n)
        if len(data) != n:
            raise SourceError(f"{self.path}: file changed while being read")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self._need(n, what)
        self._f.seek(n, os.SEEK_CUR)
        self.pos += n

    def _read_at(self, pos: int, n: int) -> bytes:
        self._f.seek(pos)
        data = self._f.read(n)
        if len(data) != n:
            raise SourceError(f"{self.path}: file changed while being read")
        return data

    def skip_strings(self, count: int, what: str) -> None:
        """Skip ``count`` length-prefixed strings (a vocabulary), reading in chunks."""
        pos = chunk_start = self.pos
        chunk = b""
        for _ in range(count):
            rel = pos - chunk_start
            if rel + 8 > len(chunk):
                self.pos = pos
                self._need(8, f"{what} length")
                chunk_start, rel = pos, 0
                chunk = self._read_at(pos, min(_CHUNK, self.size - pos))
            n = _U64.unpack_from(chunk, rel)[0]
            self.pos = pos + 8
            self._need(n, what)
            pos += 8 + n
        self.pos = pos
        self._f.seek(pos)

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = _U64.unpack(self.take(8, what))[0]
        return value

    def raw_string(self, what: str) -> bytes:
        n = self.u64(f"{what} length")
        return self.take(n, what)

    def name(self, what: str) -> str:
        """A string that must be valid UTF-8 (keys, tensor names)."""
        raw = self.raw_string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{what} is not valid UTF-8: {raw[:40]!r}") from None


def _value_type(cur: _Cursor, raw: int, what: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise cur.error(f"{what}: unknown value type {raw}") from None


def _read_value(cur: _Cursor, vtype: GGUFValueType, what: str, depth: int = 0) -> MetadataValue:
    scalar = _SCALARS.get(vtype)
    if scalar is not None:
        value: MetadataValue = scalar.unpack(cur.take(scalar.size, what))[0]
        return value
    if vtype is GGUFValueType.STRING:
        return cur.raw_string(what).decode("utf-8", errors="replace")
    return _read_array(cur, what, depth)


def _read_array(cur: _Cursor, what: str, depth: int) -> list[MetadataValue] | ArraySummary:
    if depth >= MAX_ARRAY_DEPTH:
        raise cur.error(f"{what}: arrays nested more than {MAX_ARRAY_DEPTH} deep")
    etype = _value_type(cur, cur.u32(f"{what} element type"), f"{what} elements")
    count = cur.u64(f"{what} element count")
    least = count * _MIN_ELEMENT_BYTES[etype]
    if least > cur.remaining:
        raise cur.error(
            f"truncated: {what} claims {count} {etype.name} elements (at least {least} bytes) "
            f"at byte {cur.pos}, only {cur.remaining} bytes remain"
        )
    decode = count <= MAX_DECODED_ARRAY
    scalar = _SCALARS.get(etype)
    if scalar is not None:
        if not decode:
            cur.skip(least, what)
            return ArraySummary(etype, count)
        return [v for (v,) in scalar.iter_unpack(cur.take(least, what))]
    if etype is GGUFValueType.STRING and not decode:
        cur.skip_strings(count, f"{what} element")
        return ArraySummary(etype, count)
    if not decode:
        for _ in range(count):
            _read_value(cur, etype, f"{what} element", depth + 1)
        return ArraySummary(etype, count)
    return [_read_value(cur, etype, f"{what} element", depth + 1) for _ in range(count)]


def _read_tensor_info(cur: _Cursor, index: int) -> tuple[str, tuple[int, ...], int, int, int, int]:
    """(name, shape, type id, block size, type size, relative offset)."""
    name = cur.name(f"tensor #{index} name")
    n_dims = cur.u32(f"tensor {name} n_dims")
    if n_dims > MAX_DIMS:
        raise cur.error(f"tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})")
    shape = struct.unpack(f"<{n_dims}Q", cur.take(8 * n_dims, f"tensor {name} dimensions"))
    type_id = cur.u32(f"tensor {name} type")
    try:
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        raise cur.error(f"tensor {name} has unknown ggml type {type_id}") from None
    offset = cur.u64(f"tensor {name} offset")
    return name, shape, type_id, block_size, type_size, offset


def read_header(path: Source) -> GGUFHeader:
    """Parse the header of the GGUF file at ``path`` (never its tensor data):
    a local path, or a remote object read by range."""
    if is_remote(path):
        with path.open() as f:
            return _parse(_Cursor(f, path, path.size))
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return _parse(_Cursor(f, path, size))
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from None


def _parse(cur: _Cursor) -> GGUFHeader:
    path, size = cur.path, cur.size
    if size < _HEADER.size:
        raise cur.error(f"not a GGUF file (only {size} bytes)")
    magic, version, n_tensors, n_kv = _HEADER.unpack(cur.take(_HEADER.size, "header"))
    if magic != MAGIC:
        raise cur.error(f"not a GGUF file (magic {magic!r}, expected {MAGIC!r})")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in (1, 2, 3):
            raise cur.error("big-endian GGUF files are not supported")
        raise cur.error(f"unsupported GGUF version {version} (supported: 2, 3)")
    least = n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES
    if least > cur.remaining:
        raise cur.error(
            f"header claims {n_tensors} tensors and {n_kv} key/values, "
            f"which cannot fit in a file of {size} bytes"
        )

    metadata: dict[str, MetadataValue] = {}
    types: dict[str, GGUFValueType] = {}
    spans: list[tuple[str, int, int]] = []
    for i in range(n_kv):
        start = cur.pos
        key = cur.name(f"key #{i}")
        if key in metadata:
            raise cur.error(f"duplicate key {key!r}")
        vtype = _value_type(cur, cur.u32(f"key {key!r} value type"), f"key {key!r}")
        metadata[key] = _read_value(cur, vtype, f"value of {key!r}")
        types[key] = vtype
        spans.append((key, start, cur.pos))
    alignment = _alignment(cur, metadata, types)

    infos = [_read_tensor_info(cur, i) for i in range(n_tensors)]
    data_start = _pad(cur.pos, alignment)

    tensors: list[GGUFTensor] = []
    names: set[str] = set()
    for name, shape, type_id, block_size, type_size, rel in infos:
        if name in names:
            raise cur.error(f"duplicate tensor name {name!r}")
        names.add(name)
        ne0 = shape[0] if shape else 1
        type_name = GGMLQuantizationType(type_id).name
        if ne0 % block_size:
            raise cur.error(
                f"tensor {name}: ne[0]={ne0} is not a multiple of "
                f"the {type_name} block size {block_size}"
            )
        if rel % alignment:
            raise cur.error(
                f"tensor {name}: offset {rel} is not a multiple of the alignment {alignment}"
            )
        nbytes = prod(shape) // block_size * type_size
        offset = data_start + rel
        if offset + nbytes > size:
            raise cur.error(
                f"truncated: tensor {name} ends at {offset + nbytes}, file is {size} bytes"
            )
        tensors.append(GGUFTensor(name, tuple(shape), type_id, type_name, offset, nbytes))

    by_offset = sorted((t for t in tensors if t.nbytes), key=lambda t: t.offset)
    for a, b in zip(by_offset, by_offset[1:]):
        if b.offset < a.offset + a.nbytes:
            raise cur.error(
                f"tensors {a.name} and {b.name} overlap "
                f"({a.name} ends at {a.offset + a.nbytes}, {b.name} starts at {b.offset})"
            )

    return GGUFHeader(
        path=path,
        file_size=size,
        version=version,
        alignment=alignment,
        metadata=metadata,
        kv_spans=tuple(spans),
        tensors=tuple(tensors),
        data_start=data_start,
    )


def _alignment(
    cur: _Cursor, metadata: dict[str, MetadataValue], types: dict[str, GGUFValueType]
) -> int:
    """``general.alignment``: a UINT32 power of two, as llama.cpp requires."""
    if KEY_ALIGNMENT not in metadata:
        return GGUF_DEFAULT_ALIGNMENT
    vtype, value = types[KEY_ALIGNMENT], metadata[KEY_ALIGNMENT]
    if vtype is not GGUFValueType.UINT32 or not isinstance(value, int):
        raise cur.error(f"{KEY_ALIGNMENT} must be a UINT32, found {vtype.name}")
    if value == 0 or value & (value - 1):
        raise cur.error(f"{KEY_ALIGNMENT} is {value}, not a power of two")
    return value


# ---------------------------------------------------------------------------
# Splitting


def split_name(prefix: str, k: int, n: int) -> str:
    """Name of split ``k`` (1-based) of ``n``: ``prefix-0000k-of-0000n.gguf``."""
    if not 1 <= k <= n:
        raise ValueError(f"split {k} of {n}")
    return f"{prefix}-{k:05d}-of-{n:05d}.gguf"


def _kv_record(key: str, vtype: GGUFValueType, value: int) -> bytes:
    raw = key.encode("utf-8")
    return _U64.pack(len(raw)) + raw + _U32.pack(vtype) + _SCALARS[vtype].pack(value)


def _split_kvs(no: int, count: int, total_tensors: int) -> bytes:
    """The ``split.*`` keys exactly as gguf-py writes them."""
    return (
        _kv_record(KEY_SPLIT_NO, GGUFValueType.UINT16, no)
        + _kv_record(KEY_SPLIT_COUNT, GGUFValueType.UINT16, count)
        + _kv_record(KEY_SPLIT_TENSORS_COUNT, GGUFValueType.INT32, total_tensors)
    )


def _tensor_info(t: GGUFTensor, offset: int) -> bytes:
    raw = t.name.encode("utf-8")
    n = len(t.shape)
    return (
        _U64.pack(len(raw))
        + raw
        + _U32.pack(n)
        + struct.pack(f"<{n}Q", *t.shape)
        + _U32.pack(t.type_id)
        + _U64.pack(offset)
    )


def _tensor_info_size(t: GGUFTensor) -> int:
    return 8 + len(t.name.encode("utf-8")) + 4 + 8 * len(t.shape) + 4 + 8


def _check_split_set(headers: Sequence[GGUFHeader]) -> None:
    """``headers`` must be one unsplit file or a complete split set in order."""
    n = len(headers)
    if n == 0:
        raise ValueError("split() needs at least one GGUF header")
    for i, h in enumerate(headers):
        no, count = h.split_no, h.split_count
        if n == 1:
            if count not in (None, 1):
                shown = "?" if no is None else no + 1
                raise FormatError(
                    h.path, f"is split {shown} of {count}; pass every split of the set, in order"
                )
        elif count != n or no != i:
            found = "no split.* keys" if count is None else f"split.no={no}, split.count={count}"
            raise FormatError(
                h.path, f"expected split {i + 1} of {n} (split.no={i}), found {found}"
            )
    seen: set[str] = set()
    for h in headers:
        for t in h.tensors:
            if t.name in seen:
                raise FormatError(h.path, f"tensor {t.name} appears in more than one split")
            seen.add(t.name)
    declared = headers[0].split_tensors_count
    if n > 1 and declared is not None and declared != len(seen):
        raise FormatError(
            headers[0].path,
            f"split.tensors.count is {declared} but the splits hold {len(seen)} tensors",
        )


def split(
    headers: Sequence[GGUFHeader], *, prefix: str, directory: str, max_shard_size: int
) -> list[VirtualFile]:
    """Plan a llama.cpp-compatible split set of files of at most ``max_shard_size`` bytes.

    ``headers`` is one logical model: a single file, or every split of an
    existing split set in order (metadata then comes from the first split;
    its old ``split.*`` keys are dropped). Tensors are packed greedily in
    order; a split starts when the next tensor would push the file over the
    limit. If split 0's metadata leaves no room for the first tensor, split 0
    holds metadata only (llama.cpp accepts that). Output names are
    ``directory/prefix-0000k-of-0000n.gguf``.
    """
    _check_split_set(headers)
    first = headers[0]
    alignment = first.alignment
    kept = [(s, e) for key, s, e in first.kv_spans if not key.startswith(SPLIT_KEY_PREFIX)]
    entries = [(h, t) for h in headers for t in h.tensors]
    total = len(entries)

    split_kv_size = len(_split_kvs(0, 1, 0))
    # Later splits restate a non-default alignment so each split reads on its own.
    align_kv = b""
    if alignment != GGUF_DEFAULT_ALIGNMENT:
        align_kv = _kv_record(KEY_ALIGNMENT, GGUFValueType.UINT32, alignment)
    fixed_first = _HEADER.size + sum(e - s for s, e in kept) + split_kv_size
    fixed_other = _HEADER.size + split_kv_size + len(align_kv)

    def file_size(fixed: int, infos: int, data: int) -> int:
        return _pad(fixed + infos, alignment) + data

    groups: list[list[tuple[GGUFHeader, GGUFTensor]]] = [[]]
    fixed, infos, data = fixed_first, 0, 0
    for h, t in entries:
        info, padded = _tensor_info_size(t), _pad(t.nbytes, alignment)
        if file_size(fixed, infos + info, data + padded) <= max_shard_size:
            groups[-1].append((h, t))
            infos, data = infos + info, data + padded
            continue
        alone = file_size(fixed_other, info, padded)
        if alone > max_shard_size:
            raise LayerTooLarge(
                f"{h.path}: tensor {t.name} is {t.nbytes} bytes and needs "
                f"a {alone}-byte split file, "
                f"over the shard size limit of {max_shard_size} bytes"
            )
        groups.append([(h, t)])
        fixed, infos, data = fixed_other, info, padded

    first_size = file_size(fixed_first, *_sizes(groups[0], alignment))
    if first_size > max_shard_size:
        raise LayerTooLarge(
            f"{first.path}: the metadata alone makes a {first_size}-byte first split file, "
            f"over the shard size limit of {max_shard_size} bytes"
        )
    n = len(groups)
    if n > MAX_SPLITS:
        raise PlanError(
            f"{first.path}: would need {n} GGUF splits, at most {MAX_SPLITS} are possible; "
            "raise the shard size limit"
        )

    out: list[VirtualFile] = []
    for k, group in enumerate(groups):
        kvs = _split_kvs(k, n, total) + (align_kv if k else b"")
        n_kv = (len(kept) if k == 0 else bool(align_kv)) + 3
        segments: list[Segment] = [Literal(_HEADER.pack(MAGIC, WRITE_VERSION, len(group), n_kv))]
        if k == 0:
            segments += [FileRange(first.path, s, e - s) for s, e in kept]
        segments.append(Literal(kvs))
        header_size = fixed_first if k == 0 else fixed_other
        info_bytes = bytearray()
        offset = 0
        for _, t in group:
            info_bytes += _tensor_info(t, offset)
            offset += _pad(t.nbytes, alignment)
        header_size += len(info_bytes)
        info_bytes += bytes(_pad(header_size, alignment) - header_size)
        segments.append(Literal(bytes(info_bytes)))
        for h, t in group:
            segments.append(FileRange(h.path, t.offset, t.nbytes))
            segments.append(Literal(bytes(_pad(t.nbytes, alignment) - t.nbytes)))
        sources = [first.path] if k == 0 else []
        sources += [h.path for h, _ in group]
        origin = ", ".join(dict.fromkeys(_rel(directory, p.name) for p in sources))
        name = _rel(directory, split_name(prefix, k + 1, n))
        out.append(VirtualFile(name, coalesce(segments), origin))
    return out


def _sizes(group: list[tuple[GGUFHeader, GGUFTensor]], alignment: int) -> tuple[int, int]:
    """(tensor info bytes, padded data bytes) of one split."""
    return (
        sum(_tensor_info_size(t) for _, t in group),
        sum(_pad(t.nbytes, alignment) for _, t in group),
    )


def _rel(directory: str, name: str) -> str:
    return posixpath.join(directory, name) if directory else name
