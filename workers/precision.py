"""Which floating-point precision a worker trains in, decided on the worker's own hardware.

`deepspeed.precision: auto` picks bf16 only where the hardware computes it natively: a CUDA GPU
that supports it, or a CPU with AMX or AVX512-BF16 units (recent Intel Xeons). Elsewhere bf16 is
emulated: on a 2-core AMD EPYC with AVX2 only, one training step of the demo's 6.8M-parameter
teacher took 21.5 s in bf16 against 0.65 s in fp32 (33x slower), so `auto` falls back to fp32.
The decision is made in the worker, not on the driver: a CPU head may drive GPU or other-CPU nodes.
"""

from __future__ import annotations

import torch

AUTO = "auto"


def cpu_has_native_bf16() -> bool:
    """AMX tiles or AVX512-BF16 on this CPU (torch's own CPU capability probes)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:  # a torch build without the probe's backend
            continue
    return False


def native_bf16(use_gpu: bool) -> bool:
    if use_gpu:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def resolve_precision(requested: str, use_gpu: bool) -> str:
    """`auto` -> "bf16" where this worker's hardware has native bf16, else "fp32"; others unchanged."""
    if requested != AUTO:
        return requested
    return "bf16" if native_bf16(use_gpu) else "fp32"


def resolve_teacher_precision(requested: str, student_precision: str, use_gpu: bool) -> str:
    """The frozen teacher's precision. `auto` -> bf16 where the student trains in bf16 or the hardware
    has native bf16: the teacher only runs forward, so bf16 costs it no optimizer precision, and its
    forward is a large share of a distillation step (the demo's 6.8M teacher beside a 1.8M student:
    ~half of the step in fp32 on one CPU thread; bf16 halves the teacher's part, BENCHMARKS.md).
    Its outputs are cast to fp32 before any loss. `student_precision` is already resolved."""
    if requested != AUTO:
        return requested
    return "bf16" if student_precision == "bf16" or native_bf16(use_gpu) else "fp32"


def _emulated_bf16_warning(key: str, requested: str, use_gpu: bool) -> str | None:
    """The warning for an explicit bf16 where this worker's hardware only emulates it."""
    if requested != "bf16" or native_bf16(use_gpu):
        return None
    device = "GPU" if use_gpu else "CPU"
    return (
        f"deepspeed.{key} bf16 on a {device} without native bf16: matmuls are emulated and can "
        "run ~30x slower than fp32; use fp32 or auto"
    )


def teacher_precision_note(
    requested: str, resolved: str, student_precision: str, use_gpu: bool
) -> str | None:
    """One line when an explicit bf16 teacher is emulated here, or when the teacher's precision
    differs from the student's; else None."""
    warning = _emulated_bf16_warning("teacher_precision", requested, use_gpu)
    if warning is not None:
        return warning
    if resolved == student_precision:
        return None
    how = "auto -> " if requested == AUTO else ""
    return f"deepspeed.teacher_precision {how}{resolved} (frozen teacher; the student trains in {student_precision})"


def precision_note(requested: str, resolved: str, use_gpu: bool) -> str | None:
    """One line for the console when the choice deserves one, else None."""
    if requested == AUTO:
        device = "GPU" if use_gpu else "CPU"
        why = "native bf16" if resolved == "bf16" else "no native bf16"
        return f"deepspeed.precision auto -> {resolved} ({device} with {why})"
    return _emulated_bf16_warning("precision", requested, use_gpu)
