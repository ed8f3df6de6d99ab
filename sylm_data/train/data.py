"""Shards -> packed token sequences, with a position small enough to resume from exactly.

Readers: every rank runs `workers` dataloader processes; reader r of R = ranks × workers reads
its own part of each shard folder: whole shards when a folder has at least R of them (in an order
reshuffled every epoch), else every R-th sample. Each folder is an endless stream of epochs, cut
into blocks of `shuffle_block` samples shuffled in place. A reader streams its shards in order,
each opened and read once per epoch, and takes the next block from that stream; only one block
is held. Its position in a folder is (epoch, block, samples taken from the block): the index's
sample counts say where the block starts, so a resumed reader opens no shard that ends before
it and re-reads only that block (and its first shard's earlier samples, tar having no index to
seek by), never an epoch.

Documents: the folders are mixed by weight, one draw per document; a document becomes token ids
(text through the LLM tokenizer, units as unit tokens, a marker at each modality switch, then
EOS) and is packed with others into `seq_len` sequences. A document that fits the room left in
a sequence goes in whole. One that does not is split at its last segment start (before the
segment's marker) that fits, and the rest goes on in the next sequence; when no segment start
fits, the rest of the sequence is padding (never a target) and the document starts the next one.
Only a single segment longer than `seq_len` is cut inside, with a warning. Each piece (a
document, a continuation, the padding) starts its own position ids, so attention stays inside
it, and its first token is never a target. The reader's state counts padded tokens, splits and
cuts inside a segment.

Every batch carries its reader's state after it; the training process keeps the last one per
reader (`DataPosition`) and saves it with the checkpoint.
"""

import json
import logging
import tarfile
from bisect import bisect_right
from dataclasses import dataclass
from itertools import islice, repeat
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from webdataset.tariterators import group_by_keys, tar_file_expander

from sylm_data.schemas import sample
from sylm_data.train.vocab import SpeechVocabulary, speech_vocabulary

IGNORE = -100  # a label the loss skips
log = logging.getLogger(__name__)


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class ShardFolder:
    path: Path
    shards: tuple[tuple[str, int], ...]  # (tar path, samples the index declares)
    tokenizer: str | None  # None for text-only shards
    unit_vocab: int | None
    max_units_per_word: float | None  # pairs shards: the bound text-to-token generation keeps

    @property
    def samples(self) -> int:
        return sum(count for _, count in self.shards)


