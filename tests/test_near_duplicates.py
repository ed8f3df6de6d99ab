"""Near-duplicate transcripts across partitions: MinHash links verified per band-key bucket, clusters
as connected components over member buckets (files, tasks), one member kept per cluster, and the
driver holding only what it must reject."""

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sylm_data.pipeline import config as config_module
from sylm_data.pipeline import near_duplicates, runner
from sylm_data.pipeline.near_duplicates import Settings
from sylm_data.quality import minhash
from sylm_data.schemas.reject import Reason
from tests.conftest import emilia_members, read_parquet, serial, write_tar

DROP, REPORT = Settings(mode="drop"), Settings(mode="report")
VOCABULARY = [f"w{index}" for index in range(4000)]


def random_texts(count: int, seed: int, words: int = 14) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(VOCABULARY, size=words)) for _ in range(count)]


def window(start: int, length: int = 40) -> str:
    """Overlapping windows of one long text: shifted by 10 of 40 words, two windows share ~60% of
    their shingles; by 20, ~30%."""
    return " ".join(f"v{index}" for index in range(start, start + length))


def listed(folder, corpus: dict[str, list[tuple[str, str]]], settings: Settings = DROP) -> list[str]:
    for partition, records in corpus.items():
        near_duplicates.write_listing([(sample_id, text, "en") for sample_id, text in records], folder, partition, settings)
    return sorted(corpus)


def clusters_in(folder) -> dict[str, list[str]]:
    """The cluster table as {kept id: [member ids]}."""
    table = pa.concat_tables(pq.read_table(path) for path in sorted(folder.glob("clusters-*.parquet")))
    found: dict[str, list[str]] = {}
    for row in table.to_pylist():
        found.setdefault(row["cluster"], []).append(row["id"])
        assert row["kept"] == (row["id"] == row["cluster"])
    return {kept: sorted(ids) for kept, ids in found.items()}


def signature_of(text: str) -> np.ndarray:
    return minhash.signature(near_duplicates.transcript_words(text, "en"))


@pytest.mark.parametrize("buckets", [1, 2, 16])
def test_a_chain_split_over_partitions_and_buckets_is_one_cluster_kept_in_its_first_partition(tmp_path, buckets):
    """a~b and b~c, but a and c too far apart to be linked: one cluster through b, however the
    members fall into buckets; texts unlike each other stay out."""
    a, b, c = window(0), window(10), window(20)
    assert minhash.similarity(signature_of(a), signature_of(b)) >= DROP.similarity
    assert minhash.similarity(signature_of(b), signature_of(c)) >= DROP.similarity
    assert minhash.similarity(signature_of(a), signature_of(c)) < DROP.similarity
    others = random_texts(30, seed=1)
    corpus = {"p3": [("c", c), *((f"p3-{i}", t) for i, t in enumerate(others[:10]))],
              "p1": [("a", a), *((f"p1-{i}", t) for i, t in enumerate(others[10:20]))],
              "p2": [*((f"p2-{i}", t) for i, t in enumerate(others[20:])), ("b", b)]}
    found = near_duplicates.find(tmp_path, listed(tmp_path, corpus), [], {}, None, DROP, serial, buckets=buckets)
    assert (found.clusters, found.members) == (1, 3)
    assert found.rejects == {"p2": {"b": ["a", "p1"]}, "p3": {"c": ["a", "p1"]}}
    assert clusters_in(tmp_path) == {"a": ["a", "b", "c"]}
    assert not (tmp_path / ".work").exists()


def test_a_long_chain_and_repeats_in_one_partition_are_whole_clusters(tmp_path):
    """Six windows each linked to the next only (labels travel five links, a round each), and
    one text said twice in one partition; report mode names the clusters and rejects nothing."""
    corpus = {f"p{index}": [(f"chain-{index}", window(10 * index))] for index in range(6)}
    corpus["p9"] = [("twice-b", window(500, 12)), ("twice-a", window(500, 12)), ("alone", window(900, 12))]
    found = near_duplicates.find(tmp_path, listed(tmp_path, corpus, REPORT), [], {}, None, REPORT, serial, buckets=4)
    assert clusters_in(tmp_path) == {"chain-0": [f"chain-{index}" for index in range(6)], "twice-a": ["twice-a", "twice-b"]}
    assert (found.clusters, found.members, found.rejects) == (2, 8, {})


