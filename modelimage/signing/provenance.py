"""SLSA v1 build provenance for an image modelimage built: pure, no I/O.

An in-toto v1 statement (``https://in-toto.io/Statement/v1``) whose
subject is the image (``HOST/REPO`` and its manifest digest) and whose
predicate is SLSA provenance v1 (``https://slsa.dev/provenance/v1``,
slsa.dev/spec/v1.0/provenance):

* ``buildDefinition.buildType``: :data:`BUILD_TYPE`;
* ``externalParameters``: what the user asked for: ``source`` (a folder,
  ``hf://ORG/REPO@SHA`` or ``s3://BUCKET/PREFIX``), include/exclude globs,
  target, layer size limit, compression, platform, format, base image;
* ``internalParameters``: ``sourceDateEpoch``;
* ``resolvedDependencies``: the source itself (a Hugging Face repository as
  ``git+https://huggingface.co/ORG/REPO`` with ``digest.gitCommit``), then
  every file that went into the image with its sha256 as recorded while
  the layers were written (for an ``s3://`` object, its URI and ETag too);
  files resharded on the way list the shard's digest under the shard's name;
* ``runDetails.builder``: modelimage and its version; in GitHub Actions the
  run's URL is the ``invocationId``.

Numbers that can exceed JSON's safe integers (byte sizes) are strings: the
signer's protobuf encoding would turn them into floats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .referrer import SLSA_PREDICATE_TYPE

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
BUILD_TYPE = "https://github.com/modelimage/modelimage/blob/main/docs/signing.md#provenance-v1"
BUILDER_ID = "https://github.com/modelimage/modelimage"


@dataclass(frozen=True)
class SourceFile:
    """A file that went into the image: ``path`` in the model, ``sha256``
    as recorded (``sha256:HEX``), and for object-storage sources its
    ``uri`` and ``etag``."""

    path: str
    sha256: str
    uri: str | None = None
    etag: str | None = None


@dataclass(frozen=True)
class BuildFacts:
    """What a build knew: the source as given and as resolved, the settings,
    the files, and where it ran."""

    source: str  # folder path, hf://ORG/REPO[@REV], s3://BUCKET/PREFIX
    version: str  # modelimage's
    parameters: Mapping[str, Any] = field(default_factory=dict)  # plan and image settings, JSON-able
    files: Sequence[SourceFile] = ()
    revision: str | None = None  # the commit an hf:// revision resolved to
    epoch: int = 0
    invocation: str | None = None  # CI run URL

    def statement(self, name: str, digest: str) -> dict[str, Any]:
        """The in-toto statement for the image ``name`` (``HOST/REPO``)
        whose manifest digest is ``digest`` (``sha256:HEX``)."""
        algorithm, _, hexdigest = digest.partition(":")
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": name, "digest": {algorithm: hexdigest}}],
            "predicateType": SLSA_PREDICATE_TYPE,
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "externalParameters": {"source": self.pinned_source, **_strings(self.parameters)},
                    "internalParameters": {"sourceDateEpoch": str(self.epoch)},
                    "resolvedDependencies": self._dependencies(),
                },
                "runDetails": {
                    "builder": {"id": BUILDER_ID, "version": {"modelimage": self.version}},
                    "metadata": {"invocationId": self.invocation} if self.invocation else {},
                },
            },
        }

    @property
    def pinned_source(self) -> str:
        """``hf://ORG/REPO@SHA`` for a Hugging Face source (the resolved
        commit, whatever revision was asked for), else the source as given."""
        if self.source.startswith("hf://") and self.revision:
            return self.source.split("@", 1)[0] + "@" + self.revision
        return self.source

    def _dependencies(self) -> list[dict[str, Any]]:
        deps: list[dict[str, Any]] = []
        if self.source.startswith("hf://") and self.revision:
            repo = self.source[len("hf://"):].split("@", 1)[0].rstrip("/")
            deps.append({"uri": f"git+https://huggingface.co/{repo}", "digest": {"gitCommit": self.revision}})
        for f in self.files:
            algorithm, _, hexdigest = f.sha256.partition(":")
            dep: dict[str, Any] = {"name": f.path, "digest": {algorithm: hexdigest}}
            if f.uri:
                dep["uri"] = f.uri
            if f.etag:
                dep["annotations"] = {"etag": f.etag}
            deps.append(dep)
        return deps


def _strings(params: Mapping[str, Any]) -> dict[str, Any]:
    """Ints as strings (exact through protobuf), lists/tuples as lists, None dropped."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if v is None:
            continue
        if isinstance(v, bool) or isinstance(v, str):
            out[k] = v
        elif isinstance(v, int):
            out[k] = str(v)
        elif isinstance(v, (list, tuple)):
            out[k] = [str(x) for x in v]
        else:
            out[k] = str(v)
    return out


def github_invocation(env: Mapping[str, str]) -> str | None:
    """The GitHub Actions run URL (``$GITHUB_SERVER_URL/$GITHUB_REPOSITORY/
    actions/runs/$GITHUB_RUN_ID/attempts/$GITHUB_RUN_ATTEMPT``), or None
    outside Actions."""
    if env.get("GITHUB_ACTIONS") != "true" or not env.get("GITHUB_RUN_ID"):
        return None
    server = env.get("GITHUB_SERVER_URL", "https://github.com")
    return (f"{server}/{env.get('GITHUB_REPOSITORY', '')}/actions/runs/{env['GITHUB_RUN_ID']}"
            f"/attempts/{env.get('GITHUB_RUN_ATTEMPT', '1')}")
