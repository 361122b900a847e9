"""What the driver reads of a teacher or student before any worker starts: its config.json alone
(vocabulary size, max positions), never its weights."""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import UserError
from workers.presets import preset_name

PRESET_MAX_POSITIONS = 1024


def looks_like_local_path(spec: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is meant as a local path. `org/name` also is
    one when `org` is a local directory (`models/teacher` run from a dir holding `models/`)."""
    return (
        Path(spec).is_absolute()
        or spec.startswith((".", "~"))
        or spec.count("/") > 1
        or spec.endswith("/")
        or "\\" in spec
        or ("/" in spec and Path(spec).expanduser().parent.is_dir())
    )


def text_config_of(spec: str):
    """A model's config alone (no weights are read); None for presets and derived students."""
    if preset_name(spec) is not None or spec in ("derived", "none"):
        return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(spec).get_text_config()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the model config of {spec!r}: {str(exc).splitlines()[0]}") from None


def max_positions_of(spec: str) -> int | None:
    text = text_config_of(spec)
    if text is None:
        return None
    return getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)


def vocab_size_of(spec: str) -> int | None:
    text = text_config_of(spec)  # presets take the run tokenizer's vocabulary
    return None if text is None else int(text.vocab_size)
