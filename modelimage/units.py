"""Byte sizes, transfer rates and durations for people: parsing ``500MB``,
``2GiB``, ``1Gbit/s``, ``200MB/s``, and printing them."""

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


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 layer``, ``3 layers``, ``0 files`` (``nouns``: an irregular plural)."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def format_seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


_RATE_RE = re.compile(
    r"""^\s*(?P<num>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*
        (?:(?P<prefix>[kKmMgGtT])(?P<binary>i?))?
        (?P<base>bits?|Bits?|BITS?|b|B|bytes?|Bytes?|BYTES?)?
        \s*(?P<per>/\s*s(?:ec)?|ps)?\s*$""",
    re.VERBOSE,
)
_PREFIX = {"k": 3, "m": 6, "g": 9, "t": 12}
_EXAMPLES = "examples: 100Mbit/s, 1Gbps, 200MB/s, 1.5GiB/s, 125000000 (bytes/s)"


def parse_rate(text: str | int | float, *, what: str = "rate") -> float:
    """A transfer rate in bytes per second.

    ``b``/``bit`` means bits and ``B``/``byte`` bytes, as links are sold
    (unlike :func:`parse_size`, where ``b`` is a byte);
    ``k M G T`` are powers of 1000 whatever their case, ``Ki Mi Gi Ti`` of
    1024; ``/s`` or ``ps`` is required after a unit, so a size is not taken
    for a rate. A bare number is bytes per second. ``"1Gbps"`` -> 1.25e8,
    ``"200MB/s"`` -> 2e8, ``"1.5GiB/s"`` -> 1610612736.0.
    """
    if isinstance(text, bool) or not isinstance(text, int | float | str):
        raise ConfigError(f"{what}: cannot read {text!r} as a rate ({_EXAMPLES})")
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _RATE_RE.match(text)
        if not m:
            raise ConfigError(f"{what}: cannot read {text!r} as a rate ({_EXAMPLES})")
        prefix, base, per = m.group("prefix"), m.group("base"), m.group("per")
        if (prefix or base) and not base:
            raise ConfigError(f"{what}: {text!r} does not say bits or bytes; write e.g. "
                              f"{m.group('num')}{prefix}{m.group('binary')}bit/s or {m.group('num')}{prefix}"
                              f"{m.group('binary')}B/s")
        if base and not per:
            raise ConfigError(f"{what}: {text!r} is a size, not a rate; write {text.strip()}/s")
        if per and not base:
            raise ConfigError(f"{what}: cannot read {text!r} as a rate ({_EXAMPLES})")
        value = float(m.group("num"))
        if prefix:
            value *= 1024 ** " kmgt".index(prefix.lower()) if m.group("binary") else 10 ** _PREFIX[prefix.lower()]
        if base == "b" or (base and base.lower().startswith("bit")):
            value /= 8
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what}: {text!r} must be a positive rate")
    return value


def format_rate(bps: float) -> str:
    """Bytes per second for people, with the bit rate links are sold in:
    ``125 MB/s (1 Gbit/s)``."""
    if math.isinf(bps):
        return "unlimited"
    bits = bps * 8
    for div, unit in ((1e12, "Tbit/s"), (1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
        if bits >= div:
            return f"{format_size(bps)}/s ({bits / div:.3g} {unit})"
    return f"{format_size(bps)}/s ({bits:.0f} bit/s)"
