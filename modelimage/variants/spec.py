"""How variants are described, and which files each one holds.

In ``modelimage.toml``, one table per variant under the model's entry; the
variants share the entry's ``source`` and every setting (target, layer
size, platform, image)::

    [models.llama-8b]
    source = "hf://bartowski/Meta-Llama-3.1-8B-Instruct-GGUF"
    include = ["*.gguf", "*.json", "*.md"]   # the files the variants are made of
    image = "ghcr.io/acme/llama-8b"

    [models.llama-8b.variants.q4_k_m]       # the first variant is the default
    include = ["*Q4_K_M.gguf"]

    [models.llama-8b.variants.q8_0]
    include = ["*Q8_0.gguf"]

On the command line, ``--variant NAME=GLOB[,GLOB...]`` (repeatable; a NAME
given again adds globs), in the same order rules.

Which files a variant holds (:func:`split_files`): every file of the entry
(after the entry's own include/exclude) that its ``include`` globs match,
plus every file that no variant's ``include`` matches and that is not a
weight file: those are shared by all variants (tokenizer, configs, chat
template, README). A weight file no variant claims (the repository's other
quantizations) is left out of every variant, and the build says so; a
weight file several variants need (a vision projector) goes in each one's
``include``. A variant's ``exclude`` removes files from it alone. Globs
match as everywhere else in modelimage: without ``/`` a file name in any
folder, with ``/`` the whole path.

For ``hf://`` sources the entry's ``include`` decides what is downloaded:
with many quantizations in the repository, list the variants' files and
the small ones (``include = ["*Q4_K_M.gguf", "*Q8_0.gguf", "*.json"]``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ..errors import ConfigError, VariantError

# Variant names become tags (``:q4_k_m``) and so follow the distribution
# spec's tag grammar, in lower case like the entry names: [a-z0-9][a-z0-9._-]*
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_KEYS = {"include", "exclude"}


@dataclass(frozen=True)
class VariantSpec:
    """One variant: its ``name`` (also its tag) and the globs that pick its
    own files out of the entry's files."""

    name: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()


def check_name(name: str, where: str) -> str:
    """``name`` if it can be a variant name (and tag); raises :class:`ConfigError`."""
    if not _NAME_RE.match(name):
        raise ConfigError(f"{where}: variant name {name!r}: use lowercase letters, digits and . _ - "
                          "(at most 64, starting with a letter or digit), e.g. q4_k_m; it becomes a tag")
    return name


def _globs(value: Any, where: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(g, str) and g for g in value):
        raise ConfigError(f"{where}: {key} must be a glob or a list of globs")
    return tuple(value)


def parse_tables(tables: Any, where: str) -> tuple[VariantSpec, ...]:
    """The ``[models.NAME.variants.VARIANT]`` tables of one entry, in file
    order (the first is the default). Raises :class:`ConfigError` naming
    the table and the problem."""
    if not isinstance(tables, Mapping) or not tables:
        raise ConfigError(f"{where}: variants must hold [variants.NAME] tables, e.g. "
                          "[models.llama.variants.q4_k_m] include = [\"*Q4_K_M.gguf\"]")
    out = []
    for name, table in tables.items():
        here = f"{where} variant {name}"
        check_name(name, where)
        if not isinstance(table, Mapping):
            raise ConfigError(f"{here}: must be a table with include = [GLOB, ...]")
        unknown = set(table) - _KEYS
        if unknown:
            raise ConfigError(f"{here}: unknown key(s) {', '.join(sorted(unknown))} (known: include, exclude; "
                              "everything else comes from the model's entry)")
        if "include" not in table:
            raise ConfigError(f"{here}: needs include = [GLOB, ...], the files only this variant holds")
        out.append(VariantSpec(name, _globs(table["include"], here, "include"),
                               _globs(table.get("exclude", []), here, "exclude")))
    return tuple(out)


def parse_option(texts: Sequence[str]) -> tuple[VariantSpec, ...]:
    """``--variant NAME=GLOB[,GLOB...]`` options, in order; a NAME given
    again adds its globs. Raises :class:`ConfigError`."""
    order: list[str] = []
    globs: dict[str, list[str]] = {}
    for text in texts:
        name, eq, rest = text.partition("=")
        name = name.strip()
        patterns = [g.strip() for g in rest.split(",") if g.strip()]
        if not eq or not patterns:
            raise ConfigError(f"--variant {text!r}: expected NAME=GLOB[,GLOB...], e.g. --variant q4_k_m='*Q4_K_M.gguf'")
        check_name(name, "--variant")
        if name not in globs:
            order.append(name)
            globs[name] = []
        globs[name] += [g for g in patterns if g not in globs[name]]
    return tuple(VariantSpec(n, tuple(globs[n])) for n in order)


@dataclass(frozen=True)
class Split:
    """The entry's files among its variants: ``files[name]`` the paths each
    variant holds (sorted), ``shared`` those every variant holds,
    ``left_out`` the weight files no variant claims."""

    files: dict[str, tuple[str, ...]]
    shared: frozenset[str]
    left_out: tuple[str, ...] = ()

    def holders(self, path: str) -> tuple[str, ...]:
        """The variants that hold ``path``, in variant order."""
        return tuple(n for n, names in self.files.items() if path in names)


def split_files(paths: Sequence[str], variants: Sequence[VariantSpec], source: str = "the model") -> Split:
    """Which of ``paths`` (the entry's files, POSIX paths relative to the
    model root) each variant holds; see the module docstring for the rule.

    Raises :class:`VariantError` when a variant's include matches none of
    the files, when two variants have the same name, or when two would hold
    exactly the same files (they would be one image twice)."""
    from ..sources.files import WEIGHT_SUFFIXES, selected  # the one glob rule (here: config imports this module)

    names = [v.name for v in variants]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise VariantError(f"{source}: variant {dup} is described twice")
    own = {v.name: {p for p in paths if selected(p, v.include, ())} for v in variants}
    claimed = set().union(*own.values()) if own else set()
    weights = {p for p in paths if PurePosixPath(p).suffix.lower() in WEIGHT_SUFFIXES}
    common = [p for p in paths if p not in claimed and p not in weights]
    files: dict[str, tuple[str, ...]] = {}
    for v in variants:
        if not own[v.name]:
            raise VariantError(f"{source}: variant {v.name}: include {', '.join(v.include)} matches none of its "
                               f"{len(paths)} files")
        held = [p for p in paths if (p in own[v.name] or p in common) and selected(p, (), v.exclude)]
        files[v.name] = tuple(sorted(held))
    seen: dict[tuple[str, ...], str] = {}
    for n, held in files.items():
        if held in seen:
            raise VariantError(f"{source}: variants {seen[held]} and {n} hold the same files; "
                               "give each its own include globs")
        seen[held] = n
    shared = frozenset(p for p in paths if all(p in held for held in files.values()))
    return Split(files, shared, tuple(sorted(weights - claimed)))
