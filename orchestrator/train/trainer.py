"""Build and run the TorchTrainer for one distillation run (also used by each Tune trial)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.train.model_configs import PRESET_MAX_POSITIONS, max_positions_of
from workers import ray_console
from workers.runtime import WorkerRuntime

V2_READER_ENV = "RAY_DATA_USE_DATASOURCE_V2"  # Ray Data's own switch (1: V2 Parquet reader, 0: V1)
STUDENT_DIR = "student"


@dataclass(frozen=True)
class PreparedRun:
    """A run ready for `build_trainer`: the loop config each worker receives, and the prepared data."""

    config: dict[str, Any]  # the resolved run config
    runtime: WorkerRuntime
    data_dir: Path

    @property
    def loop_config(self) -> dict[str, Any]:
        """What `train_loop_per_worker` receives (workers/loop.py)."""
        return {"config": self.config, "runtime": self.runtime}

    def with_runtime(self, **changes: Any) -> PreparedRun:
        """The same run with these `WorkerRuntime` fields replaced (a trial's, a prefix run's...)."""
        return dataclasses.replace(self, runtime=dataclasses.replace(self.runtime, **changes))


def prepare_run(
    config: Config, run_dir: Path, verbose: bool = False, announce: bool = True, start_ray=None
) -> PreparedRun:
    """Resolve data (preparing a corpus if needed) and everything workers need, on the driver. The
    inputs were checked first by `orchestrator.train.preflight.preflight` (train and sweep call it).
    `verbose` (`--verbose`) reaches the workers in their runtime; `announce=False` for a run already
    prepared once by this command (its notes are printed once per run). `start_ray` is called before
    Ray Data prepares a corpus (not when prepared data is reused)."""
    from orchestrator.data.prepare import MANIFEST, ensure_prepared, read_manifest
    from orchestrator.train.data_models import default_tokenizer, run_tokenizer_spec

    limits = [m for m in (max_positions_of(config.teacher), max_positions_of(config.student)) if m]
    max_positions = min(limits) if limits else PRESET_MAX_POSITIONS
    data_cfg = config.data
    default = default_tokenizer(config)
    if default is not None and not (Path(data_cfg.source).expanduser() / MANIFEST).is_file():
        # A pretrained model brings its own vocabulary: tokenise with it rather than training a new BPE.
        key, spec = default
        if announce:
            print(f"raydistill: data.tokenizer not set: tokenising with the {key}'s tokenizer ({spec})")
        data_cfg = dataclasses.replace(data_cfg, tokenizer=spec)
    data_dir = ensure_prepared(data_cfg, max_positions=max_positions, start_ray=start_ray)
    manifest = read_manifest(data_dir)
    tokenizer = run_tokenizer_spec(config, data_dir)
    if announce:
        _announce_pad_fallback(tokenizer)
    runtime = WorkerRuntime(
        tokenizer=tokenizer,
        max_positions=max_positions,
        student_dir=str(run_dir / STUDENT_DIR),
        eval_sequences=int(manifest["eval_sequences"]),
        verbose=verbose,
    )
    return PreparedRun(config.to_dict(), runtime, data_dir)


def _announce_pad_fallback(tokenizer: str) -> None:
    """One line when the run's tokenizer has no pad token (workers then use eos: models.load_tokenizer)."""
    from transformers import AutoTokenizer

    from workers.tokenizer_identity import pad_fallback_note

    note = pad_fallback_note(AutoTokenizer.from_pretrained(tokenizer), tokenizer)
    if note is not None:
        print(f"raydistill: {note}")


def configure_ray_data(context, environ=os.environ, verbose: bool = False) -> None:
    """Settings of the driver's Ray Data context (read where `read_parquet` is called, and shipped to
    the split coordinators that feed the workers)."""
    ray_console.quiet_ray_data(context, verbose)
    # Ray 2.60's V2 Parquet reader starts many actors per dataset: far slower to a first batch than V1
    # on prepared dirs of a few small files (BENCHMARKS.md, "Ray Data start-up"). A user's choice stays.
    if V2_READER_ENV not in environ:
        context.use_datasource_v2 = False


def build_trainer(
    config: Config, run_dir: Path, prepared: PreparedRun, callbacks: list | None = None, name=None
):
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from workers.ds_config import communication_backend
    from workers.loop import train_loop_per_worker

    execution = ray.data.ExecutionOptions(preserve_order=True)  # same shard contents on resume
    verbose = prepared.runtime.verbose
    configure_ray_data(ray.data.DataContext.get_current(), verbose=verbose)
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
            logging_config=ray_console.train_logging_config(verbose),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split="all", execution_options=execution),
    )
