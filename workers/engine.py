"""Wrap the student and its loss projectors in one DeepSpeed engine."""

from __future__ import annotations

from typing import Any

import torch

from workers.ds_config import build_deepspeed_config


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


def build_engine(module: torch.nn.Module, config: dict[str, Any], world_size: int):
    """DeepSpeed engine with a torch AdamW (DeepSpeed's CPUAdam/FusedAdam would JIT-compile) and
    DeepSpeed's WarmupCosineLR from the generated config. Returns the engine."""
    import deepspeed

    train = config["train"]
    optimizer = torch.optim.AdamW(
        adamw_param_groups(module, float(train["weight_decay"])),
        lr=float(train["lr"]),
        betas=(0.9, 0.95),
    )
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        config=build_deepspeed_config(config, world_size),
        # Ray Train already created the process group (gloo on CPU, nccl on GPU).
        dist_init_required=False,
    )
    return engine
