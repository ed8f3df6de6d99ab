"""hf:// inputs: `hf://OWNER/NAME[@REVISION]/PATTERN` names files of a Hugging Face *dataset* repo.

REVISION is a branch, a tag or a commit sha (a name with `/` in it: `refs/pr/N`, `refs/convert/NAME`
as they are, any other percent-encoded, `feature%2Fx`); without it, the default branch. The driver
resolves it once, to a commit sha, and lists the files at that commit (offline — HF_HUB_OFFLINE=1,
or no answer from the hub, see `sylm_data.offline` — both from the local hub cache). Every
partition's path then names that commit, `hf://OWNER/NAME@SHA/FILE`, so each worker downloads the
same version of the repo even when the branch moves during the run, and the partition markers and
the run record say which it was. Downloads go through huggingface_hub's cache, so nothing is
fetched twice and a cluster downloads in parallel.

A partition's identity is OWNER/NAME/FILE, without the revision: the ids of inputs written without
`@` are those they always had, and pinning a run's inputs to a revision (say, to the commit its
record names) lets it resume where it stopped.
"""

import fnmatch
import os
import re
from dataclasses import dataclass
from urllib.parse import unquote

from sylm_data import offline
from sylm_data.sources.base import SourceError

SCHEME = "hf://"

_URI = re.compile(
    r"hf://(?P<owner>[^/@]+)/(?P<name>[^/@]+)"
    r"(?:@(?P<revision>refs/convert/\w+|refs/pr/\d+|[^/]*))?"
    r"/(?P<path>.*)",
    re.DOTALL,
)
_REPO_PART = re.compile(r"[\w.-]+")
FORM = "hf://OWNER/NAME[@REVISION]/PATH"


@dataclass(frozen=True)
class HubPath:
    repo_id: str  # OWNER/NAME
    revision: str | None  # as written (percent-decoded); None: the default branch
    path: str  # a file or a pattern in the repo


def parse(uri: str) -> HubPath:
    """hf://owner/name[@revision]/path/in/repo -> HubPath; a malformed one is a SourceError."""
    match = _URI.fullmatch(uri)
    if not match or not match["path"] or not all(_REPO_PART.fullmatch(match[part]) for part in ("owner", "name")):
        raise SourceError(f"{uri!r} is not {FORM}")
    revision = match["revision"]
    if revision is not None:
        revision = unquote(revision).strip()
        if not revision:
            raise SourceError(f"{uri!r}: nothing after '@' (a branch, tag or commit sha, or no '@' for the default branch)")
    return HubPath(f"{match['owner']}/{match['name']}", revision, match["path"])


def uri(repo_id: str, commit: str, path: str) -> str:
    return f"{SCHEME}{repo_id}@{commit}/{path}"


def relative(uri: str) -> str:
    """What identifies a hub file, whatever revision it was read at: OWNER/NAME/FILE."""
    where = parse(uri)
    return f"{where.repo_id}/{where.path}"


def _offline() -> bool:
    return offline.hub_offline()


