"""What pull and verify return (modelimage.pull.result): their JSON shapes."""

from __future__ import annotations

from modelimage.pull import PulledFile, PullResult, VerifyResult


def test_pull_result_json():
    r = PullResult("oci:x:v1", "sha256:" + "1" * 64, "/d", (PulledFile("a", 3, "sha256:aa"), PulledFile("b", 4, None)),
                   bytes_fetched=10, seconds=1.23456, layers_fetched=2, layers_skipped=1, warnings=("w",))
    assert r.bytes == 7
    assert r.to_json() == {"source": "oci:x:v1", "digest": "sha256:" + "1" * 64, "dest": "/d",
                           "files": [{"path": "a", "size": 3, "sha256": "sha256:aa"},
                                     {"path": "b", "size": 4, "sha256": None}],
                           "bytes": 7, "bytes_fetched": 10, "seconds": 1.235, "layers_fetched": 2,
                           "layers_skipped": 1, "warnings": ["w"], "served_by": None, "mirror_of": None}


def test_verify_result_json():
    ok = VerifyResult("s", "d", "/x", 2, (), (), ())
    bad = VerifyResult("s", "d", "/x", 2, ("m",), ("e",), ("c",))
    assert ok.ok and not bad.ok
    assert bad.to_json() == {"source": "s", "digest": "d", "dest": "/x", "ok": False, "checked": 2,
                             "missing": ["m"], "extra": ["e"], "changed": ["c"]}
