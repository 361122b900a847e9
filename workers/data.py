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

# input_ids (B, T), attention_mask (B, T), labels (B, T), token_mask (B, T): see `to_batch`.
Batch = dict[str, torch.Tensor]
# Shard format v3's optional per-token columns (orchestrator/data/shards.py), read beside input_ids.
MASK_COLUMNS = ("loss_mask", "attention_mask")
IGNORE_INDEX = -100


def _stacked(column: Any) -> np.ndarray:
    """A list column as Ray Data's numpy batches give it (an object array of (T,) arrays, or already
    (B, T)) -> (B, T)."""
    return np.stack(list(column)) if column.dtype == object else np.asarray(column)


def to_batch(
    input_ids: Any,
    device: torch.device | str = "cpu",
    loss_mask: Any | None = None,
    attention_mask: Any | None = None,
) -> Batch:
    """One micro-batch from a shard's columns, each (B, T) or an object array of B (T,) rows.

    attention_mask: the column, else all ones (packed text carries no padding).
    labels[t] = input_ids[t] where the token is a trained target (loss_mask 1, or no loss_mask column)
        and attended, else -100; ce shifts them (logits[t] predict labels[t + 1]).
    token_mask: the positions kd / feature / attention average over. With a loss_mask, position t
        counts iff its target t + 1 is trained (labels[t + 1] != -100; 0 at t = T - 1), so every part
        sees the same tokens as ce. Without one, the attention mask, as for packed text.
    """
    ids = torch.as_tensor(_stacked(input_ids)).to(device=device, dtype=torch.long)  # (B, T)
    masks = {}
    for name, column in (("loss_mask", loss_mask), ("attention_mask", attention_mask)):
        if column is not None:
            mask = torch.as_tensor(_stacked(column)).to(device=device, dtype=torch.long)  # (B, T)
            if mask.shape != ids.shape:
                raise ValueError(f"{name} rows are {tuple(mask.shape)}, input_ids rows {tuple(ids.shape)}")
            masks[name] = mask
    attended = masks.get("attention_mask", torch.ones_like(ids))
    trained = attended.bool() if loss_mask is None else attended.bool() & masks["loss_mask"].bool()
    labels = torch.where(trained, ids, torch.full_like(ids, IGNORE_INDEX))
    if loss_mask is None:
        token_mask = attended.clone()
    else:
        token_mask = torch.zeros_like(ids)
        token_mask[:, :-1] = trained[:, 1:].long()  # (B, T-1): position t predicts the target t + 1
    return {"input_ids": ids, "attention_mask": attended, "labels": labels, "token_mask": token_mask}


def from_columns(columns: dict[str, Any], device: torch.device | str = "cpu") -> Batch:
    """`to_batch` of a Ray Data numpy batch: input_ids and whichever mask columns the shards hold."""
    return to_batch(columns["input_ids"], device, *(columns.get(name) for name in MASK_COLUMNS))


def token_mask(batch: Batch) -> torch.Tensor:
    """(B, T) positions kd / feature / attention count; a batch built without one (a test's, a bench's)
    counts its attention mask."""
    mask = batch.get("token_mask")
    return batch["attention_mask"] if mask is None else mask


def trained_tokens(batch: Batch) -> int:
    """Label tokens (targets that are trained), the figure behind the `tokens_trained` metric."""
    return int((batch["labels"] != IGNORE_INDEX).sum())


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
        return (from_columns(b, self._device) for b in batches)

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
    rows: dict[str, list[np.ndarray]] = {}  # column -> picked (T,) rows
    taken = seen = 0
    # Read in large blocks (the whole shard is read anyway); keep every stride-th sequence.
    for b in shard.iter_batches(batch_size=EVAL_READ_BATCH, batch_format="numpy", drop_last=False):
        count = len(b["input_ids"])
        offsets = np.arange(seen, seen + count)  # (b,) shard positions
        picked = np.flatnonzero(offsets % stride == 0)[: wanted - taken]  # (k,) indices in this block
        for name in ("input_ids", *MASK_COLUMNS):
            if name in b:
                rows.setdefault(name, []).extend(b[name][picked])
        taken += len(picked)
        seen += count
    if not taken:
        raise RuntimeError("this worker's eval shard is empty; raise data.eval_fraction or use fewer workers")
    return [
        from_columns(
            {name: np.stack(column[start : start + micro_batch_size]) for name, column in rows.items()},
            device,
        )
        for start in range(0, taken, micro_batch_size)
    ]
