"""Model shapes for the memory plan, from configs only: `config.json` of a local directory or a Hugging
Face id (the config file, never the weights), or a `preset:<name>`. The model is built on the `meta`
device, so the parameter count is exact (tied embeddings once, GQA, biases, untied heads) and costs no
memory.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.plan import memory_model as mm
from orchestrator.train.model_configs import looks_like_local_path

# Presets take their vocabulary from the run's tokenizer; the plan assumes the default BPE size.
PRESET_SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_model_config(spec: str, max_positions: int):
    """A `transformers` config for `spec`; bad specs raise a one-line `UserError`."""
    from workers.presets import build_preset_config, preset_name

    name = preset_name(spec)
    if name is not None:
        from orchestrator.config import DataConfig

        try:
            return build_preset_config(name, DataConfig().vocab_size, max_positions, PRESET_SPECIAL_IDS)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    from transformers import AutoConfig

    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise UserError(f"{spec}: no config.json in this directory")
        try:
            # trust_remote_code stays off: a config must not run code from a user-supplied path.
            return AutoConfig.from_pretrained(str(path))
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError, JSON errors
            raise UserError(f"{spec}: cannot read its config.json ({_reason(exc)})") from None
    if looks_like_local_path(spec):
        raise UserError(f"no such model directory: {spec}")
    try:
        return AutoConfig.from_pretrained(spec)
    except Exception as exc:
        raise UserError(
            f"could not fetch the config of {spec!r} from the Hugging Face Hub ({_reason(exc)}); "
            "pass a local directory holding its config.json"
        ) from None


def shape_from_config(name: str, config) -> mm.ModelShape:
    """Build the model on the meta device and count: exact, and no memory or download."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as exc:
        raise UserError(
            f"{name}: cannot build a causal language model from its config ({_reason(exc)})"
        ) from None
    params = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    text = config.get_text_config()
    return mm.ModelShape(
        name=name,
        params=int(params),
        largest_layer_params=int(largest),
        num_layers=int(text.num_hidden_layers),
        hidden_size=int(text.hidden_size),
        num_heads=int(text.num_attention_heads),
        vocab_size=int(text.vocab_size),
    )


def model_shape(spec: str, max_positions: int) -> mm.ModelShape:
    return shape_from_config(spec, load_model_config(spec, max_positions))


def teacher_shape(spec: str, max_positions: int) -> mm.ModelShape | None:
    """`none` (the config's CE-only run) has no teacher."""
    return None if spec == "none" else model_shape(spec, max_positions)
