"""Start (or join) Ray deliberately.

Inside `ray job submit` or with RAY_ADDRESS set, the CLI joins that cluster. Otherwise it starts a
fresh local instance with `address="local"`: a plain `ray.init()` would try to join a stale head
left in /tmp/ray/ray_current_cluster. The dashboard stays on (Ray Train's placement-group cleaner
needs it) but listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import math
import os

from workers import ray_console

# Set by `ray job submit` in the driver's environment: the job's config, runtime_env included.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"

# Every worker's environment. Quieting Ray's console is workers/ray_console.py's (added unless --verbose).
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    # Ray Train's print patch sends each worker print() to the console twice (RELIABILITY.md, "The console").
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
# Set only for CPU runs: on a GPU machine DeepSpeed must detect CUDA itself.
CPU_ONLY_ENV = {"DS_ACCELERATOR": "cpu"}
# Set only on the local instance the CLI starts: Ray Train's preemption watcher waits for nodes being
# drained, which one local node never is (and its actor logs an error line on every run).
LOCAL_ONLY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


SETUP_HOOK = "orchestrator.train.ray_session.pin_ray_address"


def job_runtime_env(environ=os.environ) -> dict:
    """The submitted job's runtime_env (empty outside a job, or when Ray's job config is unreadable)."""
    try:
        job = json.loads(environ.get(JOB_CONFIG_ENV) or "{}")
        runtime = job.get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}
    return runtime if isinstance(runtime, dict) else {}


def job_env_var_keys(environ=os.environ) -> set[str]:
    """Environment variables the submitted job's runtime_env already sets (empty outside a job)."""
    try:
        return set(job_runtime_env(environ).get("env_vars") or {})
    except TypeError:
        return set()


def driver_env_vars(use_gpu: bool, environ=os.environ, verbose: bool = False) -> dict[str, str]:
    """raydistill's worker env vars, minus any the job's own runtime_env sets: Ray refuses to merge a
    job's runtime_env with ray.init's when both name the same variable, and the user's value wins."""
    env = {**WORKER_ENV, **ray_console.worker_env(verbose), **({} if use_gpu else CPU_ONLY_ENV)}
    taken = job_env_var_keys(environ)
    return {k: v for k, v in env.items() if k not in taken}


def logical_cpus(num_workers: int, cpus_per_worker: float) -> int:
    # Ray Data's read tasks need CPUs beside the training workers', or the input pipeline starves.
    return max(os.cpu_count() or 1, int(num_workers * cpus_per_worker + 0.999) + 2)


def runtime_env(env_vars: dict[str, str], environ=os.environ) -> dict:
    """The runtime_env raydistill gives ray.init: its env vars and the worker setup hook below, the
    hook left out when a submitted job sets its own (Ray refuses to merge two of the same field)."""
    env: dict = {"env_vars": env_vars}
    if "worker_process_setup_hook" not in job_runtime_env(environ):
        env["worker_process_setup_hook"] = SETUP_HOOK
    return env


def pin_ray_address() -> None:
    """Worker-process setup hook: name this cluster in RAY_ADDRESS.

    Ray Train's placement-group cleaner looks its cluster up with no address, which finds the wrong
    one (or fails) when two Ray instances share a machine; each worker process knows its own cluster's
    GCS address (RELIABILITY.md, "The driver interrupted" and "`ray job submit` that gave no answer")."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def ensure_ray(
    num_workers: int, cpus_per_worker: float, use_gpu: bool = False, verbose: bool = False
) -> None:
    """Join the cluster of a submitted job (or RAY_ADDRESS), else start a local instance; `verbose`
    leaves Ray's console as Ray sets it (workers/ray_console.py)."""
    import ray

    if ray.is_initialized():
        return
    env = driver_env_vars(use_gpu, verbose=verbose)
    if os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"):
        ray.init(runtime_env=runtime_env(env), log_to_driver=True)
        warning = cpu_headroom_warning(ray.cluster_resources().get("CPU", 0.0), num_workers, cpus_per_worker)
        if warning is not None:
            print(warning, flush=True)
        return
    ray.init(
        address="local",
        num_cpus=logical_cpus(num_workers, cpus_per_worker),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env({**env, **LOCAL_ONLY_ENV}),
        **ray_console.ray_init_logging(verbose),
    )


def cpu_headroom_warning(cluster_cpus: float, num_workers: int, cpus_per_worker: float) -> str | None:
    """A warning when the run's workers would hold every CPU of the cluster it joined.

    Ray Train reserves the workers' CPUs in a placement group; Ray Data's read tasks (1 CPU each) run
    outside it. With no CPU left over they are never scheduled and the run waits with no message:
    a `ray start --head` on a 2-core machine gives the cluster 2 CPUs, exactly what 2 workers take.
    Only a warning: an autoscaling cluster adds a node for those pending tasks and goes on."""
    need = num_workers * cpus_per_worker
    if cluster_cpus - need >= 1:
        return None
    if cluster_cpus < need:
        return (
            f"raydistill: warning: the cluster has {cluster_cpus:g} CPUs and the run's {num_workers} workers "
            f"reserve {need:g} (scaling.cpus_per_worker={cpus_per_worker:g}): it waits until nodes join "
            "(an autoscaler adds them; on a fixed cluster it waits for ever)"
        )
    return (
        f"raydistill: warning: the run's {num_workers} workers reserve {need:g} of the cluster's "
        f"{cluster_cpus:g} CPUs, leaving none for Ray Data's read tasks: it waits until a node with free "
        f"CPUs joins (on a fixed cluster, for ever); start the head with --num-cpus={math.ceil(need) + 2} or "
        "lower scaling.cpus_per_worker"
    )
