"""lhotse both ways: `sylm-data export lhotse` writes Shar from align/tokenize rows, and the
lhotse source reads a Shar folder or a CutSet manifest back into ingest."""

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import lhotse
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from sylm_data.cli import app
from sylm_data.export import lhotse as lhotse_export
from sylm_data.pipeline.partitions import read_source_partition
from sylm_data.sample import layouts
from sylm_data.schemas import aligned, stream, tokenized, utterance
from sylm_data.sources import READERS
from sylm_data.stages import ingest
from tests.conftest import commit_rows, read_parquet, serial

cli = CliRunner()
UNITS = {tokenized.UNITS: [4, 1, 7], tokenized.UNIT_START_MS: [0, 130, 410], tokenized.UNIT_END_MS: [130, 410, 905],
         tokenized.TOKENIZER: "mfcc:0:k8:u8:0123abcd"}


def ingested(partitions) -> pa.Table:
    """Every record of the partitions through ingest, as one in-flight table."""
    return pa.concat_tables([ingest.transform(batch, ingest.IngestConfig())
                             for partition in partitions for batch in read_source_partition(partition, "ingest", 4)])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, utterances, ray_session):
    """An output folder of two partitions (ingest rows with their audio; align and tokenize rows
    with made-up word and unit times, committed as the stages commit them), exported through the CLI."""
    root = tmp_path_factory.mktemp("lhotse")
    out = root / "out"
    layouts.write_emilia(root / "source", utterances[:6], shard_size=3)
    for partition in READERS["emilia"].partitions([str(root / "source" / "*.tar")]):
        rows = stream.accepted(ingested([partition]), utterance.SCHEMA)
        commit_rows(out / "ingest", partition.id, rows)
        made = []
        for row in rows.drop_columns([utterance.AUDIO]).to_pylist():
            step = row[utterance.DURATION_MS] // len(row[utterance.TEXT].split())
            row[aligned.WORDS] = [{aligned.WORD_TEXT: word.strip(".,"), aligned.WORD_START_MS: i * step + 7,
                                   aligned.WORD_END_MS: (i + 1) * step - 3} for i, word in enumerate(row[utterance.TEXT].split())]
            made.append(row | {aligned.ALIGNER: "test", aligned.WORD_UNIT: "word"})
        commit_rows(out / "align", partition.id, pa.Table.from_pylist(made, schema=aligned.SCHEMA))
        commit_rows(out / "tokenize", partition.id, pa.Table.from_pylist([row | UNITS for row in made], schema=tokenized.SCHEMA))
    result = cli.invoke(app, ["export", "lhotse", str(out / "tokenize"), "--output", str(root / "shar-tokenize")])
    assert result.exit_code == 0, result.output
    assert "6 cuts in 2 shards" in result.output
    written = lhotse_export.export(out / "align", root / "shar-align", serial, batch_rows=4)  # in-process: Ray has had its turn
    assert written == {"shards": 2, "cuts": 6, "left_out": 0, "example": None}
    return root


def rows_by_id(folder: Path) -> dict[str, dict]:
    return {row["id"]: row for row in read_parquet(folder).to_pylist()}


