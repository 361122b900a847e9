"""Resuming never unpickles arbitrary objects from a run directory."""

import pickle

import pytest
import torch

from workers.safe_checkpoint import WeightsOnlyCheckpointEngine


class Payload:
    """Stands for anything a tampered checkpoint could smuggle in."""


def test_tensors_and_deepspeed_types_load(tmp_path):
    from deepspeed.runtime.zero.config import ZeroStageEnum

    path = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2), "stage": ZeroStageEnum.gradients}, path)
    loaded = WeightsOnlyCheckpointEngine().load(str(path))
    assert torch.equal(loaded["w"], torch.ones(2)) and loaded["stage"] == ZeroStageEnum.gradients


def test_unknown_classes_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        WeightsOnlyCheckpointEngine().load(str(path))
