"""Lines Ray (and the libraries its workers run) print on a run's console unless raydistill quiets it
(workers/ray_console.py). Each pattern is one seen in `raydistill train --verbose` on configs/tiny.yaml
and names the setting that keeps it off the console without --verbose."""

from __future__ import annotations

import re

RAY_INTERNALS = {
    # ray.init's logging level (ray_init_logging)
    "Started a local Ray instance": "ray.init INFO",
    # Ray Train's LoggingConfig (train_logging_config)
    "Requesting resources:": "Ray Train controller INFO",
    "training worker group": "Ray Train controller INFO",
    "Setting up process group for": "Ray Train worker INFO",
    "Checkpoint successfully created at": "Ray Train worker INFO",
    # Ray Train's report logger, named after its file (quiet_train_worker)
    "Reporting training result": "Ray Train report INFO",
    # Ray Data's progress bars (quiet_ray_data, RAY_DATA_DISABLE_PROGRESS_BARS)
    "Parquet dataset sampling": "Ray Data progress bar",
    "Running Dataset": "Ray Data progress bar",
    "ReadParquet->": "Ray Data progress bar",
    "A new progress UI is available": "Ray Data progress bar note",
    # Ray Data's per-dataset start lines (quiet_ray_data: print_on_execution_start)
    "Starting execution of Dataset": "Ray Data execution start",
    "Execution plan of Dataset": "Ray Data execution plan",
    # the V1 Parquet reader's estimates (quiet_ray_data: PARQUET_READER_LOGGER)
    "Estimated parquet": "Ray Data Parquet reader INFO",
    # transformers' progress bars in the workers (HF_HUB_DISABLE_PROGRESS_BARS)
    "Writing model shards": "transformers progress bar",
    "Loading weights": "transformers progress bar",
    # torch.distributed's deprecation notices in the workers (PYTHONWARNINGS)
    "FutureWarning": "a library's FutureWarning",
}
_PATTERN = re.compile("|".join(re.escape(p) for p in RAY_INTERNALS))


def ray_internals_lines(console: str) -> list[str]:
    """The console's lines that come from Ray's internals (or its workers' libraries), not raydistill."""
    return [line for line in console.splitlines() if _PATTERN.search(line)]


def repeated_worker_lines(console: str) -> list[str]:
    """raydistill lines a worker printed that reached the console more than once (Ray Train's print
    patch sends each print() twice)."""
    seen: dict[str, int] = {}
    for line in console.splitlines():
        if "(RayTrainWorker" in line and "raydistill:" in line:
            text = line[line.index("raydistill:") :]
            seen[text] = seen.get(text, 0) + 1
    return [text for text, count in seen.items() if count > 1]
