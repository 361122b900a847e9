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


def record_text(record: dict, kind: str, text_field: str) -> str:
    """The text of a record a BPE is trained on (no template: its markers are special tokens).

    Malformed records give "" here; `Encoder.encode` is where they are refused, with their place.
    """
    if kind == "text":
        value = record.get(text_field)
        return value if isinstance(value, str) else ""
    if kind == "chat":
        return _messages_text(record.get("messages"))
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt + completion
    return _messages_text(prompt) + "\n" + _messages_text(completion)


def _messages_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    parts = [m.get("content") for m in messages if isinstance(m, dict)]
    return "\n".join(part for part in parts if isinstance(part, str))


@dataclass
class Encoded:
    """A batch of encoded records, in input order."""

    ids: list[Any]  # (n_i,) int32 numpy arrays; text: ids + eos, untruncated (the packer cuts)
    # (n_i,) int8, 1 = trained target; None for text (all trained). Chat/pair: always given (all 1
    # with loss_on=all), truncated like ids.
    loss_mask: list[Any] | None
    truncated: int = 0  # chat/pair samples cut at seq_len
    without_target: int = 0  # samples with no trained token (e.g. no assistant turn)


class Encoder:
    """Encodes records of one kind with one tokenizer. Built once per actor (copies the backend).

    Chat data with a tokenizer that has no chat template is refused here, before any record.
    """

    def __init__(self, tokenizer: Any, kind: str, text_field: str, loss_on: str, seq_len: int):
        from orchestrator.data.chat import ChatRenderer
        from orchestrator.data.tokenizer_training import text_encoder

        if kind not in RECORD_KINDS:
            raise ValueError(f"kind {kind!r} is not one of {RECORD_KINDS}")
        self.tokenizer = tokenizer
        self.kind = kind
        self.text_field = text_field
        self.loss_on = resolve_loss_on(loss_on, kind)
        self.seq_len = seq_len
        # Plain text (documents, pair prompts/completions): special-token text stays text.
        self.text = text_encoder(tokenizer)
        # Rendered chats: the template's control tokens (`<|im_start|>`) must become their ids.
        self.rendered = _backend_copy(self.text.backend, encode_special_tokens=False)
        self._chat = ChatRenderer(tokenizer) if kind == "chat" else None

    @property
    def chat(self) -> Any:
        """The chat renderer (made on first use for pairs: only conversational pairs need a template)."""
        from orchestrator.data.chat import ChatRenderer

        if self._chat is None:
            self._chat = ChatRenderer(self.tokenizer)
        return self._chat

    def encode(self, records: list[dict], where: list[str]) -> Encoded:
        """Encode `records`; `where[i]` names record i in errors (e.g. "data/chat.jsonl:12")."""
        if len(records) != len(where):
            raise ValueError(f"{len(records)} records but {len(where)} names in `where`")
        if self.kind == "text":
            return self._encode_text(records, where)
        if self.kind == "chat":
            samples = self._encode_chats(records, where)
        else:
            samples = self._encode_pairs(records, where)
        return self._truncate(samples)

    def _encode_text(self, records: list[dict], where: list[str]) -> Encoded:
        import numpy as np

        texts = [_text_field(record, self.text_field, at) for record, at in zip(records, where)]
        eos = np.asarray([self.text.eos_id], dtype=np.int32)
        ids = [np.concatenate([doc, eos]) for doc in self.text.encode(texts)]
        return Encoded(ids=ids, loss_mask=None)

    def _encode_chats(self, records: list[dict], where: list[str]) -> list[tuple[Any, Any]]:
        from orchestrator.data.chat import check_messages

        texts, spans = [], []
        for record, at in zip(records, where):
            messages = check_messages(_field(record, "messages", at), at)
            if self.loss_on == "assistant":
                text, turn_spans = self.chat.assistant_spans(messages, at)
            else:
                text, turn_spans = self.chat.render(messages, at), None
            texts.append(text)
            spans.append(turn_spans)
        return self._tokenize_rendered(texts, spans)

    def _encode_pairs(self, records: list[dict], where: list[str]) -> list[tuple[Any, Any]]:
        """TRL's SFTTrainer join: tokenise prompt and prompt+completion (+ eos); the completion is the
        tokens past the prompt's. Conversational pairs (lists of messages) are rendered with the chat
        template, the completion being what it adds after the prompt's generation prompt."""
        import numpy as np

        plain: list[tuple[int, str, str]] = []
        chats: list[tuple[int, str, list[tuple[int, int]]]] = []
        for index, (record, at) in enumerate(zip(records, where)):
            prompt, completion = _field(record, "prompt", at), _field(record, "completion", at)
            if isinstance(prompt, str) and isinstance(completion, str):
                plain.append((index, prompt, completion))
            elif isinstance(prompt, list) and isinstance(completion, list):
                chats.append((index, *self._render_pair(prompt, completion, at)))
            else:
                raise DataError(
                    f"{at}: 'prompt' is a {type(prompt).__name__} and 'completion' a "
                    f"{type(completion).__name__}; expected two strings or two lists of messages"
                )
        samples: list[Any] = [None] * len(records)
        if plain:
            backend = self.text.backend
            prompts = backend.encode_batch([p for _, p, _ in plain], add_special_tokens=True)
            joined = backend.encode_batch([p + c for _, p, c in plain], add_special_tokens=True)
            for (index, _, _), prompt, full in zip(plain, prompts, joined):
                ids = list(full.ids)
                if not ids or ids[-1] != self.text.eos_id:  # TRL adds eos unless the text ends with it
                    ids.append(self.text.eos_id)
                mask = np.ones(len(ids), dtype=np.int8)
                if self.loss_on == "completion":
                    mask[: len(prompt.ids)] = 0
                samples[index] = (np.asarray(ids, dtype=np.int32), mask)
        if chats:
            spans = [[span] if self.loss_on == "completion" else None for _, _, span in chats]
            rendered = self._tokenize_rendered([text for _, text, _ in chats], spans)
            for (index, _, _), sample in zip(chats, rendered):
                samples[index] = sample
        return samples

    def _render_pair(self, prompt: list, completion: list, where: str) -> tuple[str, tuple[int, int]]:
        from orchestrator.data.chat import check_messages

        check_messages(prompt, where, "prompt")
        check_messages(completion, where, "completion")
        text = self.chat.render(prompt + completion, where)
        return text, self.chat.turn_span(prompt, prompt + completion, text, where)

    def _tokenize_rendered(self, texts: list[str], spans: list[Any]) -> list[tuple[Any, Any]]:
        """Rendered chats -> (ids, mask) each; `spans[i]` None = every token trained."""
        import numpy as np

        from orchestrator.data.chat import token_mask

        samples = []
        for encoding, turn_spans in zip(self.rendered.encode_batch(texts, add_special_tokens=False), spans):
            ids = np.asarray(encoding.ids, dtype=np.int32)
            if turn_spans is None:
                mask = np.ones(len(ids), dtype=np.int8)
            else:
                mask = token_mask(encoding.offsets, turn_spans)
            samples.append((ids, mask))
        return samples

    def _truncate(self, samples: list[tuple[Any, Any]]) -> Encoded:
        """Cut each sample at seq_len (never split: the rest of a conversation is dropped)."""
        ids, masks, truncated, without_target = [], [], 0, 0
        for sample_ids, mask in samples:
            if len(sample_ids) > self.seq_len:
                sample_ids, mask = sample_ids[: self.seq_len], mask[: self.seq_len]
                truncated += 1
            without_target += int(not mask.any())
            ids.append(sample_ids)
            masks.append(mask)
        return Encoded(ids=ids, loss_mask=masks, truncated=truncated, without_target=without_target)


def _backend_copy(backend: Any, encode_special_tokens: bool) -> Any:
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    copy.encode_special_tokens = encode_special_tokens
    return copy


def _field(record: dict, field: str, where: str) -> Any:
    if field not in record:
        raise DataError(
            f"{where}: no field {field!r}; fields present: {', '.join(map(repr, record)) or 'none'}"
        )
    return record[field]


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
