"""hf:// inputs at a revision: resolved once to a commit, listed and downloaded at that commit, named
in the run record. The hub is faked at huggingface_hub's boundary (HfApi and hf_hub_download, or a
local hub cache laid out as huggingface_hub lays it out); nothing here needs a network or Ray."""

import importlib
import json
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import HfApi, errors

from sylm_data import offline
from sylm_data.pipeline import config as config_module
from sylm_data.pipeline import records, runner
from sylm_data.pipeline.output import OutputLayout
from sylm_data.pipeline.partitions import read_source_partition
from sylm_data.sample import layouts
from sylm_data.schemas import stream
from sylm_data.sources import READERS, SourceError, hub
from sylm_data.sources.base import partition_id

REPO = "org/emilia"
V1 = "1111111111111111111111111111111111111111"  # tag v1: the old layout, EN/EN-B000000.tar
V2 = "2222222222222222222222222222222222222222"  # main when the run starts: Emilia/EN/EN-B00000{0,1}.tar
V3 = "3333333333333333333333333333333333333333"  # main after it moves: other audio under the same name


def _rows(partitions) -> list[dict]:
    rows = []
    for partition in partitions:
        for batch in read_source_partition(partition, "ingest", batch_rows=5):
            rows.extend(row for row in batch.to_pylist() if row[stream.REJECT_REASON] is None)
    return rows


@pytest.fixture
def versions(tmp_path, utterances) -> dict[str, dict[str, Path]]:
    """Three commits of one dataset repo: commit -> {file in repo: its bytes on disk}."""
    v1 = layouts.write_emilia(tmp_path / "v1", utterances[:4], shard_size=4)
    v2 = layouts.write_emilia(tmp_path / "v2", utterances[:8], shard_size=4)
    v3 = layouts.write_emilia(tmp_path / "v3", utterances[8:10], shard_size=4)
    return {
        V1: {f"EN/{v1[0].name}": v1[0], "README.md": v1[0]},
        V2: {f"Emilia/EN/{tar.name}": tar for tar in v2} | {"Emilia/DE/DE-B000000.tar": v2[0]},
        V3: {f"Emilia/EN/{v3[0].name}": v3[0]},
    }


class FakeHub:
    """HfApi.dataset_info / list_repo_files and hf_hub_download over `versions`, with branches and
    tags that can move; a download without a commit gets whatever its branch names *now*."""

    def __init__(self, versions) -> None:
        self.versions = versions
        self.refs = {"main": V2, "v1": V1}
        self.calls: list[tuple] = []

    def commit(self, repo_id: str, revision: str | None) -> str:
        if repo_id != REPO:
            raise _hub_exception(errors.RepositoryNotFoundError, f"404 Client Error.\n\nRepository Not Found for url: {repo_id}")
        commit = self.refs.get(revision or "main", revision)
        if commit not in self.versions:
            raise _hub_exception(errors.RevisionNotFoundError, f"404 Client Error.\n\nRevision Not Found for url: {revision}")
        return commit

    def dataset_info(self, repo_id, *, revision=None, **kwargs):
        self.calls.append(("dataset_info", repo_id, revision))
        return SimpleNamespace(id=repo_id, sha=self.commit(repo_id, revision))

    def list_repo_files(self, repo_id, *, revision=None, repo_type=None, **kwargs):
        self.calls.append(("list_repo_files", repo_id, revision, repo_type))
        return sorted(self.versions[self.commit(repo_id, revision)])

    def hf_hub_download(self, repo_id, filename, *, repo_type=None, revision=None, **kwargs):
        self.calls.append(("hf_hub_download", repo_id, filename, revision, repo_type))
        files = self.versions[self.commit(repo_id, revision)]
        if filename not in files:
            raise errors.LocalEntryNotFoundError(f"{filename} is not in {repo_id}@{revision}")
        return str(files[filename])

    def downloads(self) -> list[tuple]:
        return [call for call in self.calls if call[0] == "hf_hub_download"]


