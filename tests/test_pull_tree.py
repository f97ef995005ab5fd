"""`modelimage verify` (modelimage.pull.tree): missing, changed and extra files."""

from __future__ import annotations

import json

import pytest

from modelimage.cli import main
from modelimage.pull import pull

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- verify


def test_verify_finds_changed_missing_and_extra(pushed_llama, tmp_path, capsys):
    ref, files, _ = pushed_llama
    dest = tmp_path / "dest"
    pull(ref, dest)
    shard = sorted(p for p in files if p.endswith(".safetensors"))[0]
    with open(dest / shard, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    (dest / "config.json").unlink()
    (dest / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["verify", ref, str(dest)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == ["missing config.json", f"changed {shard}", "extra notes.txt"]
    assert err.startswith("error: ") and "1 missing, 1 changed, 1 extra" in err
    assert main(["verify", ref, str(dest), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["missing"], report["changed"], report["extra"], report["ok"]) == (
        ["config.json"], [shard], ["notes.txt"], False)
    # a pull repairs it: the state notices the changed shard and the missing file
    pull(ref, dest)
    (dest / "notes.txt").unlink()
    assert main(["verify", ref, str(dest)]) == 0
