"""oci: platforms (parse, normalise, match, host) and descriptors, table-driven.

The normalisation table is containerd's (platforms/database.go
normalizeArch); the fallback order is containerd's platforms.Only."""

from __future__ import annotations

import pytest

from modelimage import oci
from modelimage.errors import ConfigError
from modelimage.oci import Descriptor, Index, Platform, select_platform


@pytest.mark.parametrize("text, normal", [
    ("linux/amd64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/x86-64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v3", "linux/amd64/v3"),
    ("linux/i386", "linux/386"),
    ("linux/arm64", "linux/arm64"),
    ("linux/arm64/v8", "linux/arm64"),
    ("linux/aarch64", "linux/arm64"),
    ("linux/aarch64/8", "linux/arm64"),
    ("linux/arm64/v9.0", "linux/arm64/v9"),
    ("linux/arm64/v8.2", "linux/arm64/v8.2"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/arm/7", "linux/arm/v7"),
    ("linux/arm/6", "linux/arm/v6"),
    ("linux/armhf", "linux/arm/v7"),
    ("linux/armel", "linux/arm/v6"),
    ("Linux/AMD64", "linux/amd64"),
    ("macos/arm64", "darwin/arm64"),
    ("windows(10.0.17763)/amd64", "windows(10.0.17763)/amd64"),
    ("linux/s390x", "linux/s390x"),
])
def test_normalised(text: str, normal: str) -> None:
    assert str(Platform.parse(text).normalized()) == normal


@pytest.mark.parametrize("text", ["amd64", "linux/", "/amd64", "linux/amd64/v8/x", "", "linux amd64"])
def test_bad_platform_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="expected OS/ARCH"):
        Platform.parse(text)


@pytest.mark.parametrize("have, want, ok", [
    ("linux/arm64/v8", "linux/arm64", True),
    ("linux/arm64", "linux/arm64/v8", True),
    ("linux/arm64/v8", "linux/aarch64", True),
    ("linux/arm/v7", "linux/arm", True),
    ("linux/arm/v6", "linux/arm", False),
    ("linux/amd64", "linux/arm64", False),
    ("windows/amd64", "linux/amd64", False),
    ("linux/amd64/v2", "linux/amd64", False),
])
def test_satisfies(have: str, want: str, ok: bool) -> None:
    assert Platform.parse(have).satisfies(Platform.parse(want)) is ok


def test_satisfies_checks_os_version_and_features_only_when_asked() -> None:
    win = Platform("windows", "amd64", os_version="10.0.17763.1", os_features=("win32k",))
    assert win.satisfies(Platform("windows", "amd64"))
    assert win.satisfies(Platform("windows", "amd64", os_version="10.0.17763.1", os_features=("win32k",)))
    assert not win.satisfies(Platform("windows", "amd64", os_version="10.0.20348.1"))
    assert not Platform("windows", "amd64").satisfies(Platform("windows", "amd64", os_features=("win32k",)))


@pytest.mark.parametrize("host, order", [
    ("linux/arm64", ["linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
    ("linux/arm/v7", ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
    ("linux/amd64", ["linux/amd64", "linux/386"]),
    ("linux/amd64/v3", ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"]),
    ("linux/riscv64", ["linux/riscv64"]),
])
def test_fallbacks_follow_containerd_only(host: str, order: list[str]) -> None:
    assert [str(p) for p in Platform.parse(host).fallbacks()] == order


def test_select_prefers_an_exact_match_then_the_best_fallback() -> None:
    found = [Platform.parse("linux/arm/v6"), None, Platform.parse("linux/arm/v7"), Platform.parse("linux/amd64")]
    assert select_platform(found, Platform.parse("linux/arm64")) == 2
    assert select_platform(found, Platform.parse("linux/arm64"), compatible=False) is None
    assert select_platform(found, Platform.parse("linux/amd64")) == 3
    assert select_platform(found, Platform.parse("linux/s390x")) is None


@pytest.mark.parametrize("machine, host", [
    ("x86_64", "linux/amd64"), ("AMD64", "linux/amd64"), ("aarch64", "linux/arm64"), ("arm64", "linux/arm64"),
    ("armv7l", "linux/arm/v7"), ("armv6l", "linux/arm/v6"), ("i686", "linux/386"), ("ppc64le", "linux/ppc64le"),
])
def test_host(monkeypatch: pytest.MonkeyPatch, machine: str, host: str) -> None:
    monkeypatch.setattr(oci._platform, "machine", lambda: machine)
    assert str(Platform.host()) == host


def test_platform_json_round_trip() -> None:
    d = {"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1", "os.features": ["win32k"]}
    assert Platform.from_json(d).to_json() == d
    assert Platform.from_json({"os": "linux", "architecture": "arm64", "variant": "v8"}).to_json() == {
        "os": "linux", "architecture": "arm64", "variant": "v8"}


def test_descriptor_keeps_platform_and_urls() -> None:
    d = {"mediaType": oci.MEDIA_TYPE_DOCKER_LAYER_FOREIGN, "digest": "sha256:" + "a" * 64, "size": 3,
         "urls": ["https://example.com/layer"], "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}
    desc = Descriptor.from_json(d)
    assert desc.platform == Platform("linux", "arm64", "v8")
    assert desc.urls == ("https://example.com/layer",)
    assert desc.to_json() == d
    assert Index.from_json({"manifests": [d]}).manifests == (desc,)


def test_index_descriptor_kinds() -> None:
    zero = "sha256:" + "0" * 64
    assert Descriptor(oci.MEDIA_TYPE_INDEX, zero, 1).is_index
    assert Descriptor(oci.MEDIA_TYPE_DOCKER_LIST, zero, 1).is_index
    assert not Descriptor(oci.MEDIA_TYPE_MANIFEST, zero, 1).is_index


def test_docker_types_have_oci_names() -> None:
    assert oci.DOCKER_TO_OCI[oci.MEDIA_TYPE_DOCKER_LAYER_GZIP] == oci.MEDIA_TYPE_LAYER_GZIP
    assert oci.DOCKER_TO_OCI[oci.MEDIA_TYPE_DOCKER_CONFIG] == oci.MEDIA_TYPE_CONFIG