def test_distinct_short_and_duplicate_id_transcripts_make_no_cluster(tmp_path):
    """Unrelated transcripts are never merged; one under `min_words` words is never a near-duplicate,
    however often it is said; an id repeated across partitions is `duplicate_id`'s, not ours."""
    texts = random_texts(400, seed=2)
    corpus = {f"p{index}": [(f"p{index}-{row}", text) for row, text in enumerate(texts[index::4])] for index in range(4)}
    for index in range(4):
        corpus[f"p{index}"].append((f"thanks-{index}", "thank you so much for this"))
        corpus[f"p{index}"].append(("same-id", window(300, 20)))
    excluded = {f"p{index}": ["same-id"] for index in range(1, 4)}
    found = near_duplicates.find(tmp_path, listed(tmp_path, corpus), [], excluded, None, DROP, serial)
    assert (found.clusters, found.members, found.rejects) == (0, 0, {})
    assert clusters_in(tmp_path) == {}


def test_the_member_kept_is_the_one_a_run_already_wrote_out(tmp_path):
    """Committed partitions decided before: their kept member stays kept, even against a partition
    sorting first; a member they rejected is never kept again (a resumed run keeps what a clean one did)."""
    rejects_dir = tmp_path / "rejects"
    corpus = {"p0": [("new", window(0))], "p1": [("first", window(2))], "p2": [("second", window(4))]}
    partitions = listed(tmp_path, corpus)
    # p2 committed after a run kept p1's member, p1 not yet: the clean run's choice is kept
    (rejects_dir / "p2").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["second"], "reason": [Reason.NEAR_DUPLICATE.value]}), rejects_dir / "p2" / "r.parquet")
    found = near_duplicates.find(tmp_path, partitions[1:], ["p2"], {}, rejects_dir, DROP, serial)
    assert found.rejects == {}  # p1's member is kept; p2's was rejected already
    assert clusters_in(tmp_path) == {"first": ["first", "second"]}
    # p1 and p2 committed, p0 added later: p1's member stays the one kept
    found = near_duplicates.find(tmp_path, partitions, ["p1", "p2"], {}, rejects_dir, DROP, serial)
    assert found.rejects == {"p0": {"new": ["first", "p1"]}}
    # without that history, the first partition's member is kept
    found = near_duplicates.find(tmp_path, partitions, [], {}, None, DROP, serial)
    assert found.rejects == {"p1": {"first": ["new", "p0"]}, "p2": {"second": ["new", "p0"]}}


def test_what_reaches_the_driver_grows_with_the_duplicates_not_the_corpus(tmp_path):
    """The same four near-duplicate pairs among 40 or 1000 other transcripts: the results the tasks
    return (what Ray hands the driver) weigh the same."""

    def returned(unique: int) -> int:
        folder = tmp_path / str(unique)
        texts = random_texts(unique, seed=unique)
        corpus = {f"p{index:02d}": [(f"u{index}-{row}", text) for row, text in enumerate(texts[index::20])]
                  for index in range(20)}
        for pair in range(4):
            corpus["p00"].append((f"kept-{pair}", window(1000 * pair, 20)))
            corpus[f"p{19 - pair:02d}"].append((f"copy-{pair}", window(1000 * pair, 20)))
        sizes = []

        def parallel(function, items):
            results = serial(function, items)
            sizes.append(len(pickle.dumps(results)))
            return results

        found = near_duplicates.find(folder, listed(folder, corpus), [], {}, None, DROP, parallel)
        assert sum(len(ids) for ids in found.rejects.values()) == 4
        return sum(sizes)

    small, large = returned(40), returned(1000)
    assert large <= small * 1.05, (small, large)
    assert small < 4096


def test_settings_out_of_range_are_refused_in_one_line():
    from sylm_data.pipeline.stage import StageConfigError
    from sylm_data.stages import ingest

    ingest.preflight(ingest.IngestConfig(near_duplicates="drop"))
    for field, value, message in [("near_duplicates", "on", "ingest.near_duplicates is 'on'; it is one of off, report"),
                                  ("near_duplicate_bands", 30, "ingest.near_duplicate_bands is 30; it divides 128"),
                                  ("near_duplicate_similarity", 0.0, "ingest.near_duplicate_similarity is 0.0")]:
        with pytest.raises(StageConfigError, match=message):
            ingest.preflight(ingest.IngestConfig(**{"near_duplicates": "report", field: value}))


# --- a run ------------------------------------------------------------------------------------


def variant(text: str, *changes: tuple[int, str]) -> str:
    words = text.split()
    for index, word in changes:
        words[index] = word
    return " ".join(words)


