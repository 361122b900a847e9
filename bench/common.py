"""What the bench scripts share besides the A/B timing (bench/ab_timing.py): the worker's run config
from orchestrator.config's defaults, a world-size-1 process group, random packed batches, and the
statistics their tables report."""

from __future__ import annotations

import math
import os
import random
import socket
import statistics
from typing import Any

import torch
import torch.distributed as dist

SPECIAL_IDS = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}


def worker_config(changes: dict[str, Any]) -> dict[str, Any]:
    """The run config as a Ray Train worker receives it (`Config.to_dict()`): orchestrator.config's
    defaults with `changes` (nested sections, as in a YAML file) over them. Not range-checked: a
    --quick bench may take fewer steps than its warm-up. Every changed key must be a config key."""
    from orchestrator.config import Config
    from orchestrator.dotted import flatten, merge

    defaults = Config().to_dict()
    unknown = set(flatten(changes)) - set(flatten(defaults))
    if unknown:
        raise KeyError(f"not config keys: {sorted(unknown)}")
    return merge(defaults, changes)


def init_single_process_group() -> None:
    """A gloo group of world size 1, as Ray Train sets up before the worker loop runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
    )
    dist.init_process_group("gloo", rank=0, world_size=1)


def random_batches(
    n: int, micro_batch: int, seq_len: int, vocab: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """Packed random token sequences (no padding, like the prepared Parquet shards): n batches of
    (micro_batch, seq_len) ids, special ids left out."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(len(SPECIAL_IDS), vocab, (micro_batch, seq_len), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def paired_summary(ratios: list[float], resamples: int = 2000) -> dict[str, Any]:
    """Median of per-round paired ratios with a bootstrap 95% interval (over rounds)."""
    rng = random.Random(0)
    boot = sorted(median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return {
        "median": median(ratios),
        "ci95": [boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]],
        "per_round": ratios,
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return None
