"""Shared fixtures: a local Ray cluster per test module, a tiny prepared dataset per session, and a
single-process gloo group per module for the in-process DeepSpeed engines."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager

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


@contextmanager
def _environ(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def _gloo_world():
    """One gloo group of world size 1 for the whole session: DeepSpeed caches the world group it first
    sees, so a group destroyed and created again for the next module would break that module's engines."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    created = not dist.is_initialized()
    if created:
        with _environ(env):
            dist.init_process_group("gloo", rank=0, world_size=1)
    yield env
    if created:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def single_process_group(_gloo_world):
    """The world of one process Ray Train creates before the worker loop runs, with its rendezvous
    variables set only while the module runs (a Ray cluster a later module starts inherits os.environ)."""
    with _environ(_gloo_world):
        yield
