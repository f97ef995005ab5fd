"""SLSA v1 provenance statements: pure, table-checked."""

from __future__ import annotations

from modelimage.signing.provenance import BuildFacts, SourceFile, github_invocation

DIGEST = "sha256:" + "a" * 64


def test_hf_source_is_pinned_to_its_commit_and_listed_as_a_git_dependency():
    facts = BuildFacts("hf://org/repo@main", "0.1.0", {"maxLayerSize": 10_000_000_000, "include": ("*.gguf",),
                                                      "compression": "none", "base": None},
                       [SourceFile("model.gguf", "sha256:" + "b" * 64)], revision="c" * 40, epoch=5)
    s = facts.statement("ghcr.io/acme/llama", DIGEST)
    assert s["_type"] == "https://in-toto.io/Statement/v1"
    assert s["subject"] == [{"name": "ghcr.io/acme/llama", "digest": {"sha256": "a" * 64}}]
    assert s["predicateType"] == "https://slsa.dev/provenance/v1"
    build = s["predicate"]["buildDefinition"]
    assert build["externalParameters"] == {"source": "hf://org/repo@" + "c" * 40, "maxLayerSize": "10000000000",
                                           "include": ["*.gguf"], "compression": "none"}
    assert build["internalParameters"] == {"sourceDateEpoch": "5"}
    assert build["resolvedDependencies"] == [
        {"uri": "git+https://huggingface.co/org/repo", "digest": {"gitCommit": "c" * 40}},
        {"name": "model.gguf", "digest": {"sha256": "b" * 64}},
    ]
    assert s["predicate"]["runDetails"]["builder"]["version"] == {"modelimage": "0.1.0"}


def test_s3_objects_carry_uri_and_etag_and_local_folders_stay_as_given():
    facts = BuildFacts("s3://bucket/models/x", "0.1.0",
                       files=[SourceFile("w.safetensors", DIGEST, "s3://bucket/models/x/w.safetensors", '"e-1"')])
    build = facts.statement("h/r", DIGEST)["predicate"]["buildDefinition"]
    assert build["externalParameters"] == {"source": "s3://bucket/models/x"}
    assert build["resolvedDependencies"] == [{"name": "w.safetensors", "digest": {"sha256": "a" * 64},
                                              "uri": "s3://bucket/models/x/w.safetensors",
                                              "annotations": {"etag": '"e-1"'}}]
    assert BuildFacts("/srv/models/llama", "0.1.0").pinned_source == "/srv/models/llama"


def test_github_invocation():
    assert github_invocation({}) is None
    env = {"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "7", "GITHUB_RUN_ATTEMPT": "2", "GITHUB_REPOSITORY": "o/r",
           "GITHUB_SERVER_URL": "https://github.com"}
    assert github_invocation(env) == "https://github.com/o/r/actions/runs/7/attempts/2"
