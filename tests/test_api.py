"""The Python API: ``modelimage.inspect/plan/build/push/pull/verify/estimate``
(modelimage/api.py, exported lazily by the package root)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import modelimage
from modelimage import synth
from modelimage.errors import ConfigError, ModelImageError

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_snippet() -> str:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).parts[0].startswith(".modelimage-pull")}  # the puller's own


def test_the_readme_snippet_runs(tmp_path, monkeypatch, capsys):
    """The README's "Python API" block, run as it is, in a folder holding ./llama."""
    synth.write_llama_safetensors(tmp_path / "llama", shards=2, seed=0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    exec(compile(_readme_snippet(), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    digest = out[2]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    index = json.loads((tmp_path / "out" / "llama" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    assert _tree(tmp_path / "copy") == _tree(tmp_path / "llama")  # every file back, byte for byte
    assert float(out[-1]) > 0


def test_import_modelimage_imports_nothing_else():
    code = "import sys, modelimage; print(sorted(m for m in sys.modules if m.startswith('modelimage')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['modelimage']"


def test_api_names_are_callable_whether_or_not_their_modules_were_imported(llama_dir, tmp_path):
    import inspect as pyinspect

    import modelimage.build
    import modelimage.estimate
    import modelimage.inspect
    import modelimage.plan
    import modelimage.pull

    for name in ("inspect", "plan", "build", "estimate", "pull", "push", "verify"):
        fn = getattr(modelimage, name)
        assert callable(fn), name
        assert "source" in str(pyinspect.signature(fn)) or "ref" in str(pyinspect.signature(fn)) \
            or "layout" in str(pyinspect.signature(fn)), name
    assert modelimage.build.build_image  # still the module, too
    assert modelimage.estimate.LayerSpec
    info = modelimage.inspect(llama_dir)
    assert info.format == "safetensors" and info.parameters > 0
    from modelimage import estimate as est

    assert est.LayerSpec is modelimage.estimate.LayerSpec


def test_build_writes_the_layout_and_returns_what_the_cli_prints(llama_dir, tmp_path):
    built = modelimage.build(llama_dir, f"oci:{tmp_path / 'out'}:v1", max_layer_size=10 * 10**6)
    assert built.digest.startswith("sha256:") and built.tag is None
    assert built.reference == f"oci:{tmp_path / 'out'}:v1"
    assert built.to_json()["digest"] == built.digest
    assert all(layer.descriptor.size <= 10 * 10**6 for layer in built.result.layers)


def test_build_refuses_an_output_and_a_push_at_once(llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        modelimage.build(llama_dir, f"oci:{tmp_path}/x", push="localhost:1/x:v1")
    assert not (tmp_path / "x").exists()


def test_warnings_reach_the_caller_before_the_build(llama_dir, tmp_path):
    seen = []
    built = modelimage.build(llama_dir, f"oci:{tmp_path / 'o'}", on_warning=seen.append)
    assert built.warnings == tuple(seen)


def test_plan_is_pure_and_says_why_it_refuses(llama_dir):
    planned = modelimage.plan(llama_dir, max_layer_size=10 * 10**6)
    assert planned.to_json()["layers"]
    assert planned.plan.total_size == sum(layer.size for layer in planned.plan.layers)
    with pytest.raises(ModelImageError, match="cannot be split; layers are limited to 1 kB"):
        modelimage.plan(llama_dir, max_layer_size=1000)


def test_estimate_of_a_model_and_of_its_layout_agree(llama_dir, tmp_path):
    modelimage.build(llama_dir, f"oci:{tmp_path / 'o'}:v1")
    planned = modelimage.estimate(llama_dir, bandwidth=125e6)
    built = modelimage.estimate(f"oci:{tmp_path / 'o'}:v1", bandwidth=125e6)
    assert [s.size for s in planned.layers] == [s.size for s in built.layers]
    assert planned.first.total_seconds == built.first.total_seconds
    assert built.to_json()["link"] == "given"


def test_pull_and_verify_report_differences(llama_dir, tmp_path):
    ref = f"oci:{tmp_path / 'o'}:v1"
    modelimage.build(llama_dir, ref)
    dest = tmp_path / "dest"
    pulled = modelimage.pull(ref, dest)
    assert pulled.bytes == sum(f.size for f in modelimage.inspect(llama_dir).files)
    (dest / "config.json").write_text("{}")
    result = modelimage.verify(ref, dest)
    assert not result.ok and list(result.changed) == ["config.json"]


def test_the_readme_registry_calls_round_trip(llama_dir, registry, tmp_path):
    """The README's "With a registry" line: build(push=), push of a layout
    and pull from the registry give the same manifest and the same files."""
    pushed_ref = f"{registry.host}/api/llama:v1"
    built = modelimage.build(llama_dir, push=pushed_ref)
    assert built.tag == pushed_ref and built.reference == f"{registry.host}/api/llama@{built.digest}"
    layout = f"oci:{tmp_path / 'out' / 'llama'}:v1"
    assert modelimage.build(llama_dir, layout).digest == built.digest  # the same files, the same manifest
    again = modelimage.push(layout, f"{registry.host}/api/copy:v1")
    assert (again.digest, again.tag) == (built.digest, f"{registry.host}/api/copy:v1")
    assert {b["action"] for b in again.layers} <= {"mounted", "exists"}  # the registry had every layer
    pulled = modelimage.pull(f"{registry.host}/api/copy:v1", tmp_path / "dest")
    assert pulled.bytes == sum(f.size for f in modelimage.inspect(llama_dir).files)
    assert _tree(tmp_path / "dest") == _tree(llama_dir)
    assert modelimage.verify(f"{registry.host}/api/copy:v1", tmp_path / "dest").ok
