"""Rewrite an exported Hugging Face directory so transformers 4.x loads it as transformers 5 does.

transformers 5 writes the RoPE base only inside `config.json`'s `rope_parameters` (4.x reads `rope_theta`
and `rope_scaling`, and silently falls back to its default base), and names 5-only classes and keys in
`tokenizer_config.json`. The 4.x keys added here are ones 5.x reads back to the same `rope_parameters`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# transformers 5's generic tokenizers.json-backed class; 4.x's equivalent loads the same tokenizer.json.
_TOKENIZER_CLASS_4X = {"TokenizersBackend": "PreTrainedTokenizerFast"}
# Families whose 4.x config kept its own names for the RoPE base and the rotary fraction.
_ROPE_KEYS_4X = {"gpt_neox": ("rotary_emb_base", "rotary_pct")}
# Entries of `rope_parameters` 4.x reads at the top level of the config, not inside `rope_scaling`.
_TOP_LEVEL_ROPE_KEYS = ("rope_theta", "partial_rotary_factor")


def config_for_transformers4(config: dict[str, Any]) -> dict[str, Any]:
    """`config.json` with 4.x's RoPE keys (`rope_theta`, `partial_rotary_factor`, `rope_scaling`) added
    from `rope_parameters`. Per-layer-type RoPE (nested dicts) maps to 4.x's `rope_theta` for full
    attention and `rope_local_base_freq` for sliding windows; scaling there is left alone because 5.x
    would read a flat `rope_scaling` back as one RoPE for every layer."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or not rope:
        return dict(config)
    out = dict(config)
    nested = [key for key in rope if isinstance(rope[key], dict)]
    if nested:
        if isinstance(rope.get("sliding_attention"), dict) and "rope_theta" in rope["sliding_attention"]:
            out["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
        rope = rope.get("full_attention") or rope[nested[0]]
    theta_key, fraction_key = _ROPE_KEYS_4X.get(config.get("model_type", ""), _TOP_LEVEL_ROPE_KEYS)
    if "rope_theta" in rope:
        out[theta_key] = rope["rope_theta"]
    if "partial_rotary_factor" in rope:
        out[fraction_key] = rope["partial_rotary_factor"]
    scaling = {key: value for key, value in rope.items() if key not in _TOP_LEVEL_ROPE_KEYS}
    if not nested and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        out["rope_scaling"] = scaling
    return out


def tokenizer_config_for_transformers4(tokenizer_config: dict[str, Any]) -> dict[str, Any]:
    """`tokenizer_config.json` with a tokenizer class 4.x knows, and 5.x's list of extra special tokens
    under 4.x's name (4.x reads `extra_special_tokens` as a dict of named tokens and fails on a list)."""
    out = dict(tokenizer_config)
    cls = out.get("tokenizer_class")
    if cls in _TOKENIZER_CLASS_4X:
        out["tokenizer_class"] = _TOKENIZER_CLASS_4X[cls]
    extra = out.get("extra_special_tokens")
    if isinstance(extra, list):
        del out["extra_special_tokens"]
        merged = list(out.get("additional_special_tokens") or [])
        out["additional_special_tokens"] = merged + [token for token in extra if token not in merged]
    return out


def write_transformers4_compat(model_dir: str | Path) -> None:
    """Rewrite `config.json` and `tokenizer_config.json` in `model_dir` in place (each if present)."""
    model_dir = Path(model_dir)
    for name, convert in (
        ("config.json", config_for_transformers4),
        ("tokenizer_config.json", tokenizer_config_for_transformers4),
    ):
        path = model_dir / name
        if path.exists():
            content = convert(json.loads(path.read_text()))
            path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
