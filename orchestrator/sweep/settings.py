"""A sweep's settings besides its base config (saved as sweep.yaml, read again by --resume)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import UserError

# "fifo" runs every trial to the end (no early stopping): the baseline the benchmark compares against.
SCHEDULERS = ("asha", "hyperband", "pbt", "fifo")


@dataclass
class SweepSettings:
    """Everything besides the base config that defines a sweep; saved as sweep.yaml for --resume."""

    space: str = "curriculum"
    num_samples: int = 8
    scheduler: str = "asha"
    max_eval_train_ratio: float = 2.0
    ratio_grace_evals: int = 1
    seed: int = 0
    max_concurrent: int | None = None
    # Train a phase-1 prefix shared by several trials once (orchestrator.sweep.shared_prefix); ASHA and
    # FIFO only: PBT and HyperBand restart trials from Tune checkpoints.
    share_prefix: bool = True

    def validate(self) -> None:
        if (
            isinstance(self.num_samples, bool)
            or not isinstance(self.num_samples, int)
            or self.num_samples < 1
        ):
            raise UserError(f"--num-samples {self.num_samples!r}: must be an integer >= 1")
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"--scheduler {self.scheduler!r}: must be one of {', '.join(SCHEDULERS)}")
        if not self.max_eval_train_ratio > 0:  # inf turns the ratio stopper off
            raise UserError(f"--max-eval-train-ratio {self.max_eval_train_ratio!r}: must be a number > 0")
        if self.ratio_grace_evals < 0:
            raise UserError(f"--ratio-grace-evals {self.ratio_grace_evals!r}: must be >= 0")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise UserError(f"--max-concurrent {self.max_concurrent!r}: must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def tune_checkpoints(self) -> bool:
        # ASHA only stops trials; HyperBand pauses them and PBT clones them: both need checkpoints.
        return self.scheduler in ("hyperband", "pbt")
