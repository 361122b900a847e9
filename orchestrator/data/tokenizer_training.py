"""Tokenizers for `prepare-data`: train a byte-level BPE on the corpus, or load the teacher's.

Both end up as a Hugging Face tokenizer directory (`tokenizer.json` + `tokenizer_config.json`) that
`transformers.AutoTokenizer.from_pretrained(dir)` loads, and as a `TextEncoder` that turns documents
into token ids without adding special tokens (the packer appends eos itself).

Tokenizer hash: the tokenizer's full identity (workers/tokenizer_identity.py: backend, special tokens,
chat template, id flags), not `tokenizer.json` alone: Qwen2.5 base and Instruct share that file and
differ in eos. It is stable across save/load round trips, so the hash in a manifest equals
`tokenizer_hash()` of `AutoTokenizer.from_pretrained(<out>/tokenizer)` and of the tokenizer's source.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
# The BPE trainer gives special tokens the first ids, in this order: bos 0, eos 1, pad 2.
SPECIAL_TOKENS = (BOS, EOS, PAD)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
# A BPE for chat data also knows ChatML's turn markers (ids 3 and 4) and renders chats with ChatML;
# `<|im_end|>` is its eos, as in Qwen's Instruct tokenizers: a chat student's generation stops at a turn's end.
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHATML_TOKENS = (IM_START, IM_END)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` trained on `texts` (deterministic for the same input).

    On a small corpus the vocabulary can stop short of `vocab_size` (no pair left to merge).
    """
    return _train_bpe(texts, vocab_size, SPECIAL_TOKENS)


def train_chat_bpe(texts: Sequence[str], vocab_size: int) -> Any:
    """`train_bpe` for chat data: ChatML's `<|im_start|>`/`<|im_end|>` join the special tokens, and
    `save_trained` then writes the ChatML chat template and makes `<|im_end|>` the eos."""
    return _train_bpe(texts, vocab_size, SPECIAL_TOKENS + CHATML_TOKENS)


def _train_bpe(texts: Sequence[str], vocab_size: int, special_tokens: tuple[str, ...]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise UserError(
            f"vocab size {vocab_size} is too small: need >= {minimum} "
            f"(256 bytes + {len(special_tokens)} special)"
        )
    tokenizer = Tokenizer(models.BPE())
    # add_prefix_space=False: decode(encode(text)) == text, byte for byte.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        # Every byte is in the vocabulary even if the corpus never uses it: no unknown tokens later.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # `texts` may be a stream (prepare-data reads the corpus file by file): no length then.
    tokenizer.train_from_iterator(texts, trainer, length=len(texts) if hasattr(texts, "__len__") else None)
    return tokenizer


def save_trained(tokenizer: Any, directory: str | Path) -> None:
    """Write a trained `tokenizers.Tokenizer` as a directory `AutoTokenizer.from_pretrained` loads.

    One from `train_chat_bpe` (it knows `<|im_start|>`) gets the ChatML template and `<|im_end|>` as eos.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_prefix_space": False,
        # Left on, transformers rewrites " ." as "." when decoding: the round trip would lose text.
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
    }
    if tokenizer.token_to_id(IM_START) is not None:
        config["eos_token"] = IM_END
        config["chat_template"] = CHATML_TEMPLATE
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_pretrained(path_or_id: str | Path) -> Any:
    """`AutoTokenizer.from_pretrained`, with a one-line `UserError` when it fails or has no eos token."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path_or_id))
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"tokenizer {str(path_or_id)!r} cannot be loaded: {first_line}") from None
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {str(path_or_id)!r} has no eos token: documents could not be separated")
    return tokenizer


def tokenizer_hash(tokenizer: Any) -> str:
    """The tokenizer's identity (sha256 hex; see the module docstring)."""
    from workers.tokenizer_identity import tokenizer_identity

    return tokenizer_identity(tokenizer)


@dataclass
class TextEncoder:
    """Documents -> token ids, no special tokens added, special-token text in documents kept as text."""

    backend: Any  # a private copy of the tokenizer's `tokenizers.Tokenizer`
    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int | None

    def encode(self, texts: list[str]) -> list[Any]:
        """One (n_i,) int32 numpy array per text (4 bytes a token, not a Python int's ~36)."""
        import numpy as np

        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=np.int32) for encoding in encodings]


def text_encoder(tokenizer: Any) -> TextEncoder:
    """A `TextEncoder` for a loaded transformers tokenizer (which is left unchanged)."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(
            f"tokenizer {tokenizer.name_or_path!r} has no fast (tokenizers) backend; use a tokenizer.json one"
        )
    copy = Tokenizer.from_str(backend.to_str())
    # A saved tokenizer.json may carry truncation/padding settings: documents are packed, never cut or padded.
    copy.no_truncation()
    copy.no_padding()
    # A document that contains the text "<|eos|>" must not gain an eos id (it would split the document).
    copy.encode_special_tokens = True
    return TextEncoder(
        backend=copy,
        vocab_size=len(tokenizer),
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
    )