def test_the_shar_validates_and_holds_each_row_with_its_audio_as_stored(corpus):
    shar = corpus / "shar-tokenize"
    assert sorted(path.name for path in shar.iterdir()) == [
        "cuts.000000.jsonl.gz", "cuts.000001.jsonl.gz", "recording.000000.tar", "recording.000001.tar"]
    cuts = lhotse.CutSet.from_shar(in_dir=shar)
    lhotse.qa.validate(cuts, read_data=True)
    stored, words = rows_by_id(corpus / "out" / "ingest"), rows_by_id(corpus / "out" / "align")
    assert sorted(cut.id for cut in cuts) == sorted(stored)
    for cut in cuts:
        row = stored[cut.id]
        assert cut.recording.sources[0].source == row[utterance.AUDIO]  # the bytes as ingest stored them
        assert abs(cut.duration * 1000 - row[utterance.DURATION_MS]) <= 1 and cut.sampling_rate == row[utterance.SAMPLE_RATE]
        (supervision,) = cut.supervisions
        assert (supervision.text, supervision.language, supervision.speaker) == (row["text"], "en", row["speaker"])
        times = [(item.symbol, round(item.start * 1000), round((item.start + item.duration) * 1000))
                 for item in supervision.alignment["word"]]
        assert times == [(w["text"], w["start_ms"], w["end_ms"]) for w in words[cut.id][aligned.WORDS]]
        assert {name: cut.custom[name] for name in UNITS} == UNITS
        assert cut.custom["source"] == "emilia" and cut.custom["meta"] == json.loads(row[utterance.META])
        assert cut.load_audio().shape == (1, cut.num_samples)
    aligned_cut = next(iter(lhotse.CutSet.from_shar(in_dir=corpus / "shar-align")))
    assert aligned_cut.custom["aligner"] == "test" and tokenized.UNITS not in aligned_cut.custom


def assert_round_trip(rows: list[dict], corpus: Path) -> None:
    """Ingest rows read back from an export: the same samples (ids under the lhotse source), text, word times, audio bytes."""
    stored, words = rows_by_id(corpus / "out" / "ingest"), rows_by_id(corpus / "out" / "align")
    assert len(rows) == len(stored) and all(row.get(stream.REJECT_REASON) is None for row in rows)
    for row in rows:
        source, _, original = row["id"].partition(":")
        assert source == "lhotse" and original in stored
        assert row[utterance.AUDIO] == stored[original][utterance.AUDIO]
        assert row[utterance.TEXT] == stored[original][utterance.TEXT]
        assert row[utterance.SPEAKER] == stored[original][utterance.SPEAKER] and row[utterance.LANGUAGE] == "en"
        meta = json.loads(row[utterance.META])
        assert meta["words"] == words[original][aligned.WORDS]
        assert meta["custom"]["source"] == "emilia"


def test_ingest_reads_the_exported_shar_back(corpus):
    ingest.preflight(ingest.IngestConfig(source="lhotse"))  # `run --stage ingest --source lhotse` takes it
    assert_round_trip(ingested(READERS["lhotse"].partitions([str(corpus / "shar-tokenize")])).to_pylist(), corpus)


def file_manifest(corpus: Path, folder: Path) -> list[lhotse.MonoCut]:
    """The exported cuts with their audio in files of `folder`/audio, referred to relative to `folder`."""
    (folder / "audio").mkdir(parents=True)
    cuts = []
    for number, cut in enumerate(lhotse.CutSet.from_shar(in_dir=corpus / "shar-align")):
        (folder / "audio" / f"{number}.mp3").write_bytes(cut.recording.sources[0].source)
        source = lhotse.AudioSource(type="file", channels=[0], source=f"audio/{number}.mp3")
        custom = {name: value for name, value in cut.custom.items() if name not in ("shard_origin", "shar_epoch")}
        cuts.append(lhotse.fastcopy(cut, recording=lhotse.fastcopy(cut.recording, sources=[source]), custom=custom))
    return cuts


def test_ingest_reads_a_cutset_manifest_with_audio_files(corpus, tmp_path):
    lhotse.CutSet(file_manifest(corpus, tmp_path)).to_file(tmp_path / "cuts.jsonl.gz")
    rows = ingested(READERS["lhotse"].partitions([str(tmp_path / "cuts.jsonl.gz")])).to_pylist()
    assert_round_trip(rows, corpus)


def outcomes(path: Path) -> list[tuple[str, str | None]]:
    """(id, reject reason or None when kept) for every record of every partition of `path`."""
    rows = ingested(READERS["lhotse"].partitions([str(path)])).to_pylist()
    assert sum(row[stream.PARTITION_TOTAL] for row in rows) == len(rows)  # totals count every record
    return [(row["id"], row[stream.REJECT_REASON]) for row in rows]


