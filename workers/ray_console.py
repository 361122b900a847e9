"""Ray's console, quieted: every setting raydistill makes so a run's console holds raydistill's own
lines (the progress line, its notes) and not the INFO logs, progress bars and warnings of Ray and of
the libraries Ray's workers run. Each function takes `verbose` (the CLI's `--verbose`, carried to the
workers in `WorkerRuntime.verbose`): then it changes nothing, and Ray's console is Ray's own.

The driver (orchestrator/train) and the worker loop both call it; Ray is imported lazily.
"""

from __future__ import annotations

import logging
from typing import Any

# Ray's level for its own loggers on the driver (ray.init) and in Train's controller and workers.
QUIET_LEVEL = "WARNING"

# Worker-process environment, through ray.init's runtime_env.
QUIET_WORKER_ENV = {
    # Ray Data's progress bars (raw terminal codes in job logs) would drown the progress line.
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # transformers' "Loading weights" / "Writing model shards" bars would break up the progress line.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # torch.distributed's and DeepSpeed's deprecation notices, once per worker process.
    "PYTHONWARNINGS": "ignore::FutureWarning",
}

# Ray Data's V1 Parquet reader logs its encoding-ratio and batch-size estimates at INFO on the driver.
PARQUET_READER_LOGGER = "ray.data._internal.datasource.parquet_datasource"


def worker_env(verbose: bool) -> dict[str, str]:
    """The quieting part of the workers' environment."""
    return {} if verbose else dict(QUIET_WORKER_ENV)


def ray_init_logging(verbose: bool) -> dict[str, Any]:
    """Keyword arguments for the `ray.init` that starts a local instance."""
    return {} if verbose else {"configure_logging": True, "logging_level": QUIET_LEVEL}


def train_logging_config(verbose: bool):
    """Ray Train's `LoggingConfig` for a TorchTrainer: its per-report INFO lines would drown the
    progress line (None keeps Ray's default)."""
    if verbose:
        return None
    from ray.train import LoggingConfig

    return LoggingConfig(log_level=QUIET_LEVEL)


def quiet_ray_data(context, verbose: bool) -> None:
    """The driver's Ray Data context (shipped to the split coordinators that feed the workers) and
    the driver's Parquet reader logger."""
    if verbose:
        return
    context.enable_progress_bars = False
    # Nor the "Starting execution of Dataset ..." / "Execution plan ..." lines each split coordinator
    # prints for every dataset of every run (they stay in Ray Data's own log files).
    context.print_on_execution_start = False
    logging.getLogger(PARQUET_READER_LOGGER).setLevel(logging.WARNING)


# Ray Train's logger that prints a failing train function's whole traceback on the console ("Error in
# training function"); the worker's error travels to the driver, which prints one line and logs it.
TRAIN_FN_ERROR_LOGGER = "ray.train.v2._internal.util"


def quiet_train_worker(verbose: bool) -> None:
    """In a Ray Train worker: Train logs every `report` call at INFO from a logger named after its
    module's file path, which `LoggingConfig(log_level=...)` misses; raydistill prints its own line.
    A failing worker's traceback goes to the run's log, not the console (workers/worker_errors.py)."""
    if verbose:
        return
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    logging.getLogger(TRAIN_FN_ERROR_LOGGER).setLevel(logging.CRITICAL)
