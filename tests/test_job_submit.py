"""`ray job submit` against a real Ray head, as the README's "Submitting a run" does it.

The test starts its own head with `ray start --head --block`, its dashboard and job server on
127.0.0.1, token authentication on, every port chosen free and a temp dir of its own: other Ray
instances on this machine (`ray.init(address="local")` in other tests, other people's heads) are
neither joined nor disturbed. It submits a tiny distillation with the real `ray job submit` CLI, waits for SUCCEEDED,
reads `ray job logs`, and stops the head by its own process ids. It never calls `ray stop`, which
would stop every Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"

# Exactly what the README's command leaves out of the upload (checked against README.md below).
EXCLUDES = [".venv", "runs", ".git"]
HEAD_START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 600  # generous: this machine is shared; an idle one needs about a minute
# Between SIGTERM and SIGKILL when stopping the head (see stop_head).
STOP_GRACE_S = 5


@dataclass
class Head:
    proc: subprocess.Popen
    temp_dir: Path
    dashboard_port: int
    token: str
    client_env: dict[str, str]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def isolated_env(token_path: Path) -> dict[str, str]:
    """This process's environment without any RAY_* variable (RAY_ADDRESS would make the CLI join
    another cluster), with token auth on and the token read from `token_path`, not ~/.ray."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    # The job's entrypoint runs in the head's environment: `raydistill` must be on its PATH.
    env["PATH"] = f"{RAY.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def http_get(url: str, token: str | None = None, timeout: float = 10) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def head_processes(head: Head) -> list:
    """The `ray start` process and everything it spawned (the job driver runs in a session of its
    own, so its process group is not the head's)."""
    import psutil

    try:
        root = psutil.Process(head.proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_head(head: Head) -> None:
    """SIGTERM to the head's process group and to each process it spawned, SIGKILL to whatever is
    still running after a grace period. Only these process ids are signalled.

    Seen here: GCS, raylet, dashboard and workers exit within ~2 s of SIGTERM, but `ray start
    --block` itself and the autoscaler monitor ignore it, so the SIGKILL round always comes."""
    import psutil

    def running(procs: list) -> list:
        # A dead child of `ray start` stays a zombie until `ray start` reaps it: count it as gone.
        alive = []
        for proc in procs:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                pass
        return alive

    procs = head_processes(head)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.proc.pid, sig)
        except ProcessLookupError:
            pass
        for proc in running(procs):
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        while running(procs) and time.monotonic() < deadline:
            time.sleep(0.2)
    head.proc.wait(timeout=10)
    left = running(procs)
    assert not left, f"still running after SIGKILL: {left}"


def start_head(tmp_path: Path) -> Head:
    # Short path: Ray puts Unix sockets under it (108-byte limit), so no pytest tmp_path.
    temp_dir = Path(tempfile.mkdtemp(prefix="rdhead-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_path = tmp_path / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    env = isolated_env(token_path)
    gcs, dashboard, client, agent_http, agent_grpc, runtime_env_agent, metrics = free_ports(7)
    log_path = tmp_path / "head.log"
    command = [
        str(RAY),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        # No --node-ip-address=127.0.0.1: Ray replaces a loopback node address with the machine's
        # routable one anyway. What keeps the dashboard and the job server off other interfaces
        # is --dashboard-host (checked below). Seen here: GCS, raylet and the Ray Client server
        # still listen on every interface; token authentication guards them.
        "--dashboard-host=127.0.0.1",
        f"--port={gcs}",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env_agent}",
        f"--metrics-export-port={metrics}",
        "--num-cpus=4",
        "--num-gpus=0",
        f"--temp-dir={temp_dir}",
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    head = Head(proc, temp_dir, dashboard, token, env, log_path)
    try:
        wait_for_job_server(head)
    except BaseException:
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return head


def wait_for_job_server(head: Head) -> None:
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if head.proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.proc.returncode}:\n{head.log_path.read_text()}")
        try:
            status, _ = http_get(f"{head.url}/api/jobs/", head.token, timeout=5)
            if status == 200:
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(1)
    raise TimeoutError(f"job server not up after {HEAD_START_TIMEOUT_S} s:\n{head.log_path.read_text()}")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    head = start_head(tmp_path_factory.mktemp("ray-head"))
    try:
        yield head
    finally:
        stop_head(head)
        shutil.rmtree(head.temp_dir, ignore_errors=True)


def ray_cli(head: Head, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RAY), *args],
        env=head.client_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# The head's job server answers GET requests before its dashboard agent is up; until then a
# submission fails with one of these (both seen here under load). Ray's own advice is to try again.
AGENT_NOT_READY = ("No available agent to submit job", "Connection refused")
AGENT_WAIT_S = 300


