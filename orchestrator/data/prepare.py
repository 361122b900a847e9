"""Data preparation: corpus -> tokenizer + train/eval Parquet shards + manifest.json (the steps behind
`raydistill prepare-data`, orchestrator.commands.prepare_data).

The steps live in `corpus` (files -> documents), `tokenizer_training` (BPE or the teacher's tokenizer)
and `shards` (packing, split, Parquet, manifest; the on-disk layout is described there). This module
strings them together, decides when an existing output can be reused, and is the driver-side entry
point other code calls: `ensure_prepared(data_cfg, max_positions)`.

Reuse: an output whose manifest records the same settings (`SETTINGS_KEYS`: resolved source, corpus
content hash, tokenizer (`bpe:<vocab>` or its full identity), seq_len, eval fraction, seed, shard
size, format version) is returned as is.
An output dir that is non-empty without such a manifest is refused and left untouched.

Heavy libraries (numpy, pyarrow, tokenizers, transformers) are imported inside the functions: the CLI
imports this module at start-up for every command.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from orchestrator.config import DataConfig
from orchestrator.data.corpus import STDLIB, Corpus, read_corpus
from orchestrator.data.shard_check import check_prepared_shards
from orchestrator.errors import UserError

# Same values as `shards.MANIFEST` / the shard size default (not imported from there: shards pulls in pyarrow).
MANIFEST = "manifest.json"
ROWS_PER_SHARD = 4096
# Manifest keys that must all match for an existing output to be reused.
SETTINGS_KEYS = (
    "format_version",
    "source",
    "corpus_hash",
    "tokenizer",
    "seq_len",
    "eval_fraction",
    "seed",
    "rows_per_shard",
)
_ENCODE_BATCH_CHARS = 1 << 20


# ---------------------------------------------------------------------------------------------
# Progress on stderr: a tqdm bar while a stage runs (on a terminal only: tqdm's `disable=None`), then
# one line per finished stage, so logs and pipes get the stage lines and no "\r" soup.


class _Progress:
    def __init__(self, stream: TextIO | None = None, mininterval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.mininterval = mininterval  # seconds between redraws of a bar
        self.started = time.monotonic()
        self._bar: Any = None

    def bar(self, desc: str, total: int | None = None, unit: str = "it", **kwargs: Any):
        """A new tqdm bar for the stage now running (the previous one is closed)."""
        from tqdm import tqdm

        self.close()
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            file=self.stream,
            disable=None,
            leave=False,
            mininterval=self.mininterval,
            **kwargs,
        )
        return self._bar

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()  # leave=False: a terminal's bar line is cleared for the stage line
            self._bar = None

    def done(self, text: str) -> None:
        self.close()
        self.stream.write(text + "\n")
        self.stream.flush()


# ---------------------------------------------------------------------------------------------
# Settings and checks shared by the CLI and ensure_prepared.


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a prepared dir (`path` = the dir or its manifest.json). Raises `UserError`."""
    from orchestrator.data.shards import read_manifest as _read

    return _read(path)


def _model_max_positions(tokenizer: str | None) -> int | None:
    """max positions from `<tokenizer>/config.json` when the tokenizer is a local model dir (the teacher)."""
    if tokenizer is None:
        return None
    config = Path(tokenizer).expanduser() / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if isinstance(data.get(key), int):
            return data[key]
    return None


def check_seq_len(seq_len: int, max_positions: int | None) -> None:
    if max_positions is not None and seq_len > max_positions:
        raise UserError(f"seq_len {seq_len} is larger than the model's max positions {max_positions}")