def _hub_exception(cls, message: str) -> Exception:
    """A huggingface_hub HTTP error without an HTTP response (their constructors want one, of the
    HTTP client of the installed version)."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


@pytest.fixture
def fake_hub(versions, monkeypatch) -> FakeHub:
    fake = FakeHub(versions)
    monkeypatch.setattr(HfApi, "dataset_info", lambda self, *args, **kwargs: fake.dataset_info(*args, **kwargs))
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, *args, **kwargs: fake.list_repo_files(*args, **kwargs))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(offline, "_reachable", lambda endpoint, timeout_s: True)  # this machine may have no network
    return fake


# --- the URI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri, expected", [
    ("hf://a/b/EN/*.tar", hub.HubPath("a/b", None, "EN/*.tar")),
    ("hf://a/b@main/EN/*.tar", hub.HubPath("a/b", "main", "EN/*.tar")),
    ("hf://a/b@v1.0/x", hub.HubPath("a/b", "v1.0", "x")),
    (f"hf://a/b@{V1}/Emilia/**/*.tar", hub.HubPath("a/b", V1, "Emilia/**/*.tar")),
    ("hf://a/b@refs/pr/3/data/*.tar", hub.HubPath("a/b", "refs/pr/3", "data/*.tar")),
    ("hf://a/b@refs/convert/parquet/x/*.parquet", hub.HubPath("a/b", "refs/convert/parquet", "x/*.parquet")),
    ("hf://a/b@feature%2Fnew/x", hub.HubPath("a/b", "feature/new", "x")),
    ("hf://a/b/dir/file@2.tar", hub.HubPath("a/b", None, "dir/file@2.tar")),
])
def test_uris_name_repo_revision_and_path(uri, expected):
    assert hub.parse(uri) == expected


@pytest.mark.parametrize("uri", ["hf://a@/x", "hf://a/b@/x", "hf://a/b@%20/x", "hf://a/b", "hf://a/b/", "hf://a//x",
                                 "hf:///b/x", "hf://a/b c/x", "hf://a/b@v1"])
def test_a_malformed_uri_is_one_clear_line(uri, fake_hub):
    with pytest.raises(SourceError) as raised:
        READERS["emilia"].partitions([uri])
    assert "\n" not in str(raised.value)
    assert uri in str(raised.value) or "nothing after '@'" in str(raised.value)
    assert not fake_hub.calls  # refused before asking the hub


# --- resolved once, read at one commit -------------------------------------------------------------


def test_a_branch_moving_mid_run_does_not_mix_versions(fake_hub, utterances):
    partitions = READERS["emilia"].partitions([f"hf://{REPO}@main/Emilia/EN/*.tar"])
    assert [p.path for p in partitions] == [f"hf://{REPO}@{V2}/Emilia/EN/EN-B00000{i}.tar" for i in range(2)]
    fake_hub.refs["main"] = V3  # someone pushes while the workers read
    rows = _rows(partitions)
    assert sorted(row["text"].strip() for row in rows) == sorted(u.text for u in utterances[:8])
    assert {call[3] for call in fake_hub.downloads()} == {V2}  # each download asked for the commit listed


def test_an_input_without_revision_is_read_at_the_default_branchs_commit(fake_hub, utterances):
    partitions = READERS["emilia"].partitions([f"hf://{REPO}/Emilia/EN/*.tar"])
    fake_hub.refs["main"] = V3
    assert len(_rows(partitions)) == 8
    assert {call[3] for call in fake_hub.downloads()} == {V2}
    assert ("dataset_info", REPO, None) in fake_hub.calls


@pytest.mark.parametrize("revision", ["v1", V1])
def test_a_tag_or_a_commit_reads_that_version(fake_hub, utterances, revision):
    partitions = READERS["emilia"].partitions([f"hf://{REPO}@{revision}/EN/*.tar"])
    assert [p.path for p in partitions] == [f"hf://{REPO}@{V1}/EN/EN-B000000.tar"]
    assert sorted(row["text"].strip() for row in _rows(partitions)) == sorted(u.text for u in utterances[:4])
    assert [call[3] for call in fake_hub.downloads()] == [V1]
    listed = [call for call in fake_hub.calls if call[0] == "list_repo_files"]
    assert listed == [("list_repo_files", REPO, V1, "dataset")]  # listed at the commit, not the name


def test_each_revision_is_resolved_once_and_each_commit_listed_once(fake_hub):
    inputs = [f"hf://{REPO}@main/Emilia/EN/EN-B000000.tar", f"hf://{REPO}@main/Emilia/EN/EN-B000001.tar",
              f"hf://{REPO}@{V2}/Emilia/DE/*.tar"]
    partitions = READERS["emilia"].partitions(inputs)
    assert len(partitions) == 3
    calls = Counter(call[:3] for call in fake_hub.calls)
    assert calls == {("dataset_info", REPO, "main"): 1, ("dataset_info", REPO, V2): 1, ("list_repo_files", REPO, V2): 1}


def test_two_commits_of_one_repo_in_one_run_are_refused(fake_hub):
    with pytest.raises(SourceError, match="one commit of a repo") as raised:
        READERS["emilia"].partitions([f"hf://{REPO}@v1/EN/*.tar", f"hf://{REPO}/Emilia/EN/*.tar"])
    assert "\n" not in str(raised.value)


def test_pinning_a_revision_keeps_the_partition_ids(fake_hub):
    """The ids are those an input without '@' always had (OWNER/NAME/FILE), whatever the revision:
    a run started on a branch and resumed pinned to its commit carries on where it stopped."""
    legacy = [partition_id("emilia", f"{REPO}/Emilia/EN/EN-B00000{i}.tar") for i in range(2)]
    for pattern in (f"hf://{REPO}/Emilia/EN/*.tar", f"hf://{REPO}@main/Emilia/EN/*.tar", f"hf://{REPO}@{V2}/Emilia/EN/*.tar"):
        assert [p.id for p in READERS["emilia"].partitions([pattern])] == legacy


@pytest.mark.parametrize("uri, message", [
    (f"hf://{REPO}@nope/EN/*.tar", "has no revision 'nope'"),
    ("hf://org/missing/EN/*.tar", "no such dataset repo"),
])
def test_an_unknown_revision_or_repo_is_one_clear_line(fake_hub, uri, message):
    with pytest.raises(SourceError, match=message) as raised:
        READERS["emilia"].partitions([uri])
    assert "\n" not in str(raised.value)


def test_no_network_is_one_clear_line(fake_hub, monkeypatch):
    def unreachable(self, *args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known\nmore detail")

    monkeypatch.setattr(HfApi, "dataset_info", unreachable)
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE=1") as raised:
        READERS["emilia"].partitions([f"hf://{REPO}@main/EN/*.tar"])
    assert "\n" not in str(raised.value)
    assert "Name or service not known" in str(raised.value)


# --- offline: the local hub cache ------------------------------------------------------------------


@pytest.fixture
def offline_cache(tmp_path, versions, monkeypatch):
    """HF_HUB_OFFLINE=1 over a hub cache holding commits V1 (tag v1) and V2 (main) of REPO, laid
    out as huggingface_hub lays it out: datasets--org--emilia/{refs/<name>, snapshots/<sha>/...}."""
    repo_dir = tmp_path / "hf" / "hub" / f"datasets--{REPO.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(V2)
    (repo_dir / "refs" / "v1").write_text(V1)
    for commit in (V1, V2):
        for name, source in versions[commit].items():
            path = repo_dir / "snapshots" / commit / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(source.read_bytes())
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    importlib.reload(huggingface_hub.constants)
    try:
        yield repo_dir
    finally:
        monkeypatch.undo()
        importlib.reload(huggingface_hub.constants)


@pytest.mark.parametrize("revision", ["v1", V1])
def test_offline_a_revision_resolves_from_the_cache(offline_cache, utterances, revision):
    partitions = READERS["emilia"].partitions([f"hf://{REPO}@{revision}/EN/*.tar"])
    assert [p.path for p in partitions] == [f"hf://{REPO}@{V1}/EN/EN-B000000.tar"]
    # main's snapshot has no EN/EN-B000000.tar: a download that dropped the commit would fail
    assert sorted(row["text"].strip() for row in _rows(partitions)) == sorted(u.text for u in utterances[:4])


def test_offline_without_revision_reads_main(offline_cache):
    partitions = READERS["emilia"].partitions([f"hf://{REPO}/Emilia/EN/*.tar"])
    assert [p.path for p in partitions] == [f"hf://{REPO}@{V2}/Emilia/EN/EN-B00000{i}.tar" for i in range(2)]
    assert len(_rows(partitions)) == 8


@pytest.mark.parametrize("uri", [f"hf://{REPO}@nope/EN/*.tar", f"hf://{REPO}@{V3}/EN/*.tar", "hf://org/other/EN/*.tar"])
def test_offline_a_revision_not_in_the_cache_is_one_clear_line(offline_cache, uri):
    with pytest.raises(SourceError, match="not in the local hub cache") as raised:
        READERS["emilia"].partitions([uri])
    assert "\n" not in str(raised.value)


# --- the run record --------------------------------------------------------------------------------


def test_the_run_record_names_the_commit_each_repo_was_read_at(fake_hub, tmp_path):
    partitions = READERS["emilia"].partitions([f"hf://{REPO}@main/Emilia/EN/*.tar"])
    layout = OutputLayout(tmp_path / "out")
    done = layout.done_dir("ingest")
    done.mkdir(parents=True)
    # one partition committed by an earlier run, when main was V1's layout... and one this run
    earlier = {"path": f"hf://{REPO}@{V1}/EN/EN-B000000.tar"}
    now = {"path": partitions[0].path}
    for name, partition in (("a", earlier), ("b", now), ("c", {"path": f"hf://{REPO}/EN/old.tar"})):
        marker = {"partition": partition, "rows_in": 4, "rows_out": 4, "rejected": {}, "run_id": "run-0", "config_hash": "c"}
        (done / f"{name}.json").write_text(json.dumps(marker))
    config = config_module.load()
    record = runner._record("run-1", config, ["ingest"], config.stage_hash(["ingest"]), layout, "ingest", {}, partitions, 3,
                            time.time())
    assert record["hub_commits"] == {REPO: V2}
    assert record["hub_commits_in_output"] == {REPO: [V1, V2]}  # the output mixes two commits: visible
    assert record["partitions"]["total"] == 2
    written = json.loads(records.write(layout.runs_dir, record).read_text())
    assert written["hub_commits"] == {REPO: V2}


def test_a_run_without_hub_inputs_has_no_hub_commits(tmp_path, utterances):
    tars = layouts.write_emilia(tmp_path / "local", utterances[:4], shard_size=4)
    partitions = READERS["emilia"].partitions([str(tars[0])])
    config = config_module.load()
    record = runner._record("run-1", config, ["ingest"], config.stage_hash(["ingest"]), OutputLayout(tmp_path / "out"),
                            "ingest", {}, partitions, 0, time.time())
    assert "hub_commits" not in record


def test_hub_commits_leaves_out_local_and_unresolved_paths():
    paths = [f"hf://{REPO}@{V2}/a.tar", f"hf://{REPO}@{V2}/b.tar", f"hf://{REPO}/c.tar", "/data/d.tar", "hf://bad"]
    assert records.hub_commits(paths) == {REPO: [V2]}
