"""The run config a single-process DeepSpeed engine in a test is built from (`workers.engine.build_engine`
reads only these parts): fp32 on one CPU worker, as Ray Train's worker would pass it."""

from __future__ import annotations


def engine_config(
    zero_stage: int,
    grad_accum: int = 1,
    grad_clip: float = 1.0,
    micro_batch_size: int = 1,
    lr: float = 1e-2,
    max_steps: int = 10,
    warmup_steps: int = 3,
) -> dict:
    """By default a 3-step warm-up, so the lr differs from step to step."""
    return {
        "train": {
            "seed": 0,
            "max_steps": max_steps,
            "micro_batch_size": micro_batch_size,
            "grad_accum": grad_accum,
            "lr": lr,
            "min_lr_ratio": 0.1,
            "warmup_steps": warmup_steps,
            "weight_decay": 0.01,
            "grad_clip": grad_clip,
        },
        "deepspeed": {
            "zero_stage": zero_stage,
            "precision": "fp32",
            "offload_optimizer": False,
            "offload_param": False,
            "teacher_zero3": False,
        },
        "scaling": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1.0},
    }
