"""``hf://ORG/REPO[@REVISION]``: a Hugging Face model repository.

:func:`open_repo` resolves the revision to one commit and lists that
commit's files through the Hub's API (:mod:`.hubapi`, with huggingface_hub's
endpoint and token rules and, for a failure, its errors; the include/exclude globs applied
as for a folder, so a repository with every quantization yields only the
one file asked for). The files then stream from the Hub into the layers
while they upload (:mod:`.hub`): nothing is staged on disk. The Hugging
Face cache is used instead when it already holds every selected file of
that commit (the same bytes, so the same image), when ``download`` is
asked (a Dockerfile's build context), and always with
``HF_HUB_OFFLINE=1`` (its snapshot folder, ``.../models--ORG--REPO/
snapshots/SHA``, whose symlinks into the cache's blobs inspect follows).
huggingface_hub's own settings apply: ``HF_TOKEN`` or the token of ``hf
auth login`` (private and gated repositories), ``HF_ENDPOINT`` (a mirror),
``HF_HUB_CACHE``/``HF_HOME``, ``HF_HUB_OFFLINE``. The commit sha goes into
the image's labels, so the image says which upstream revision it holds.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from ..errors import SourceError
from ..inspect import safe_name
from .hubapi import parse_url
from .opened import LABEL_REVISION, LABEL_SOURCE, OCI_REVISION, OCI_SOURCE, OpenedSource

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def patterns(globs: Sequence[str]) -> list[str]:
    """modelimage globs as huggingface_hub patterns. huggingface_hub matches
    the whole path with fnmatch (where ``*`` crosses ``/``); a modelimage
    glob without ``/`` matches the file name anywhere, so it also becomes
    ``*/GLOB``."""
    out: list[str] = []
    for g in globs:
        out += [g] if "/" in g else [g, f"*/{g}"]
    return out


def open_repo(url: str, include: Sequence[str] = (), exclude: Sequence[str] = (), *,
              download: bool = False) -> OpenedSource:
    """The selected files of ``url`` at the one commit its revision names
    now, and the labels naming repo and commit.

    Online, the revision is resolved and the commit listed through the
    Hub's API (:mod:`.hubapi`; a ``build hf://`` has usually asked both
    while it loaded); the files then stay on the Hub and stream from it
    while the layers are written (:class:`.hub.HubRepo`), unless the
    Hugging Face cache already holds every one of them at that commit (its
    snapshot folder is used: the same bytes, so the same image) or
    ``download`` is asked (a build context for a Dockerfile: the files are
    downloaded into the cache by ``snapshot_download``). With
    ``HF_HUB_OFFLINE=1`` the cache is all there is."""
    from huggingface_hub import constants

    repo, revision = parse_url(url)
    endpoint = constants.ENDPOINT.rstrip("/")
    with _hub_errors(url, repo, revision):
        if constants.HF_HUB_OFFLINE:
            return _opened(url, repo, revision, _snapshot(repo, revision, include, exclude), endpoint)
        from .hub import HubRepo, resolve_commit

        sha = resolve_commit(repo, revision, endpoint)
        if revision and _SHA_RE.match(revision) and revision != sha:
            raise SourceError(f"{url}: asked for commit {revision}, the Hub gave {sha}")
        remote = HubRepo(repo, sha, endpoint)
        files = remote.list_files(include, exclude)
        cached = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots" / sha
        if all((cached / f.name).is_file() for f in files):  # the cache has the commit's bytes: no transfer
            return _opened(url, repo, sha, cached, endpoint)
        if download:  # by the revision's name, so that the cache learns it (HF_HUB_OFFLINE=1 builds find it)
            folder = _snapshot(repo, revision, include, exclude)
            if folder.name != sha:
                raise SourceError(f"{url}: {revision or 'main'} moved from {sha} to {folder.name} while it was "
                                  "read; run again")
            return _opened(url, repo, sha, folder, endpoint)
        return _opened(url, repo, sha, _Listed(remote, files), endpoint)


class _Listed:
    """A :class:`.hub.HubRepo` whose listing (already made, to decide
    between cache and Hub) is handed to inspect as it is."""

    def __init__(self, remote: Any, files: list[Any]):
        self.remote, self.files, self.name = remote, files, remote.name

    def __str__(self) -> str:
        return str(self.remote)

    def list_files(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[Any]:
        from .files import selected

        return [f for f in self.files if selected(f.name, include, exclude)]


def _snapshot(repo: str, revision: str | None, include: Sequence[str], exclude: Sequence[str]) -> Path:
    """The cache's snapshot folder of the selected files (downloaded when missing)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns(include) or None,
                                  ignore_patterns=patterns(exclude) or None))