@pytest.fixture
def corpus(tmp_path, utterances):
    """Three tars: one transcript in each, re-worded a little (a cluster kept in A), and one said in
    B and again in C (kept in B), beside transcripts said once; and one sample in A and again, same
    id, in C (a `duplicate_id`, not a near-duplicate)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    base = utterances[0].text
    texts = {"A": [("a1", base), ("a2", utterances[1].text), ("shared", utterances[6].text)],
             "B": [("b1", variant(base, (4, "blue"))), ("b2", utterances[5].text), ("b3", utterances[2].text)],
             "C": [("c1", variant(base, (4, "blue"), (8, "told"))), ("c2", utterances[5].text), ("c3", utterances[3].text),
                   ("shared", utterances[6].text)]}
    samples = iter(utterances)
    for name, records in texts.items():
        write_tar(folder / f"{name}.tar", [member for key, text in records
                                          for member in emilia_members(next(samples), key, text=" " + text)])
    return sorted(folder.glob("*.tar"))


def run_ingest(tars, out, mode: str):
    config = config_module.load(None, ["run.stages=['ingest']", f"ingest.near_duplicates='{mode}'"])
    config.stages["ingest"].source = "emilia"
    config.stages["ingest"].inputs = [str(tar) for tar in tars]
    return runner.run(config, [], str(out), log=lambda line: None)


def outcome(out) -> tuple[list, list]:
    rows, rejects = read_parquet(out / "ingest"), read_parquet(out / "rejects" / "ingest")
    rejected = zip(*(rejects[name].to_pylist() for name in ("id", "reason", "detail"))) if rejects.num_rows else ()
    return sorted(rows["id"].to_pylist()), sorted(rejected)


def uncommit(out, prefix: str) -> None:
    (marker,) = (out / "ingest" / "_done").glob(f"{prefix}-*.json")
    marker.unlink()


@pytest.mark.usefixtures("ray_session")
def test_a_run_keeps_one_of_each_cluster_across_partitions_and_a_resumed_run_keeps_the_same(tmp_path, corpus):
    out = tmp_path / "out"
    result = run_ingest(corpus, out, "drop")
    rows, rejects = outcome(out)
    first_a = next(p.stem for p in (out / "ingest" / "_done").glob("A-*.json"))
    first_b = next(p.stem for p in (out / "ingest" / "_done").glob("B-*.json"))
    assert rows == ["emilia:a1", "emilia:a2", "emilia:b2", "emilia:b3", "emilia:c3", "emilia:shared"]
    assert rejects == [("emilia:b1", "near_duplicate", f"a near-duplicate of emilia:a1 (partition {first_a})"),
                       ("emilia:c1", "near_duplicate", f"a near-duplicate of emilia:a1 (partition {first_a})"),
                       ("emilia:c2", "near_duplicate", f"a near-duplicate of emilia:b2 (partition {first_b})"),
                       ("emilia:shared", "duplicate_id", f"the id occurs in partition {first_a}")]
    assert result.record["near_duplicates"] == {"mode": "drop", "clusters": 2, "members": 5, "rejected": 3}
    assert result.record["this_run"][0]["rejected"] == {"duplicate_id": 1, "near_duplicate": 3}
    assert clusters_in(out / "_near_duplicates") == {"emilia:a1": ["emilia:a1", "emilia:b1", "emilia:c1"],
                                                     "emilia:b2": ["emilia:b2", "emilia:c2"]}

    # killed after B and C were committed, before A: the resumed run keeps A's member and A's
    # occurrence of the repeated id, as the clean run did
    uncommit(out, "A")
    again = run_ingest(corpus, out, "drop")
    assert again.record["partitions"]["processed"] == 1
    assert again.record["near_duplicates"]["rejected"] == 0
    assert outcome(out) == (rows, rejects)
    # killed after A only
    uncommit(out, "B")
    uncommit(out, "C")
    run_ingest(corpus, out, "drop")
    assert outcome(out) == (rows, rejects)
    assert clusters_in(out / "_near_duplicates") == {"emilia:a1": ["emilia:a1", "emilia:b1", "emilia:c1"],
                                                     "emilia:b2": ["emilia:b2", "emilia:c2"]}

    # report: every row stays, the clusters are named
    reported = run_ingest(corpus, tmp_path / "report", "report")
    assert outcome(tmp_path / "report") == (sorted(rows + ["emilia:b1", "emilia:c1", "emilia:c2"]), [rejects[-1]])
    assert reported.record["near_duplicates"] == {"mode": "report", "clusters": 2, "members": 5, "rejected": 0}
    assert clusters_in(tmp_path / "report" / "_near_duplicates") == clusters_in(out / "_near_duplicates")
