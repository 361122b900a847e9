"""A failing Ray Train worker's error, classified where its type is known: the user's input (a model
that does not load, an out-of-memory, a checkpoint of other shapes, a bad attention setting: exit 2,
never retried) or a raydistill bug (exit 1). The worker raises `WorkerFailed` in place of the error;
it carries the one-line summary and the full traceback to the driver, which prints the line and
writes the traceback to the run dir's log (orchestrator/train/worker_failure.py).

Imports torch only (no Ray, no orchestrator).
"""

from __future__ import annotations

import traceback

from workers.attention import AttentionChoiceError

# Exception types whose message is already the one line a user acts on (with workers.models'
# ModelSetupError, imported late: it brings transformers).
USER_ERROR_TYPES: tuple[type[BaseException], ...] = (AttentionChoiceError,)
# Messages of errors raised in torch's or DeepSpeed's code that mean the machine ran out of memory.
OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")
# A state dict of other shapes than the model's (torch's load_state_dict under DeepSpeed's resume).
SHAPE_MARKERS = ("size mismatch for",)
OOM_HINT = "lower train.micro_batch_size or data.seq_len, or raise deepspeed.zero_stage / offload"


class WorkerFailed(Exception):
    """What a worker raises instead of its error. `user`: the run's input is at fault; `summary`:
    one line naming the problem; `details`: the original traceback, for the run's log."""

    def __init__(self, summary: str, user: bool, details: str, rank: int):
        super().__init__(summary)
        self.summary, self.user, self.details, self.rank = summary, user, details, rank

    def __reduce__(self):  # pickled to the controller and the driver with every field
        return (self.__class__, (self.summary, self.user, self.details, self.rank))


def first_line(exc: BaseException) -> str:
    """The exception's message on one line (its last non-blank line: where Python and Rust
    libraries put the reason), else its type's name."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in OOM_MARKERS)


def classify(exc: BaseException) -> tuple[bool, str]:
    """(the user's input is at fault, the one line to show) for an error raised in a worker."""
    from workers.models import ModelSetupError

    if is_out_of_memory(exc):
        return True, f"a worker ran out of memory ({first_line(exc)}): {OOM_HINT}"
    if isinstance(exc, (ModelSetupError, *USER_ERROR_TYPES)):
        return True, first_line(exc)
    if isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in SHAPE_MARKERS):
        return True, f"a checkpoint does not fit the model: {first_line(exc)}"
    return False, f"{type(exc).__name__}: {first_line(exc)}"


def worker_failed(exc: BaseException, rank: int) -> WorkerFailed:
    """`exc`, classified, with its full traceback (causes included)."""
    user, summary = classify(exc)
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return WorkerFailed(summary, user, details, rank)
