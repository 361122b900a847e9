"""The Ray Data pipeline of `prepare-data`: read -> tokenise (actor pool) -> pack / pad -> split ->
write_parquet, into a staging dir (orchestrator/data/shards.py writes the manifest and renames it).

    read_datasource(RecordsDatasource)      read tasks: files -> Arrow blocks (orchestrator/data/readers.py)
      .map_batches(Tokenize, concurrency=n) each actor unpickles the tokenizer once, encodes with
                                            records.Encoder, packs (text) or pads (chat/pair), marks
                                            each row's split, and adds its counts to a stats actor
      .write_parquet(partition_cols=[split]) -> <staging>/rows/split=train|eval/*.parquet

then the files are moved to <staging>/train and <staging>/eval. The driver holds no rows: the counts
(documents, tokens, ...) come from a stats actor each tokenising actor reports to, synchronously per
batch, so the totals are complete when the write returns.

Split: with `data.eval_source` every row of it is eval and none of the source; a text source (one
document per file) is split by whole files on the driver (shards.split_documents over file sizes,
so a small corpus still gets an eval document); records are split each by a seeded hash of where they
are (file:line), so the split does not depend on how Ray batches them.

Order of train rows: a seeded permutation inside each batch, then the train files are renamed in a
seeded random order (readers stream files in name order). Not a global shuffle, which would need all
rows at once; each file mixes the documents of its batches. Execution preserves order, so the same
inputs and seed give the same shards.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.data.sources import Source
from orchestrator.errors import DataError, UserError

# Records per tokenising batch: text files are whole documents (KBs each), records are short.
BATCH_FILES = 32
BATCH_RECORDS = 1024
_POLL_S = 0.5


@dataclass
class PipelineSpec:
    """Everything the tokenising actors need; pickled once into each actor."""

    kind: str  # records.RECORD_KINDS
    text_field: str  # the field the encoder reads ("text" for text files)
    loss_on: str  # resolved: all / assistant / completion
    seq_len: int
    seed: int
    eval_fraction: float
    split: str  # "files" (text source), "records" (hash per record), "source" (data.eval_source)
    pad_id: int
    eval_files: frozenset = field(default_factory=frozenset)  # split == "files"


def _eval_by_hash(where: str, seed: int, fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}\0{where}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < fraction


class Tokenize:
    """A Ray Data actor: one tokenizer per process, one `records.Encoder`, called per batch."""

    def __init__(self, payload: list, stats: Any) -> None:
        import ray

        from orchestrator.data.records import Encoder

        # (tokenizer, spec) come as an object ref inside a list: fetched once here, and not an actor
        # argument held in the object store (which Ray warns about at every actor start).
        tokenizer, spec = ray.get(payload[0])
        self.spec = spec
        self.stats = stats
        self.encoder = Encoder(tokenizer, spec.kind, spec.text_field, spec.loss_on, spec.seq_len)

    def __call__(self, block: Any) -> Any:
        import pyarrow as pa
        import ray

        from orchestrator.data.packing import list_column
        from orchestrator.data.readers import block_records
        from orchestrator.data.records import record_kind

        spec = self.spec
        records, wheres, skips = block_records(block)
        is_eval_source = block.column("_eval").to_pylist() if "_eval" in block.schema.names else None
        counts: Counter = Counter()
        keep = []
        for index, skip in enumerate(skips):
            if skip is not None:
                counts[f"skipped_{skip}"] += 1
            else:
                keep.append(index)
        if spec.split != "source" and "_text" not in block.schema.names:
            for index in keep:  # JSON records may differ from the first one
                kind = record_kind(records[index], spec.text_field, wheres[index])
                if kind != spec.kind:
                    raise DataError(f"{wheres[index]}: a {kind} record in a source of {spec.kind} records")
        kept_records = [records[i] for i in keep]
        kept_wheres = [wheres[i] for i in keep]
        encoded = self.encoder.encode(kept_records, kept_wheres) if keep else None
        tables = []
        for split in ("train", "eval"):
            chosen = [
                j
                for j, i in enumerate(keep)
                if self._is_eval(wheres[i], is_eval_source, i) == (split == "eval")
            ]
            counts[f"{split}_documents"] += len(chosen)
            if not chosen:
                continue
            columns = self._rows([encoded.ids[j] for j in chosen], encoded, chosen, counts, split)
            if columns is None:
                continue
            input_ids, loss_mask, attention = columns
            if split == "train":  # seeded order inside the batch (see the module docstring)
                order = np.random.default_rng(self._batch_seed(kept_wheres[0])).permutation(len(input_ids))
                input_ids = input_ids[order]
                loss_mask = None if loss_mask is None else loss_mask[order]
                attention = None if attention is None else attention[order]
            data = {"input_ids": list_column(input_ids, pa.int32())}
            if loss_mask is not None:
                data["loss_mask"] = list_column(loss_mask, pa.int8())
                counts["trained_tokens"] += int(loss_mask.sum())
            elif attention is not None:
                counts["trained_tokens"] += int(attention.sum())
            else:
                counts["trained_tokens"] += int(input_ids.size)
            if attention is not None:
                data["attention_mask"] = list_column(attention, pa.int8())
            data["split"] = pa.array([split] * len(input_ids))
            counts[f"{split}_sequences"] += len(input_ids)
            counts["max_token_id"] = max(counts["max_token_id"], int(input_ids.max()))
            tables.append(pa.table(data))
        if encoded is not None:
            counts["documents"] += len(keep)
            counts["tokens"] += sum(len(ids) for ids in encoded.ids)
            counts["truncated"] += encoded.truncated
            counts["without_target"] += encoded.without_target
        ray.get(self.stats.add.remote(dict(counts)))
        if not tables:
            return self._empty()
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def _is_eval(self, where: str, is_eval_source: list | None, index: int) -> bool:
        spec = self.spec
        if spec.split == "source":
            return bool(is_eval_source[index]) if is_eval_source is not None else False
        if spec.split == "files":
            return where in spec.eval_files
        return _eval_by_hash(where, spec.seed, spec.eval_fraction)

    def _batch_seed(self, first_where: str) -> int:
        text = f"{self.spec.seed}\0{first_where}".encode("utf-8", "surrogateescape")
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")

    def _rows(self, ids: list, encoded: Any, chosen: list[int], counts: Counter, split: str):
        from orchestrator.data.packing import pack_text, pad_samples

        spec = self.spec
        masks = None if encoded.loss_mask is None else [encoded.loss_mask[j] for j in chosen]
        if spec.kind == "text":
            input_ids, loss_mask, dropped = pack_text(ids, masks, spec.seq_len)
            counts["dropped_tokens"] += dropped
            return (input_ids, loss_mask, None) if len(input_ids) else None
        if masks is not None:  # a sample with nothing to train on is left out (counted as without_target)
            kept = [k for k, m in enumerate(masks) if m.any()]
            ids, masks = [ids[k] for k in kept], [masks[k] for k in kept]
            if not ids:
                return None
        return pad_samples(ids, masks, spec.seq_len, spec.pad_id)

    def _empty(self):
        import pyarrow as pa

        return pa.table(
            {"input_ids": pa.array([], type=pa.list_(pa.int32())), "split": pa.array([], pa.string())}
        )


class Stats:
    """Totals of the counts each tokenising actor reports (a Ray actor, no CPU)."""

    def __init__(self) -> None:
        self.totals: Counter = Counter()

    def add(self, counts: dict) -> None:
        for key, value in counts.items():
            if key == "max_token_id":
                self.totals[key] = max(self.totals.get(key, -1), value)
            else:
                self.totals[key] += value

    def get(self) -> dict:
        return dict(self.totals)


def user_error_in(exc: BaseException) -> UserError | None:
    """The `UserError` (e.g. a `DataError` from a read task or an actor) inside Ray's wrapping of it,
    or None. Ray's RayTaskError subclasses the cause's class but its text is a whole traceback: the
    original, one-line exception is its `cause`."""
    from ray.exceptions import RayError

    stack: list[Any] = [exc]
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, UserError) and not isinstance(current, RayError):
            return current
        stack += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


def _actor_count() -> int:
    import ray

    # One CPU is left to the read and write tasks: with every CPU in the pool they would never run.
    return max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)


def build_dataset(
    sources: list[tuple[Source, bool]], spec: PipelineSpec, columns: list[str], tokenizer, stats
):
    """The lazy Dataset of packed rows. `sources` = (source, is eval source) pairs."""
    import pyarrow as pa
    import ray.data

    from orchestrator.data.readers import records_datasource

    datasets = []
    for source, is_eval in sources:
        ds = ray.data.read_datasource(
            records_datasource([f.path for f in source.files], source.format, columns),
            override_num_blocks=max(1, min(len(source.files), 4 * _actor_count() * 8)),
        )
        if spec.split == "source":
            ds = ds.map_batches(
                lambda t, flag=is_eval: t.append_column("_eval", pa.array([flag] * t.num_rows)),
                batch_format="pyarrow",
                batch_size=None,
            )
        datasets.append(ds)
    ds = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    import warnings

    import ray
    from ray.data import ActorPoolStrategy

    with warnings.catch_warnings():
        # max_restarts goes through Ray's deprecated **ray_remote_args, the way Ray's own comment
        # says to turn restarts off (actor_pool_map_operator.py); without it every actor start logs
        # an error line about restartable actors with arguments in the object store.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return ds.map_batches(
            Tokenize,
            fn_constructor_args=([ray.put((tokenizer, spec))], stats),
            batch_size=BATCH_FILES if sources[0][0].format == "text" else BATCH_RECORDS,
            batch_format="pyarrow",
            # Grows with the input: a one-file source is one read block, one actor.
            compute=ActorPoolStrategy(min_size=1, max_size=_actor_count()),
            num_cpus=1,
            # A failing batch is bad data, not a lost node: retrying it would fail again.
            max_restarts=0,
        )


def run(
    sources: list[tuple[Source, bool]],
    spec: PipelineSpec,
    columns: list[str],
    tokenizer: Any,
    staging: Path,
    rows_per_shard: int,
    progress: Any,
    verbose: bool = False,
) -> dict:
    """Write <staging>/train and <staging>/eval; return the totals (documents, tokens, sequences, ...).
    Raises the `UserError` behind a failing read task or actor as itself (one line)."""
    import logging

    import ray
    import ray.data

    from workers import ray_console

    context = ray.data.DataContext.get_current()
    data_logger = logging.getLogger("ray.data")
    saved_level = data_logger.level
    if not verbose:  # "execution finished", "progress bars disabled": our bar and lines say it
        data_logger.setLevel(logging.ERROR)
    saved = (
        context.execution_options.preserve_order,
        context.enable_progress_bars,
        context.print_on_execution_start,
    )
    ray_console.quiet_ray_data(context, verbose)
    context.execution_options.preserve_order = True  # the same inputs and seed give the same shards
    stats = ray.remote(num_cpus=0)(Stats).remote()
    rows_dir = staging / "rows"
    failure: list[BaseException] = []

    def write() -> None:
        try:
            build_dataset(sources, spec, columns, tokenizer, stats).write_parquet(
                str(rows_dir), partition_cols=["split"], max_rows_per_file=rows_per_shard
            )
        except BaseException as exc:  # re-raised on the calling thread
            failure.append(exc)

    started = time.monotonic()
    bar = progress.bar("tokenizing", unit="tok", unit_scale=True)
    thread = threading.Thread(target=write, name="raydistill-prepare", daemon=True)
    try:
        thread.start()
        while thread.is_alive():
            thread.join(_POLL_S)
            totals = ray.get(stats.get.remote())
            bar.update(totals.get("tokens", 0) - bar.n)
            bar.set_postfix_str(f"{totals.get('documents', 0):,} records", refresh=False)
        totals = ray.get(stats.get.remote())
    finally:
        progress.close()
        (
            context.execution_options.preserve_order,
            context.enable_progress_bars,
            context.print_on_execution_start,
        ) = saved
        data_logger.setLevel(saved_level)
        ray.kill(stats)
    if failure:
        found = user_error_in(failure[0])
        if found is not None:
            raise type(found)(str(found).strip().splitlines()[0]) from None
        raise failure[0]
    elapsed = time.monotonic() - started
    tokens = totals.get("tokens", 0)
    progress.done(
        f"tokenized {totals.get('documents', 0):,} records: {tokens:,} tokens "
        f"({elapsed:.1f} s, {tokens / max(elapsed, 1e-9):,.0f} tokens/s)"
    )
    totals["train_shards"] = _move_split(rows_dir / "split=train", staging / "train", spec.seed, shuffle=True)
    totals["eval_shards"] = _move_split(rows_dir / "split=eval", staging / "eval", spec.seed, shuffle=False)
    shutil.rmtree(rows_dir, ignore_errors=True)
    return totals


def _move_split(written: Path, directory: Path, seed: int, shuffle: bool) -> int:
    """Move Ray's files into `directory` as part-#####.parquet, in a seeded random order for train."""
    files = sorted(written.rglob("*.parquet")) if written.is_dir() else []
    directory.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(files)) if shuffle else np.arange(len(files))
    for index, position in enumerate(order):
        os.replace(files[position], directory / f"part-{index:05d}.parquet")
    return len(files)
