"""Records -> token ids + loss mask: the per-record step of data preparation (pure Python, no Ray).

Three kinds of record (`record_kind`), told apart by their fields:
  text  {"<text_field>": str}                          ids + eos; packed later, every token trained
  chat  {"messages": [{"role", "content"}, ...]}        the tokenizer's own chat template; one sample
  pair  {"prompt": str, "completion": str}              joined as TRL's SFTTrainer does; one sample

`Encoder` is built once per Ray Data actor (it holds a private copy of the tokenizer) and encodes a
batch of records. A chat or pair sample is truncated at `seq_len` (counted), never split. The loss
mask is int8, 1 where the token is a trained target (I24 shard format v3).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import ConfigError, DataError

RECORD_KINDS = ("text", "chat", "pair")
LOSS_ON = ("auto", "all", "assistant", "completion")
# The loss_on values each kind accepts; the first is what "auto" means.
_LOSS_ON_BY_KIND = {
    "text": ("all",),
    "chat": ("assistant", "all"),
    "pair": ("completion", "all"),
}


def record_kind(fields: Iterable[str], text_field: str, where: str | None = None) -> str:
    """The kind of a record with these `fields`: "chat", "pair" or "text"; else a `DataError`."""
    present = list(fields)
    if "messages" in present:
        return "chat"
    if "prompt" in present and "completion" in present:
        return "pair"
    if text_field in present:
        return "text"
    at = f"{where}: " if where is not None else ""
    raise DataError(
        f"{at}no field {text_field!r} (data.text_field), 'messages' or 'prompt'+'completion'; "
        f"fields present: {', '.join(map(repr, present)) or 'none'}"
    )


def resolve_loss_on(loss_on: str, kind: str) -> str:
    """`data.loss_on` for records of `kind`: "auto" -> assistant (chat) / completion (pair) / all (text)."""
    if loss_on not in LOSS_ON:
        raise ConfigError(f"data.loss_on: {loss_on!r} is not one of {', '.join(LOSS_ON)}")
    allowed = _LOSS_ON_BY_KIND[kind]
    if loss_on == "auto":
        return allowed[0]
    if loss_on not in allowed:
        raise ConfigError(
            f"data.loss_on: {loss_on!r} does not apply to {kind} records (use {' or '.join(allowed)})"
        )
    return loss_on


@dataclass
class Encoded:
    """A batch of encoded records, in input order."""

    ids: list[Any]  # (n_i,) int32 numpy arrays; text: ids + eos, untruncated (the packer cuts)
    loss_mask: list[Any] | None  # (n_i,) int8, 1 = trained target; None for text (all trained)
    truncated: int = 0  # chat/pair samples cut at seq_len
    without_target: int = 0  # samples with no trained token (e.g. no assistant turn)


class Encoder:
    """Encodes records of one kind with one tokenizer. Built once per actor (copies the backend)."""

    def __init__(self, tokenizer: Any, kind: str, text_field: str, loss_on: str, seq_len: int):
        from orchestrator.data.tokenizer_training import text_encoder

        if kind not in RECORD_KINDS:
            raise ValueError(f"kind {kind!r} is not one of {RECORD_KINDS}")
        self.tokenizer = tokenizer
        self.kind = kind
        self.text_field = text_field
        self.loss_on = resolve_loss_on(loss_on, kind)
        self.seq_len = seq_len
        self.text = text_encoder(tokenizer)

    def encode(self, records: list[dict], where: list[str]) -> Encoded:
        """Encode `records`; `where[i]` names record i in errors (e.g. "data/chat.jsonl:12")."""
        if self.kind == "text":
            return self._encode_text(records, where)
        raise NotImplementedError(self.kind)

    def _encode_text(self, records: list[dict], where: list[str]) -> Encoded:
        import numpy as np

        texts = [_text_field(record, self.text_field, at) for record, at in zip(records, where)]
        eos = np.asarray([self.text.eos_id], dtype=np.int32)
        ids = [np.concatenate([doc, eos]) for doc in self.text.encode(texts)]
        return Encoded(ids=ids, loss_mask=None)


def _text_field(record: dict, field: str, where: str) -> str:
    if field not in record:
        raise DataError(
            f"{where}: no field {field!r} (data.text_field); fields present: "
            f"{', '.join(map(repr, record)) or 'none'}"
        )
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} is {type(value).__name__}, not a string")
    return value
