"""What the driver checks of the models' classes before Ray starts, from config.json alone: that the
configured attention kernel runs on each model's class, and that `student: derived` can be built from
the teacher (depth, widths, a decoder layer stack transformers' structures expose). Workers would fail
on the same rules after loading weights; here they fail in one line, naming the key and the model."""

from __future__ import annotations

from dataclasses import asdict

from orchestrator.config import Config
from orchestrator.errors import UserError
from workers.models import DERIVED, NO_TEACHER
from workers.presets import build_preset_config, preset_name


def model_config_of(spec: str):
    """The full transformers config of a preset, model directory or hub id (never weights)."""
    name = preset_name(spec)
    if name is not None:
        return build_preset_config(name, vocab_size=512, max_positions=128, special_ids={})
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the model config of {spec!r}: {str(exc).splitlines()[0]}") from None


def causal_lm_class(key: str, spec: str, config):
    """The class AutoModelForCausalLM builds for `config`; UserError when it builds none."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UserError(
            f"{key}={spec!r}: model type {config.model_type!r} is not a causal language model "
            "transformers' AutoModelForCausalLM can build"
        )
    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]


def _model_classes(config: Config) -> list[tuple[str, str, type]]:
    """(key, spec, class) of each model the run builds; a derived student has its teacher's class."""
    configs = {}
    if config.teacher != NO_TEACHER:
        configs["teacher"] = model_config_of(config.teacher)
    if config.student != DERIVED:
        configs["student"] = model_config_of(config.student)
    return [
        (key, getattr(config, key), causal_lm_class(key, getattr(config, key), cfg))
        for key, cfg in configs.items()
    ]


def check_attention_kernel(config: Config) -> None:
    """`train.attn_implementation` against each model's class (transformers' support flags)."""
    from workers.attention import unsupported_message

    for key, spec, cls in _model_classes(config):
        problem = unsupported_message(config.train.attn_implementation, cls)
        if problem is not None:
            raise UserError(f"{problem} ({key} {spec!r})")


def check_derivable(config: Config) -> None:
    """`student: derived` from this teacher: layer count, widths and layer stack, on the meta device."""
    from workers.models import ModelSetupError
    from workers.models import check_derivable as derivable

    if config.student != DERIVED or config.teacher == NO_TEACHER:
        return
    teacher_config = model_config_of(config.teacher)
    causal_lm_class("teacher", config.teacher, teacher_config)
    try:
        derivable(teacher_config, asdict(config.derive))
    except ModelSetupError as exc:
        raise UserError(f"student=derived from teacher {config.teacher!r}: {exc}") from None
