"""Joining a submitted job's Ray: raydistill's env vars never clash with the job's runtime_env."""

from __future__ import annotations

import json

from ray.runtime_env.runtime_env import _merge_runtime_env

from orchestrator.train.ray_session import (
    CPU_ONLY_ENV,
    JOB_CONFIG_ENV,
    SETUP_HOOK,
    WORKER_ENV,
    cpu_headroom_warning,
    driver_env_vars,
    job_env_var_keys,
    runtime_env,
)
from workers.ray_console import QUIET_WORKER_ENV


def job_environ(env_vars: dict[str, str]) -> dict[str, str]:
    """The driver environment `ray job submit --runtime-env-json` produces (the job config as JSON)."""
    return {JOB_CONFIG_ENV: json.dumps({"runtime_env": {"working_dir": "gcs://x.zip", "env_vars": env_vars}})}


def test_outside_a_job_every_worker_env_var_is_set():
    assert driver_env_vars(use_gpu=False, environ={}) == {**WORKER_ENV, **QUIET_WORKER_ENV, **CPU_ONLY_ENV}
    assert driver_env_vars(use_gpu=True, environ={}) == {**WORKER_ENV, **QUIET_WORKER_ENV}


def test_verbose_leaves_the_workers_console_settings_to_ray():
    assert driver_env_vars(use_gpu=False, environ={}, verbose=True) == {**WORKER_ENV, **CPU_ONLY_ENV}
    assert not QUIET_WORKER_ENV.keys() & WORKER_ENV.keys()


def test_a_variable_the_job_sets_is_left_to_the_job():
    environ = job_environ({"TOKENIZERS_PARALLELISM": "true", "MY_FLAG": "1"})

    env = driver_env_vars(use_gpu=False, environ=environ)

    assert "TOKENIZERS_PARALLELISM" not in env
    assert env["DS_ACCELERATOR"] == "cpu"
    assert job_env_var_keys(environ) == {"TOKENIZERS_PARALLELISM", "MY_FLAG"}


def test_ray_merges_the_job_and_driver_runtime_envs_without_conflict():
    job_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "true", "DS_ACCELERATOR": "cpu"}}
    environ = job_environ(job_env["env_vars"])

    # What ray.init does inside a job: None means Ray refuses (ValueError in ray.init).
    assert _merge_runtime_env(job_env, {"env_vars": driver_env_vars(False, environ={})}) is None
    merged = _merge_runtime_env(job_env, {"env_vars": driver_env_vars(False, environ)})

    assert merged is not None
    assert merged["env_vars"]["TOKENIZERS_PARALLELISM"] == "true"  # the user's value wins
    assert merged["env_vars"]["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1"


def test_an_unreadable_job_config_is_treated_as_no_job_env_vars():
    assert job_env_var_keys({JOB_CONFIG_ENV: "not json"}) == set()
    assert job_env_var_keys({JOB_CONFIG_ENV: json.dumps({"runtime_env": None})}) == set()


def test_a_joined_cluster_gets_the_setup_hook_and_merges_with_the_jobs_runtime_env():
    job_env = {"working_dir": "gcs://_ray_pkg_abc.zip", "excludes": [".venv"], "env_vars": {"MY_FLAG": "1"}}
    environ = job_environ(job_env["env_vars"])
    environ[JOB_CONFIG_ENV] = json.dumps({"runtime_env": job_env})
    ours = runtime_env(driver_env_vars(False, environ), environ)
    assert ours["worker_process_setup_hook"] == SETUP_HOOK
    merged = _merge_runtime_env(job_env, ours)
    assert merged is not None and merged["worker_process_setup_hook"] == SETUP_HOOK
    assert merged["working_dir"] == job_env["working_dir"]


def test_a_jobs_own_setup_hook_is_left_alone():
    job_env = {"worker_process_setup_hook": "mypkg.setup"}
    environ = {JOB_CONFIG_ENV: json.dumps({"runtime_env": job_env})}
    ours = runtime_env(driver_env_vars(False, environ), environ)
    assert "worker_process_setup_hook" not in ours
    assert _merge_runtime_env(job_env, ours) is not None


def test_workers_holding_every_cpu_of_the_joined_cluster_are_warned_about():
    # `ray start --head` on this 2-core machine: 2 CPUs, and tiny.yaml's 2 workers take 1 each.
    warning = cpu_headroom_warning(2.0, 2, 1.0)
    assert warning.startswith("raydistill: warning: the run's 2 workers reserve 2 of the cluster's 2 CPUs")
    assert "--num-cpus=4" in warning and "scaling.cpus_per_worker" in warning
    assert cpu_headroom_warning(4.0, 2, 1.0) is None
    assert cpu_headroom_warning(2.0, 2, 0.5) is None
    assert "it waits until nodes join" in cpu_headroom_warning(0.0, 2, 1.0)  # an autoscaler's CPU-less head
