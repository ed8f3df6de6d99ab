"""sylm-data train on CPU: vocabulary extension, the schedule, rendering and packing, the loader's
split over ranks and workers, damaged shards, exact resume, the embedding-only phase, and a run on
two ranks under torchrun. DeepSpeed runs with gloo; models are tiny and randomly initialised."""

import io
import json
import random
import subprocess
import sys
import tarfile
from functools import partial
from itertools import accumulate
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sylm_data.pipeline.config import ConfigError
from sylm_data.pipeline.shards import ShardWriter
from sylm_data.train import config as train_config
from sylm_data.train import data, loop, metrics, schedule, vocab
from tests.random_models import LM_TINY, save_random_lm

WORDS = "the river ran past old mill before it reached sea and a boy saw fish swim under bridge".split()
UNITS = 32


def units_of(word: str) -> list[int]:
    """A fixed made-up pronunciation: the trainer can learn it, so the loss has somewhere to fall."""
    return [(sum(map(ord, word)) * 7 + 13 * k) % UNITS for k in range(len(word) // 3 + 1)]


def documents(count: int, seed: int = 0):
    rng = random.Random(seed)
    for index in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 20))]
        segments, at = [], 0
        while at < len(words):
            span = words[at : at + rng.randint(1, 5)]
            at += len(span)
            if rng.random() < 0.3:
                segments.append({"modality": "speech", "units": [u for w in span for u in units_of(w)]})
            else:
                segments.append({"modality": "text", "text": " ".join(span)})
        yield f"doc{seed}-{index:05d}", {"segments": segments, "kind": "interleaved", "language": "en",
                                         "source_id": f"toy:{seed}:{index}"}


def write_shards(folder: Path, count: int, per_shard: int, seed: int = 0, described: bool = True) -> Path:
    extra = {"tokenizer": f"toy:0:k{UNITS}:u{UNITS}:0", "unit_vocab": UNITS} if described else {}
    with ShardWriter(folder, target_bytes=10**9, extra_index=extra) as writer:
        for number, (key, document) in enumerate(documents(count, seed)):
            if number and number % per_shard == 0:
                writer._finish_shard()
            writer.write(key, {"json": json.dumps(document).encode()})
    return folder


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lm")
    save_random_lm(folder, LM_TINY, corpus=[" ".join(WORDS)] * 5)
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"), 400, 50)


