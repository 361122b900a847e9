"""`WorkerRuntime`: what the driver hands each Ray Train worker besides the run config.

The config says what to train; the runtime says where things are on this run's machines (resolved on
the driver) and which role the run plays: a plain `raydistill train`, a sweep trial, a sweep's shared
phase-1 prefix, or a test injecting faults. The driver builds it (orchestrator/train/trainer.py
`prepare_run`), adds a role's fields with `dataclasses.replace`, and ships it in the loop config as
`{"config": <resolved run config dict>, "runtime": WorkerRuntime}`. Frozen and plain, so it pickles to
every worker process unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerRuntime:
    # Always set by `prepare_run`.
    tokenizer: str  # the prepared data's tokenizer dir (builds the preset models' vocabulary)
    max_positions: int  # positions of the preset models built: the smaller of teacher's and student's
    student_dir: str  # where rank 0 exports the trained student at the last step
    # Sequences in the eval split: each worker spreads its eval batches over its whole shard
    # (workers/data.py); 0 reads the first batches of the shard.
    eval_sequences: int = 0
    # `--verbose`: leave Ray's console as Ray sets it (workers/ray_console.py).
    verbose: bool = False

    # `raydistill train`: written by the driver on Ctrl-C / SIGTERM (orchestrator/train/interrupt.py);
    # the workers checkpoint the step they are on and leave without exporting.
    interrupt_file: str | None = None

    # A sweep trial (orchestrator/sweep/trial_driver.py).
    stop_file: str | None = None  # Tune stopped the trial: leave at the next step, no export
    decision_file: str | None = None  # after each eval, wait until Tune decided (workers/tune_decision.py)
    # A Tune checkpoint to start from when Ray Train has none of its own: a PBT exploit, a HyperBand
    # resume, or the shared phase-1 prefix's checkpoint a trial forks from.
    start_checkpoint: str | None = None

    # A sweep's shared phase-1 prefix run (orchestrator/sweep/shared_prefix.py): trains on the full run's
    # schedule (train.max_steps) but stops after `stop_at_step` steps, with no export, and saves a
    # checkpoint at each of `checkpoint_steps` (where trials fork).
    stop_at_step: int | None = None
    checkpoint_steps: tuple[int, ...] = ()

    # Tests only: the fault plan of workers.faults.FaultInjector (a crash, a pause, NaN teacher logits).
    faults: dict[str, Any] | None = None