@dataclass
class _Plan:
    """Everything read before any output is written: the corpus, the tokenizer (when given) and the
    settings an output must match to be reused."""

    data_cfg: DataConfig
    corpus: Corpus
    pretrained: Any  # a transformers tokenizer, or None to train a BPE
    settings: dict[str, Any]

    @property
    def key(self) -> str:
        """Short hash of the settings: the cache dir name used by `ensure_prepared`."""
        text = json.dumps(self.settings, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plan(data_cfg: DataConfig, rows_per_shard: int, progress: _Progress) -> _Plan:
    from orchestrator.data.shards import FORMAT_VERSION

    started = time.monotonic()
    bar = None

    def on_file(done: int, total: int) -> None:
        nonlocal bar
        bar = bar if bar is not None else progress.bar("reading corpus", total, unit="file")
        bar.update(done - bar.n)

    try:
        corpus = read_corpus(
            data_cfg.source, max_files=data_cfg.max_files, seed=data_cfg.seed, on_file=on_file
        )
    finally:
        progress.close()  # a refused corpus leaves no half-drawn bar before its error line
    progress.done(
        f"read {corpus.files_selected} of {corpus.files_found} files from {data_cfg.source}: "
        f"{len(corpus.documents)} documents, {corpus.skipped_undecodable} undecodable and "
        f"{corpus.skipped_empty} empty skipped ({time.monotonic() - started:.1f} s)"
    )
    pretrained = None
    if data_cfg.tokenizer is not None:
        from orchestrator.data.tokenizer_training import load_pretrained, tokenizer_hash

        pretrained = load_pretrained(data_cfg.tokenizer)
        tokenizer_spec = f"sha256:{tokenizer_hash(pretrained)}"
    else:
        tokenizer_spec = f"bpe:{data_cfg.vocab_size}"
    settings = {
        "format_version": FORMAT_VERSION,
        "source": corpus.source,
        "corpus_hash": corpus.content_hash,
        "tokenizer": tokenizer_spec,
        "seq_len": data_cfg.seq_len,
        "eval_fraction": data_cfg.eval_fraction,
        "seed": data_cfg.seed,
        "rows_per_shard": rows_per_shard,
    }
    return _Plan(data_cfg, corpus, pretrained, settings)


def _check_out_is_usable(out: Path) -> None:
    """Refuse (without touching it) an `out` that is a file or a non-empty dir without a manifest."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory; refusing to replace it")
    if (out / MANIFEST).is_file():
        read_manifest(out)  # unreadable or another format version: refused here
        return
    if any(out.iterdir()):
        raise UserError(
            f"output dir {out} is not empty and holds no {MANIFEST}; refusing to write into it "
            "(choose a new or empty dir)"
        )


def _differences(manifest: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    return [
        f"{key} {manifest.get(key)!r} (requested {value!r})"
        for key, value in settings.items()
        if manifest.get(key) != value
    ]


def _reusable(out: Path, plan: _Plan) -> dict[str, Any] | None:
    """The manifest of `out` when it matches the plan's settings; None when `out` is missing or empty.
    A manifest with other settings is refused, naming what differs."""
    if not (out / MANIFEST).is_file():
        return None
    manifest = read_manifest(out)
    diffs = _differences(manifest, plan.settings)
    if diffs:
        raise UserError(
            f"output dir {out} holds data prepared with other settings: {'; '.join(diffs)}; "
            "choose another output dir or delete it"
        )
    return manifest


# ---------------------------------------------------------------------------------------------
# Building an output.


def _build(plan: _Plan, out: Path, progress: _Progress) -> dict[str, Any]:
    from orchestrator.data import shards, tokenizer_training

    cfg, corpus = plan.data_cfg, plan.corpus
    with shards.staging_dir(out) as staging:
        tokenizer_dir = staging / "tokenizer"
        if plan.pretrained is None:
            started = time.monotonic()
            progress.bar(
                f"training byte-level BPE tokenizer (vocab {cfg.vocab_size})", bar_format="{desc} ..."
            )
            trained = tokenizer_training.train_bpe(corpus.documents, cfg.vocab_size)
            tokenizer_training.save_trained(trained, tokenizer_dir)
            tokenizer = tokenizer_training.load_pretrained(tokenizer_dir)
            tokenizer_source = "trained byte-level BPE"
            progress.done(
                f"trained byte-level BPE tokenizer: vocab {len(tokenizer)} ({time.monotonic() - started:.1f} s)"
            )
        else:
            tokenizer = plan.pretrained
            tokenizer.save_pretrained(str(tokenizer_dir))
            tokenizer_source = cfg.tokenizer
        encoder = tokenizer_training.text_encoder(tokenizer)

        started = time.monotonic()
        bar = progress.bar("tokenizing", len(corpus.documents), unit="doc")
        doc_ids: list = []  # one (n_i,) int32 array per document
        tokens = 0
        batch: list[str] = []
        batch_chars = 0
        for index, text in enumerate(corpus.documents):
            batch.append(text)
            batch_chars += len(text)
            if batch_chars >= _ENCODE_BATCH_CHARS or index == len(corpus.documents) - 1:
                encoded = encoder.encode(batch)
                doc_ids.extend(encoded)
                tokens += sum(len(ids) + 1 for ids in encoded)  # + eos per document
                batch, batch_chars = [], 0
                rate = tokens / max(time.monotonic() - started, 1e-9)
                bar.set_postfix_str(f"{tokens:,} tokens, {rate:,.0f} tok/s", refresh=False)
                bar.update(len(encoded))
        progress.done(
            f"tokenized {len(doc_ids)} documents: {tokens:,} tokens ({time.monotonic() - started:.1f} s)"
        )

        train_docs, eval_docs = shards.split_documents(
            [len(ids) + 1 for ids in doc_ids], cfg.eval_fraction, cfg.seed
        )
        train = shards.pack([doc_ids[i] for i in train_docs], cfg.seq_len, encoder.eos_id)
        train = shards.shuffle_rows(train, cfg.seed)  # eval keeps packing order: whole documents
        evaluation = shards.pack([doc_ids[i] for i in eval_docs], cfg.seq_len, encoder.eos_id)
        if len(train) == 0 or len(evaluation) == 0:
            raise UserError(
                f"corpus {cfg.source!r} is too small for seq_len {cfg.seq_len}: {tokens:,} tokens make "
                f"{len(train)} train and {len(evaluation)} eval sequences (need >= 1 each; use more files, "
                "a smaller seq_len or a larger eval fraction)"
            )
        rows_per_shard = plan.settings["rows_per_shard"]
        train_shards = shards.write_split(train, staging / "train", rows_per_shard)
        eval_shards = shards.write_split(evaluation, staging / "eval", rows_per_shard)

        manifest = {
            **plan.settings,
            "files_found": corpus.files_found,
            "files_read": corpus.files_selected,
            "skipped_undecodable": corpus.skipped_undecodable,
            "skipped_empty": corpus.skipped_empty,
            "documents": len(doc_ids),
            "tokens": tokens,
            "train_documents": len(train_docs),
            "eval_documents": len(eval_docs),
            "train_sequences": int(len(train)),
            "eval_sequences": int(len(evaluation)),
            "dropped_tokens": tokens - (len(train) + len(evaluation)) * cfg.seq_len,
            "train_shards": train_shards,
            "eval_shards": eval_shards,
            "vocab_size": encoder.vocab_size,
            # The largest id in the shards: checked against the models' embeddings before a run.
            "max_token_id": int(max(train.max(), evaluation.max())),
            "tokenizer_hash": tokenizer_training.tokenizer_hash(tokenizer),
            "tokenizer_source": tokenizer_source,
            "bos_id": encoder.bos_id,
            "eos_id": encoder.eos_id,
            "pad_id": encoder.pad_id,
            "max_files": cfg.max_files,
        }
        shards.write_manifest(staging, manifest)  # last: its presence marks a complete dir
    return manifest


def prepare(
    data_cfg: DataConfig,
    out: str | Path,
    max_positions: int | None = None,
    rows_per_shard: int = ROWS_PER_SHARD,
    progress: _Progress | None = None,
) -> tuple[Path, bool]:
    """Prepare `data_cfg.source` (a corpus) into `out`, or reuse `out` when its manifest matches.

    Returns (out, reused). Raises `UserError` for bad input, before writing anything.
    """
    out = Path(out)
    progress = progress if progress is not None else _Progress()
    if max_positions is None:
        max_positions = _model_max_positions(data_cfg.tokenizer)
    check_seq_len(data_cfg.seq_len, max_positions)
    _check_out_is_usable(out)
    plan = _plan(data_cfg, rows_per_shard, progress)
    return _prepare_planned(plan, out, progress)


def _prepare_planned(plan: _Plan, out: Path, progress: _Progress) -> tuple[Path, bool]:
    if _reusable(out, plan) is not None:
        print(f"reusing {out}: its manifest matches the requested settings")
        return out, True
    _check_out_is_usable(out)
    try:
        manifest = _build(plan, out, progress)
    except FileExistsError:
        # Another process finished the same output first: fine if it matches, refused otherwise.
        if _reusable(out, plan) is not None:
            print(f"reusing {out}: prepared meanwhile by another process")
            return out, True
        raise UserError(f"output dir {out} appeared while preparing data; not replacing it") from None
    print(
        f"prepared {out}: {manifest['files_read']} files, {manifest['documents']} documents, "
        f"{manifest['tokens']:,} tokens -> {manifest['train_sequences']} train + "
        f"{manifest['eval_sequences']} eval sequences of {manifest['seq_len']} (vocab {manifest['vocab_size']}) "
        f"in {time.monotonic() - progress.started:.1f} s"
    )
    return out, False


def ensure_prepared(data_cfg: DataConfig, max_positions: int | None = None) -> Path:
    """The prepared dir for `data_cfg`: `data_cfg.source` itself when it is one (holds manifest.json),
    else `<data_cfg.cache_dir>/<hash of the settings>`, prepared now or reused from an earlier run.

    Returns an absolute path (Ray workers run in another cwd). `max_positions` (the model's) refuses a
    seq_len the model cannot take. Raises `UserError`.
    """
    source = Path(data_cfg.source).expanduser()
    if data_cfg.source != STDLIB and (source / MANIFEST).is_file():
        manifest = read_manifest(source)
        if manifest["seq_len"] != data_cfg.seq_len:
            raise UserError(
                f"data.source {source} was prepared with seq_len {manifest['seq_len']}, "
                f"but data.seq_len is {data_cfg.seq_len}"
            )
        check_seq_len(manifest["seq_len"], max_positions)
        check_prepared_shards(source, manifest)
        return source.resolve()
    if max_positions is None:
        max_positions = _model_max_positions(data_cfg.tokenizer)
    check_seq_len(data_cfg.seq_len, max_positions)
    progress = _Progress()
    plan = _plan(data_cfg, ROWS_PER_SHARD, progress)
    out = Path(data_cfg.cache_dir).expanduser() / plan.key
    if not (out / MANIFEST).is_file():
        twin = _same_tokens_in_cache(out.parent, plan)
        if twin is not None:
            print(
                f"reusing {twin}: the same corpus and settings, tokenised by a tokenizer with the same "
                f"content and special tokens ({plan.settings['tokenizer'][:19]}...)"
            )
            check_prepared_shards(twin, read_manifest(twin))
            return twin.resolve()
    out, reused = _prepare_planned(plan, out, progress)
    if reused:
        check_prepared_shards(out, read_manifest(out))
    return out.resolve()


def _same_tokens_in_cache(cache_root: Path, plan: _Plan) -> Path | None:
    """A cache entry holding exactly the shards `plan` would write: the same corpus and settings,
    tokenised by a tokenizer of the same full identity (workers/tokenizer_identity.py: special tokens
    and chat template too, not `tokenizer.json` alone). The demo's pre-trained teacher brings a copy of
    the BPE trained for its own data, so the distillation finds that data here instead of tokenising
    the corpus again. Entries are keyed by how the tokenizer was named (`bpe:<vocab>` or
    `sha256:<identity>`), hence this search by identity."""
    if plan.pretrained is None or not cache_root.is_dir():
        return None
    tokenizer_hash = plan.settings["tokenizer"].removeprefix("sha256:")
    others = {k: v for k, v in plan.settings.items() if k != "tokenizer"}
    for manifest_path in sorted(cache_root.glob(f"*/{MANIFEST}")):
        try:
            manifest = read_manifest(manifest_path.parent)
        except UserError:
            continue  # unreadable or another format: never a match
        if manifest.get("tokenizer_hash") == tokenizer_hash and not _differences(manifest, others):
            return manifest_path.parent
    return None
