"""Wrap the student and its loss projectors in one DeepSpeed engine."""

from __future__ import annotations

from typing import Any

import torch

from workers.ds_config import build_deepspeed_config
from workers.safe_checkpoint import use_weights_only_loading


def adamw_param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norm weights (1-D tensors), the usual transformer recipe."""
    decay, no_decay = [], []
    for param in module.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_engine(
    module: torch.nn.Module, config: dict[str, Any], world_size: int, fused_optimizer: bool = True
):
    """DeepSpeed engine with a torch AdamW (DeepSpeed's CPUAdam/FusedAdam would JIT-compile) and
    DeepSpeed's WarmupCosineLR from the generated config. Returns the engine.

    AdamW runs torch's fused kernel (CPU and CUDA): on CPU torch otherwise takes a slower per-tensor
    loop (BENCHMARKS.md, "AdamW's kernel"). `fused_optimizer=False` is for bench/optimizer_step.py."""
    import deepspeed

    train = config["train"]
    optimizer = torch.optim.AdamW(
        adamw_param_groups(module, float(train["weight_decay"])),
        lr=float(train["lr"]),
        betas=(0.9, 0.95),
        fused=fused_optimizer,
    )
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        config=build_deepspeed_config(config, world_size),
        # Ray Train already created the process group (gloo on CPU, nccl on GPU).
        dist_init_required=False,
    )
    use_weights_only_loading(engine)
    return engine


def place_teacher(teacher: torch.nn.Module, config: dict[str, Any], device: torch.device):
    """Put the frozen teacher where the student is. With `deepspeed.teacher_zero3` (GPU clusters)
    it becomes a ZeRO-3 inference engine with no optimizer, sharded across the workers as TRL does
    for its reference models, so a teacher larger than one GPU's memory still fits."""
    if not config["deepspeed"]["teacher_zero3"]:
        return teacher.to(device)
    import deepspeed

    hidden = int(teacher.config.get_text_config().hidden_size)
    ds_config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": int(config["train"]["micro_batch_size"]),
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 10 * hidden,
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        },
    }
    # The engine keeps the dtype the teacher was loaded in (deepspeed.teacher_precision).
    if config["deepspeed"]["teacher_precision"] == "bf16":
        ds_config["bf16"] = {"enabled": True}
    engine, *_ = deepspeed.initialize(model=teacher, config=ds_config, dist_init_required=False)
    engine.eval()
    return engine
