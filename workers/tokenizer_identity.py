"""A tokenizer's identity: one hash over everything that changes its ids or its text.

Covered: the backend's full `tokenizer.json` (vocabulary, merges, normaliser, pre-tokeniser,
post-processor, decoder, added tokens), the special tokens with their ids (bos/eos/pad/unk/sep/cls/
mask and the additional ones), the chat template, and the config flags that add ids or change decoded
text (add_bos_token, add_eos_token, clean_up_tokenization_spaces). Not covered: padding side,
model_max_length, the name or path it was loaded from, and the backend's truncation/padding settings
(data is packed, never cut or padded). Qwen2.5 base and Instruct share `tokenizer.json` and differ in
eos and chat template: different identities.

The identity is of the tokenizer as this project uses it: a tokenizer without a pad token counts as
padded with eos (`with_pad_fallback`, what `workers.models.load_tokenizer` applies), so a student
exported with that fallback keeps the identity of the tokenizer it was trained with.

Imported by the driver (orchestrator/data, orchestrator/train) and by workers; transformers only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

SPECIAL_NAMES = ("bos", "eos", "pad", "unk", "sep", "cls", "mask")
# Config flags that add ids to an encoding or change decoded text.
ID_FLAGS = ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces")
# Backend keys that never change the ids of packed data.
_IGNORED_BACKEND_KEYS = ("truncation", "padding")


def pad_fallback_note(tokenizer: Any, name: str) -> str | None:
    """The one line to show when `tokenizer` has no pad token (pad = eos is then used), else None."""
    if tokenizer.pad_token_id is not None:
        return None
    return (
        f"tokenizer {name!r} has no pad token: using eos {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}) "
        "as pad; eos stays a trained label (labels are never masked by pad id)"
    )


def with_pad_fallback(tokenizer: Any) -> Any:
    """`tokenizer` with pad = eos when it has no pad token (changed in place; returned for chaining)."""
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        # Causal LMs often ship without a pad token; packed sequences never pad, eval batches may.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _additional_special_tokens(tokenizer: Any) -> list[str]:
    # transformers 5 names them extra_special_tokens (a list or a name -> token dict); 4.x additional_...
    extra = getattr(tokenizer, "extra_special_tokens", None)
    if isinstance(extra, dict):
        extra = list(extra.values())
    if not extra:
        extra = getattr(tokenizer, "additional_special_tokens", None) or []
    return sorted(str(token) for token in extra)


def identity_fields(tokenizer: Any) -> dict[str, Any]:
    """What `tokenizer_identity` hashes, as plain JSON values (shown by tests when two differ)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str())
        for key in _IGNORED_BACKEND_KEYS:
            model.pop(key, None)
    else:  # a slow (Python) tokenizer: its vocabulary stands for the model
        model = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special: dict[str, Any] = {}
    for name in SPECIAL_NAMES:
        token = getattr(tokenizer, f"{name}_token", None)
        if name == "pad" and token is None:
            token = getattr(tokenizer, "eos_token", None)  # the pad fallback (module docstring)
        special[name] = None if token is None else [str(token), tokenizer.convert_tokens_to_ids(str(token))]
    extra = _additional_special_tokens(tokenizer)
    special["additional"] = [[token, tokenizer.convert_tokens_to_ids(token)] for token in extra]
    flags = {flag: getattr(tokenizer, flag, None) for flag in ID_FLAGS}
    return {
        "backend": model,
        "special": special,
        "chat_template": getattr(tokenizer, "chat_template", None),
        "flags": {k: v for k, v in flags.items() if isinstance(v, bool | None)},
    }


def vocabulary_identity(tokenizer: Any) -> str:
    """sha256 hex of the backend alone (vocabulary, merges, normaliser, pre-tokeniser, post-processor,
    added tokens): equal iff an id means the same text to both. Qwen2.5 base and Instruct share it
    while differing in eos and chat template, so their logits can be distilled into each other."""
    text = json.dumps(identity_fields(tokenizer)["backend"], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_identity(tokenizer: Any) -> str:
    """sha256 hex of `identity_fields(tokenizer)`: equal iff the two tokenizers give the same ids and text."""
    text = json.dumps(identity_fields(tokenizer), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
