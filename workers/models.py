"""Load the teacher and the student (Hugging Face id/path, tiny preset, or derived from the teacher)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from workers.presets import build_preset_config, preset_name
from workers.tokenizer_identity import with_pad_fallback

DERIVED = "derived"
NO_TEACHER = "none"


class ModelSetupError(ValueError):
    """A model cannot be built or the pair is incompatible (e.g. an embedding smaller than the tokenizer)."""


def load_tokenizer(path_or_id: str):
    """The run's tokenizer, pad = eos when it has none (the driver says so once: orchestrator/train/
    trainer.py; labels are never masked by pad id, so eos stays trained on)."""
    return with_pad_fallback(AutoTokenizer.from_pretrained(path_or_id))


def special_token_ids(tokenizer) -> dict[str, int]:
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return {k: v for k, v in ids.items() if v is not None}


def build_model(spec: str, tokenizer, max_positions: int, seed: int, dtype: torch.dtype) -> PreTrainedModel:
    """A causal LM from a preset (`preset:<name>`, freshly initialised from `seed`) or an id/path."""
    name = preset_name(spec)
    if name is not None:
        config = build_preset_config(name, len(tokenizer), max_positions, special_token_ids(tokenizer))
        # Same seed on every rank: the frozen teacher lives outside DeepSpeed and must be identical.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model
    try:
        return AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
    except OSError as exc:
        raise ModelSetupError(f"cannot load model {spec!r}: {str(exc).splitlines()[0]}") from None


def _layer_stack(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The decoder layer stack, found from transformers' own structures rather than attribute names
    (OPT keeps it at `model.decoder.layers`, GPT-2 at `transformer.h`): the ModuleList of
    `num_hidden_layers` entries whose class the model names in `_no_split_modules` (every family
    lists its decoder layer there), else of one class deriving from transformers'
    `GradientCheckpointingLayer` (its decoder layers' base class)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    n = num_layers(model)
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    candidates = [
        module
        for module in model.modules()
        if isinstance(module, torch.nn.ModuleList)
        and len(module) == n
        and len({type(layer) for layer in module}) == 1
    ]
    for test in (
        lambda stack: type(stack[0]).__name__ in layer_classes,
        lambda stack: isinstance(stack[0], GradientCheckpointingLayer),
    ):
        found = [stack for stack in candidates if test(stack)]
        if len(found) == 1:
            return found[0]
    raise ModelSetupError(
        f"student: derived cannot find the decoder layer stack of a {model.config.model_type} model "
        f"({type(model).__name__}); give a student model instead"
    )


def teacher_layer_for(j: int, n_student: int, n_teacher: int) -> int:
    """The teacher layer (1-based) student layer `j` (1-based) starts from: the uniform layer map's
    target, spaced through the depth (j * L_t // L_s)."""
    return j * n_teacher // n_student


# Config lists with one entry per decoder layer (Gemma 2's and Qwen2/3's `layer_types`: sliding or
# full attention; SmolLM3's `no_rope_layers`): each entry follows the teacher layer it describes.
PER_LAYER_KEYS = ("layer_types", "no_rope_layers")


def derived_config(teacher_config, derive: dict[str, Any]):
    """The student's config: the teacher's, with `derive`'s depth and widths, per-layer lists taken
    from the teacher layers the student's layers copy. ModelSetupError names the derive key at fault."""
    s_cfg = copy.deepcopy(teacher_config)
    text = s_cfg.get_text_config()
    n_student, n_teacher = int(derive["num_layers"]), int(text.num_hidden_layers)
    if n_student > n_teacher:
        raise ModelSetupError(f"derive.num_layers={n_student} exceeds the teacher's {n_teacher} layers")
    # The standard names reach each family's own (GPT-2's n_layer, n_embd, n_head) through
    # transformers' `attribute_map`; the MLP width has no standard alias (see `_mlp_width_key`).
    for key in PER_LAYER_KEYS:
        entries = getattr(text, key, None)
        # A read-only property (Mamba's `layer_types`) is computed from other settings: nothing to copy.
        settable = not isinstance(getattr(type(text), key, None), property)
        if settable and isinstance(entries, (list, tuple)) and len(entries) == n_teacher:
            picked = [
                entries[teacher_layer_for(j, n_student, n_teacher) - 1] for j in range(1, n_student + 1)
            ]
            setattr(text, key, type(entries)(picked))
    # Qwen2/3's `max_window_layers`: layers below it use full attention. The copied teacher layers
    # keep their order, so the student's full-attention layers are still a prefix: count them.
    window_from = getattr(text, "max_window_layers", None)
    if isinstance(window_from, int):
        text.max_window_layers = sum(
            teacher_layer_for(j, n_student, n_teacher) <= window_from for j in range(1, n_student + 1)
        )
    text.num_hidden_layers = n_student
    if derive.get("hidden_size") is not None:
        text.hidden_size = int(derive["hidden_size"])
    if derive.get("intermediate_size") is not None:
        setattr(text, _mlp_width_key(text), int(derive["intermediate_size"]))
    if derive.get("num_attention_heads") is not None:
        text.num_attention_heads = int(derive["num_attention_heads"])
        if hasattr(text, "num_key_value_heads"):
            text.num_key_value_heads = text.num_attention_heads
    return s_cfg


def check_derivable(teacher_config, derive: dict[str, Any]) -> None:
    """Whether `derive_student` can build a student from a teacher of `teacher_config`, checked without
    weights: both models are instantiated on the meta device and their layer stacks looked up.
    ModelSetupError names the derive key or the model type at fault."""
    try:
        s_cfg = derived_config(teacher_config, derive)
        with torch.device("meta"):
            for cfg in (teacher_config, s_cfg):
                _layer_stack(AutoModelForCausalLM.from_config(cfg))
    except ModelSetupError:
        raise
    except Exception as exc:  # transformers' own refusal of the shrunk config, in its words
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelSetupError(
            f"cannot build a {teacher_config.model_type} student of {derive['num_layers']} layers: {reason}"
        ) from None


def num_layers(model: PreTrainedModel) -> int:
    return int(model.config.get_text_config().num_hidden_layers)


def hidden_size(model: PreTrainedModel) -> int:
    return int(model.config.get_text_config().hidden_size)


def derive_student(teacher: PreTrainedModel, derive: dict[str, Any], seed: int) -> PreTrainedModel:
    """Fewer (optionally narrower) layers of the teacher's architecture, DistilBERT style.

    At the teacher's width the student copies the embeddings, final norm, LM head and, for student
    layer j (1-based), teacher layer ceil-spaced `j * L_t // L_s` (the uniform layer map's target), so
    feature matching starts from aligned representations. A narrower student starts fresh.
    """
    s_cfg = derived_config(teacher.config, derive)
    n_student, n_teacher = int(derive["num_layers"]), num_layers(teacher)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        student = AutoModelForCausalLM.from_config(s_cfg, dtype=torch.float32)

    same_width = hidden_size(student) == hidden_size(teacher) and all(
        derive.get(k) is None for k in ("intermediate_size", "num_attention_heads")
    )
    if same_width:
        teacher_state = teacher.state_dict()
        student_layers, teacher_layers = _layer_stack(student), _layer_stack(teacher)
        # Non-layer weights (embeddings, final norm, head) share names between the two models.
        own = student.state_dict()
        layer_prefix = _layer_prefix(student)
        shared = {k: v for k, v in teacher_state.items() if k in own and not k.startswith(layer_prefix)}
        student.load_state_dict(shared, strict=False)
        for j in range(1, n_student + 1):
            source = teacher_layer_for(j, n_student, n_teacher)
            student_layers[j - 1].load_state_dict(teacher_layers[source - 1].state_dict())
    return student


# What families call the MLP width where `intermediate_size` is not an attribute_map alias:
# GPT-2 and GPT-J `n_inner` (None means 4 * hidden), OPT `ffn_dim`.
_MLP_WIDTH_KEYS = ("intermediate_size", "n_inner", "ffn_dim")


def _mlp_width_key(config) -> str:
    """The attribute holding `config`'s MLP width; ModelSetupError if the family has none to set."""
    for key in _MLP_WIDTH_KEYS:
        if hasattr(config, key):
            return key
    raise ModelSetupError(
        f"derive.intermediate_size: a {config.model_type} config has no MLP width setting "
        f"(none of {', '.join(_MLP_WIDTH_KEYS)}); leave it null"
    )


def _layer_prefix(model: PreTrainedModel) -> str:
    stack = _layer_stack(model)
    for name, module in model.named_modules():
        if module is stack:
            return name + "."
    raise ModelSetupError("decoder layers not found")  # pragma: no cover


def check_vocabularies(
    config: dict[str, Any], teacher: PreTrainedModel | None, student: PreTrainedModel, tokenizer
) -> int:
    """The width the loss reads logits at: len(tokenizer), the shared tokenizer's ids.

    Each output embedding may be padded past the tokenizer (teacher and student to different widths:
    the loss drops their padded columns), but needs a row for every token: else ModelSetupError naming
    the model by its config key and value. Whether both models use this tokenizer is the driver's
    check (orchestrator/train/model_configs.py), made on their tokenizer files before Ray starts."""
    tokens = len(tokenizer)
    for key, model in (("teacher", teacher), ("student", student)):
        if model is None:
            continue
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < tokens:
            raise ModelSetupError(
                f"{key} {config[key]!r}: its output embedding has {rows} rows but the run's tokenizer has "
                f"{tokens} tokens; every token id needs a row"
            )
    return tokens


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def teacher_dtype(teacher_precision: str) -> torch.dtype:
    """The frozen teacher's dtype for a resolved `deepspeed.teacher_precision` (workers/precision.py)."""
    return torch.bfloat16 if teacher_precision == "bf16" else torch.float32


def distillation_loss_for(config: dict[str, Any], student, teacher, vocab_size: int | None = None):
    """The run's curriculum loss, with its feature projectors sized from student to teacher width.
    Without a teacher only CE is on (validated on the driver), so the loss is sized on the student.
    vocab_size: the shared tokenizer's length (`check_vocabularies`), the logit columns the loss reads;
    None reads the logits whole (models built at exactly the tokenizer's width, as benches do)."""
    from workers.distill_loss import DistillationLoss
    from workers.loss_config import CurriculumConfig, LossConfig

    reference = teacher if teacher is not None else student
    return DistillationLoss(
        LossConfig(**config["loss"]),
        CurriculumConfig(**config["curriculum"]),
        student_hidden_size=hidden_size(student),
        teacher_hidden_size=hidden_size(reference),
        student_num_layers=num_layers(student),
        teacher_num_layers=num_layers(reference),
        vocab_size=vocab_size,
    )
