"""Build the DeepSpeed config dict from the run config (plain dict, as workers receive it).

The LR schedule is DeepSpeed's own `WarmupCosineLR` (linear warm-up, then cosine to `min_lr_ratio`),
so it is stepped by the engine and saved in DeepSpeed's checkpoint with the optimizer state.
The optimizer is passed separately as a torch `AdamW` (DeepSpeed's CPUAdam/FusedAdam would JIT-compile).
"""

from __future__ import annotations

from typing import Any


def build_deepspeed_config(config: dict[str, Any], world_size: int) -> dict[str, Any]:
    train, ds = config["train"], config["deepspeed"]
    stage = int(ds["zero_stage"])
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 2:
        # Overlap and contiguous gradients are the usual ZeRO-2/3 throughput settings.
        zero.update({"overlap_comm": True, "contiguous_gradients": True, "reduce_scatter": True})
    if stage == 3:
        # Keep small parameters resident. (workers/export.py gathers the shards itself for `student/`.)
        zero["stage3_param_persistence_threshold"] = 10_000
    if ds["offload_optimizer"]:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": bool(config["scaling"]["use_gpu"])}
    if ds["offload_param"]:
        zero["offload_param"] = {"device": "cpu", "pin_memory": bool(config["scaling"]["use_gpu"])}

    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": int(train["micro_batch_size"]),
        "gradient_accumulation_steps": int(train["grad_accum"]),
        "train_batch_size": int(train["micro_batch_size"]) * int(train["grad_accum"]) * int(world_size),
        "zero_optimization": zero,
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": int(train["max_steps"]),
                # DeepSpeed refuses 0 warm-up steps; 1 is a no-op warm-up.
                "warmup_num_steps": max(1, int(train["warmup_steps"])),
                "warmup_type": "linear",
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": float(train["min_lr_ratio"]),
            },
        },
        "steps_per_print": 10**9,  # raydistill prints its own progress line
        "wall_clock_breakdown": False,
    }
    if float(train["grad_clip"]) > 0:
        out["gradient_clipping"] = float(train["grad_clip"])
    precision = ds["precision"]
    if precision == "bf16":
        out["bf16"] = {"enabled": True}
    elif precision == "fp16":
        out["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return out


def communication_backend(use_gpu: bool) -> str:
    """nccl between GPUs, gloo on CPU (DeepSpeed's CPU accelerator falls back to gloo without oneCCL)."""
    return "nccl" if use_gpu else "gloo"
