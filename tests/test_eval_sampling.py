"""In-run eval reads evenly spaced sequences of each worker's eval shard, not its first ones.

The stdlib eval split starts with codec mapping tables; eval on the first batches alone reported
ppl ~6 where the whole split gives ~45, and the sweep and the ratio stopper read that figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.config import load_config
from orchestrator.data.prepare import read_manifest
from orchestrator.train.trainer import prepare_run
from workers.data import eval_batches

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def numbered_rows(ray_cluster):
    """100 sequences of length 4, sequence i holding the token i everywhere, as Ray Data rows."""
    import ray.data

    return ray.data.from_items([{"input_ids": np.full(4, i, dtype=np.int32)} for i in range(100)])


def _first_tokens(batches) -> list[int]:
    return [int(row[0]) for batch in batches for row in batch["input_ids"]]


def test_eval_batches_are_spread_over_the_shard(numbered_rows):
    batches = eval_batches(numbered_rows, micro_batch_size=5, max_batches=2, shard_sequences=100)

    assert [tuple(b["input_ids"].shape) for b in batches] == [(5, 4), (5, 4)]
    assert _first_tokens(batches) == list(range(0, 100, 10))


def test_the_spread_holds_across_read_blocks(ray_cluster):
    """A shard longer than one read block: the stride carries over from block to block."""
    import ray.data

    from workers.data import EVAL_READ_BATCH

    count = 3 * EVAL_READ_BATCH - 68  # 700: not a multiple of the block
    rows = ray.data.from_items([{"input_ids": np.full(4, i, dtype=np.int32)} for i in range(count)])
    batches = eval_batches(rows, micro_batch_size=10, max_batches=10, shard_sequences=count)

    assert _first_tokens(batches) == list(range(0, count, count // 100))


def test_eval_batches_are_labelled_like_training_batches(numbered_rows):
    (batch,) = eval_batches(numbered_rows, micro_batch_size=4, max_batches=1, shard_sequences=100)

    assert bool((batch["labels"] == batch["input_ids"]).all())
    assert bool((batch["attention_mask"] == 1).all())


def test_without_a_known_shard_size_the_first_sequences_are_read(numbered_rows):
    batches = eval_batches(numbered_rows, micro_batch_size=3, max_batches=2)

    assert _first_tokens(batches) == [0, 1, 2, 3, 4, 5]


def test_a_shard_smaller_than_asked_is_read_whole(numbered_rows):
    batches = eval_batches(numbered_rows, micro_batch_size=8, max_batches=20, shard_sequences=100)

    assert _first_tokens(batches) == list(range(100))
    assert [len(b["input_ids"]) for b in batches][-1] == 100 % 8


def test_each_worker_of_a_split_reads_its_own_spread(numbered_rows):
    """What Ray Train hands the workers: a streaming split of the eval dataset, one part each."""
    import ray

    shards = numbered_rows.streaming_split(2, equal=True)
    # Each shard is consumed in its own task, concurrently, as the two workers would.
    read = ray.remote(num_cpus=0)(eval_batches)
    kwargs = {"micro_batch_size": 5, "max_batches": 1, "shard_sequences": 50}
    first, second = (_first_tokens(b) for b in ray.get([read.remote(s, **kwargs) for s in shards]))

    assert len(first) == len(second) == 5
    assert not set(first) & set(second)
    # Spread, not bunched at the front: each worker's picks reach into the last fifth of its rows.
    assert max(first) - min(first) >= 30 and max(second) - min(second) >= 30


def test_workers_are_told_the_size_of_the_eval_split(tiny_data_dir, tmp_path):
    config = load_config(ROOT / "configs" / "tiny.yaml", [f"data.source={tiny_data_dir}"])

    runtime = prepare_run(config, tmp_path / "run").loop_config["runtime"]

    assert runtime.eval_sequences == read_manifest(tiny_data_dir)["eval_sequences"] > 0
