"""``hf://ORG/REPO[@REVISION]``: a Hugging Face model repository, through
huggingface_hub and its cache.

:func:`open_repo` calls ``snapshot_download`` with the include/exclude globs
as allow/ignore patterns, so a repository with every quantization downloads
only the one file asked for. huggingface_hub's own settings apply:
``HF_TOKEN`` (private and gated repositories), ``HF_ENDPOINT`` (a mirror),
``HF_HUB_CACHE``/``HF_HOME`` (where the cache is), ``HF_HUB_OFFLINE=1`` (use
the cache only). The result is the cache's snapshot folder of the commit the
revision resolved to (``.../models--ORG--REPO/snapshots/SHA``); its files
are symlinks into the cache's blobs, which inspect follows. The commit sha
goes into the image's labels, so the image says which upstream revision it
holds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import SourceError
from ..inspect import safe_name
from .opened import LABEL_REVISION, LABEL_SOURCE, OCI_REVISION, OCI_SOURCE, OpenedSource

_REPO_RE = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def parse_url(url: str) -> tuple[str, str | None]:
    """``("org/repo", "rev" or None)`` for ``hf://org/repo[@rev]``."""
    if not url.startswith("hf://"):
        raise SourceError(f"{url}: not an hf:// URL")
    repo, _, revision = url[len("hf://"):].rstrip("/").partition("@")
    if not _REPO_RE.match(repo) or "--" in repo or ".." in repo:
        raise SourceError(f"{url}: expected hf://ORG/REPO or hf://ORG/REPO@REVISION")
    return repo, revision or None


def patterns(globs: Sequence[str]) -> list[str]:
    """modelimage globs as huggingface_hub patterns. huggingface_hub matches
    the whole path with fnmatch (where ``*`` crosses ``/``); a modelimage
    glob without ``/`` matches the file name anywhere, so it also becomes
    ``*/GLOB``."""
    out: list[str] = []
    for g in globs:
        out += [g] if "/" in g else [g, f"*/{g}"]
    return out


def open_repo(url: str, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> OpenedSource:
    """Download (or find in the cache) the selected files of ``url``;
    return the snapshot folder and the labels naming repo and commit."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hf_errors

    repo, revision = parse_url(url)
    try:
        folder = Path(snapshot_download(
            repo, revision=revision,
            allow_patterns=patterns(include) or None, ignore_patterns=patterns(exclude) or None,
        ))
    except hf_errors.RevisionNotFoundError:
        raise SourceError(f"{url}: {repo} has no revision {revision!r}") from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError) as e:
        raise SourceError(f"{url}: {_first_line(e)}; check the name, or set HF_TOKEN for a private or gated "
                          "repository") from None
    except hf_errors.LocalEntryNotFoundError as e:
        raise SourceError(
            f"{url}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub "
            f"({constants.ENDPOINT}) cannot be used: {_first_line(e)}; run once online (without HF_HUB_OFFLINE=1), "
            "or point HF_HUB_CACHE at a cache that has it") from None
    except (hf_errors.HfHubHTTPError, OSError, ValueError) as e:
        raise SourceError(f"{url}: {type(e).__name__}: {_first_line(e)}") from None
    sha = folder.name
    if not _SHA_RE.match(sha):
        raise SourceError(f"{url}: huggingface_hub returned {folder}, not a snapshot folder of a commit")
    if revision and _SHA_RE.match(revision) and revision != sha:
        raise SourceError(f"{url}: asked for commit {revision}, the cache gave {sha}")
    labels = {
        LABEL_SOURCE: f"hf://{repo}",
        LABEL_REVISION: sha,
        OCI_SOURCE: f"{constants.ENDPOINT.rstrip('/')}/{repo}",
        OCI_REVISION: sha,
    }
    return OpenedSource(folder, name=safe_name(repo.rsplit("/", 1)[-1]), labels=labels, revision=sha)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
