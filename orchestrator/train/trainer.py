"""Build and run the TorchTrainer for one distillation run (also used by each Tune trial)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.train.model_configs import PRESET_MAX_POSITIONS, max_positions_of, text_config_of

PARQUET_READER_LOGGER = "ray.data._internal.datasource.parquet_datasource"
V2_READER_ENV = "RAY_DATA_USE_DATASOURCE_V2"  # Ray Data's own switch (1: V2 Parquet reader, 0: V1)
STUDENT_DIR = "student"


@dataclass
class PreparedRun:
    loop_config: dict[str, Any]
    data_dir: Path


def prepare_run(config: Config, run_dir: Path) -> PreparedRun:
    """Resolve data (preparing a corpus if needed) and everything workers need, on the driver. The
    inputs were checked first by `orchestrator.train.preflight.preflight` (train and sweep call it)."""
    import dataclasses

    from orchestrator.data.prepare import ensure_prepared, read_manifest

    limits = [m for m in (max_positions_of(config.teacher), max_positions_of(config.student)) if m]
    max_positions = min(limits) if limits else PRESET_MAX_POSITIONS
    data_cfg = config.data
    real_models = [m for m in (config.teacher, config.student) if text_config_of(m) is not None]
    if data_cfg.tokenizer is None and real_models:
        # A real model brings its own vocabulary: tokenise with it rather than training a new BPE.
        data_cfg = dataclasses.replace(data_cfg, tokenizer=real_models[0])
    data_dir = ensure_prepared(data_cfg, max_positions=max_positions)
    manifest = read_manifest(data_dir)
    loop_config = {
        "config": config.to_dict(),
        "runtime": {
            "tokenizer": str(data_dir / "tokenizer"),
            "max_positions": max_positions,
            "run_dir": str(run_dir),
            "student_dir": str(run_dir / STUDENT_DIR),
            # Lets each worker spread its eval batches over its whole eval shard (workers/data.py).
            "eval_sequences": int(manifest["eval_sequences"]),
        },
    }
    return PreparedRun(loop_config, data_dir)


def configure_ray_data(context, environ=os.environ) -> None:
    """Settings of the driver's Ray Data context (read where `read_parquet` is called, and shipped to
    the split coordinators that feed the workers)."""
    # Progress bars (raw terminal codes in job logs) would drown raydistill's own progress line.
    context.enable_progress_bars = False
    # Nor the "Starting execution of Dataset ..." and "Execution plan ..." lines each split coordinator
    # prints for every dataset of every run (they stay in Ray Data's own log files).
    context.print_on_execution_start = False
    # Ray 2.60's V2 Parquet reader lists files through 32 FooterReader actors per dataset, each a new
    # Python process: 8-12 s before a worker's first batch on 2 cores, against ~1 s with the V1 reader
    # (bench/data_startup.py), for prepared dirs of a few small files. A user's explicit choice stays.
    if V2_READER_ENV not in environ:
        context.use_datasource_v2 = False
    # The V1 reader logs its encoding-ratio and batch-size estimates at INFO on the driver's console.
    logging.getLogger(PARQUET_READER_LOGGER).setLevel(logging.WARNING)


def build_trainer(
    config: Config, run_dir: Path, prepared: PreparedRun, callbacks: list | None = None, name=None
):
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from workers.ds_config import communication_backend
    from workers.loop import train_loop_per_worker

    execution = ray.data.ExecutionOptions(preserve_order=True)  # same shard contents on resume
    configure_ray_data(ray.data.DataContext.get_current())
    datasets = {
        "train": ray.data.read_parquet(str(prepared.data_dir / "train")),
        "eval": ray.data.read_parquet(str(prepared.data_dir / "eval")),
    }
    scaling = config.scaling
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=prepared.loop_config,
        torch_config=TorchConfig(backend=communication_backend(scaling.use_gpu)),
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name or run_dir.name,
            storage_path=str(run_dir.parent.resolve()),
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.checkpoints_to_keep),
            callbacks=callbacks or [],
            # Ray Train's per-report INFO lines would drown the progress line.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split="all", execution_options=execution),
    )
