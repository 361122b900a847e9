"""Encoded records -> fixed-length rows of shard format v3 (orchestrator/data/shards.py), one batch at a
time inside the tokenising actors.

Text: documents (ids already ending in eos) concatenated and cut into rows of `seq_len`; the batch's
last partial row is dropped and counted (batches are large enough that this is a small share).
Chat / pair: one sample per row, already truncated by the encoder, right-padded with `pad_id`, the
attention mask 0 and the loss mask 0 at padding. Never packed: attention would cross samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def pack_text(ids: list[np.ndarray], masks: list[np.ndarray] | None, seq_len: int):
    """Returns (input_ids (N, T) int32, loss_mask (N, T) int8 or None, dropped token count)."""
    if not ids:
        return np.zeros((0, seq_len), np.int32), None if masks is None else np.zeros((0, seq_len), np.int8), 0
    flat = np.concatenate(ids).astype(np.int32, copy=False)
    rows = len(flat) // seq_len
    cut = rows * seq_len
    input_ids = flat[:cut].reshape(rows, seq_len)  # (total,) -> (N, T)
    loss_mask = None
    if masks is not None:
        loss_mask = np.concatenate(masks).astype(np.int8, copy=False)[:cut].reshape(rows, seq_len)
    return input_ids, loss_mask, len(flat) - cut


def pad_samples(ids: list[np.ndarray], masks: list[np.ndarray] | None, seq_len: int, pad_id: int):
    """Returns (input_ids (N, T) int32, loss_mask (N, T) int8 or None, attention_mask (N, T) int8)."""
    n = len(ids)
    input_ids = np.full((n, seq_len), pad_id, dtype=np.int32)
    attention = np.zeros((n, seq_len), dtype=np.int8)
    loss_mask = None if masks is None else np.zeros((n, seq_len), dtype=np.int8)
    for row, sample in enumerate(ids):
        length = min(len(sample), seq_len)  # the encoder truncates; this only guards the shape
        input_ids[row, :length] = sample[:length]
        attention[row, :length] = 1
        if loss_mask is not None:
            loss_mask[row, :length] = masks[row][:length]
    return input_ids, loss_mask, attention


def list_column(rows: np.ndarray, value_type: Any):
    """(N, T) -> an Arrow list<value_type> column of N rows."""
    import pyarrow as pa

    n, seq_len = rows.shape
    offsets = pa.array(np.arange(0, n * seq_len + 1, seq_len, dtype=np.int32), type=pa.int32())
    values = pa.array(np.ascontiguousarray(rows).reshape(-1), type=value_type)  # (N, T) -> (N*T,)
    return pa.ListArray.from_arrays(offsets, values)
