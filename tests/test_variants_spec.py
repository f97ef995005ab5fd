"""Variants described in modelimage.toml and on the command line, and how
the model's files are split among them (modelimage.variants.spec)."""

from __future__ import annotations

import pytest

from modelimage.config import load_config
from modelimage.errors import ConfigError, VariantError
from modelimage.variants.spec import VariantSpec, parse_option, split_files

REPO = ["README.md", "config.json", "llama-F16.gguf", "llama-Q4_K_M.gguf", "llama-Q8_0.gguf", "tokenizer.json"]
THREE = (VariantSpec("q4_k_m", ("*Q4_K_M.gguf",)), VariantSpec("q8_0", ("*Q8_0.gguf",)),
         VariantSpec("f16", ("*F16.gguf",)))
SHARED = ["README.md", "config.json", "tokenizer.json"]


def test_toml_tables_in_file_order(tmp_path):
    (tmp_path / "modelimage.toml").write_text(
        '[models.llama]\nsource = "."\ninclude = ["*.gguf", "*.json"]\n'
        '[models.llama.variants.q8_0]\ninclude = ["*Q8_0.gguf"]\n'
        '[models.llama.variants.q4_k_m]\ninclude = "*Q4_K_M.gguf"\nexclude = ["README.md"]\n')
    entry = load_config(tmp_path / "modelimage.toml").models["llama"]
    assert entry.variants == (VariantSpec("q8_0", ("*Q8_0.gguf",)),
                              VariantSpec("q4_k_m", ("*Q4_K_M.gguf",), ("README.md",)))
    assert entry.include == ("*.gguf", "*.json")


@pytest.mark.parametrize("toml, message", [
    ('[models.m.variants.Q4]\ninclude = ["*"]', "variant name 'Q4': use lowercase"),
    ('[models.m.variants.q4]\nexclude = ["*"]', "variant q4: needs include = [GLOB, ...]"),
    ('[models.m.variants.q4]\ninclude = ["*"]\nsource = "x"', "variant q4: unknown key(s) source"),
    ('[models.m.variants.q4]\ninclude = [1]', "variant q4: include must be a glob or a list of globs"),
    ('[models.m]\nvariants = "q4"', "variants must hold [variants.NAME] tables"),
    ('[models.m]\nvariants = {}', "variants must hold [variants.NAME] tables"),
])
def test_bad_tables_one_line(tmp_path, toml, message):
    path = tmp_path / "modelimage.toml"
    path.write_text('[models.m]\nsource = "."\n' + toml.replace("[models.m]\n", "") + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("options, expected", [
    (["q4_k_m=*Q4_K_M.gguf"], (VariantSpec("q4_k_m", ("*Q4_K_M.gguf",)),)),
    (["q4=*Q4_K_M.gguf,*Q4_K_S.gguf", "f16=*F16.gguf"],
     (VariantSpec("q4", ("*Q4_K_M.gguf", "*Q4_K_S.gguf")), VariantSpec("f16", ("*F16.gguf",)))),
    (["q4=a", "f16=b", "q4=c", "q4=a"], (VariantSpec("q4", ("a", "c")), VariantSpec("f16", ("b",)))),
    ([" q8_0 = *Q8_0.gguf "], (VariantSpec("q8_0", ("*Q8_0.gguf",)),)),
])
def test_command_line_form(options, expected):
    assert parse_option(options) == expected


@pytest.mark.parametrize("option", ["q4_k_m", "q4_k_m=", "=*.gguf", "Q4=*.gguf", "q4=,"])
def test_command_line_form_errors(option):
    with pytest.raises(ConfigError, match="--variant"):
        parse_option([option])


def test_split_unclaimed_files_are_shared():
    split = split_files(REPO, THREE)
    assert split.files == {
        "q4_k_m": tuple(sorted(SHARED + ["llama-Q4_K_M.gguf"])),
        "q8_0": tuple(sorted(SHARED + ["llama-Q8_0.gguf"])),
        "f16": tuple(sorted(SHARED + ["llama-F16.gguf"])),
    }
    assert split.shared == frozenset(SHARED)
    assert split.holders("config.json") == ("q4_k_m", "q8_0", "f16")
    assert split.holders("llama-Q8_0.gguf") == ("q8_0",)


def test_split_a_file_two_variants_claim_and_a_variant_exclude():
    files = REPO + ["mmproj.gguf"]
    variants = (VariantSpec("q4", ("*Q4_K_M.gguf", "mmproj*")), VariantSpec("q8", ("*Q8_0.gguf", "mmproj*")),
                VariantSpec("f16", ("*F16.gguf",), ("README.md",)))
    split = split_files(files, variants)
    assert split.holders("mmproj.gguf") == ("q4", "q8")
    assert "README.md" not in split.files["f16"]
    assert split.shared == frozenset({"config.json", "tokenizer.json"})
    # a glob with / matches the whole path, without / the file name in any folder
    split = split_files(["a/x.gguf", "b/x.gguf", "t.json"], (VariantSpec("a", ("a/*",)), VariantSpec("b", ("b/*",))))
    assert split.files == {"a": ("a/x.gguf", "t.json"), "b": ("b/x.gguf", "t.json")}


@pytest.mark.parametrize("variants, message", [
    ((VariantSpec("q4", ("*Q4_K_M.gguf",)), VariantSpec("q2", ("*Q2_K.gguf",))),
     "variant q2: include *Q2_K.gguf matches none of its 6 files"),
    ((VariantSpec("q4", ("*Q4_K_M.gguf",)), VariantSpec("q4", ("*Q8_0.gguf",))), "variant q4 is described twice"),
    ((VariantSpec("a", ("*Q4_K_M.gguf",)), VariantSpec("b", ("*Q4_K_M.gguf",))),
     "variants a and b hold the same files"),
])
def test_split_errors(variants, message):
    with pytest.raises(VariantError) as e:
        split_files(REPO, variants, "llama")
    assert str(e.value).startswith("llama: " + message)


def test_weight_files_no_variant_claims_are_left_out_not_shared():
    split = split_files(REPO + ["sub/llama-Q2_K.gguf"], THREE[:2])
    assert split.left_out == ("llama-F16.gguf", "sub/llama-Q2_K.gguf")
    assert split.files["q4_k_m"] == tuple(sorted(SHARED + ["llama-Q4_K_M.gguf"]))
    assert split.shared == frozenset(SHARED)


def test_the_example_entry_downloads_three_quantizations_and_splits_them():
    """examples/modelimage.toml's llama-8b: huggingface_hub downloads what the
    entry's include names, and each variant holds its GGUF plus the README."""
    from pathlib import Path

    from huggingface_hub.utils import filter_repo_objects

    from modelimage.sources import hf

    entry = load_config(Path(__file__).resolve().parent.parent / "examples" / "modelimage.toml").models["llama-8b"]
    repo = ["README.md", "Meta-Llama-3.1-8B-Instruct.imatrix", *(
        f"Meta-Llama-3.1-8B-Instruct-{q}.gguf" for q in ("Q4_K_M", "Q4_K_L", "Q6_K", "Q6_K_L", "Q8_0", "f32"))]
    downloaded = sorted(filter_repo_objects(repo, allow_patterns=hf.patterns(entry.include)))
    split = split_files(downloaded, entry.variants)
    assert [v.name for v in entry.variants] == ["q4_k_m", "q6_k", "q8_0"]
    assert split.files == {q.lower(): ("Meta-Llama-3.1-8B-Instruct-" + q + ".gguf", "README.md")
                           for q in ("Q4_K_M", "Q6_K", "Q8_0")}
    assert split.shared == {"README.md"} and split.left_out == ()