def _opened(url: str, repo: str, revision: str | None, location: Any, endpoint: str) -> OpenedSource:
    """The opened source, labelled with the commit its files are of."""
    sha = location.name if isinstance(location, Path) else location.remote.commit
    if not _SHA_RE.match(sha):
        raise SourceError(f"{url}: huggingface_hub returned {location}, not a snapshot folder of a commit")
    if revision and _SHA_RE.match(revision) and revision != sha:
        raise SourceError(f"{url}: asked for commit {revision}, the cache gave {sha}")
    labels = {
        LABEL_SOURCE: f"hf://{repo}",
        LABEL_REVISION: sha,
        OCI_SOURCE: f"{public_endpoint(endpoint)}/{repo}",
        OCI_REVISION: sha,
    }
    return OpenedSource(location, name=safe_name(repo.rsplit("/", 1)[-1]), labels=labels, revision=sha)


@contextmanager
def _hub_errors(url: str, repo: str, revision: str | None) -> Iterator[None]:
    """huggingface_hub's errors (and httpx's: the Hub not reached) as
    one-line :class:`SourceError` s that say the fix. huggingface_hub's
    error classes are imported only once something failed (their module
    brings its whole HTTP stack)."""
    try:
        yield
    except SourceError:
        raise
    except Exception as e:
        mapped = _hub_error(e, url, repo, revision)
        if mapped is None:
            raise
        raise mapped from None


def _hub_error(e: Exception, url: str, repo: str, revision: str | None) -> SourceError | None:
    """The one line :func:`_hub_errors` says for ``e``, or None (not the Hub's)."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hf_errors

    if isinstance(e, hf_errors.RevisionNotFoundError):
        return SourceError(f"{url}: {repo} has no revision {revision!r}")
    if isinstance(e, (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError)):
        return SourceError(f"{url}: {_first_line(e)}; check the name, or set HF_TOKEN for a private or gated "
                           "repository")
    if isinstance(e, hf_errors.LocalEntryNotFoundError):
        return SourceError(
            f"{url}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub "
            f"({public_endpoint(constants.ENDPOINT)}) cannot be used: {_first_line(e)}; run once online "
            "(without HF_HUB_OFFLINE=1), "
            "or point HF_HUB_CACHE at a cache that has it")
    if isinstance(e, (hf_errors.HfHubHTTPError, OSError, ValueError)):
        return SourceError(f"{url}: {type(e).__name__}: {_first_line(e)}")
    hf_http = sys.modules.get("httpx2")  # huggingface_hub's own HTTP stack (its errors module imports it)
    if isinstance(e, httpx.HTTPError) or (hf_http is not None and isinstance(e, hf_http.HTTPError)):
        return SourceError(f"{url}: cannot reach the Hub at {public_endpoint(constants.ENDPOINT)} "
                           f"({type(e).__name__}: "
                           f"{_first_line(e)}); check HF_ENDPOINT and the network, or use HF_HUB_OFFLINE=1 "
                           "with a filled cache")
    return None


def public_endpoint(endpoint: str) -> str:
    """``endpoint`` (``HF_ENDPOINT``) without credentials written into it
    (``https://USER:PASSWORD@mirror``): what labels and messages show, so
    a mirror's password never lands in an image or a log."""
    url = httpx.URL(endpoint)
    return str(url.copy_with(userinfo=b"")) if url.userinfo else endpoint


def _first_line(e: Exception) -> str:
    from huggingface_hub import constants

    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    scheme, sep, rest = constants.ENDPOINT.partition("://")
    userinfo = rest.split("/", 1)[0].rpartition("@")[0] if sep else ""
    return line.replace(userinfo + "@", "") if userinfo else line  # the URLs huggingface_hub's errors name
