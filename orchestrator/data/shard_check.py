"""Refuse a prepared data dir whose Parquet shards are missing, truncated or disagree with its manifest.

Ray Data reads the shards inside its read tasks and the workers, where a bad file surfaces as a long
traceback from a worker process after the cluster has started. Reading each shard's footer here, on
the driver, costs a few milliseconds per file (no data pages are read) and names the file instead.
A shard damaged only inside its data pages keeps a valid footer and is not caught here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.errors import UserError

PREPARE_AGAIN = "prepare the data again (raydistill prepare-data)"


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def check_split(directory: Path, expected_rows: Any, column: str) -> None:
    """One split dir: at least one shard, every footer readable with `column`, rows as recorded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not shards:
        raise UserError(f"{directory}: no .parquet shards; {PREPARE_AGAIN}")
    rows = 0
    for shard in shards:
        try:
            metadata = pq.read_metadata(shard)
        except (OSError, pa.ArrowException) as exc:
            raise UserError(
                f"{shard}: not a readable Parquet file ({_first_line(exc)}); {PREPARE_AGAIN}"
            ) from None
        if column not in metadata.schema.to_arrow_schema().names:  # Parquet names list leaves "element"
            raise UserError(f"{shard}: has no column {column!r}; {PREPARE_AGAIN}")
        rows += metadata.num_rows
    # Manifests record the row count of each split; a shard deleted or replaced shows up here.
    if isinstance(expected_rows, int) and rows != expected_rows:
        raise UserError(
            f"{directory}: its shards hold {rows} sequences, manifest.json records {expected_rows}; "
            f"{PREPARE_AGAIN}"
        )


def check_prepared_shards(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Every split of a prepared dir (layout in orchestrator/shards.py). Raises `UserError`."""
    from orchestrator.data.shards import COLUMN, SPLITS

    for split in SPLITS:
        check_split(Path(directory) / split, manifest.get(f"{split}_sequences"), COLUMN)
