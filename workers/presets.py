"""Named tiny architectures for tests and smoke runs, built from configs (no downloads).

`preset:<name>` in `teacher` / `student` selects one; the vocabulary comes from the run's tokenizer.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # ~0.2M parameters at vocab 512: unit and integration tests.
    "tiny-llama": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    },
    "tiny-gpt2": {"model_type": "gpt2", "n_embd": 64, "n_layer": 4, "n_head": 4},
    # The demo's teacher (~6.8M parameters at vocab 4096) and a ~3x smaller student.
    "small-llama": {
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
    },
    "small-llama-student": {
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 344,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    },
}

PRESET_PREFIX = "preset:"


def preset_name(spec: str) -> str | None:
    return spec[len(PRESET_PREFIX) :] if spec.startswith(PRESET_PREFIX) else None


def build_preset_config(name: str, vocab_size: int, max_positions: int, special_ids: dict[str, int]):
    """A `transformers` config for a preset, with token ids inside the vocabulary."""
    from transformers import AutoConfig

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    spec = dict(PRESETS[name])
    model_type = spec.pop("model_type")
    if model_type == "gpt2":
        spec["n_positions"] = max_positions
    else:
        spec["max_position_embeddings"] = max_positions
    return AutoConfig.for_model(model_type, vocab_size=vocab_size, **special_ids, **spec)