def tokenizer_of(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_the_vocabulary_gets_units_and_markers_and_every_unused_row_the_mean(lm):
    from transformers import AutoModelForCausalLM

    tokenizer, model = tokenizer_of(lm), AutoModelForCausalLM.from_pretrained(lm)
    used = len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == LM_TINY["vocab_size"] > used  # a padded table
    before_in = model.get_input_embeddings().weight[:used].clone()
    before_out = model.get_output_embeddings().weight[:used].clone()
    speech = vocab.extend(model, tokenizer, 100, pad_to=64)
    assert (speech.speech_marker, speech.text_marker, speech.first_unit) == (used, used + 1, used + 2)
    assert tokenizer.convert_tokens_to_ids(vocab.unit_token(99)) == used + 101 == len(tokenizer) - 1
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and rows >= used + 102 and model.get_output_embeddings().weight.shape[0] == rows
    for table, before in ((model.get_input_embeddings().weight, before_in), (model.get_output_embeddings().weight, before_out)):
        assert torch.equal(table[:used], before)
        expected = before.double().mean(dim=0).float()
        assert torch.allclose(table[used:], expected.expand(rows - used, -1), atol=1e-6)
    assert model.config.vocab_size == rows
    # a tokenizer that has them already (a model extended before) is left as it is
    again = vocab.extend(model, tokenizer, 100)
    assert again == speech and model.get_input_embeddings().weight.shape[0] == rows


def test_a_tied_table_is_extended_once(tmp_path):
    from transformers import AutoModelForCausalLM

    save_random_lm(tmp_path, LM_TINY | {"tie_word_embeddings": True}, corpus=[" ".join(WORDS)] * 5)
    tokenizer, model = tokenizer_of(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)
    used = len(tokenizer)
    mean = model.get_input_embeddings().weight[:used].mean(dim=0)
    vocab.extend(model, tokenizer, 10)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert torch.allclose(model.get_input_embeddings().weight[used:], mean.expand(model.config.vocab_size - used, -1))


def test_a_partly_extended_tokenizer_is_refused(lm):
    from transformers import AutoModelForCausalLM

    tokenizer, model = tokenizer_of(lm), AutoModelForCausalLM.from_pretrained(lm)
    tokenizer.add_tokens([vocab.SPEECH_MARKER], special_tokens=True)
    with pytest.raises(vocab.VocabularyError, match="some speech tokens"):
        vocab.extend(model, tokenizer, 10)


def test_generated_speech_survives_decoding_without_special_tokens_and_encodes_back(lm):
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer_of(lm)
    speech = vocab.extend(AutoModelForCausalLM.from_pretrained(lm), tokenizer, UNITS)
    for _, document in documents(20, seed=3):
        ids = data.render(document, tokenizer, speech)[0][0]
        text = tokenizer.decode(ids, skip_special_tokens=True)  # vLLM's and many pipelines' default
        assert text.count("<|sylm_unit_") == sum(len(s["units"]) for s in document["segments"] if s["modality"] == "speech")
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids[:-1]  # all but EOS


def test_decode_shows_a_sample_with_the_ids_the_trainer_gives_it(lm, tmp_path):
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from sylm_data.cli import app

    _, document = next(documents(1, seed=5))
    sample_file = tmp_path / "sample.json"
    sample_file.write_text(json.dumps(document))
    trained = tokenizer_of(lm)  # as `train` leaves it: extended for every unit of the corpus, not only this sample's
    expected = data.render(document, trained, vocab.extend(AutoModelForCausalLM.from_pretrained(lm), trained, UNITS))[0][0]
    trained.save_pretrained(tmp_path / "final")
    for folder, note in ((lm, True), (tmp_path / "final", False)):
        result = CliRunner().invoke(app, ["decode", str(folder), str(sample_file), "--ids"])
        assert result.exit_code == 0, result.output
        summary, ids, text = result.output.strip().split("\n")
        assert json.loads(ids) == expected and ("added here" in summary) == note
        assert summary.startswith(f"{len(expected)} tokens: ") and text == trained.decode(expected)
    sample_file.write_text(json.dumps({"kind": "interleaved", "segments": [{"modality": "speech", "units": ["x"]}]}))
    result = CliRunner().invoke(app, ["decode", str(lm), str(sample_file)])
    assert result.exit_code == 2 and "sample.json: " in result.output and len(result.output.strip().splitlines()) == 1


def test_warmup_stable_decay():
    factors = [schedule.warmup_stable_decay(s, 100, 10, 0.2, "linear", 0.1) for s in range(100)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert set(factors[10:80]) == {1.0}
    assert factors[80] == 1.0 and factors[90] == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(a > b for a, b in zip(factors[80:], factors[81:])) and factors[99] > 0.1
    for shape in ("1-sqrt", "cosine"):
        decay = [schedule.warmup_stable_decay(s, 100, 0, 0.2, shape, 0.0) for s in range(80, 100)]
        assert decay[0] == 1.0 and all(a > b for a, b in zip(decay, decay[1:])) and 0 < decay[-1] < 0.25
    optim = train_config.OptimConfig(embed_only_steps=5, warmup_steps=2, steps=10, decay_share=0.0)
    assert [schedule.factor(s, optim) for s in range(8)] == [0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0]


def test_a_sample_renders_with_markers_at_switches_and_eos(lm):
    tokenizer = tokenizer_of(lm)
    speech = vocab.SpeechVocabulary(speech_marker=500, text_marker=501, first_unit=502, units=UNITS)
    document = {"segments": [{"modality": "text", "text": "the river"}, {"modality": "speech", "units": [3, 4]},
                             {"modality": "text", "text": "past the mill"}], "kind": "interleaved"}
    [(ids, labels, cuts)] = data.render(document, tokenizer, speech)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert ids == encode("the river") + [500, 505, 506, 501] + encode(" past the mill") + [tokenizer.eos_token_id]
    assert labels == [data.IGNORE] + ids[1:]
    first = len(encode("the river"))
    assert cuts == [first, first + 3]  # each segment after the first starts at its marker
    [(speech_only, _, no_cuts)] = data.render({"segments": [{"modality": "speech", "units": [0]}]}, tokenizer, speech)
    assert speech_only == [500, 502, tokenizer.eos_token_id] and no_cuts == []


STRIDE, PAD = 1000, -1  # toy token = document number × STRIDE + offset, so every token says where it belongs


def toy_document(number: int, segment_lengths: list[int]) -> data.Document:
    ids = [number * STRIDE + offset for offset in range(sum(segment_lengths))]
    return data.Document(ids, [data.IGNORE] + ids[1:], list(accumulate(segment_lengths))[:-1])


def pack(packer: data.Packer, documents: list[data.Document]) -> list[tuple[list[int], list[int], list[int]]]:
    """As a reader packs: add documents until the packer is full, then emit a sequence."""
    emitted = []
    for document in documents:
        packer.add(document)
        while packer.full():
            emitted.append(packer.pop())
    return emitted


def test_packing_keeps_every_token_once_and_restarts_positions():
    packer = data.Packer(8, PAD)
    # 3 tokens; 11 with segments 4 + 3 + 4; 2; 8 in one segment; 10 in one segment
    documents = [toy_document(0, [3]), toy_document(1, [4, 3, 4]), toy_document(2, [2]), toy_document(3, [8]),
                 toy_document(4, [10]), toy_document(5, [1])]
    emitted = pack(packer, documents)
    assert [ids for ids, _, _ in emitted] == [
        [0, 1, 2, 1000, 1001, 1002, 1003, PAD],  # the second document is split at its last segment start that fits
        [1004, 1005, 1006, 1007, 1008, 1009, 1010, PAD],  # its rest starts the next sequence; the third does not fit
        [2000, 2001, PAD, PAD, PAD, PAD, PAD, PAD],  # nor does the fourth: no segment start of it fits
        [3000, 3001, 3002, 3003, 3004, 3005, 3006, 3007],
        [4000, 4001, 4002, 4003, 4004, 4005, 4006, 4007],  # a segment longer than seq_len is cut inside
    ]
    assert emitted[0][2] == [0, 1, 2, 0, 1, 2, 3, 0] and emitted[1][2] == [0, 1, 2, 3, 4, 5, 6, 0]
    assert emitted[0][1][3] == emitted[1][1][0] == data.IGNORE  # a piece's first token is never a target
    assert emitted[1][1][1:7] == [1005, 1006, 1007, 1008, 1009, 1010] and set(emitted[2][1][2:]) == {data.IGNORE}
    assert [piece.ids for piece in packer.pending] == [[4008, 4009], [5000]]
    assert packer.pending[0].labels == [data.IGNORE, 4009]
    assert packer.counts == {"padded_tokens": 8, "document_splits": 1, "segment_cuts": 1}


def check_packing(documents: list[data.Document], packer: data.Packer, emitted: list) -> None:
    """The packing policy, checked from the output: every token once and in order, each piece a fresh
    position run whose first token is no target, whole when it fits, else split at its last segment
    start that fits, else after padding; cut inside only a segment longer than seq_len."""
    seq_len = packer.seq_len
    pieces = []  # (document, first offset, end offset, index in its sequence or None while pending)
    padding_before = {}  # index in pieces -> padding that ended the sequence before that piece
    padded = 0
    for ids, labels, positions in emitted:
        assert len(ids) == len(labels) == len(positions) == seq_len
        starts = [index for index, position in enumerate(positions) if position == 0]
        for start, stop in zip(starts, starts[1:] + [seq_len]):
            assert positions[start:stop] == list(range(stop - start)) and labels[start] == data.IGNORE
            if ids[start] == PAD:
                assert stop == seq_len and set(ids[start:]) == {PAD} and set(labels[start:]) == {data.IGNORE}
                padding_before[len(pieces)] = stop - start
                padded += stop - start
                continue
            number, offset = divmod(ids[start], STRIDE)
            end = offset + stop - start
            assert ids[start:stop] == documents[number].ids[offset:end]
            assert labels[start + 1:stop] == documents[number].labels[offset + 1:end]
            pieces.append((number, offset, end, start))
    for piece in packer.pending:
        number, offset = divmod(piece.ids[0], STRIDE)
        assert piece.ids == documents[number].ids[offset:offset + len(piece.ids)] and piece.labels[0] == data.IGNORE
        pieces.append((number, offset, offset + len(piece.ids), None))

    assert [(number, offset) for number, offset, _, _ in pieces] == [  # each document once, in order, no gap
        (number, offset) for number, document in enumerate(documents)
        for offset in [0] + [end for n, _, end, _ in pieces if n == number and end < len(document.ids)]]
    splits = cuts_inside = 0
    for index, (number, offset, end, at) in enumerate(pieces):
        document = documents[number]
        if index in padding_before:  # the piece could not even have put its first segment there
            next_boundary = min([cut for cut in document.cuts if cut > offset] + [len(document.ids)])
            assert at in (0, None) and next_boundary - offset > padding_before[index]
        if offset:
            assert at in (0, None)  # a continuation starts a sequence
        if end < len(document.ids) and at is not None:
            room = seq_len - at
            assert len(document.ids) - offset > room
            fitting = [cut for cut in document.cuts if offset < cut <= offset + room]
            if fitting:
                assert end == max(fitting)
                splits += 1
            else:
                assert at == 0 and end == offset + seq_len
                cuts_inside += 1
    assert packer.counts == {"padded_tokens": padded, "document_splits": splits, "segment_cuts": cuts_inside}


@settings(max_examples=300, deadline=None)
@given(seq_len=st.integers(2, 24),
       segment_lengths=st.lists(st.lists(st.integers(1, 30), min_size=1, max_size=6), min_size=1, max_size=12))
def test_long_documents_are_split_at_segment_starts(seq_len, segment_lengths):
    documents = [toy_document(number, lengths) for number, lengths in enumerate(segment_lengths)]
    packer = data.Packer(seq_len, PAD)
    check_packing(documents, packer, pack(packer, documents))


def test_a_pending_state_saved_before_cuts_loads():
    old = [[[7, 8, 9], [data.IGNORE, 8, 9]], [list(range(10, 20)), [data.IGNORE] + list(range(11, 20))]]
    packer = data.Packer(8, PAD, old)
    assert [piece.cuts for piece in packer.pending] == [[], []] and packer.full()
    assert packer.pop()[0] == [7, 8, 9] + [PAD] * 5  # no cut known inside the second piece: it starts the next sequence
    assert packer.pop()[0] == list(range(10, 18)) and packer.counts["segment_cuts"] == 1


def test_packed_documents_do_not_see_each_other(lm):
    """The loss of two packed documents equals their losses computed apart (token-weighted)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm, attn_implementation="sdpa").eval()
    first, second = list(range(10, 22)), list(range(40, 49))
    packer = data.Packer(len(first) + len(second), PAD)
    packer.add(data.Document(first, [data.IGNORE] + first[1:], []))
    packer.add(data.Document(second, [data.IGNORE] + second[1:], []))
    ids, labels, positions = (torch.tensor([row]) for row in packer.pop())
    with torch.no_grad():
        packed = loop.packed_loss(model, {"input_ids": ids, "labels": labels, "position_ids": positions}, "cpu")
        apart = [model(input_ids=torch.tensor([d]), labels=torch.tensor([d])).loss for d in (first, second)]
    expected = (apart[0] * (len(first) - 1) + apart[1] * (len(second) - 1)) / (len(first) + len(second) - 2)
    assert packed.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("per_shard", [50, 200])  # 8 shards: whole shards per reader; 2 shards: every 4th sample
def test_two_ranks_by_two_workers_read_disjoint_samples(lm, tmp_path, per_shard):
    folder = data.open_folder(write_shards(tmp_path / "shards", 400, per_shard))
    tokenizer = tokenizer_of(lm)
    speech = vocab.SpeechVocabulary(1000, 1001, 1002, UNITS)
    plan = data.Plan((folder,), (1.0,), partial(data.render, tokenizer=tokenizer, vocab=speech), UNITS,
                     seq_len=64, micro_batch=2, block=30, seed=3, pad_id=tokenizer.eos_token_id)
    seen: dict[int, list[str]] = {}
    for rank in range(2):
        loader = data.DataPosition(rank, 2, 2).loader(plan)
        for batch, _ in zip(loader, range(100)):
            seen.setdefault(batch["reader"], []).extend(batch["sources"])
    assert sorted(seen) == [0, 1, 2, 3]
    first_epoch = [set(sources[:100]) for sources in seen.values()]  # 400 samples over 4 readers
    assert all(len(part) == 100 for part in first_epoch)
    assert set.union(*first_epoch) == {f"toy:0:{i}" for i in range(400)}
    assert all(len(sources) > 150 for sources in seen.values())
    assert seen[0][100:150] != seen[0][:50]  # the next epoch comes in another order


def test_folders_mix_by_weight_and_a_reader_resumes_from_its_state(lm, tmp_path):
    speech_folder = data.open_folder(write_shards(tmp_path / "a", 200, 50, seed=1))
    text_folder = data.open_folder(write_shards(tmp_path / "b", 200, 50, seed=2, described=False))
    speech = vocab.SpeechVocabulary(1000, 1001, 1002, UNITS)
    plan = data.Plan((speech_folder, text_folder), (0.8, 0.2), partial(data.render, tokenizer=tokenizer_of(lm), vocab=speech),
                     UNITS, seq_len=64, micro_batch=2, block=16, seed=0, pad_id=0)
    reader = data.Reader(plan, 0, 1)
    batches = [reader.next_batch() for _ in range(40)]
    sources = [source for batch in batches for source in batch["sources"]]
    assert abs(sum(source.startswith("toy:1:") for source in sources) / len(sources) - 0.8) < 0.08
    resumed = data.Reader(plan, 0, 1, batches[19]["state"])
    for expected in batches[20:]:
        again = resumed.next_batch()
        assert again["sources"] == expected["sources"] and torch.equal(again["input_ids"], expected["input_ids"])


class ByteTokenizer:
    """Text as UTF-8 bytes: enough of a tokenizer for `data.render`, with no model to load."""
    bos_token_id, eos_token_id = None, 256

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(text.encode()) for text in texts]}


def test_long_documents_resume_exactly_with_their_packing_counts(tmp_path, caplog):
    folder = data.open_folder(write_shards(tmp_path / "shards", 60, 20))
    speech = vocab.SpeechVocabulary(300, 301, 302, UNITS)
    plan = data.Plan((folder,), (1.0,), partial(data.render, tokenizer=ByteTokenizer(), vocab=speech), UNITS,
                     seq_len=24, micro_batch=2, block=16, seed=0, pad_id=ByteTokenizer.eos_token_id)
    reader = data.Reader(plan, 0, 1)
    batches = [reader.next_batch() for _ in range(30)]
    counts = batches[-1]["state"]["packing"]
    assert all(counts.values())  # 5–20 words in 24 tokens: padding, splits, and text segments of over 24 bytes
    assert caplog.text.count("longer than data.seq_len = 24") == 1  # once per reader
    middle = batches[14]["state"]
    assert middle["pending"] and all(len(piece) == 3 for piece in middle["pending"])
    resumed = data.Reader(plan, 0, 1, middle)
    for expected in batches[15:]:
        again = resumed.next_batch()
        assert all(torch.equal(again[key], expected[key]) for key in ("input_ids", "labels", "position_ids"))
    assert again["state"]["packing"] == counts

    # a state saved before cuts were kept: pending pieces of [ids, labels], no counts
    old = {key: value for key, value in middle.items() if key != "packing"}
    old["pending"] = [[ids, labels] for ids, labels, _ in middle["pending"]]
    batch = data.Reader(plan, 0, 1, old).next_batch()
    first = middle["pending"][0][0][:24]
    assert batch["input_ids"][0, :len(first)].tolist() == first and batch["position_ids"][0, 0] == 0
    assert all(len(piece) == 3 for piece in batch["state"]["pending"])
    assert set(batch["state"]["packing"]) == set(data.Packer.COUNTS)


def test_damaged_samples_are_skipped_and_counted(tmp_path, caplog):
    folder = write_shards(tmp_path / "shards", 30, 10)  # shard i holds documents 10i..10i+9
    names = [entry["name"] for entry in json.loads((folder / "index.json").read_text())["shards"]]
    truncated = folder / names[1]
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with tarfile.open(folder / names[0]) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    unknown_unit = {"segments": [{"modality": "speech", "units": [UNITS + 5]}], "kind": "speech", "language": "en", "source_id": "x"}
    replaced = {1: b"{not json", 2: json.dumps(unknown_unit).encode()}
    with tarfile.open(folder / names[0], "w") as archive:
        for position, (member, content) in enumerate(members):
            content = replaced.get(position, content)
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))

    stream = data.FolderStream(data.open_folder(folder), 0, 0, 1, seed=0, block=7, unit_vocab=UNITS)
    sources = []
    while True:
        document = stream.next()
        if stream.position[0] == 1:
            break
        sources.append(int(document["source_id"].split(":")[2]))
    lost = set(range(10, 20)) - set(sources)
    assert 0 < len(lost) < 10 and "unreadable" in caplog.text
    assert len(sources) == len(set(sources)) == 30 - 2 - len(lost)
    assert set(sources) == set(range(30)) - {1, 2} - lost
    slots = list(data.slot_documents(data.epoch_pieces(stream.folder, 0, 0, 0, 1, 0)))
    assert sum(data.parse(slot, UNITS) is None for slot in slots) == 2 + len(lost)


class CountedShard:
    """A shard opened for reading that adds the bytes read from it to its tally."""

    def __init__(self, file, tally: list[int]) -> None:
        self._file, self._tally = file, tally

    def read(self, *size) -> bytes:
        chunk = self._file.read(*size)
        self._tally[-1] += len(chunk)
        return chunk

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self) -> "CountedShard":
        return self

    def __exit__(self, *exception) -> None:
        self._file.close()


def count_shard_reads(monkeypatch) -> dict[str, list[int]]:
    """Shard path -> bytes read per opening, for every `.tar` this process opens from now on."""
    import builtins

    reads: dict[str, list[int]] = {}
    real_open = builtins.open

    def counting_open(file, mode="r", *args, **kwargs):
        opened = real_open(file, mode, *args, **kwargs)
        if str(file).endswith(".tar") and "r" in mode:
            reads.setdefault(str(file), []).append(0)
            return CountedShard(opened, reads[str(file)])
        return opened

    monkeypatch.setattr(builtins, "open", counting_open)
    return reads


@pytest.mark.parametrize("per_shard, readers", [(50, 2), (200, 4)])  # whole shards per reader; every 4th sample
def test_a_reader_reads_each_of_its_shards_once_an_epoch(tmp_path, monkeypatch, per_shard, readers):
    folder = data.open_folder(write_shards(tmp_path / "shards", 400, per_shard))
    size = {path: Path(path).stat().st_size for path, _ in folder.shards}
    reads = count_shard_reads(monkeypatch)
    for epoch in range(2):
        sources = []
        for reader in range(readers):
            reads.clear()
            pieces = data.epoch_pieces(folder, 0, epoch, reader, readers, seed=0)
            stream = data.FolderStream(folder, 0, reader, readers, seed=0, block=16, unit_vocab=UNITS, position=(epoch, 0, 0))
            sources += [stream.next()["source_id"] for _ in range(sum(piece.count for piece in pieces))]
            assert {path: len(opened) for path, opened in reads.items()} == {piece.shard: 1 for piece in pieces}
            # each to its last sample: a tar ends in up to a 10 KiB record of zeros, which need not be read
            assert all(size[path] - 10240 < opened[0] <= size[path] for path, opened in reads.items())
        assert sorted(sources) == sorted(f"toy:0:{i}" for i in range(400))

    reads.clear()
    pieces = data.epoch_pieces(folder, 0, 0, 0, readers, seed=0)
    through = data.FolderStream(folder, 0, 0, readers, seed=0, block=16, unit_vocab=UNITS)
    expected = [through.next()["source_id"] for _ in range(sum(piece.count for piece in pieces))]
    resumed_at = 70  # block 4 (samples 64..79 of the epoch) is the fifth one, six samples of it taken
    stopped = data.FolderStream(folder, 0, 0, readers, seed=0, block=16, unit_vocab=UNITS)
    for _ in range(resumed_at):
        stopped.next()
    assert stopped.position == (0, 4, 6)
    reads.clear()
    resumed = data.FolderStream(folder, 0, 0, readers, seed=0, block=16, unit_vocab=UNITS, position=stopped.position)
    assert [resumed.next()["source_id"] for _ in expected[resumed_at:]] == expected[resumed_at:]
    first_slots = [sum(piece.count for piece in pieces[:i]) for i in range(len(pieces))]
    needed = [piece.shard for piece, first in zip(pieces, first_slots) if first + piece.count > 64]
    assert {path: len(opened) for path, opened in reads.items()} == dict.fromkeys(needed, 1)


def test_shard_folders_are_checked(tmp_path, shards):
    with pytest.raises(data.DataError, match="no readable index.json"):
        data.open_folder(tmp_path)
    text_only = data.open_folder(write_shards(tmp_path / "text", 20, 10, described=False))
    described = data.open_folder(shards)
    assert data.unit_vocabulary([described, text_only], 0) == UNITS
    assert data.unit_vocabulary([described], 64) == 64
    with pytest.raises(data.DataError, match="smaller than"):
        data.unit_vocabulary([described], 8)
    with pytest.raises(data.DataError, match="set data.unit_vocab"):
        data.unit_vocabulary([text_only], 0)
    with pytest.raises(data.DataError, match="fewer than the 32 readers"):
        data.FolderStream(text_only, 0, 0, 32, 0, 10, UNITS)


def test_config_is_checked():
    config = train_config.load(None, ["data.shards=['a', 'b']", "optim.lr=1e-4", "run.stop_at=5"])
    assert config.optim.lr == 1e-4 and config.total_steps == config.optim.steps
    for override, message in [("data.weights=[1.0]", "one non-negative weight per folder"),
                              ("optim.decay_shape='step'", "decay_shape"), ("model.size=3", "unknown key"),
                              ("optim.zero_stage=4", "zero_stage")]:
        with pytest.raises(ConfigError, match=message):
            train_config.load(None, ["data.shards=['a', 'b']", override])
    with pytest.raises(ConfigError, match="names no shard folder"):
        train_config.load(None, [])


def test_the_command_reports_bad_input_in_one_line(tmp_path, lm):
    from typer.testing import CliRunner

    from sylm_data.cli import app

    result = CliRunner().invoke(app, ["train", "--set", f"data.shards=['{tmp_path}']", "--set", f"model.name='{lm}'"])
    assert result.exit_code == 2 and "no readable index.json" in result.output
    result = CliRunner().invoke(app, ["train", "--set", "data.shards=['x']", "--set", "optim.warmup=3"])
    assert result.exit_code == 2 and "unknown key 'warmup'" in result.output


def test_a_resumed_log_drops_the_steps_after_its_checkpoint(tmp_path):
    log = metrics.MetricsLog(tmp_path, tensorboard=False, after_step=0)
    for step in range(1, 6):  # a run that died at step 5 after a checkpoint at step 3
        log.write(step, {"loss": 1.0})
    log.close()
    resumed = metrics.MetricsLog(tmp_path, tensorboard=False, after_step=3)
    resumed.write(4, {"loss": 0.5})
    resumed.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4] and lines[-1]["loss"] == 0.5


def test_model_flops_per_token(lm):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm)
    every = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    assert metrics.flops_per_token(model, 128) == 6 * (every - embedding) + 12 * 2 * 64 * 128
    assert metrics.peak_flops(400.0) == 400e12
    if not torch.cuda.is_available():
        assert metrics.peak_flops(0.0) is None


def run_config(lm: Path, shards: Path, output: Path, *overrides: str) -> train_config.TrainConfig:
    return train_config.load(None, [
        f"model.name='{lm}'", f"data.shards=['{shards}']", "data.seq_len=128", "data.micro_batch=4",
        "optim.steps=30", "optim.warmup_steps=5", "optim.lr=3e-3", f"run.output='{output}'", "run.log_every=1",
        "run.save_every=100", "run.progress=false", *overrides])


def losses(output: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_the_loss_falls_and_a_resumed_run_repeats_the_uninterrupted_one(lm, shards, tmp_path):
    through = loop.train(run_config(lm, shards, tmp_path / "through", "run.tensorboard=true"), echo=lambda line: None)
    assert through["outcome"] == "finished" and through["step"] == 30
    uninterrupted = losses(tmp_path / "through")
    assert len(uninterrupted) == 30 and sum(uninterrupted[-5:]) / 5 < 0.6 * sum(uninterrupted[:5]) / 5
    assert list((tmp_path / "through" / "tensorboard").glob("events.out.tfevents.*"))

    stopped = loop.train(run_config(lm, shards, tmp_path / "resumed", "run.stop_at=12"), echo=lambda line: None)
    assert stopped["outcome"] == "stopped" and stopped["step"] == 12
    assert not (tmp_path / "resumed" / "final").exists()
    messages = []
    loop.train(run_config(lm, shards, tmp_path / "resumed"), echo=messages.append)
    assert messages == [f"resumed from {tmp_path / 'resumed' / 'checkpoints' / 'step-00000012'} at step 12"]
    assert losses(tmp_path / "resumed") == uninterrupted
    packing = [{name: json.loads(line)[name] for name in data.Packer.COUNTS}
               for output in ("through", "resumed") for line in (tmp_path / output / "metrics.jsonl").read_text().splitlines()]
    assert packing[:30] == packing[30:] and packing[29]["padded_tokens"] > 0  # the counts survive the resume
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("step-*")) == ["step-00000012", "step-00000030"]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = tmp_path / "through" / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer.convert_tokens_to_ids(vocab.unit_token(UNITS - 1)) == len(tokenizer) - 1
    assert AutoModelForCausalLM.from_pretrained(final).get_input_embeddings().weight.shape[0] >= len(tokenizer)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_unfinished(lm, shards, tmp_path):
    import os
    import signal
    import time

    output = tmp_path / "run"
    overrides = [f"model.name='{lm}'", f"data.shards=['{shards}']", "data.seq_len=128", "optim.steps=100000",
                 f"run.output='{output}'", "run.log_every=1", "run.progress=false"]
    process = subprocess.Popen([sys.executable, "-m", "sylm_data.cli", "train", *[p for o in overrides for p in ("--set", o)]],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_single_thread_env())
    deadline = time.monotonic() + 300
    while not (output / "metrics.jsonl").exists() or len((output / "metrics.jsonl").read_text().splitlines()) < 3:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 3, stderr[-2000:]
    assert "interrupted at step" in stdout and "run the same command to resume" in stderr
    # quiet: DeepSpeed's and transformers' own lines are in the run's log, not on the terminal
    assert stderr.strip().splitlines() == ["checkpoint saved; run the same command to resume"], stderr[-2000:]
    assert len(stdout.strip().splitlines()) == 1, stdout[-2000:]
    step = int(stdout.split("interrupted at step ")[1].split(",")[0])
    assert (output / "checkpoints" / f"step-{step:08d}").is_dir()
    config = train_config.load(None, overrides + [f"run.stop_at={step + 3}"])
    assert loop.train(config, echo=lambda line: None)["step"] == step + 3
    logged = [json.loads(line)["step"] for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, step + 4))  # every step once, however far the interrupted run had logged


def test_the_embedding_phase_moves_only_the_new_rows(lm, shards, tmp_path):
    from transformers import AutoModelForCausalLM

    config = run_config(lm, shards, tmp_path / "run", "optim.embed_only_steps=4", "run.stop_at=4", "data.workers=0")
    loop.train(config, echo=lambda line: None)
    trained = torch.load(tmp_path / "run" / "checkpoints" / "step-00000004" / "mp_rank_00_model_states.pt",
                         weights_only=False)["module"]
    base, tokenizer = AutoModelForCausalLM.from_pretrained(lm), tokenizer_of(lm)
    used = len(tokenizer)
    vocab.extend(base, tokenizer, UNITS)
    for name, before in base.state_dict().items():
        after = trained[name]
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(after[:used], before[:used]) and not torch.equal(after[used:], before[used:])
        else:
            assert torch.equal(after, before), name
    assert [json.loads(line)["phase"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == ["embeddings"] * 4


@pytest.mark.slow
def test_two_ranks_under_torchrun_train_and_resume(lm, shards, tmp_path):
    """ZeRO-2 over two gloo ranks with two workers each; stopped and resumed, it ends as a straight run."""
    def torchrun(output: Path, *overrides: str) -> subprocess.CompletedProcess:
        settings = [f"model.name='{lm}'", f"data.shards=['{shards}']", "data.seq_len=64", "data.micro_batch=2",
                    "optim.steps=8", "optim.warmup_steps=2", "optim.grad_accum=2", f"run.output='{output}'",
                    "run.log_every=1", "run.progress=false", *overrides]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "sylm_data.cli", "train"] + [part for s in settings for part in ("--set", s)]
        return subprocess.run(command, capture_output=True, text=True, timeout=600, env=_single_thread_env())

    straight = torchrun(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert straight.stdout.count("finished at step 8") == 1  # rank 0 reports
    assert torchrun(tmp_path / "split", "run.stop_at=3").returncode == 0
    resumed = torchrun(tmp_path / "split")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")
    saved = torch.load(tmp_path / "split" / "checkpoints" / "step-00000008" / "trainer-rank1.pt", weights_only=False)
    assert sorted(saved["data"]["readers"]) == [2, 3]  # rank 1 holds the positions of readers 2 and 3


def _single_thread_env() -> dict:
    import os

    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return environment | {"OMP_NUM_THREADS": "1"}
