"""Resolve a corpus source into text documents: the first step of `raydistill prepare-data`.

A source is one of:

- `stdlib`: the Python standard library's `.py` files under `sysconfig.get_paths()["stdlib"]`, present on
  every machine. Skipped: `site-packages`/`dist-packages` (whatever happens to be installed is not the
  stdlib and would make the corpus differ between machines), the test suites (`test`, `tests`,
  `idle_test`: large, and full of deliberately malformed code and data blobs) and `__pycache__`.
  To use a directory that is literally called `stdlib`, write `./stdlib`.
- a directory: every text-like file below it, recursively, in sorted order. Text-like = not hidden (no
  path part starting with "."), not in `__pycache__`, and not a known binary suffix (`.pyc`, images,
  archives, Parquet, ...). Whatever passes is then read as UTF-8, as below.
- a single file.
- a glob (`corpus/**/*.txt`, `**` recursive): exactly the files it matches, in sorted order.

Every selected file is read as strict UTF-8 (a leading BOM is dropped). A file that does not decode, or
that holds NUL bytes (binary that slipped through), is skipped and counted; a file that is empty or
whitespace only is skipped and counted. Only when nothing is left is it an error.

Light module (stdlib only): the CLI imports it at start-up.
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import UserError

STDLIB = "stdlib"
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_BINARY_SUFFIXES = frozenset(
    {
        ".pyc", ".pyo", ".so", ".dll", ".dylib", ".o", ".a", ".exe", ".bin", ".pt", ".pth", ".safetensors",
        ".npy", ".npz", ".pkl", ".pickle", ".parquet", ".arrow", ".db", ".sqlite",
        ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".tif", ".tiff", ".pdf",
        ".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".tar", ".whl", ".egg", ".jar",
        ".mp3", ".wav", ".flac", ".ogg", ".mp4", ".mov", ".avi", ".woff", ".woff2", ".ttf", ".otf",
    }
)  # fmt: skip
_GLOB_CHARS = frozenset("*?[")


@dataclass
class Corpus:
    """The decoded documents of a corpus, one per non-empty UTF-8 file, in sorted file order."""

    # "stdlib", or the absolute directory / file / glob the source resolved to.
    source: str
    # Names of the kept files (relative to the corpus root), aligned with `documents`.
    names: list[str]
    documents: list[str]
    # Files selected (after the `max_files` cap), before decoding and filtering.
    files_selected: int
    files_found: int
    skipped_undecodable: int = 0
    skipped_empty: int = 0
    # sha256 over the selected files' relative names and bytes: identifies the corpus content.
    content_hash: str = field(default="")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _is_text_like(relative: Path) -> bool:
    parts = relative.parts
    if any(part.startswith(".") or part == "__pycache__" for part in parts):
        return False
    return relative.suffix.lower() not in _BINARY_SUFFIXES


def _walk_sorted(
    root: Path, keep_dir: Callable[[str], bool], keep_file: Callable[[Path], bool]
) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if keep_dir(d))
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_file() and keep_file(path.relative_to(root)):
                found.append(path)
    return sorted(found)


def resolve_files(source: str) -> tuple[str, Path, list[Path]]:
    """`source` -> (resolved source, root the names are relative to, sorted files). Raises `UserError`."""
    if source == STDLIB:
        root = stdlib_dir()
        files = _walk_sorted(
            root,
            keep_dir=lambda d: d not in _STDLIB_SKIP_DIRS and not d.startswith("."),
            keep_file=lambda rel: rel.suffix == ".py",
        )
        return STDLIB, root, files
    path = Path(source).expanduser()
    if path.is_dir():
        root = path.resolve()
        return str(root), root, _walk_sorted(root, lambda d: not d.startswith("."), _is_text_like)
    if path.is_file():
        resolved = path.resolve()
        return str(resolved), resolved.parent, [resolved]
    if any(ch in source for ch in _GLOB_CHARS):
        pattern = os.path.abspath(os.path.expanduser(source))
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        root = Path(os.path.commonpath([str(f.parent) for f in files])) if files else Path(pattern).parent
        return pattern, root, files
    raise UserError(
        f"corpus {source!r}: no such file or directory (give a directory, a file, a glob or 'stdlib')"
    )


def select_files(files: list[Path], max_files: int | None, seed: int) -> list[Path]:
    """At most `max_files` of `files`, a seeded random sample (not just the first ones), kept sorted."""
    if max_files is None or len(files) <= max_files:
        return list(files)
    return sorted(random.Random(seed).sample(list(files), max_files))


def _decode(data: bytes) -> str | None:
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def read_corpus(
    source: str,
    max_files: int | None = None,
    seed: int = 0,
    on_file: Callable[[int, int], None] | None = None,
) -> Corpus:
    """Resolve, select and decode a corpus. `on_file(done, total)` is called after each file is read.

    Raises `UserError` (one line) when no file is found or nothing is left after decoding and filtering.
    """
    resolved, root, files = resolve_files(source)
    if not files:
        where = f"under {root}" if source == STDLIB or Path(source).is_dir() else "matching it"
        raise UserError(f"corpus {source!r}: no files found {where}")
    selected = select_files(files, max_files, seed)

    digest = hashlib.sha256()
    names: list[str] = []
    documents: list[str] = []
    undecodable = empty = 0
    for done, path in enumerate(selected, start=1):
        name = path.relative_to(root).as_posix()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"corpus {source!r}: cannot read {path}: {exc.strerror}") from None
        # Length-prefixed name and content: no two different file lists hash alike.
        encoded_name = name.encode("utf-8", "surrogateescape")
        digest.update(b"%d:%s%d:" % (len(encoded_name), encoded_name, len(data)))
        digest.update(data)
        text = _decode(data)
        if text is None:
            undecodable += 1
        elif not text.strip():
            empty += 1
        else:
            names.append(name)
            documents.append(text)
        if on_file is not None:
            on_file(done, len(selected))

    if not documents:
        raise UserError(
            f"corpus {source!r}: nothing left after filtering: {len(selected)} file(s) read, "
            f"{undecodable} not UTF-8 text, {empty} empty or whitespace-only"
        )
    return Corpus(
        source=resolved,
        names=names,
        documents=documents,
        files_selected=len(selected),
        files_found=len(files),
        skipped_undecodable=undecodable,
        skipped_empty=empty,
        content_hash=digest.hexdigest(),
    )
