"""image: resolving an index to the image of a platform (variants too)."""

from __future__ import annotations

import pytest

from modelimage import oci
from modelimage.errors import SourceError
from modelimage.image import choose_platform, is_index


def index(*platforms: str | None) -> dict:
    entries = []
    for i, p in enumerate(platforms):
        entry = {"mediaType": oci.MEDIA_TYPE_MANIFEST, "digest": f"sha256:{i:064x}", "size": 1}
        if p:
            entry["platform"] = oci.Platform.parse(p).to_json()
        entries.append(entry)
    return {"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_INDEX, "manifests": entries}


def chosen(idx: dict, platform: str | None) -> int:
    return int(choose_platform(idx, platform, "x")["digest"].split(":")[1], 16)


@pytest.mark.parametrize("platforms, asked, want", [
    (("linux/amd64", "linux/arm64/v8"), "linux/arm64", 1),
    (("linux/amd64", "linux/arm64"), "linux/arm64/v8", 1),
    (("linux/amd64", "linux/arm64"), "linux/aarch64", 1),
    (("linux/arm/v6", "linux/arm/v7"), "linux/arm", 1),
    (("linux/arm/v7", "linux/arm/v6"), "linux/arm/v6", 1),
    (("linux/amd64", "windows/amd64"), "windows/amd64", 1),
    (("unknown/unknown", "linux/amd64"), "linux/amd64", 1),
])
def test_asked_platform(platforms, asked, want):
    assert chosen(index(*platforms), asked) == want


@pytest.mark.parametrize("machine, platforms, want", [
    ("aarch64", ("linux/amd64", "linux/arm64/v8"), 1),
    ("aarch64", ("linux/amd64", "linux/arm/v6", "linux/arm/v7"), 2),  # arm64 runs arm/v7 before v6
    ("x86_64", ("linux/386", "linux/amd64"), 1),
    ("x86_64", ("linux/arm64", "linux/386"), 1),
    ("x86_64", (None,), 0),  # one entry without a platform: that one
    ("x86_64", ("linux/arm64",), 0),  # one entry: that one, as before
])
def test_host_platform(monkeypatch, machine, platforms, want):
    monkeypatch.setattr(oci._platform, "machine", lambda: machine)
    assert chosen(index(*platforms), None) == want


def test_no_match_names_what_the_index_has(monkeypatch):
    monkeypatch.setattr(oci._platform, "machine", lambda: "x86_64")
    with pytest.raises(SourceError, match=r"^x: no linux/s390x image in the index "
                                          r"\(it has: linux/amd64, linux/arm64/v8, no platform\)$"):
        choose_platform(index("linux/amd64", "linux/arm64/v8", None), "linux/s390x", "x")
    with pytest.raises(SourceError, match="no linux/amd64 image"):
        choose_platform(index("linux/arm64", "linux/ppc64le"), None, "x")


def test_is_index():
    assert is_index(index("linux/amd64"))
    assert is_index({"manifests": []}, oci.MEDIA_TYPE_DOCKER_LIST)
    assert not is_index({"layers": [], "config": {}, "manifests": []})
