"""Teacher against student, on the driver before Ray starts: logit distillation needs one tokenizer.

Inside a family the two share a vocabulary but pad their embeddings to different widths (Qwen2.5-7B
has 152064 rows, Qwen2.5-0.5B 151936, for a tokenizer of 151665 tokens): that trains, the loss
reading only the tokenizer's columns (workers/distill_loss.py). Two tokenizers whose vocabularies
differ (workers/tokenizer_identity.py `vocabulary_identity`) give the same id different meanings:
refused in one line naming both models. Reads config.json and tokenizer files only, never weights.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config import Config
from orchestrator.errors import UserError
from orchestrator.train.data_models import (
    has_tokenizer,
    is_pretrained,
    load_tokenizer_for,
    tokenizer_difference,
)
from orchestrator.train.model_configs import vocab_size_of


def _described(spec: str, tokenizer: Any | None) -> str:
    """A model in a message: its spec, tokenizer class and length (or none), config.json vocab_size."""
    size = vocab_size_of(spec)
    if tokenizer is None:
        return f"{spec!r} (no tokenizer files, vocab_size {size})"
    return f"{spec!r} ({type(tokenizer).__name__} of {len(tokenizer)} tokens, vocab_size {size})"


def check_vocabularies(config: Config) -> None:
    """Refuse a pretrained teacher and student that do not share a tokenizer (`UserError`, one line).

    A preset takes the run tokenizer's vocabulary and a derived student the teacher's: nothing to
    compare. When both model directories carry tokenizer files, their vocabularies are compared
    (special-token roles and chat templates may differ), and different vocab sizes (padding) are fine. When one has none, the tokenizers cannot be
    compared: only equal vocab sizes pass, and the message says to save the missing tokenizer.
    """
    teacher, student = config.teacher, config.student
    if not (is_pretrained(teacher) and is_pretrained(student)):
        return
    if has_tokenizer(teacher) and has_tokenizer(student):
        t_tok, s_tok = load_tokenizer_for(teacher, "teacher"), load_tokenizer_for(student, "student")
        from workers.tokenizer_identity import vocabulary_identity

        # Ids must mean the same text; eos or chat template may differ (Instruct teacher, base
        # student): the run's tokenizer is the teacher's, and the special-id check names any conflict.
        if vocabulary_identity(t_tok) != vocabulary_identity(s_tok):
            raise UserError(
                f"teacher {_described(teacher, t_tok)} and student {_described(student, s_tok)} use "
                f"different tokenizers ({tokenizer_difference(t_tok, s_tok)}): cross-tokenizer "
                "distillation is not supported; pick a student of the teacher's tokenizer, or student=derived"
            )
        return
    if vocab_size_of(teacher) != vocab_size_of(student):
        t_tok = load_tokenizer_for(teacher, "teacher") if has_tokenizer(teacher) else None
        s_tok = load_tokenizer_for(student, "student") if has_tokenizer(student) else None
        raise UserError(
            f"teacher {_described(teacher, t_tok)} and student {_described(student, s_tok)} differ in "
            "vocab_size and their tokenizers cannot be compared: save each model's tokenizer beside its "
            "config.json (tokenizer.save_pretrained(model_dir)) so raydistill can check they share one"
        )
