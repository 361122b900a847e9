"""Which attention kernel a model runs, from `train.attn_implementation` and what the model's class
reports it supports (transformers' `_supports_sdpa` / `_supports_flash_attn` class flags: Gemma 2,
for one, has no sdpa path because sdpa cannot soft-cap attention logits).

Imports neither torch nor transformers at module level: the driver's config checks use it too.
"""

from __future__ import annotations

AUTO, EAGER, SDPA, FLASH = "auto", "eager", "sdpa", "flash_attention_2"
# `train.attn_implementation`'s values. "auto": flash-attention 2 where the model supports it, the
# package is installed, a GPU runs it and the weights are half precision; else sdpa where the model
# supports it; else eager. Attention maps (the attention loss) always switch to eager meanwhile.
ATTN_IMPLEMENTATIONS = (AUTO, EAGER, SDPA, FLASH)


class AttentionChoiceError(ValueError):
    """`train.attn_implementation` names a kernel this model or this machine cannot run."""


def supported_kernels(model_class) -> tuple[str, ...]:
    """The kernels `model_class` (a PreTrainedModel subclass) implements, in preference order."""
    kernels = [EAGER]
    if getattr(model_class, "_supports_sdpa", False):
        kernels.insert(0, SDPA)
    # `_supports_flash_attn_2` is the pre-5 name of the flag; custom code may still set it.
    if getattr(model_class, "_supports_flash_attn", False) or getattr(
        model_class, "_supports_flash_attn_2", False
    ):
        kernels.insert(0, FLASH)
    return tuple(kernels)


def flash_attention_installed() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


def unsupported_message(setting: str, model_class) -> str | None:
    """Why `setting` cannot run on `model_class` whatever the machine (one line), or None."""
    if setting == AUTO or setting in supported_kernels(model_class):
        return None
    return (
        f"train.attn_implementation={setting!r}: {model_class.__name__} does not support it "
        f"(supports {', '.join(supported_kernels(model_class))}); use 'auto'"
    )


def choose_attention(setting: str, model_class, on_gpu: bool, half_precision: bool) -> str:
    """The kernel `model_class` runs without attention maps. `on_gpu`: its weights are on a CUDA
    device; `half_precision`: they are bf16/fp16 (flash-attention computes in those only).
    AttentionChoiceError, naming `train.attn_implementation`, for an explicit kernel that cannot run."""
    kernels = supported_kernels(model_class)
    if setting == AUTO:
        if FLASH in kernels and on_gpu and half_precision and flash_attention_installed():
            return FLASH
        return SDPA if SDPA in kernels else EAGER
    problem = unsupported_message(setting, model_class)
    if problem is not None:
        raise AttentionChoiceError(problem)
    if setting == FLASH:
        if not flash_attention_installed():
            raise AttentionChoiceError(
                f"train.attn_implementation={FLASH!r}: the flash_attn package is not installed on this worker"
            )
        if not (on_gpu and half_precision):
            raise AttentionChoiceError(
                f"train.attn_implementation={FLASH!r} runs on a GPU in bf16/fp16 only "
                "(set scaling.use_gpu and deepspeed.precision/teacher_precision to bf16)"
            )
    return setting


def kernel_for(model, setting: str) -> str:
    """`choose_attention` for a built model, from where its weights are and their dtype."""
    import torch

    param = next(model.parameters(), None)
    on_gpu = param is not None and param.device.type == "cuda"
    half = param is not None and param.dtype in (torch.bfloat16, torch.float16)
    return choose_attention(setting, type(model), on_gpu, half)
