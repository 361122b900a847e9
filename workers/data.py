"""Token batches from this worker's Ray Data shard, with a resumable position.

Each `iter_batches()` call on a Ray Train dataset shard is one epoch over this worker's disjoint part.
The position (epoch, batches consumed in it) goes into every checkpoint; on resume the consumed
batches of the current epoch are read and dropped, so the run continues on exactly the next batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

Batch = dict[str, torch.Tensor]  # input_ids (B, T), attention_mask (B, T), labels (B, T)


def to_batch(input_ids: Any, device: torch.device | str = "cpu") -> Batch:
    """Packed sequences carry no padding: every token is attended and is its own label."""
    ids = torch.as_tensor(np.stack(list(input_ids)) if input_ids.dtype == object else input_ids)
    ids = ids.to(device=device, dtype=torch.long)  # (B, T)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class TrainBatches:
    def __init__(
        self, shard, micro_batch_size: int, seed: int, epoch: int = 0, consumed: int = 0, device="cpu"
    ):
        self._shard = shard
        self._device = device
        self._micro_batch_size = micro_batch_size
        self._seed = seed
        self.epoch = epoch
        self.consumed = consumed
        self._iterator: Iterator[Batch] | None = None

    def _open_epoch(self) -> Iterator[Batch]:
        batches = self._shard.iter_batches(
            batch_size=self._micro_batch_size,
            batch_format="numpy",
            drop_last=True,
            # A seeded shuffle per epoch: different orders across epochs, the same on resume.
            local_shuffle_buffer_size=max(4 * self._micro_batch_size, 64),
            local_shuffle_seed=self._seed + self.epoch,
        )
        return (to_batch(b["input_ids"], self._device) for b in batches)

    def __next__(self) -> Batch:
        if self._iterator is None:
            self._iterator = self._open_epoch()
            for _ in range(self.consumed):  # fast-forward after a resume
                next(self._iterator)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch, self.consumed = self.epoch + 1, 0
            self._iterator = self._open_epoch()
            try:
                batch = next(self._iterator)
            except StopIteration:
                raise RuntimeError(
                    "this worker's training shard holds fewer sequences than one micro-batch; "
                    "use more data, fewer workers or a smaller train.micro_batch_size"
                ) from None
        self.consumed += 1
        return batch

    def window(self, micro_batches: int) -> list[Batch]:
        return [next(self) for _ in range(micro_batches)]

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}


# Sequences per Ray Data read when picking eval sequences: one block, not one micro-batch at a time.
EVAL_READ_BATCH = 256


def eval_batches(
    shard, micro_batch_size: int, max_batches: int, device="cpu", shard_sequences: int | None = None
) -> list[Batch]:
    """`max_batches` batches of evenly spaced sequences of this worker's eval shard, read once and
    reused at every eval. Evenly spaced, not the first ones: the eval split is packed document by
    document, and a few leading documents are no sample of it (on the stdlib, codec mapping tables
    that any model predicts: in-run ppl ~6 where the whole split gives ~45). `shard_sequences` is the
    shard's expected size (eval split / world size); without it the first sequences are taken. The
    whole epoch is consumed so Ray Data's split coordinator is never left mid-epoch."""
    wanted = max_batches * micro_batch_size
    stride = max(1, (shard_sequences or 0) // wanted)
    rows: list[np.ndarray] = []  # (T,) each
    seen = 0
    # Read in large blocks (the whole shard is read anyway); keep every stride-th sequence.
    for b in shard.iter_batches(batch_size=EVAL_READ_BATCH, batch_format="numpy", drop_last=False):
        ids = b["input_ids"]  # (b, T)
        offsets = np.arange(seen, seen + len(ids))  # (b,) shard positions
        picked = ids[offsets % stride == 0][: wanted - len(rows)]  # (k, T)
        rows.extend(picked)
        seen += len(ids)
    if not rows:
        raise RuntimeError("this worker's eval shard is empty; raise data.eval_fraction or use fewer workers")
    return [
        to_batch(np.stack(rows[start : start + micro_batch_size]), device)
        for start in range(0, len(rows), micro_batch_size)
    ]
