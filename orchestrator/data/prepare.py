"""Data preparation: corpus -> tokenizer + train/eval Parquet shards + manifest.json (the steps behind
`raydistill prepare-data`, orchestrator.commands.prepare_data).

The steps live in `sources` (the source's format and files, listed on the driver), `tokenizer_training`
(BPE or the teacher's tokenizer), `pipeline` (Ray Data: read, tokenise, pack, split, write) and `shards`
(the on-disk layout, the staging dir, the manifest). This module strings them together, decides when an
existing output can be reused, and is the driver-side entry point other code calls:
`ensure_prepared(data_cfg, max_positions)`.

Reuse: an output whose manifest records the same settings (`_Plan.settings`: the source's identity
(files, sizes, mtimes), format, text field, record kind and loss rule, the eval split or eval source,
the tokenizer (`bpe:<vocab>` or its full identity), seq_len, seed, shard size, format version) is
returned as is.
An output dir that is non-empty without such a manifest is refused and left untouched.

Heavy libraries (numpy, pyarrow, tokenizers, transformers) are imported inside the functions: the CLI
imports this module at start-up for every command.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from orchestrator.config import DataConfig
from orchestrator.data.corpus import STDLIB
from orchestrator.data.shard_check import check_prepared_shards
from orchestrator.data.sources import Source, resolve_source
from orchestrator.errors import DataError, UserError

# Same values as `shards.MANIFEST` / the shard size default (not imported from there: shards pulls in pyarrow).
MANIFEST = "manifest.json"
ROWS_PER_SHARD = 4096
# Manifest keys that must all match for an existing output to be reused.


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
    """Everything decided before any output is written: the sources (listed, not read), the record
    kind and loss rule, the tokenizer (when given) and the settings an output must match to be reused."""

    data_cfg: DataConfig
    source: Source
    eval_source: Source | None
    kind: str
    loss_on: str
    pretrained: Any  # a transformers tokenizer, or None to train a BPE
    settings: dict[str, Any]

    @property
    def key(self) -> str:
        """Short hash of the settings: the cache dir name used by `ensure_prepared`."""
        text = json.dumps(self.settings, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def text_field(self) -> str:
        """The field the encoder reads: text files become {"text": document} records."""
        return "text" if self.source.format == "text" else self.data_cfg.text_field


def _kind(source: Source, text_field: str) -> str:
    from orchestrator.data.records import record_kind
    from orchestrator.data.sources import first_record_fields

    fields, where = first_record_fields(source)
    return record_kind(fields, "text" if source.format == "text" else text_field, where)


def check_sources(data_cfg: DataConfig) -> tuple[Source, Source | None, str, str]:
    """List the source (and eval source), read their first record, check `data.loss_on` against the
    record kind. Reads no more than headers: training's preflight calls it before Ray starts.
    Returns (source, eval source, record kind, resolved loss_on)."""
    from orchestrator.data.records import resolve_loss_on

    source = resolve_source(data_cfg.source, data_cfg.format, data_cfg.max_files, data_cfg.seed)
    kind = _kind(source, data_cfg.text_field)
    eval_source = None
    if data_cfg.eval_source is not None:
        eval_source = resolve_source(data_cfg.eval_source, data_cfg.format, key="data.eval_source")
        eval_kind = _kind(eval_source, data_cfg.text_field)
        if eval_kind != kind:
            raise UserError(
                f"data.eval_source={data_cfg.eval_source!r} holds {eval_kind} records, data.source {kind} records"
            )
    return source, eval_source, kind, resolve_loss_on(data_cfg.loss_on, kind)


def _plan(data_cfg: DataConfig, rows_per_shard: int, progress: _Progress) -> _Plan:
    from orchestrator.data.shards import FORMAT_VERSION

    source, eval_source, kind, loss_on = check_sources(data_cfg)
    progress.done(
        f"found {len(source.files)} of {source.files_found} {source.format} files in {source.resolved} "
        f"({source.bytes / 1e6:,.1f} MB): {kind} records, loss on {loss_on} tokens"
    )
    pretrained = None
    if data_cfg.tokenizer is not None:
        from orchestrator.data.tokenizer_training import load_pretrained, tokenizer_hash

        pretrained = load_pretrained(data_cfg.tokenizer)
        tokenizer_spec = f"sha256:{tokenizer_hash(pretrained)}"
    else:
        tokenizer_spec = f"bpe:{data_cfg.vocab_size}"
    identity = source.identity()
    settings = {
        "format_version": FORMAT_VERSION,
        "source": source.resolved,
        "source_identity": identity,
        "eval_source": None if eval_source is None else eval_source.identity(),
        "format": source.format,
        "text_field": None if source.format == "text" else data_cfg.text_field,
        "record_kind": kind,
        "loss_on": loss_on,
        "tokenizer": tokenizer_spec,
        "seq_len": data_cfg.seq_len,
        "eval_fraction": None if eval_source is not None else data_cfg.eval_fraction,
        "seed": data_cfg.seed,
        "rows_per_shard": rows_per_shard,
    }
    return _Plan(data_cfg, source, eval_source, kind, loss_on, pretrained, settings)


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


def _train_bpe(plan: _Plan, directory: Path, progress: _Progress) -> None:
    """A byte-level BPE trained on the source's texts, streamed from its files one at a time."""
    from orchestrator.data import tokenizer_training
    from orchestrator.data.readers import iter_texts

    started = time.monotonic()
    cfg = plan.data_cfg
    progress.bar(f"training byte-level BPE tokenizer (vocab {cfg.vocab_size})", bar_format="{desc} ...")
    texts = iter_texts([f.path for f in plan.source.files], plan.source.format, plan.kind, plan.text_field)
    # Chat data gets ChatML's tokens and template (tokenizer_training.train_chat_bpe).
    train = tokenizer_training.train_chat_bpe if plan.kind == "chat" else tokenizer_training.train_bpe
    trained = train(texts, cfg.vocab_size)
    tokenizer_training.save_trained(trained, directory)
    progress.done(
        f"trained byte-level BPE tokenizer: vocab {trained.get_vocab_size()} ({time.monotonic() - started:.1f} s)"
    )


