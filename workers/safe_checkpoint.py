"""DeepSpeed checkpoint loading without arbitrary unpickling.

DeepSpeed 0.19's `TorchCheckpointEngine.load` calls `torch.load(..., weights_only=False)`, which
would execute any pickle found in a run directory. raydistill swaps in an engine that loads with
`weights_only=True` and allows only the few DeepSpeed classes its checkpoints contain (found with
`torch.serialization.get_unsafe_globals_in_checkpoint` on checkpoints of ZeRO stages 0-3).
"""

from __future__ import annotations

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

ALLOWED_GLOBALS = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)


def use_weights_only_loading(engine) -> None:
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
