"""Save the trained student in plain Hugging Face format (safetensors, config, tokenizer)."""

from __future__ import annotations

import shutil
from pathlib import Path

from workers.attention import choose_attention
from workers.dist import barrier
from workers.hf_compat import write_transformers4_compat

SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def use_tokenizer_special_ids(model, tokenizer) -> None:
    """The model's config and generation config carry the tokenizer's bos/eos/pad ids, so `generate`
    stops where the tokenizer ends a text and pads with the tokenizer's pad."""
    for name in SPECIAL_IDS:
        value = getattr(tokenizer, name)
        setattr(model.config, name, value)
        if model.generation_config is not None:
            setattr(model.generation_config, name, value)


def export_student(engine, tokenizer, out_dir: str | Path, rank: int, zero_stage: int) -> None:
    """Every rank takes part (ZeRO-3 gathers its shards); rank 0 writes `out_dir` atomically."""
    student = engine.module.student
    out_dir = Path(out_dir)

    def write() -> None:
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        state = {k: v.detach().to("cpu").clone() for k, v in student.state_dict().items()}
        # Attention maps were only needed for training; plain users get the class's fast default
        # (sdpa where it has one, eager for e.g. Gemma 2).
        student.config._attn_implementation = choose_attention("auto", type(student), False, False)
        use_tokenizer_special_ids(student, tokenizer)
        student.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_transformers4_compat(tmp)  # many serving stacks still pin transformers 4.x
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)

    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(student.parameters()), modifier_rank=None):
            if rank == 0:
                write()
    elif rank == 0:
        write()
    barrier()