def _pipeline_spec(plan: _Plan, tokenizer: Any) -> Any:
    from orchestrator.data.pipeline import PipelineSpec

    cfg = plan.data_cfg
    eval_files: frozenset = frozenset()
    if plan.eval_source is not None:
        split = "source"
    elif plan.source.format == "text":
        # One document per file: split by whole files (sizes stand in for token counts).
        from orchestrator.data.shards import split_documents

        files = plan.source.files
        _, eval_index = split_documents([f.size for f in files], cfg.eval_fraction, cfg.seed)
        split, eval_files = "files", frozenset(files[i].path for i in eval_index)
    else:
        split = "records"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return PipelineSpec(
        kind=plan.kind,
        text_field=plan.text_field,
        loss_on=plan.loss_on,
        seq_len=cfg.seq_len,
        seed=cfg.seed,
        eval_fraction=cfg.eval_fraction,
        split=split,
        pad_id=pad_id,
        eval_files=eval_files,
    )


def _check_totals(plan: _Plan, totals: dict[str, Any]) -> None:
    """Refuse outputs a run cannot use (the staging dir is then deleted, no manifest written)."""
    cfg = plan.data_cfg
    if totals.get("documents", 0) == 0:
        raise UserError(
            f"data.source {cfg.source!r}: nothing left after filtering: {len(plan.source.files)} file(s) read, "
            f"{totals.get('skipped_undecodable', 0)} not UTF-8 text, {totals.get('skipped_empty', 0)} empty "
            "or whitespace-only"
        )
    without = totals.get("without_target", 0)
    if without == totals["documents"]:
        raise DataError(
            f"data.loss_on={plan.loss_on!r}: none of the {without} {plan.kind} records has a token to train "
            f"on (no {'assistant turn' if plan.kind == 'chat' else 'completion'}); use data.loss_on: all"
        )
    train, evaluation = totals.get("train_sequences", 0), totals.get("eval_sequences", 0)
    if train == 0 or evaluation == 0:
        raise UserError(
            f"corpus {cfg.source!r} is too small for seq_len {cfg.seq_len}: {totals.get('tokens', 0):,} tokens "
            f"make {train} train and {evaluation} eval sequences (need >= 1 each; use more files, a smaller "
            "seq_len, a larger eval fraction or data.eval_source)"
        )


def _ensure_ray(verbose: bool = False) -> None:
    """Ray Data needs Ray: join or start it as training does (a caller that starts it first, with its
    own workers' CPUs, keeps its instance)."""
    import ray

    if not ray.is_initialized():
        from orchestrator.train.ray_session import ensure_ray

        ensure_ray(num_workers=1, cpus_per_worker=1.0, verbose=verbose)


