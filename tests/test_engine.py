"""`workers.engine.build_engine`: the student's DeepSpeed engine steps torch's fused AdamW, and a step
through it moves the weights as AdamW's per-tensor loop does (ZeRO-0 and ZeRO-2, fp32, CPU)."""

from __future__ import annotations

import pytest
import torch
from engine_configs import engine_config as shared_engine_config
from tiny_llama import ce_module, tiny_llama

from workers.engine import build_engine
from workers.step import train_step

WIDTH, LAYERS, VOCAB = 32, 2, 128


def engine_config(zero_stage: int) -> dict:
    """The parts of a run config `build_engine` reads: a CE-only fp32 run on one CPU worker."""
    return shared_engine_config(zero_stage, micro_batch_size=2, warmup_steps=1)


def ce_engine(zero_stage: int, fused_optimizer: bool):
    model = tiny_llama(LAYERS, WIDTH, VOCAB, seed=0)  # same seed: same initial weights
    return build_engine(ce_module(model), engine_config(zero_stage), 1, fused_optimizer=fused_optimizer)


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_the_engine_steps_a_fused_adamw_that_updates_like_the_per_tensor_loop(
    single_process_group, zero_stage
):
    fused, loop = ce_engine(zero_stage, True), ce_engine(zero_stage, False)
    assert fused.basic_optimizer.defaults["fused"] is True
    assert not loop.basic_optimizer.defaults["fused"]
    ids = torch.randint(3, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))  # (B, T)
    window = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}]
    before = [p.detach().clone() for p in fused.module.student.parameters()]
    for _ in range(4):  # the first two steps run at lr 0 (DeepSpeed's warm-up starts from 0)
        for engine in (fused, loop):
            assert not train_step(engine, None, window, 0.5).skipped
    moved = 0.0
    for start, a, b in zip(
        before, fused.module.student.parameters(), loop.module.student.parameters(), strict=True
    ):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-4, atol=1e-6)
        moved = max(moved, float((a.detach() - start).abs().max()))
    assert moved > 1e-3  # the weights did move: the comparison is not between two untouched models
