"""modelimage.units: reading sizes and rates people type, printing sizes, rates and counts."""

from __future__ import annotations

import math

import pytest

from modelimage.errors import ConfigError, ModelImageError
from modelimage.units import format_count, format_rate, format_seconds, format_size, parse_rate, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500MB", 500_000_000),
        ("2GiB", 2 * 2**30),
        ("1.5GB", 1_500_000_000),
        ("1234", 1234),
        ("10G", 10 * 10**9),
        ("10Gi", 10 * 2**30),
        ("1B", 1),
        ("1b", 1),
        ("1kb", 1000),
        ("1K", 1000),
        ("1Ki", 1024),
        ("4KiB", 4096),
        ("3M", 3_000_000),
        ("3Mi", 3 * 2**20),
        ("2T", 2 * 10**12),
        ("1TiB", 2**40),
        ("0.5KiB", 512),
        (" 2 GiB ", 2 * 2**30),
        ("500mb", 500_000_000),
        # decimal fractions are exact, not float-rounded down
        ("8.2GB", 8_200_000_000),
        ("4.35MB", 4_350_000),
        ("1.1GB", 1_100_000_000),
        # fractions of a byte are dropped
        ("1.9", 1),
        ("1.0001KB", 1000),
        (1234, 1234),
        (10**12, 10**12),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "abc",
        "GB",
        "10XB",
        "10 G B",
        "-5MB",
        "+5MB",
        "1e9",
        "1,000",
        "1_000",
        ".5GB",
        "5.GB",
        "0x10",
        "10 GiBs",
        "10Gb/s",
    ],
)
def test_parse_size_rejects_unreadable(text: str) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        parse_size(text)


@pytest.mark.parametrize("text", ["0", "0MB", "0.0GiB", "0.0001", 0, -1, "0.4"])
def test_parse_size_rejects_zero(text: str | int) -> None:
    with pytest.raises(ConfigError, match="more than zero"):
        parse_size(text)


@pytest.mark.parametrize("value", [1.5e9, [1, 2], None, True])
def test_parse_size_rejects_non_string_values(value: object) -> None:
    # e.g. `max_layer_size = 1.5e9` in a TOML file: an error, not a TypeError
    with pytest.raises(ConfigError):
        parse_size(value)  # type: ignore[arg-type]


def test_parse_size_errors_are_one_line_and_name_the_setting() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_size("lots", what="--max-layer-size")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("--max-layer-size")
    assert "'lots'" in msg
    assert isinstance(exc.value, ModelImageError)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (999, "999 B"),
        (1000, "1 kB"),
        (1500, "1.5 kB"),
        (12_345, "12.3 kB"),
        (123_456_789, "123 MB"),
        (2_000_000_000, "2 GB"),
        (16_060_000_000, "16.1 GB"),
        (10**12, "1 TB"),
        (10**15, "1 PB"),
        (10**18, "1000 PB"),
        (1.5e9, "1.5 GB"),
    ],
)
def test_format_size(n: int, expected: str) -> None:
    assert format_size(n) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0"),
        (999, "999"),
        (1_500, "1.5K"),
        (1_705_216, "1.71M"),
        (137_000_000, "137M"),
        (8_030_261_248, "8.03B"),
        (70_553_706_496, "70.6B"),
        (405_000_000_000, "405B"),
        (10**12, "1T"),
    ],
)
def test_format_count(n: int, expected: str) -> None:
    assert format_count(n) == expected


@pytest.mark.parametrize(
    ("s", "expected"),
    [(0.0123, "12 ms"), (1.26, "1.3 s"), (90, "90.0 s"), (600, "10.0 min"), (7200, "2.0 h")],
)
def test_format_seconds(s: float, expected: str) -> None:
    assert format_seconds(s) == expected


@pytest.mark.parametrize("text", ["500MB", "2GiB", "10G", "1234"])
def test_parse_then_format_round_trip_is_close(text: str) -> None:
    n = parse_size(text)
    shown = format_size(n)
    number, unit = shown.split()
    back = parse_size(number + unit.upper())
    assert abs(back - n) / n < 0.08


# ------------------------------------------------------------------ rates

@pytest.mark.parametrize(
    ("text", "bps"),
    [
        ("100Mbit/s", 12.5e6),
        ("100 Mbit/s", 12.5e6),
        ("1Gbps", 125e6),
        ("1 Gbit/s", 125e6),
        ("10Gb/s", 1.25e9),
        ("200MB/s", 200e6),
        ("200 MBps", 200e6),
        ("1.5GiB/s", 1.5 * 2**30),
        ("512 KiB/s", 512 * 1024),
        ("5 kB/s", 5000),
        ("800 bps", 100),
        ("12 bytes/s", 12),
        ("1 Gibit/s", 2**30 / 8),
        ("2 mbps", 250e3),  # prefixes are case-blind; b vs B is not
        ("125e6", 125e6),
        ("125000000", 125e6),
        (125e6, 125e6),
        (1000, 1000),
    ],
)
def test_parse_rate(text, bps):
    assert parse_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("1G", "bits or bytes"),
        ("100M", "bits or bytes"),
        ("1GB", "size, not a rate"),
        ("1 Gbit", "size, not a rate"),
        ("fast", "cannot read"),
        ("", "cannot read"),
        ("5 /s", "cannot read"),
        ("-1MB/s", "cannot read"),
        ("0MB/s", "positive"),
        ("0", "positive"),
        (float("inf"), "positive"),
        (True, "cannot read"),
        (None, "cannot read"),
        ("1 GB/h", "cannot read"),
    ],
)
def test_parse_rate_rejects(text, hint):
    with pytest.raises(ConfigError, match=hint):
        parse_rate(text)


@pytest.mark.parametrize(("bps", "text"), [(125e6, "125 MB/s (1 Gbit/s)"), (12.5e6, "12.5 MB/s (100 Mbit/s)"),
                                           (math.inf, "unlimited")])
def test_format_rate(bps, text):
    assert format_rate(bps) == text
