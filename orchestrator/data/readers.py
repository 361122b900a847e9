"""Reading source files into Arrow blocks: inside Ray Data read tasks (`RecordsDatasource`), and on the
driver as a stream of texts for BPE training (`iter_texts`, one file at a time).

Every block has a `_where` column naming each row for errors (`file:line`, `file:row N`, or the file).
  text     `_text` (null when skipped) and `_skip` ("undecodable" / "empty" / null): one row per file
  jsonl    `_json`: the line as written (parsed in the tokenising actors, in parallel)
  json     `_json`: one record of the file's array re-serialised, or one line of a JSON-lines file
  parquet  the record's columns (only those the record kind needs)
  hf       the same, read from the Arrow IPC stream files of a save_to_disk dir
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from orchestrator.data.corpus import _decode
from orchestrator.errors import DataError

ROWS_PER_BLOCK = 4096
_CHUNK_BYTES = 8 << 20


def kind_columns(kind: str, text_field: str) -> list[str]:
    """The fields a record of `kind` is read from (records.py's record kinds)."""
    return {"chat": ["messages"], "pair": ["prompt", "completion"]}.get(kind, [text_field])


def text_block(data: bytes, path: str):
    import pyarrow as pa

    text = _decode(data)
    skip = "undecodable" if text is None else ("empty" if not text.strip() else None)
    return pa.table({"_where": [path], "_text": [None if skip else text], "_skip": [skip]})


def _lines(stream: Any) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line) of a binary stream read in chunks: a file of any size."""
    number, rest = 0, b""
    while True:
        chunk = stream.read(_CHUNK_BYTES)
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            number += 1
            yield number, line
    if rest:
        yield number + 1, rest


def _json_rows(stream: Any, path: str) -> Iterator[tuple[str, str]]:
    """(where, record text) of a JSON-lines stream, or of a JSON array (the first byte tells)."""
    head = stream.read(_CHUNK_BYTES)
    if head.lstrip()[:1] == b"[":
        data = head + stream.read()
        try:
            records = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            line = getattr(exc, "lineno", None)
            raise DataError(f"{path}{f':{line}' if line else ''}: not valid JSON ({_reason(exc)})") from None
        for index, record in enumerate(records):
            yield f"{path}: record {index}", json.dumps(record)
        return
    for number, line in _lines(_Prefixed(head, stream)):
        if line.strip():
            yield f"{path}:{number}", line.decode("utf-8", "surrogateescape")


class _Prefixed:
    """A stream whose first bytes were already read."""

    def __init__(self, head: bytes, stream: Any):
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if self.head:
            out, self.head = self.head, b""
            return out
        return self.stream.read(size)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "msg", None) or str(exc).splitlines()[0]


def json_blocks(stream: Any, path: str) -> Iterator[Any]:
    import pyarrow as pa

    wheres: list[str] = []
    texts: list[str] = []
    for where, text in _json_rows(stream, path):
        wheres.append(where)
        texts.append(text)
        if len(texts) == ROWS_PER_BLOCK:
            yield pa.table({"_where": wheres, "_json": texts})
            wheres, texts = [], []
    if texts:
        yield pa.table({"_where": wheres, "_json": texts})


def parse_json_record(text: str, where: str) -> dict:
    """One record of a `_json` column. Raises `DataError` naming `where` (file:line)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: a JSON record must be an object, got {type(record).__name__}")
    return record


def first_json_record(path: str) -> tuple[dict, str] | None:
    """The first record of a JSON / JSON-lines file and its where, or None for a file with none."""
    with open(path, "rb") as stream:
        for where, text in _json_rows(stream, path):
            return parse_json_record(text, where), where
    return None


def _columnar_blocks(batches: Iterator[Any], path: str, columns: list[str]) -> Iterator[Any]:
    import pyarrow as pa

    row = 0
    for batch in batches:
        missing = [c for c in columns if c not in batch.schema.names]
        if missing:
            raise DataError(
                f"{path}: no column {missing[0]!r} (data.text_field); columns present: "
                f"{', '.join(map(repr, batch.schema.names))}"
            )
        table = pa.Table.from_batches([batch]).select(columns)
        wheres = pa.array([f"{path}: row {row + i}" for i in range(table.num_rows)])
        row += table.num_rows
        yield table.add_column(0, "_where", wheres)


def parquet_blocks(stream: Any, path: str, columns: list[str]) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(stream).iter_batches(batch_size=ROWS_PER_BLOCK)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a Parquet file ({_reason(exc)})") from None
    yield from _columnar_blocks(batches, path, columns)


def arrow_blocks(stream: Any, path: str, columns: list[str]) -> Iterator[Any]:
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(stream)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not an Arrow stream ({_reason(exc)})") from None
    yield from _columnar_blocks(iter(reader), path, columns)


def file_blocks(stream: Any, path: str, fmt: str, columns: list[str]) -> Iterator[Any]:
    """The blocks of one file of format `fmt` (sources.FORMATS)."""
    if fmt == "text":
        yield text_block(stream.read(), path)
    elif fmt in ("jsonl", "json"):
        yield from json_blocks(stream, path)
    elif fmt == "parquet":
        yield from parquet_blocks(stream, path, columns)
    elif fmt == "hf":
        yield from arrow_blocks(stream, path, columns)
    else:  # pragma: no cover - sources.resolve_source only yields FORMATS
        raise ValueError(fmt)


def block_records(block: Any) -> tuple[list[dict], list[str], list[str | None]]:
    """(records, wheres, skip reasons) of a block from `file_blocks` (a pyarrow Table)."""
    wheres = block.column("_where").to_pylist()
    names = block.schema.names
    if "_json" in names:
        texts = block.column("_json").to_pylist()
        return [parse_json_record(t, w) for t, w in zip(texts, wheres)], wheres, [None] * len(wheres)
    if "_text" in names:
        skips = block.column("_skip").to_pylist()
        texts = block.column("_text").to_pylist()
        return [{"text": t} for t in texts], wheres, skips
    return block.drop_columns(["_where"]).to_pylist(), wheres, [None] * len(wheres)


def iter_texts(files: list[str], fmt: str, kind: str, text_field: str) -> Iterator[str]:
    """The text of every record of `files` (records.record_text), one file at a time: BPE training
    streams these instead of holding the corpus."""
    from orchestrator.data.records import record_text

    columns = kind_columns(kind, text_field)
    for path in files:
        with open(path, "rb") as stream:
            for block in file_blocks(stream, path, fmt, columns):
                records, _, skips = block_records(block)
                for record, skip in zip(records, skips):
                    if skip is None:
                        yield record_text(record, kind, text_field)


def records_datasource(paths: list[str], fmt: str, columns: list[str]):
    """A Ray Data datasource reading `paths` with `file_blocks` (built lazily: it imports Ray)."""
    from ray.data.datasource import FileBasedDatasource

    class RecordsDatasource(FileBasedDatasource):
        def __init__(self) -> None:
            super().__init__(paths)
            self._fmt, self._columns = fmt, columns

        def _open_input_source(self, filesystem, path: str, **open_args):
            if self._fmt == "parquet":  # a footer first: random access, not a sequential stream
                return filesystem.open_input_file(path)
            return super()._open_input_source(filesystem, path, **open_args)

        def _read_stream(self, f, path: str):
            yield from file_blocks(f, path, self._fmt, self._columns)

    return RecordsDatasource()
