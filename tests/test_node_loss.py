"""A node lost mid-run: several raylets on this machine (`ray.cluster_utils.Cluster`), the node holding
a Ray Train worker removed, capacity returned a few seconds later; the run must go on from its last
checkpoint to the end. Real Ray, DeepSpeed and transformers; no mocks."""

from __future__ import annotations

import math
import socket
import threading
import time
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.train.run import run_training
from orchestrator.train.telemetry import read_metrics

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray

MAX_STEPS = 12
CHECKPOINT_EVERY = 4
PAUSE_AT = 7  # rank 0 stops before step 7: the last checkpoint is step 4, steps 5-6 must run again
RETURN_AFTER_S = 5.0  # how long the cluster is a node short

# A training worker asks for 1.5 CPUs: a worker node (2 CPUs) holds exactly one, the head (1 CPU) none,
# so the two workers sit on the two worker nodes. The 0.5 CPU a worker node has left is less than a Ray
# Data read task asks for (1 CPU), so every read task, and the blocks it makes, stays on the head. The
# driver-side actors are there too: Ray Train pins its controller to the driver's node, the controller's
# DatasetManager and the split coordinators feeding the workers follow it. The node taken away then
# holds a training worker and nothing else, as when a GPU node of cluster.yaml (CPU-only head) is lost.
HEAD_CPUS = 1
NODE_CPUS = 2
CPUS_PER_WORKER = 1.5
NODE_ARGS = {"num_cpus": NODE_CPUS, "object_store_memory": 100 * 1024 * 1024}


def make_config(data_dir: Path, *overrides: str):
    return load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.source={data_dir}",
            f"train.max_steps={MAX_STEPS}",
            "train.log_every=1",
            "train.eval_every=4",
            f"train.checkpoint_every={CHECKPOINT_EVERY}",
            "train.warmup_steps=2",
            "train.eval_batches=2",
            f"scaling.cpus_per_worker={CPUS_PER_WORKER}",
            *overrides,
        ],
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A head and two worker nodes, each its own raylet on this machine; the test's driver is on the head."""
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.train.ray_session import driver_env_vars, runtime_env

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": HEAD_CPUS,
            "object_store_memory": 150 * 1024 * 1024,
            # The dashboard stays on (bound to 127.0.0.1): Ray Train's placement-group cleaner needs it.
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            # Ray's default 8265 may be taken by another Ray on this machine; a Cluster does not move on.
            "dashboard_port": free_port(),
        },
    )
    try:
        for _ in range(2):
            cluster.add_node(**NODE_ARGS)
        cluster.wait_for_nodes()
        ray.init(
            address=cluster.address,
            logging_level="WARNING",
            runtime_env=runtime_env(driver_env_vars(use_gpu=False, environ={})),  # what ensure_ray sets
        )
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def logged_steps(run_dir: Path) -> list[int]:
    try:
        return [r["step"] for r in read_metrics(run_dir)]
    except OSError:  # mid-rewrite (read_metrics itself skips a half-appended last line)
        return []


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_node_holding_a_worker_lost_run_resumes_from_checkpoint_when_capacity_returns(
    cluster, tiny_data_dir, tmp_path
):
    import ray
    from transformers import AutoModelForCausalLM

    marker, step_log = tmp_path / "paused.node", tmp_path / "steps.log"
    faults = {
        "pause_at_step": PAUSE_AT,
        "pause_rank": 0,
        "pause_marker": str(marker),
        "step_log": str(step_log),
    }
    run_dir = tmp_path / "node_lost"
    outcome: dict = {}

    def train():
        try:
            config = make_config(tiny_data_dir, "scaling.max_failures=1")
            outcome["student"] = run_training(config, run_dir, echo=False, faults=faults)
        except BaseException as exc:  # re-raised below
            outcome["error"] = exc

    # The run trains in a thread (as a sweep trial's does): the cluster is changed from this main
    # thread, because starting a Ray node registers a SIGTERM handler, which only the main thread may.
    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    wait_for(lambda: marker.exists() or not trainer.is_alive(), 300, "rank 0 to pause before step 7")
    assert "error" not in outcome, outcome
    node_id = marker.read_text().strip()
    # What the first attempt logged: steps 1-6 (step 6's line may trail the pause by a poll of Ray's).
    wait_for(lambda: logged_steps(run_dir) == list(range(1, PAUSE_AT)), 60, "steps 1-6 in metrics.jsonl")
    first_attempt = {r["step"]: r for r in read_metrics(run_dir)}
    groups = list(ray.util.placement_group_table().values())
    (node,) = [n for n in cluster.worker_nodes if n.node_id == node_id]
    # Not graceful: the node's raylet and every process on it are SIGKILLed, as when a machine vanishes.
    cluster.remove_node(node, allow_graceful=False)
    time.sleep(RETURN_AFTER_S)
    new_node = cluster.add_node(**NODE_ARGS)
    trainer.join(timeout=600)
    assert not trainer.is_alive(), "the run did not end after capacity returned"
    if "error" in outcome:
        raise outcome["error"]

    # The node taken away held a training worker (a bundle of the Train worker group's placement group)
    # and the other worker was on the other worker node, not on the head.
    (group,) = [g for g in groups if g["state"] == "CREATED" and node_id in g["bundles_to_node_id"].values()]
    bundle_nodes = set(group["bundles_to_node_id"].values())
    assert len(bundle_nodes) == 2 and bundle_nodes <= {n.node_id for n in cluster.worker_nodes} | {node_id}
    # The worker group that finished ran on the surviving worker node and the node that came back.
    (survivor,) = bundle_nodes - {node_id}
    later = [
        g
        for g in ray.util.placement_group_table().values()
        if g["placement_group_id"] != group["placement_group_id"] and len(g["bundles"]) == 2
    ]
    assert any(set(g["bundles_to_node_id"].values()) == {survivor, new_node.node_id} for g in later), later

    # Rank 0 started steps 1-6, never ran 7 (its node went), then the restarted group went on from the
    # step-4 checkpoint: 5 and 6 again, then to the end.
    started = [int(line) for line in step_log.read_text().split()]
    assert started == [*range(1, PAUSE_AT), *range(CHECKPOINT_EVERY + 1, MAX_STEPS + 1)], started
    # The raw line list: the replayed steps 5-6 are in metrics.jsonl exactly once.
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, MAX_STEPS + 1))
    # The replayed steps equal the first attempt's: the restore brought back the weights, optimizer,
    # lr schedule and data position of step 4 (the step log shows the second attempt began at step 5).
    for step in range(CHECKPOINT_EVERY + 1, PAUSE_AT):
        for key in ("loss/total", "loss/ce/raw", "loss/kd/raw", "loss/feature/raw", "lr"):
            again, before = records[step - 1][key], first_attempt[step][key]
            assert math.isclose(again, before, rel_tol=1e-5, abs_tol=1e-7), (step, key, again, before)
    assert records[-1]["loss/ce/raw"] < records[0]["loss/ce/raw"]
    assert math.isfinite(records[-1]["eval/ppl"])

    model = AutoModelForCausalLM.from_pretrained(outcome["student"])
    assert model.config.num_hidden_layers == 2
