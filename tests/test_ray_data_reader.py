"""The driver's Ray Data settings: the V1 Parquet reader (fast start on small prepared dirs) unless the
user chose a reader, and no progress bars."""

from __future__ import annotations

import importlib.util
import logging

from ray.data import DataContext

from orchestrator.train.trainer import V2_READER_ENV, configure_ray_data
from workers.ray_console import PARQUET_READER_LOGGER


def test_runs_read_parquet_with_the_v1_reader_and_no_progress_bars():
    context = DataContext()
    assert context.use_datasource_v2  # Ray 2.60's default, which starts 32 FooterReader actors per read
    configure_ray_data(context, environ={})
    assert context.use_datasource_v2 is False
    assert context.enable_progress_bars is False
    assert context.print_on_execution_start is False  # no per-dataset plan lines between progress lines


def test_a_reader_the_user_chose_is_kept():
    for chosen in (True, False):
        context = DataContext()
        context.use_datasource_v2 = chosen
        configure_ray_data(context, environ={V2_READER_ENV: "1" if chosen else "0"})
        assert context.use_datasource_v2 is chosen


def test_the_v1_readers_info_estimates_stay_off_the_console():
    assert importlib.util.find_spec(PARQUET_READER_LOGGER) is not None  # the module that logs them
    configure_ray_data(DataContext(), environ={})
    assert logging.getLogger(PARQUET_READER_LOGGER).getEffectiveLevel() >= logging.WARNING
