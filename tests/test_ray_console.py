"""Quieting Ray's console (workers/ray_console.py) and its one switch, `--verbose`. The console of a
real CLI run is checked in tests/test_interrupt.py (its `raydistill train` subprocess)."""

from __future__ import annotations

import logging

import pytest
from ray.data import DataContext
from ray_noise import RAY_INTERNALS, ray_internals_lines, repeated_worker_lines

from orchestrator.cli import build_parser
from workers import ray_console

# Lines of `raydistill train --config configs/tiny.yaml --verbose` (Ray 2.60), shortened.
VERBOSE_CONSOLE = """\
2026-12-05 13:11:07,670\tINFO worker.py:2029 -- Started a local Ray instance. View the dashboard at http://127.0.0.1:8265
Parquet dataset sampling:   0%|          | 0.00/1.00 [00:00<?, ? file/s]
2026-12-05 13:11:35,356\tINFO parquet_datasource.py:1416 -- Estimated parquet encoding ratio is 3.683.
(TrainController pid=16436) Requesting resources: {'CPU': 1.0} * 2
(TrainController pid=16436) Attempting to start training worker group of size 2 with the following resources: [{'CPU': 1.0}] * 2
(RayTrainWorker pid=16608) Setting up process group for: env:// [rank=0, world_size=2]
(pid=16948) Running Dataset eval_0359QdjN6pYxs7lwkVu5xQ_0.: 0.00 row [00:00, ? row/s]
(pid=16948) - ReadParquet->SplitBlocks(8):   0%|          | 0.00/1.00 [00:00<?, ? row/s]
(SplitCoordinator pid=16948) Starting execution of Dataset eval_0359QdjN6pYxs7lwkVu5xQ_0. Full logs are in /tmp/ray
(SplitCoordinator pid=16948) Execution plan of Dataset eval_0359QdjN6pYxs7lwkVu5xQ_0: InputDataBuffer[Input]
(SplitCoordinator pid=16948) [dataset]: A new progress UI is available. To enable, set ...
(RayTrainWorker pid=16634) /venv/lib/python3.11/site-packages/torch/distributed/c10d_logger.py:83: FutureWarning: ...
(RayTrainWorker pid=16634) Checkpoint successfully created at: Checkpoint(filesystem=local, path=/tmp/run/checkpoint_1)
(RayTrainWorker pid=16634) Reporting training result 1: TrainingReport(checkpoint=Checkpoint(...), metrics={...})
(RayTrainWorker pid=16608) Writing model shards:   0%|          | 0/1 [00:00<?, ?it/s]
(RayTrainWorker pid=16608) Loading weights:   0%|          | 0/20 [00:00<?, ?it/s]
"""
OWN_LINES = """\
raydistill: starting run in /tmp/run (2 workers, ZeRO-2)
(RayTrainWorker pid=16608) raydistill: deepspeed.teacher_precision auto -> bf16 (frozen teacher; the student trains in fp32)
(TrainController pid=16436) [phase 3] step 3/3 (100%) | loss 3.89 = ce 1.87 + kd 0.00608 | eval ppl 518 ratio 0.989
raydistill: student saved to /tmp/run/student (load it with AutoModelForCausalLM.from_pretrained)
"""


def test_every_noise_pattern_matches_a_line_ray_really_printed_and_none_of_raydistills():
    lines = VERBOSE_CONSOLE.splitlines()
    assert ray_internals_lines(VERBOSE_CONSOLE) == lines
    for pattern in RAY_INTERNALS:
        assert any(pattern in line for line in lines), pattern
    assert ray_internals_lines(OWN_LINES) == []


def test_a_worker_line_printed_twice_is_caught():
    assert repeated_worker_lines(OWN_LINES) == []
    doubled = (
        OWN_LINES
        + "(RayTrainWorker pid=16608) raydistill: deepspeed.teacher_precision auto -> bf16 (frozen teacher; the student trains in fp32)\n"
    )
    assert repeated_worker_lines(doubled) == [
        "raydistill: deepspeed.teacher_precision auto -> bf16 (frozen teacher; the student trains in fp32)"
    ]


def test_quiet_settings_for_ray_init_train_and_the_workers_env():
    assert ray_console.ray_init_logging(verbose=False) == {
        "configure_logging": True,
        "logging_level": "WARNING",
    }
    assert ray_console.train_logging_config(verbose=False).log_level == "WARNING"
    assert ray_console.worker_env(verbose=False) == ray_console.QUIET_WORKER_ENV
    assert ray_console.worker_env(verbose=False)["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1"


def test_verbose_leaves_ray_init_train_and_the_workers_env_as_ray_sets_them():
    assert ray_console.ray_init_logging(verbose=True) == {}
    assert ray_console.train_logging_config(verbose=True) is None  # RunConfig's default LoggingConfig
    assert ray_console.worker_env(verbose=True) == {}


@pytest.fixture
def logger_levels():
    """Restores the levels of the loggers the quieting sets (they are process-wide)."""
    from ray.train.v2._internal.execution import context

    names = [ray_console.PARQUET_READER_LOGGER, context.__file__]
    before = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield names
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def test_quiet_ray_data_and_train_worker(logger_levels):
    parquet, report = logger_levels
    context = DataContext()
    ray_console.quiet_ray_data(context, verbose=False)
    ray_console.quiet_train_worker(verbose=False)
    assert context.enable_progress_bars is False
    assert context.print_on_execution_start is False
    assert logging.getLogger(parquet).level == logging.WARNING
    assert logging.getLogger(report).level == logging.WARNING


def test_verbose_leaves_ray_data_and_the_train_worker_loggers_alone(logger_levels):
    parquet, report = logger_levels
    context, default = DataContext(), DataContext()
    ray_console.quiet_ray_data(context, verbose=True)
    ray_console.quiet_train_worker(verbose=True)
    assert context.enable_progress_bars == default.enable_progress_bars
    assert context.print_on_execution_start == default.print_on_execution_start
    assert logging.getLogger(parquet).level == logging.NOTSET
    assert logging.getLogger(report).level == logging.NOTSET


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--config", "x.yaml"],
        ["sweep", "--config", "x.yaml"],
        ["demo"],
    ],
)
def test_every_command_that_starts_ray_has_the_verbose_switch(argv):
    parser = build_parser()
    assert parser.parse_args(argv).verbose is False
    assert parser.parse_args([*argv, "--verbose"]).verbose is True
