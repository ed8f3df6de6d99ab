"""A text corpus for synthesize: JSONL (one JSON object per line) or Parquet files with a `text`
column (fineweb-edu, SmolLM-corpus and most hub text corpora), and optional `id` and `language`.
Each file is a partition; Parquet is read a row group at a time."""

import json
from collections.abc import Iterator
from pathlib import Path

from sylm_data.schemas.reject import Reason
from sylm_data.sources.base import Partition, Reader, Record, SourceError, expand, local_path, partition_id

TEXT, ID, LANGUAGE = "text", "id", "language"


class TextReader(Reader):
    source = "text"

    def partitions(self, inputs: list[str], root: str | None = None) -> list[Partition]:
        return [Partition(partition_id(self.source, found.relative), self.source, found.path) for found in expand(inputs, root)]

    def read(self, partition: Partition) -> Iterator[Record]:
        path = Path(local_path(partition.path))
        rows = self._parquet(path) if path.suffix == ".parquet" else self._jsonl(path)
        for number, (fields, problem) in enumerate(rows, start=1):
            # values as found: `fields.checked` coerces or rejects them (an integer id becomes a string)
            key = f"{path.stem}-{number:09d}" if not fields or fields.get(ID) in (None, "") else fields[ID]
            if problem:
                yield Record(key=key, reject=Reason.BAD_METADATA, detail=problem)
            elif fields.get(TEXT) is None:
                yield Record(key=key, reject=Reason.EMPTY_TEXT, detail=f"row {number} has no text field")
            else:
                yield Record(key=key, text=fields[TEXT], language=fields.get(LANGUAGE))

    @staticmethod
    def _jsonl(path: Path) -> Iterator[tuple[dict | None, str | None]]:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    fields = json.loads(line)
                except (ValueError, RecursionError) as error:  # RecursionError: nested too deep to parse
                    yield None, f"line {number}: {error}"[:200]
                    continue
                yield (fields, None) if isinstance(fields, dict) else (None, f"line {number}: not a JSON object")

    @staticmethod
    def _parquet(path: Path) -> Iterator[tuple[dict | None, str | None]]:
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(path)
        except Exception as error:  # pyarrow raises several kinds for a file that is not Parquet
            raise SourceError(f"{path}: not a readable Parquet file ({error})") from None
        if TEXT not in file.schema_arrow.names:
            raise SourceError(f"{path} has no {TEXT!r} column (columns: {', '.join(file.schema_arrow.names[:8])})")
        columns = [name for name in (TEXT, ID, LANGUAGE) if name in file.schema_arrow.names]
        for group in range(file.num_row_groups):
            for fields in file.read_row_group(group, columns=columns).to_pylist():
                yield fields, None
