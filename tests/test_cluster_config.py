"""cluster.yaml passes Ray's own autoscaler validation; configs/gpu.yaml loads and makes the right DeepSpeed config.

Neither can run here (no cloud, no GPU), so these check them the way `ray up` and DeepSpeed would.
"""

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestrator.config import load_config
from workers.ds_config import build_deepspeed_config, communication_backend

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
GPU_YAML = ROOT / "configs" / "gpu.yaml"
# GPUs per instance of the worker types cluster.yaml uses (AWS instance specs).
GPUS_PER_INSTANCE = {"g5.12xlarge": 4, "p4d.24xlarge": 8}


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _validated(config: dict) -> dict:
    """What `ray up` does before it talks to the cloud: fill defaults, then schema + sanity checks."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _worker_types(config: dict) -> dict:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def test_cluster_yaml_passes_ray_autoscaler_validation(cluster):
    prepared = _validated(cluster)
    assert prepared["provider"]["type"] == "aws"


def test_ray_validation_is_live(cluster):
    # The check above would be worthless if the validator accepted anything.
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["head"]["not_a_key"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_head_runs_no_training(cluster):
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    assert head["node_config"]["InstanceType"] not in GPUS_PER_INSTANCE


def test_gpu_workers_scale_from_zero_to_a_cap(cluster):
    workers = _worker_types(cluster)
    assert workers, "no worker types"
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, name
        assert isinstance(node_type["max_workers"], int) and 1 <= node_type["max_workers"], name
        assert node_type["max_workers"] <= cluster["max_workers"], name
        assert node_type["node_config"]["InstanceType"] in GPUS_PER_INSTANCE, name


def test_some_worker_type_holds_the_gpu_config(cluster):
    gpus_needed = load_config(GPU_YAML).scaling.num_workers
    capacity = {
        name: t["max_workers"] * GPUS_PER_INSTANCE[t["node_config"]["InstanceType"]]
        for name, t in _worker_types(cluster).items()
    }
    assert max(capacity.values()) >= gpus_needed, capacity


def test_dashboard_and_job_server_bind_to_localhost(cluster):
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--head" in head_start
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head_start)
    assert hosts == ["127.0.0.1"]
    everything = CLUSTER_YAML.read_text()
    assert "0.0.0.0" not in everything


def test_every_node_starts_ray_with_token_auth(cluster):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(cluster[key])
        assert "export RAY_AUTH_MODE=token;" in start, key
        assert start.index("RAY_AUTH_MODE=token") < start.index("ray start"), key
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_setup_installs_raydistill_from_the_uploaded_checkout(cluster):
    prepared = _validated(cluster)
    assert cluster["file_mounts"]["~/raydistill"] == "."
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("pip install" in cmd and "-e ~/raydistill" in cmd for cmd in prepared[key]), key
    for excluded in (".venv", "runs", "**/.git"):
        assert excluded in cluster["rsync_exclude"]


def test_node_images_run_the_clients_ray(cluster):
    docker = cluster["docker"]
    for key in ("head_image", "worker_image"):
        assert docker[key].startswith(f"rayproject/ray:{ray.__version__}-"), docker[key]
    assert docker["head_image"].endswith("-cpu") and docker["worker_image"].endswith("-gpu")


def test_commented_gcp_variant_is_valid(cluster):
    # The GCP block at the end of cluster.yaml is commented out; swapped in, it must validate too.
    lines = CLUSTER_YAML.read_text().splitlines()
    start = lines.index("# provider:")
    block = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines[start:])
    variant = copy.deepcopy(cluster)
    variant.update(yaml.safe_load(block))
    prepared = _validated(variant)
    assert prepared["provider"]["type"] == "gcp"
    workers = _worker_types(prepared)
    assert workers and all(t["min_workers"] == 0 and t["resources"]["GPU"] > 0 for t in workers.values())
    assert prepared["available_node_types"]["head"]["resources"] == {"CPU": 0, "GPU": 0}


# ---------------------------------------------------------------------------------------------
# configs/gpu.yaml


@pytest.fixture(scope="module")
def gpu_config():
    return load_config(GPU_YAML)


def test_gpu_config_is_a_real_cloud_run(gpu_config):
    assert gpu_config.scaling.use_gpu is True
    assert gpu_config.scaling.num_workers == 8
    assert gpu_config.deepspeed.zero_stage == 3
    assert gpu_config.deepspeed.precision == "bf16"
    # A Hugging Face teacher and a smaller student of the same family, sharing its tokenizer.
    family = gpu_config.teacher.split("/")[0]
    assert gpu_config.student.startswith(f"{family}/") and gpu_config.student != gpu_config.teacher
    assert gpu_config.data.tokenizer == gpu_config.teacher
    assert communication_backend(gpu_config.scaling.use_gpu) == "nccl"


def test_gpu_config_describes_itself():
    text = GPU_YAML.read_text()
    assert "raydistill train --config configs/gpu.yaml" in text.split("\nteacher:")[0]
    # Every top-level section and every key carries a comment somewhere above it (the file describes itself).
    assert text.count("#") >= 40


def test_gpu_config_deepspeed_config(gpu_config):
    gpus = gpu_config.scaling.num_workers
    ds = build_deepspeed_config(gpu_config.to_dict(), world_size=gpus)
    train = gpu_config.train
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["bf16"] == {"enabled": True}
    assert "fp16" not in ds
    assert ds["train_batch_size"] == train.micro_batch_size * train.grad_accum * gpus
    assert ds["train_micro_batch_size_per_gpu"] == train.micro_batch_size
    assert ds["gradient_accumulation_steps"] == train.grad_accum
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 10_000
    assert "offload_optimizer" not in ds["zero_optimization"]


def test_deepspeed_accepts_the_generated_config(gpu_config):
    # DeepSpeed's own parser (pydantic, unknown keys refused). Without a process group it sees one
    # rank, so it gets the one-GPU batch; the 8-GPU batch arithmetic is checked above.
    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = DeepSpeedConfig(build_deepspeed_config(gpu_config.to_dict(), world_size=1))
    assert parsed.zero_optimization_stage == 3
    assert parsed.bfloat16_config.enabled is True
    assert parsed.zero_config.param_persistence_threshold == 10_000