def _build(
    plan: _Plan, out: Path, progress: _Progress, start_ray: Callable[[], None] | None = None
) -> dict[str, Any]:
    from orchestrator.data import pipeline, shards, tokenizer_training
    from orchestrator.data.readers import kind_columns
    from orchestrator.data.records import Encoder

    cfg = plan.data_cfg
    with shards.staging_dir(out) as staging:
        tokenizer_dir = staging / "tokenizer"
        if plan.pretrained is None:
            _train_bpe(plan, tokenizer_dir, progress)
            tokenizer = tokenizer_training.load_pretrained(tokenizer_dir)
            tokenizer_source = "trained byte-level BPE"
        else:
            tokenizer = plan.pretrained
            tokenizer.save_pretrained(str(tokenizer_dir))
            tokenizer_source = cfg.tokenizer
        # Built once here first: a tokenizer the records cannot use (no chat template...) is refused
        # on the driver, before any Ray Data task.
        Encoder(tokenizer, plan.kind, plan.text_field, plan.loss_on, cfg.seq_len)
        spec = _pipeline_spec(plan, tokenizer)
        sources = [(plan.source, False)] + ([(plan.eval_source, True)] if plan.eval_source else [])
        (start_ray or _ensure_ray)()
        totals = pipeline.run(
            sources,
            spec,
            kind_columns(plan.kind, plan.text_field),
            tokenizer,
            staging,
            plan.settings["rows_per_shard"],
            progress,
        )
        _check_totals(plan, totals)
        # Text is packed, every token trained; chat / pair rows are padded samples with a loss mask.
        columns = ["input_ids"] if plan.kind == "text" else ["input_ids", "loss_mask", "attention_mask"]
        manifest = {
            **plan.settings,
            "corpus_hash": plan.settings["source_identity"]["sha256"],
            "columns": columns,
            "files_found": plan.source.files_found,
            "files_read": len(plan.source.files),
            "source_files": [[f.path, f.size, f.mtime_ns] for f in plan.source.files],
            "skipped_undecodable": totals.get("skipped_undecodable", 0),
            "skipped_empty": totals.get("skipped_empty", 0),
            "documents": totals["documents"],
            "tokens": totals.get("tokens", 0),
            "trained_tokens": totals.get("trained_tokens", 0),
            "truncated": totals.get("truncated", 0),
            "without_target": totals.get("without_target", 0),
            "train_documents": totals.get("train_documents", 0),
            "eval_documents": totals.get("eval_documents", 0),
            "train_sequences": totals["train_sequences"],
            "eval_sequences": totals["eval_sequences"],
            "dropped_tokens": totals.get("dropped_tokens", 0),
            "train_shards": totals["train_shards"],
            "eval_shards": totals["eval_shards"],
            "vocab_size": len(tokenizer),
            # The largest id in the shards: checked against the models' embeddings before a run.
            "max_token_id": totals["max_token_id"],
            "tokenizer_hash": tokenizer_training.tokenizer_hash(tokenizer),
            "tokenizer_source": tokenizer_source,
            "bos_id": tokenizer.bos_token_id,
            "eos_id": tokenizer.eos_token_id,
            "pad_id": tokenizer.pad_token_id,
            "max_files": cfg.max_files,
        }
        check_prepared_shards(staging, manifest)  # Ray wrote the files: their footers agree with the counts
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


def _prepare_planned(
    plan: _Plan, out: Path, progress: _Progress, start_ray: Callable[[], None] | None = None
) -> tuple[Path, bool]:
    if _reusable(out, plan) is not None:
        print(f"reusing {out}: its manifest matches the requested settings")
        return out, True
    _check_out_is_usable(out)
    try:
        manifest = _build(plan, out, progress, start_ray)
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


def ensure_prepared(
    data_cfg: DataConfig, max_positions: int | None = None, start_ray: Callable[[], None] | None = None
) -> Path:
    """The prepared dir for `data_cfg`: `data_cfg.source` itself when it is one (holds manifest.json),
    else `<data_cfg.cache_dir>/<hash of the settings>`, prepared now or reused from an earlier run.

    Returns an absolute path (Ray workers run in another cwd). `max_positions` (the model's) refuses a
    seq_len the model cannot take. `start_ray` starts Ray (sized for the caller's run) only when data
    must be prepared: reused data starts none. Raises `UserError`.
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
    out, reused = _prepare_planned(plan, out, progress, start_ray)
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
