"""Byte sizes and durations for people: parsing ``500MB``/``2GiB`` and printing."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from .errors import ConfigError

_UNITS = {
    "": 1, "B": 1,
    "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9, "T": 10**12, "TB": 10**12,
    "KI": 2**10, "KIB": 2**10, "MI": 2**20, "MIB": 2**20, "GI": 2**30, "GIB": 2**30, "TI": 2**40, "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int, *, what: str = "size") -> int:
    """``"500MB"`` -> 500_000_000, ``"2GiB"`` -> 2_147_483_648, ``"1234"`` -> 1234.

    Decimal units (KB, MB, GB, TB; K/M/G/T as in Kubernetes) are powers of
    1000, binary units (KiB, MiB, GiB, TiB; Ki/Mi/Gi/Ti) powers of 1024.
    """
    if isinstance(text, bool) or not isinstance(text, int | str):  # e.g. a TOML float or list
        raise ConfigError(f"{what}: cannot read {text!r} as a size (examples: 500MB, 2GiB, 1073741824)")
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(text)
        unit = m.group(2).upper() if m else ""
        if not m or unit not in _UNITS:
            raise ConfigError(f"{what}: cannot read {text!r} as a size (examples: 500MB, 2GiB, 1073741824)")
        value = math.floor(Decimal(m.group(1)) * _UNITS[unit])  # exact: float("8.2") * 10**9 < 8.2e9
    if value <= 0:
        raise ConfigError(f"{what}: {text!r} must be more than zero bytes")
    return value


def format_size(n: int | float) -> str:
    """Decimal units, 3 significant digits: ``16.1 GB``."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            if unit == "B":
                return f"{int(n)} B"
            return f"{n:.3g} {unit}" if n < 100 else f"{n:.0f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def format_count(n: int) -> str:
    """Parameter counts the way model cards write them: ``8.03B``, ``137M``."""
    for div, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div:
            v = n / div
            return f"{v:.3g}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return str(n)


def format_seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
