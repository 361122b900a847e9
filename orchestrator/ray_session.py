"""Start (or join) Ray deliberately.

Inside `ray job submit` or with RAY_ADDRESS set, the CLI joins that cluster. Otherwise it starts a
fresh local instance with `address="local"`: a plain `ray.init()` would try to join a stale head
left in /tmp/ray/ray_current_cluster. The dashboard stays on (Ray Train's placement-group cleaner
needs it) but listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os


def logical_cpus(num_workers: int, cpus_per_worker: float) -> int:
    # Ray Data's read tasks need CPUs beside the training workers', or the input pipeline starves.
    return max(os.cpu_count() or 1, int(num_workers * cpus_per_worker + 0.999) + 2)


def ensure_ray(num_workers: int, cpus_per_worker: float) -> None:
    import ray

    if ray.is_initialized():
        return
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"):
        ray.init(runtime_env={"env_vars": env}, log_to_driver=True)
        return
    ray.init(
        address="local",
        num_cpus=logical_cpus(num_workers, cpus_per_worker),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        runtime_env={"env_vars": env},
        configure_logging=True,
        logging_level="WARNING",
    )
