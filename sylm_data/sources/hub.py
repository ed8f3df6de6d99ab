"""hf:// inputs: `hf://OWNER/NAME/PATTERN` names files of a Hugging Face *dataset* repo.

Listing asks the hub (or, with HF_HUB_OFFLINE=1, the local hub cache); each partition's file is
downloaded by the worker that reads it, through huggingface_hub's cache, so nothing is fetched
twice and a cluster downloads in parallel.
"""

import fnmatch
import os

SCHEME = "hf://"


def split(uri: str) -> tuple[str, str]:
    """hf://owner/name/path/in/repo -> ("owner/name", "path/in/repo")."""
    parts = uri[len(SCHEME) :].split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"{uri!r} is not hf://OWNER/NAME/PATH")
    return f"{parts[0]}/{parts[1]}", parts[2]


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE


def _repo_files(repo_id: str) -> list[str]:
    if not _offline():
        from huggingface_hub import HfApi

        return HfApi().list_repo_files(repo_id, repo_type="dataset")
    from huggingface_hub import snapshot_download

    snapshot = snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
    return sorted(
        os.path.relpath(os.path.join(folder, name), snapshot).replace(os.sep, "/")
        for folder, _, names in os.walk(snapshot)
        for name in names
    )


def expand(pattern: str) -> list[str]:
    repo_id, path_pattern = split(pattern)
    return [f"{SCHEME}{repo_id}/{name}" for name in sorted(_repo_files(repo_id)) if fnmatch.fnmatch(name, path_pattern)]


def download(uri: str) -> str:
    from huggingface_hub import hf_hub_download

    repo_id, filename = split(uri)
    return hf_hub_download(repo_id, filename, repo_type="dataset")
