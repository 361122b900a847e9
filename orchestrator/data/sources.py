"""A data source resolved on the driver: its format, its files and their identity. Nothing is read
here but names, sizes, mtimes and a few headers (Parquet footers, an Arrow stream's schema, the first
JSON record): the corpus itself is read by Ray Data tasks (orchestrator/data/readers.py), so the
driver's memory does not grow with the corpus.

Formats (`data.format`, "auto" decides):
  text     one document per file (directories, globs, single files, `stdlib`): corpus.py's rules
  jsonl    one JSON record per line (`.jsonl`, `.ndjson`); a blank line is skipped
  json     a JSON array of records, or JSON lines (what `datasets`' to_json writes under `.json`)
  parquet  `.parquet` files; the record's fields are columns
  hf       a dir written by `datasets`' save_to_disk (dataset_info.json / state.json beside .arrow
           files, Arrow IPC streams); a DatasetDict dir (dataset_dict.json) reads its "train" split
"auto" is `hf` for such a dir, else the files' one suffix (.jsonl/.ndjson, .json, .parquet), else text.

Identity: the sorted (path, size, mtime_ns) of every selected file, hashed. Touching a file changes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.data.corpus import STDLIB, resolve_files, select_files
from orchestrator.errors import UserError

FORMATS = ("text", "jsonl", "json", "parquet", "hf")
# Suffixes a directory listing keeps for each structured format; "auto" needs all files to agree.
_SUFFIXES = {"jsonl": (".jsonl", ".ndjson"), "json": (".json",), "parquet": (".parquet",)}
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass(frozen=True)
class SourceFile:
    path: str  # absolute
    size: int
    mtime_ns: int


@dataclass
class Source:
    """What `resolve_source` found: the resolved spec, its format and the selected files (sorted)."""

    spec: str  # as the user gave it
    resolved: str  # "stdlib", or the absolute path / glob
    format: str  # one of FORMATS
    files: list[SourceFile]
    files_found: int  # before the `max_files` cap
    key: str = "data.source"  # the config key errors name
    schema_fields: list[str] = field(default_factory=list)  # columns (parquet / hf), else empty

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def identity(self) -> dict:
        """Manifest entry: what must match for prepared data to be reused."""
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(f"{f.path}\0{f.size}\0{f.mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return {
            "source": self.resolved,
            "format": self.format,
            "files": len(self.files),
            "bytes": self.bytes,
            "sha256": digest.hexdigest(),
        }


def _stat(path: Path) -> SourceFile:
    st = path.stat()
    return SourceFile(str(path), st.st_size, st.st_mtime_ns)


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in _HF_MARKERS)


def _hf_files(spec: str, root: Path, key: str) -> list[Path]:
    """The .arrow files of a save_to_disk dir, in the order its state.json lists them."""
    if (root / "dataset_dict.json").is_file():
        if not (root / "train").is_dir():
            splits = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise UserError(
                f"{key}={spec!r}: a DatasetDict without a 'train' split (splits: {', '.join(splits) or 'none'}); "
                f"point {key} at one split's dir"
            )
        root = root / "train"
    state = root / "state.json"
    try:
        names = [entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        names = sorted(p.name for p in root.glob("*.arrow"))
    files = [root / name for name in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{key}={spec!r}: missing data file {missing[0]} (listed in {state})")
    return files


def _auto_format(files: list[Path]) -> str:
    suffixes = {f.suffix.lower() for f in files}
    for fmt, known in _SUFFIXES.items():
        if suffixes and suffixes <= set(known):
            return fmt
    return "text"


def _list_dir(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        found += [Path(dirpath, n) for n in filenames if not n.startswith(".")]
    return sorted(found)


def resolve_source(
    spec: str, fmt: str = "auto", max_files: int | None = None, seed: int = 0, key: str = "data.source"
) -> Source:
    """Resolve `spec` into a `Source`. Raises `UserError` (one line naming `key`) for a path that does
    not exist, a glob that matches nothing, a format that does not fit, or a file that is not Parquet."""
    path = Path(spec).expanduser()
    if spec != STDLIB and (fmt == "hf" or (fmt == "auto" and is_hf_dir(path))):
        if not path.is_dir():
            raise UserError(f"{key}={spec!r}: data.format hf needs a dir written by datasets' save_to_disk")
        files, resolved, found_format = _hf_files(spec, path, key), str(path.resolve()), "hf"
    else:
        try:
            resolved, _root, files = resolve_files(spec)
        except UserError as exc:
            raise UserError(f"{key}: {exc}") from None
        if path.is_dir() and spec != STDLIB:
            every = _list_dir(path.resolve())
            structured = _auto_format(every) if fmt == "auto" else fmt
            if structured in _SUFFIXES:
                files = [f for f in every if f.suffix.lower() in _SUFFIXES[structured]]
        found_format = _auto_format(files) if fmt == "auto" else fmt
        if spec == STDLIB and fmt not in ("auto", "text"):
            raise UserError(f"data.format={fmt!r}: {key} 'stdlib' is text (use data.format auto or text)")
    if not files:
        if spec != STDLIB and not path.exists():
            raise UserError(f"{key}={spec!r}: no files found matching the glob")
        raise UserError(f"{key}={spec!r}: no files found under {resolved} (data.format {found_format})")
    selected = select_files(files, max_files, seed)
    source = Source(spec, resolved, found_format, [_stat(f) for f in selected], len(files), key)
    if found_format == "parquet":
        source.schema_fields = _parquet_fields(source)
    elif found_format == "hf":
        source.schema_fields = _arrow_fields(source.files[0].path, key)
    return source


def _parquet_fields(source: Source) -> list[str]:
    """Every file's footer read (a few KB each): a file that is not Parquet is named here, before Ray
    starts reading. Returns the first file's columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields: list[str] = []
    for f in source.files:
        try:
            schema = pq.read_schema(f.path)
        except (OSError, pa.ArrowException) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{source.key}: {f.path} is not a Parquet file ({reason})") from None
        fields = fields or list(schema.names)
    return fields


def _arrow_fields(path: str, key: str) -> list[str]:
    import pyarrow as pa

    try:
        with pa.memory_map(path) as stream:
            return list(pa.ipc.open_stream(stream).schema.names)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{key}: {path} is not an Arrow stream written by datasets ({exc})") from None


def first_record_fields(source: Source) -> tuple[list[str], str]:
    """The fields of the source's first record and where it is (file:line), reading only up to it.
    Text sources have one field, "text"."""
    from orchestrator.data.readers import first_json_record

    if source.format == "text":
        return ["text"], source.files[0].path
    if source.format in ("parquet", "hf"):
        return source.schema_fields, source.files[0].path
    for f in source.files:
        found = first_json_record(f.path)
        if found is not None:
            record, where = found
            return list(record), where
    raise UserError(
        f"{source.key}={source.spec!r}: nothing left after filtering: no JSON record in {len(source.files)} file(s)"
    )