def submit_when_agent_ready(head: Head, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """`ray job submit --submission-id <fresh id> *args`, retried while the agent is not ready.
    Returns the last attempt and its submission id (a fresh id per attempt, so a half-made job from
    a refused attempt can never collide with the next one)."""
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        submission_id = f"raydistill-test-{secrets.token_hex(4)}"
        submitted = ray_cli(head, "job", "submit", "--submission-id", submission_id, *args)
        output = submitted.stdout + submitted.stderr
        not_ready = submitted.returncode != 0 and any(text in output for text in AGENT_NOT_READY)
        if not not_ready or time.monotonic() > deadline:
            return submitted, submission_id
        time.sleep(2)


def non_loopback_ipv4() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_readme_submits_with_the_excludes_tested_here():
    excludes = json.dumps({"excludes": EXCLUDES})
    command = f"ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env-json '{excludes}' -- raydistill train"
    assert command in (ROOT / "README.md").read_text()


@pytest.mark.ray
def test_job_server_refuses_requests_without_the_token(ray_head):
    status, body = http_get(f"{ray_head.url}/api/jobs/")
    assert status == 401, body
    status, body = http_get(f"{ray_head.url}/api/jobs/", token="0" * 64)
    assert status == 403, body
    status, _ = http_get(f"{ray_head.url}/api/jobs/", token=ray_head.token)
    assert status == 200


@pytest.mark.ray
def test_dashboard_and_job_server_listen_on_loopback_only(ray_head):
    import psutil

    # The job server is the dashboard's HTTP server: one port, bound to 127.0.0.1 by the head.
    listening = [
        c
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == ray_head.dashboard_port
    ]
    assert listening, f"nothing listens on {ray_head.dashboard_port}"
    assert [c.laddr.ip for c in listening] == ["127.0.0.1"], listening
    assert listening[0].pid in {p.pid for p in head_processes(ray_head)}

    public = non_loopback_ipv4()
    if public is None:
        pytest.skip("no non-loopback IPv4 address to try")
    with pytest.raises(OSError), socket.create_connection((public, ray_head.dashboard_port), timeout=5):
        pass


@pytest.fixture
def newer_ray_instance():
    """A second, newer Ray instance on the machine, as a local run beside the head would be. Ray
    Train's placement-group cleaner, which looks its cluster up without an address, picked this one
    before raydistill pinned RAY_ADDRESS for joined clusters too ("Failed to register placement group
    with cleaner" and a traceback in the job's log)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.mark.ray
def test_ray_job_submit_runs_a_tiny_distillation(ray_head, newer_ray_instance, tiny_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    submitted, submission_id = submit_when_agent_ready(
        ray_head,
        "--address",
        ray_head.url,
        "--working-dir",
        str(ROOT),
        "--runtime-env-json",
        json.dumps({"excludes": EXCLUDES}),
        "--no-wait",
        "--",
        "raydistill",
        "train",
        "--config",
        "configs/tiny.yaml",
        "--run-dir",
        str(run_dir),
        "--set",
        f"data.source={Path(tiny_data_dir).resolve()}",
        "--set",
        "train.max_steps=6",
        "--set",
        "train.log_every=2",
        "--set",
        "train.eval_every=6",
        "--set",
        "train.eval_batches=1",
        "--set",
        "train.checkpoint_every=6",
        "--set",
        "train.warmup_steps=1",
        "--set",
        "deepspeed.precision=auto",  # the worker prints its resolution: bf16 or fp32 by this CPU
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr

    status = wait_for_job(ray_head, submission_id)
    logs = ray_cli(ray_head, "job", "logs", "--address", ray_head.url, submission_id)
    assert status == "SUCCEEDED", f"job {status}:\n{logs.stdout}{logs.stderr}"
    assert logs.returncode == 0, logs.stderr
    # Progress lines come from the Train controller actor, so Ray prefixes them with its name.
    assert re.search(r"\[phase [12]\] step 2/6 \(33%\) \| loss ", logs.stdout), logs.stdout
    assert re.search(r"\[phase 3\] step 6/6 \(100%\) \| loss ", logs.stdout), logs.stdout
    assert f"student saved to {run_dir / 'student'}" in logs.stdout, logs.stdout
    # A worker's print reaches the log once (Ray Train's print patch doubled every worker line).
    assert logs.stdout.count("raydistill: deepspeed.precision auto -> ") == 1, logs.stdout
    assert (run_dir / "student" / "model.safetensors").is_file()
    # The cleaner found its own cluster though a newer one runs beside it; the head's 4 CPUs leave
    # room for Ray Data beside the 2 workers, so no headroom warning.
    for unwanted in (
        "Failed to register placement group with cleaner",
        "Found multiple active Ray",
        "raydistill: warning:",
    ):
        assert unwanted not in logs.stdout, logs.stdout

    # The CLI, with the token from the client's environment, agrees with the HTTP API.
    cli_status = ray_cli(ray_head, "job", "status", "--address", ray_head.url, submission_id)
    assert cli_status.returncode == 0, cli_status.stderr
    assert f"Job '{submission_id}' succeeded" in cli_status.stdout, cli_status.stdout


def wait_for_job(head: Head, submission_id: str) -> str:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        code, body = http_get(f"{head.url}/api/jobs/{submission_id}", head.token)
        assert code == 200, body
        status = json.loads(body)["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(2)
    ray_cli(head, "job", "stop", "--address", head.url, submission_id)
    return f"{status} after {JOB_TIMEOUT_S} s (stopped)"
