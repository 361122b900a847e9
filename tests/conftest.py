"""Shared fixtures: a local Ray cluster per test module, and a tiny prepared dataset per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def ray_cluster():
    """A fresh local Ray for the module. The dashboard stays on (bound to 127.0.0.1): Ray Train's
    placement-group cleaner needs it. 4 logical CPUs: 2 training workers plus Ray Data read tasks."""
    import ray

    from orchestrator.train.ray_session import LOCAL_ONLY_ENV, driver_env_vars, runtime_env

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        logging_level="WARNING",
        # What ensure_ray sets for the local instance it starts.
        runtime_env=runtime_env({**driver_env_vars(use_gpu=False, environ={}), **LOCAL_ONLY_ENV}),
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A small slice of the stdlib, tokenised once for the whole session."""
    from orchestrator.config import DataConfig
    from orchestrator.data.prepare import ensure_prepared

    cache = tmp_path_factory.mktemp("data-cache")
    return ensure_prepared(
        DataConfig(source="stdlib", max_files=40, vocab_size=512, seq_len=64, cache_dir=str(cache)),
        max_positions=1024,
    )
