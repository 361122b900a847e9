"""Small torch.distributed helpers that also work in a single process without a process group."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(values: list[float]) -> list[float]:
    # float64 so token-weighted sums over many steps stay exact enough for the ledger.
    tensor = torch.tensor(values, dtype=torch.float64)
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank (so all ranks take the same branch)."""
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()