def open_folder(path: str | Path) -> ShardFolder:
    folder = Path(path)
    try:
        index = json.loads((folder / "index.json").read_text())
        shards = tuple((str(folder / entry["name"]), int(entry["samples"])) for entry in index["shards"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{folder}: no readable index.json of shards ({error}); shard folders come from "
                        "`sylm-data run --stage interleave` (DIR/shards) or --stage pairs (DIR/pairs-shards)") from None
    missing = [name for name, _ in shards if not Path(name).exists()]
    if missing:
        raise DataError(f"{folder}: index.json lists {len(missing)} missing shard(s), e.g. {missing[0]}")
    if not sum(count for _, count in shards):
        raise DataError(f"{folder}: the index declares no samples")
    return ShardFolder(folder, shards, index.get(sample.INDEX_TOKENIZER), index.get(sample.INDEX_UNIT_VOCAB),
                       index.get(sample.INDEX_MAX_UNITS_PER_WORD))


def unit_vocabulary(folders: list[ShardFolder], configured: int) -> int:
    """The unit count to extend the vocabulary with: the shards' own, or a configured one that covers it."""
    named = {folder.tokenizer: folder.unit_vocab for folder in folders if folder.tokenizer}
    if len(named) > 1:
        raise DataError(f"the shard folders use {len(named)} different unit tokenizers ({', '.join(sorted(named))}); "
                        "their unit ids cannot share one vocabulary")
    found = next(iter(named.values()), None)
    if configured:
        if found and configured < found:
            raise DataError(f"data.unit_vocab = {configured} is smaller than the shards' {found} units")
        return configured
    if not found:
        raise DataError("no shard folder's index.json names its unit vocabulary; set data.unit_vocab")
    return found


def mixing_weights(folders: list[ShardFolder], configured: list[float]) -> np.ndarray:
    weights = np.asarray(configured or [folder.samples for folder in folders], dtype=np.float64)
    return weights / weights.sum()


class Piece(NamedTuple):
    """Samples first, first + step, … (count of them) of one shard."""
    shard: str
    first: int
    step: int
    count: int


def epoch_pieces(folder: ShardFolder, folder_number: int, epoch: int, reader: int, readers: int, seed: int) -> list[Piece]:
    """What one reader reads of a folder in an epoch, in order."""
    order = np.random.default_rng([seed, folder_number, epoch]).permutation(len(folder.shards))
    shards = [folder.shards[i] for i in order]
    if len(shards) >= readers:
        return [Piece(path, 0, 1, count) for path, count in shards[reader::readers]]
    pieces, offset = [], 0
    for path, count in shards:
        first = (reader - offset) % readers
        taken = len(range(first, count, readers))
        if taken:
            pieces.append(Piece(path, first, readers, taken))
        offset += count
    return pieces


def _shard_documents(path: str) -> Iterator[bytes | None]:
    """The `.json` member of each sample of a shard, in order (None for a sample without one);
    stops at the first unreadable byte: a truncated shard simply ends early."""
    try:
        with open(path, "rb") as stream:  # closed as soon as the reader leaves the shard, not when collected
            for item in group_by_keys(tar_file_expander(iter([{"url": path, "stream": stream}]))):
                yield item.get("json")
    except (tarfile.TarError, OSError, ValueError) as error:
        log.warning("shard %s is unreadable after some samples (%s); its remaining samples are skipped", path, error)


def documents_in_order(folder: ShardFolder) -> Iterator[bytes | None]:
    """Every sample's `.json`, shard by shard as the index lists them (evaluation, checks)."""
    for path, _ in folder.shards:
        yield from _shard_documents(path)


def _piece_documents(piece: Piece, skip: int = 0) -> Iterator[bytes | None]:
    """The documents of a piece's slots from `skip` on, one pass over its shard (None where a
    sample is missing or has no json: a damaged shard still fills every slot)."""
    wanted = range(piece.first + piece.step * skip, piece.first + piece.step * piece.count, piece.step)
    found = 0
    if wanted:
        for index, document in enumerate(_shard_documents(piece.shard)):
            if index in wanted:
                yield document
                found += 1
                if found == len(wanted):
                    return
    yield from repeat(None, len(wanted) - found)


def slot_documents(pieces: list[Piece], start: int = 0) -> Iterator[bytes | None]:
    """The documents of a reader's slots from `start` to the end of its epoch: each shard opened
    once, none that holds only earlier slots."""
    for piece in pieces:
        if start < piece.count:
            yield from _piece_documents(piece, start)
        start = max(start - piece.count, 0)


def parse(document: bytes | None, unit_vocab: int) -> dict | None:
    """A sample that follows the contract and names only known units, or None."""
    if document is None:
        return None
    try:
        parsed = json.loads(document)
        sample.validate(parsed)
    except ValueError:
        return None
    for segment in parsed[sample.SEGMENTS]:
        if segment[sample.MODALITY] == sample.SPEECH and any(not 0 <= u < unit_vocab for u in segment[sample.UNITS]):
            return None
    return parsed


class FolderStream:
    """One reader's endless stream of one folder's samples; `position` is all it needs to resume."""

    def __init__(self, folder: ShardFolder, folder_number: int, reader: int, readers: int, seed: int, block: int,
                 unit_vocab: int, position: tuple[int, int, int] = (0, 0, 0)) -> None:
        if folder.samples < readers:
            raise DataError(f"{folder.path} holds {folder.samples} samples, fewer than the {readers} readers "
                            "(ranks × dataloader workers)")
        self.folder, self.folder_number, self.reader, self.readers = folder, folder_number, reader, readers
        self.seed, self.block_size, self.unit_vocab = seed, block, unit_vocab
        self.epoch, self.block, self.taken = position
        self.skipped = 0  # unusable samples met, this process
        self._pieces: list[Piece] = []
        self._pieces_epoch = -1
        self._block: list[dict | None] | None = None
        self._slots: Iterator[bytes | None] | None = None  # this epoch's documents after the loaded block
        self._usable_this_epoch = 0
        self._whole_epoch = self.block == self.taken == 0  # seen from its start here: an empty one is an error

    @property
    def position(self) -> tuple[int, int, int]:
        return self.epoch, self.block, self.taken

    def _epoch_slots(self) -> int:
        if self._pieces_epoch != self.epoch:
            self._pieces = epoch_pieces(self.folder, self.folder_number, self.epoch, self.reader, self.readers, self.seed)
            self._pieces_epoch = self.epoch
        return sum(piece.count for piece in self._pieces)

    def _load_block(self) -> None:
        start = self.block * self.block_size
        stop = min(start + self.block_size, self._epoch_slots())
        if self._slots is None:
            self._slots = slot_documents(self._pieces, start)
        documents = [parse(document, self.unit_vocab) for document in islice(self._slots, stop - start)]
        order = np.random.default_rng([self.seed, self.folder_number, self.epoch, self.reader, self.block]).permutation(len(documents))
        self._block = [documents[i] for i in order]

    def next(self) -> dict:
        while True:
            if self._block is None:
                self._load_block()
            if self.taken < len(self._block):
                document = self._block[self.taken]
                self.taken += 1
                if document is not None:
                    self._usable_this_epoch += 1
                    return document
                self.skipped += 1
                continue
            self.block, self.taken, self._block = self.block + 1, 0, None
            if self.block * self.block_size >= self._epoch_slots():
                if self._whole_epoch and not self._usable_this_epoch:
                    raise DataError(f"{self.folder.path}: reader {self.reader} found no usable sample in a whole epoch")
                self.epoch, self.block, self._usable_this_epoch, self._whole_epoch = self.epoch + 1, 0, 0, True
                self._slots = None


class Document(NamedTuple):
    """One LM document: token ids, their labels (IGNORE where no target; the first is), and the
    ascending offsets after 0 where a segment starts (before its modality marker): the places the
    packer may split it."""
    ids: list[int]
    labels: list[int]
    cuts: list[int]


def render(document: dict, tokenizer, vocab: SpeechVocabulary) -> list[Document]:
    """A sample as one LM document: markers at modality switches (a document starts in text), text
    after the first segment with its leading space, EOS last; a cut at each segment after the first."""
    segments = document[sample.SEGMENTS]
    texts = [(" " if i else "") + segment[sample.TEXT] for i, segment in enumerate(segments)
             if segment[sample.MODALITY] == sample.TEXT]
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    cuts = []
    modality = sample.TEXT
    for index, segment in enumerate(segments):
        if index and ids:  # a cut at 0 (no BOS, an empty first segment) would split off nothing
            cuts.append(len(ids))
        if segment[sample.MODALITY] != modality:
            modality = segment[sample.MODALITY]
            ids.append(vocab.speech_marker if modality == sample.SPEECH else vocab.text_marker)
        if modality == sample.TEXT:
            ids += next(encoded)
        else:
            ids += [vocab.first_unit + unit for unit in segment[sample.UNITS]]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return [Document(ids, [IGNORE] + ids[1:], cuts)]


def render_for_reading(document: dict, tokenizer) -> tuple[list[int], dict[str, int], bool]:
    """A sample's token ids exactly as `render` gives the trainer, their count by kind, and whether
    the speech tokens had to be added to `tokenizer` first (a base model's) as `train` adds them:
    markers first, then units in order, so unit u has the same id however many units there are."""
    if not isinstance(document, dict):
        raise ValueError("a sample is a JSON object")
    sample.validate(document)
    units = [unit for segment in document[sample.SEGMENTS] if segment[sample.MODALITY] == sample.SPEECH
             for unit in segment[sample.UNITS]]
    before = len(tokenizer)
    vocab = speech_vocabulary(tokenizer, max(units, default=0) + 1)
    ids = render(document, tokenizer, vocab)[0].ids
    ends = (tokenizer.bos_token_id is not None) + (tokenizer.eos_token_id is not None)
    markers = sum(token in (vocab.speech_marker, vocab.text_marker) for token in ids)
    counts = {"text": len(ids) - ends - markers - len(units), "markers": markers, "units": len(units), "bos/eos": ends}
    return ids, counts, len(tokenizer) > before


class Packer:
    """Documents in, `seq_len` sequences of (ids, labels, positions) out. A document goes in whole
    when it fits the room left; else it is split at its last cut that fits; else, when the
    sequence holds something, the rest of it is padding and the document starts the next one. Only
    a segment longer than `seq_len` is cut inside. Every piece (a document, a continuation, the
    padding) starts a fresh position run and its first token is no target."""

    COUNTS = ("padded_tokens", "document_splits", "segment_cuts")

    def __init__(self, seq_len: int, pad_id: int, pending: list[list[list[int]]] = (), counts: dict | None = None) -> None:
        self.seq_len, self.pad_id = seq_len, pad_id
        # [ids, labels, cuts] pieces not yet emitted; a state saved before cuts were kept has [ids, labels]
        self.pending = [Document(piece[0], piece[1], piece[2] if len(piece) > 2 else []) for piece in pending]
        self.size = sum(len(piece.ids) for piece in self.pending)
        self.counts = dict.fromkeys(self.COUNTS, 0) | (counts or {})
        self._warned = False

    def add(self, document: Document) -> None:
        self.pending.append(document)
        self.size += len(document.ids)

    def full(self) -> bool:
        return self.size >= self.seq_len

    def pop(self) -> tuple[list[int], list[int], list[int]]:
        ids, labels, positions = [], [], []
        while len(ids) < self.seq_len:
            piece = self.pending[0]
            room = self.seq_len - len(ids)
            if len(piece.ids) <= room:
                taken = len(piece.ids)
                self.pending.pop(0)
            else:
                fitting = bisect_right(piece.cuts, room)
                if fitting:
                    taken = piece.cuts[fitting - 1]
                    self.counts["document_splits"] += 1
                elif ids:
                    ids += [self.pad_id] * room
                    labels += [IGNORE] * room
                    positions += range(room)
                    self.counts["padded_tokens"] += room
                    break
                else:
                    taken = room
                    self._cut_inside(piece)
                self.pending[0] = Document(piece.ids[taken:], [IGNORE] + piece.labels[taken + 1:],
                                           [cut - taken for cut in piece.cuts[fitting:]])
            ids += piece.ids[:taken]
            labels += piece.labels[:taken]
            positions += range(taken)
            self.size -= taken
        return ids, labels, positions

    def _cut_inside(self, piece: Document) -> None:
        self.counts["segment_cuts"] += 1
        if not self._warned:
            self._warned = True
            length = piece.cuts[0] if piece.cuts else len(piece.ids)
            log.warning("a segment of %d tokens is longer than data.seq_len = %d: it is cut inside, its rest starts "
                        "the next sequence (counted as segment_cuts; said once per reader)", length, self.seq_len)


@dataclass(frozen=True)
class Plan:
    """What every reader shares: folders, weights, how a sample becomes documents, and shapes."""
    folders: tuple[ShardFolder, ...]
    weights: tuple[float, ...]
    render: Callable[[dict], list[Document]]  # sample -> documents; picklable
    unit_vocab: int
    seq_len: int
    micro_batch: int
    block: int
    seed: int
    pad_id: int  # fills the rest of a sequence that the next document does not fit


class Reader:
    """One reader (rank × worker): micro-batches of packed sequences, and the state after each."""

    def __init__(self, plan: Plan, reader: int, readers: int, state: dict | None = None) -> None:
        state = state or {}
        positions = state.get("streams") or [(0, 0, 0)] * len(plan.folders)
        self.plan, self.reader = plan, reader
        self.streams = [FolderStream(folder, number, reader, readers, plan.seed, plan.block, plan.unit_vocab, tuple(position))
                        for number, (folder, position) in enumerate(zip(plan.folders, positions))]
        self.mix = np.random.Generator(np.random.PCG64([plan.seed, reader]))
        if "mix" in state:
            self.mix.bit_generator.state = state["mix"]
        self.packer = Packer(plan.seq_len, plan.pad_id, state.get("pending", []), state.get("packing"))
        self.skipped = state.get("skipped", 0)
        self.cumulative = np.cumsum(plan.weights)

    def state(self) -> dict:
        return {"streams": [list(stream.position) for stream in self.streams], "mix": self.mix.bit_generator.state,
                "pending": [list(piece) for piece in self.packer.pending], "packing": dict(self.packer.counts),
                "skipped": self.skipped + sum(stream.skipped for stream in self.streams)}

    def next_batch(self) -> dict:
        rows, sources = [], []
        while len(rows) < self.plan.micro_batch:
            while not self.packer.full():
                folder = min(int(np.searchsorted(self.cumulative, self.mix.random(), side="right")), len(self.streams) - 1)
                document = self.streams[folder].next()
                sources.append(document[sample.SOURCE_ID])
                for rendered in self.plan.render(document):
                    self.packer.add(rendered)
            rows.append(self.packer.pop())
        ids, labels, positions = (torch.tensor([row[k] for row in rows], dtype=torch.long) for k in range(3))
        return {"input_ids": ids, "labels": labels, "position_ids": positions, "reader": self.reader,
                "sources": sources, "state": self.state()}


class PackedShards(torch.utils.data.IterableDataset):
    """The endless batches of one rank. `rotation` (batches already consumed) makes worker w play
    reader (w + rotation) % workers, so a resumed loader's round robin goes on where it stopped."""

    def __init__(self, plan: Plan, rank: int, world: int, workers: int, rotation: int = 0,
                 states: dict[int, dict] | None = None) -> None:
        self.plan, self.rank, self.world = plan, rank, world
        self.workers, self.rotation, self.states = max(workers, 1), rotation, states or {}

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        reader = self.rank * self.workers + ((info.id if info else 0) + self.rotation) % self.workers
        stream = Reader(self.plan, reader, self.world * self.workers, self.states.get(reader))
        while True:
            yield stream.next_batch()


class DataPosition:
    """The training process's record of what it consumed: batches, and each reader's state after its last one."""

    def __init__(self, rank: int, world: int, workers: int, saved: dict | None = None) -> None:
        """`workers` dataloader processes per rank; 0 reads in this process (as one reader)."""
        self.rank, self.world, self.processes, self.workers = rank, world, workers, max(workers, 1)
        saved = saved or {"batches": 0, "readers": {}, "world": world, "workers": self.workers}
        if (saved["world"], saved["workers"]) != (world, self.workers):
            raise DataError(f"the checkpoint's data position is for {saved['world']} ranks × {saved['workers']} workers, "
                            f"this run has {world} × {self.workers}; resume with the same data.workers and ranks")
        self.batches = saved["batches"]
        self.readers = {int(reader): state for reader, state in saved["readers"].items()}

    def update(self, batch: dict) -> None:
        self.readers[batch["reader"]] = batch["state"]
        self.batches += 1

    def skipped(self) -> int:
        return sum(state["skipped"] for state in self.readers.values())

    def packing(self) -> dict[str, int]:
        """The packers' counts (`Packer.COUNTS`) summed over this rank's readers."""
        return {name: sum(state.get("packing", {}).get(name, 0) for state in self.readers.values()) for name in Packer.COUNTS}

    def to_dict(self) -> dict:
        return {"batches": self.batches, "readers": self.readers, "world": self.world, "workers": self.workers}

    def loader(self, plan: Plan, pin_memory: bool = False) -> torch.utils.data.DataLoader:
        dataset = PackedShards(plan, self.rank, self.world, self.workers, self.batches % self.workers, self.readers)
        return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.processes, pin_memory=pin_memory,
                                           prefetch_factor=4 if self.processes else None)