def test_each_unusable_cut_is_a_reject_with_its_reason(corpus, tmp_path):
    good, other, *_ = file_manifest(corpus, tmp_path)
    (tmp_path / "noise.mp3").write_bytes(b"\xff\xfb" + b"not audio" * 50)

    def reading(path: str) -> lhotse.Recording:
        return lhotse.fastcopy(other.recording, sources=[lhotse.fastcopy(other.recording.sources[0], source=path)])

    def speaking(language: str) -> list[lhotse.SupervisionSegment]:
        return [lhotse.fastcopy(other.supervisions[0], language=language)]

    cuts = [
        good,
        lhotse.fastcopy(other, id="unreadable", recording=reading("noise.mp3")),
        lhotse.fastcopy(other, id="gone", recording=reading("audio/gone.mp3")),
        lhotse.fastcopy(other, id="part", start=0.5, duration=1.0),
        lhotse.fastcopy(other, id="two", supervisions=other.supervisions * 2),
        lhotse.fastcopy(other, id="untranscribed", supervisions=[]),
        lhotse.fastcopy(other, id="klingon", supervisions=speaking("Klingon")),
        lhotse.fastcopy(other, id="english", supervisions=speaking("English")),
        lhotse.fastcopy(other, id="faster", recording=other.recording.perturb_speed(1.1)),
    ]
    lines = [json.dumps(cut.to_dict()) for cut in cuts] + ["{broken", json.dumps(good.to_dict())]
    (tmp_path / "cuts.jsonl").write_text("\n".join(lines) + "\n")
    got = outcomes(tmp_path / "cuts.jsonl")
    assert got[9][0].endswith("-L0000010")
    assert [reason for _, reason in got] == [
        None, "decode_error", "missing_audio", "segment_out_of_range", "bad_metadata", "missing_metadata",
        "unknown_language", None, "bad_metadata", "bad_metadata", "duplicate_id"]
    assert [sample_id for sample_id, _ in got[1:9]] == [f"lhotse:{cut.id}".replace(".", "%2E") for cut in cuts[1:]]


def test_a_damaged_shar_shard_rejects_the_cuts_it_lost(corpus, tmp_path):
    shard = tmp_path / "shar"
    shutil.copytree(corpus / "shar-align", shard)
    tar = shard / "recording.000000.tar"
    with tarfile.open(tar) as archive:
        second_audio = archive.getmembers()[2]
    tar.write_bytes(tar.read_bytes()[: second_audio.offset_data + 100])
    (shard / "recording.000001.tar").unlink()
    got = outcomes(shard)
    assert [reason for _, reason in got] == [None, "truncated_archive", "truncated_archive"] + ["missing_audio"] * 3


@pytest.mark.parametrize("make, message", [
    (lambda corpus, tmp_path: corpus / "out" / "ingest", "is not an align or tokenize output folder"),
    (lambda corpus, tmp_path: shutil.copytree(corpus / "out" / "align", tmp_path / "alone" / "align"), "ingest is missing"),
])
def test_export_errors_are_one_line(corpus, tmp_path, make, message):
    result = cli.invoke(app, ["export", "lhotse", str(make(corpus, tmp_path)), "--output", str(tmp_path / "shar")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    taken = cli.invoke(app, ["export", "lhotse", str(corpus / "out" / "align"), "--output", str(corpus / "shar-align")])
    assert taken.exit_code == 2 and "exists and is not an empty folder" in taken.output


def test_the_cli_starts_without_importing_lhotse():
    probe = ("import sys\nfrom sylm_data import cli\nsys.argv = ['sylm-data', 'export', 'lhotse', '--help']\n"
             "try:\n    cli.main()\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
             "print('LHOTSE', 'lhotse' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "LHOTSE False"