def _at(repo_id: str, revision: str | None) -> str:
    return f"hf://{repo_id}" + (f"@{revision}" if revision else " (default branch)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _hub_error(repo_id: str, revision: str | None, error: Exception) -> SourceError:
    """One line for why a repo revision cannot be resolved or listed."""
    from huggingface_hub import errors

    where = _at(repo_id, revision)
    if isinstance(error, errors.GatedRepoError):
        return SourceError(f"{where}: the dataset is gated; accept its terms on the hub and log in (HF_TOKEN)")
    if isinstance(error, errors.RepositoryNotFoundError):
        return SourceError(f"{where}: no such dataset repo on the hub (or it is private and you are not logged in)")
    if isinstance(error, errors.RevisionNotFoundError):
        return SourceError(f"{where}: the repo has no revision {revision!r} (a branch, tag or commit sha)")
    if isinstance(error, errors.LocalEntryNotFoundError) and _offline():
        if type(error) is errors.LocalEntryNotFoundError:
            why = "HF_HUB_OFFLINE=1 forbids asking the hub" if offline.forced() else "the hub cannot be reached (no network)"
            return SourceError(f"{where}: not in the local hub cache, and {why}")
        return SourceError(f"{where}: {_first_line(error)}")  # e.g. a cached snapshot known to be incomplete
    return SourceError(f"{where}: cannot list the repo: {type(error).__name__}: {_first_line(error)}"
                       + ("" if _offline() else " (no network? HF_HUB_OFFLINE=1 reads the local hub cache)"))


class Listing:
    """The driver's view of the hub for one expansion of inputs: each repo revision is resolved to a
    commit once, each commit listed once, and a repo is read at one commit only (inputs naming two
    commits of a repo are refused: they would mix its versions and name the same files twice)."""

    def __init__(self) -> None:
        self.commits: dict[str, str] = {}  # repo id -> the commit read
        self._resolved: dict[tuple[str, str | None], str] = {}
        self._files: dict[tuple[str, str], list[str]] = {}

    def expand(self, pattern: str) -> list[str]:
        """The files matching an hf:// pattern, as hf://OWNER/NAME@SHA/FILE, sorted."""
        where = parse(pattern)
        commit, files = self._snapshot(where)
        earlier = self.commits.setdefault(where.repo_id, commit)
        if earlier != commit:
            raise SourceError(f"{pattern!r} is commit {commit} of {where.repo_id}, another input its commit {earlier}: "
                              f"a run reads one commit of a repo, so give its inputs the same @REVISION")
        return [uri(where.repo_id, commit, name) for name in files if fnmatch.fnmatch(name, where.path)]

    def _snapshot(self, where: HubPath) -> tuple[str, list[str]]:
        key = (where.repo_id, where.revision)
        try:
            if _offline():
                from huggingface_hub import snapshot_download

                # the patterns: a snapshot known to lack files is refused only when they are the ones asked for
                folder = snapshot_download(where.repo_id, repo_type="dataset", revision=self._resolved.get(key, where.revision),
                                           local_files_only=True, allow_patterns=[where.path])
                commit = self._resolved.setdefault(key, os.path.basename(os.path.normpath(folder)))
                if (where.repo_id, commit) not in self._files:
                    self._files[where.repo_id, commit] = sorted(
                        os.path.relpath(os.path.join(parent, name), folder).replace(os.sep, "/")
                        for parent, _, names in os.walk(folder)
                        for name in names
                    )
                return commit, self._files[where.repo_id, commit]
            from huggingface_hub import HfApi

            api = HfApi()
            if key not in self._resolved:
                commit = api.dataset_info(where.repo_id, revision=where.revision).sha
                if not commit:
                    raise SourceError(f"{_at(*key)}: the hub named no commit for this revision")
                self._resolved[key] = commit
            commit = self._resolved[key]
            if (where.repo_id, commit) not in self._files:
                self._files[where.repo_id, commit] = sorted(api.list_repo_files(where.repo_id, repo_type="dataset", revision=commit))
            return commit, self._files[where.repo_id, commit]
        except SourceError:
            raise
        # the hub client's errors as one line: HTTP and cache errors, and its transport's, whose types
        # change with its version (requests, httpx)
        except Exception as error:  # noqa: BLE001
            raise _hub_error(where.repo_id, where.revision, error) from None


def expand(pattern: str) -> list[str]:
    """One pattern on its own; inputs given together go through one Listing (base.expand)."""
    return Listing().expand(pattern)


def download(uri: str) -> str:
    """A local copy of one hub file, at the revision its URI names (a partition's: the commit the
    driver resolved)."""
    from huggingface_hub import hf_hub_download

    where = parse(uri)
    return hf_hub_download(where.repo_id, where.path, repo_type="dataset", revision=where.revision,
                           local_files_only=_offline())
