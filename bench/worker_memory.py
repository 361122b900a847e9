"""Does a Ray Train worker's memory stay flat over a run? RSS of each worker process, sampled from outside.

    .venv/bin/python bench/worker_memory.py                      # configs/tiny.yaml, 2 workers, 400 steps
    .venv/bin/python bench/worker_memory.py --set train.max_steps=60 --out /tmp/wm.json   # smoke run

A real `raydistill train` run (`orchestrator.train.run.run_training`, the CLI's path: local Ray, the
TorchTrainer, DeepSpeed ZeRO-2 workers, evals, checkpoints, Ray Data iterators over several epochs)
while a thread of this driver samples, every `--interval` s, the RSS and USS of each live
`RayTrainWorker` actor process (pids from `ray.util.state.list_actors`, memory from psutil). Sampling
from outside measures the very processes that train and changes nothing in them: the loop, its
reports and its timing are those of any run (recording RSS from inside the workers would add code to
every step and a field to every metrics line). Each sample is tied to the run's last logged step,
read from the run dir's metrics.jsonl.

Reported per worker: RSS at the end of warm-up (the first sample at or past `--warmup-steps`, after
the first eval and checkpoint), at the end (last sample at the final step), and the least-squares
slope of RSS in MB per 100 steps over the second half of the steps (the final step's eval, checkpoint
and export left out); "flat" when that slope is below `--flat-mb` MB per 100 steps. Also the slope
within the curriculum's last phase alone: each phase change raises what a step needs once (hidden
states, then eager attention maps), which a leak-free run shows as a step, not a slope. Written to bench/results/worker_memory.json with the command line.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.ab_timing import machine, write_results  # noqa: E402

RESULTS = REPO / "bench" / "results" / "worker_memory.json"
# Long enough for several evals, checkpoints and Ray Data epochs; short enough for a few minutes here.
DEFAULT_SET = [
    "scaling.num_workers=2",
    "train.max_steps=400",
    "train.log_every=5",
    "train.eval_every=20",
    "train.checkpoint_every=50",
]
MB = 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help=f"extra overrides after {DEFAULT_SET}"
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--flat-mb", type=float, default=1.0, help="flat below this many MB per 100 steps")
    p.add_argument("--run-dir", default=None, help="default: a fresh temp dir")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument(
        "--summarize", metavar="JSON", help="no run: summarize a recorded file's traces again, in place"
    )
    args = p.parse_args(argv)
    args.out = Path(args.out)
    return args


def last_step(metrics_file: Path) -> int:
    """The last step the run logged so far (0 before its first report)."""
    from orchestrator.train.telemetry import read_metrics  # drops a half-appended last line

    records = read_metrics(metrics_file)
    return int(records[-1]["step"]) if records else 0


def train_worker_pids() -> list[int]:
    """This run's live Ray Train worker processes.

    Other Ray instances may share the machine: a state-API call without an address joins "the latest
    cluster" (seen here: it sampled another session's workers). So ask this session's own GCS, and keep
    only processes that descend from this driver (the local instance's raylet is its child)."""
    import psutil
    import ray
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        raise_on_missing_output=False,
    )
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    return sorted(int(a.pid) for a in actors if a.pid and int(a.pid) in ours)


class Sampler(threading.Thread):
    """Samples every live Train worker's memory until stopped: {pid: [(t, step, rss, uss), ...]}."""

    def __init__(self, metrics_file: Path, interval: float):
        super().__init__(name="rss-sampler", daemon=True)
        self.metrics_file = metrics_file
        self.interval = interval
        self.samples: dict[int, list[tuple[float, int, int, int]]] = {}
        self.stop = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        import psutil
        import ray

        start = time.monotonic()
        while not self.stop.wait(self.interval):
            if not ray.is_initialized():
                continue
            try:
                pids = train_worker_pids()
            except Exception as exc:  # the state API is briefly unavailable while Ray starts
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            step = last_step(self.metrics_file)
            for pid in pids:
                try:
                    mem = psutil.Process(pid).memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.samples.setdefault(pid, []).append((time.monotonic() - start, step, mem.rss, mem.uss))


def slope_per_100_steps(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of (step, MB) points, in MB per 100 steps (nan with fewer than 2 steps)."""
    if len({s for s, _ in points}) < 2:
        return float("nan")
    steps, mbs = zip(*points)
    return 100.0 * statistics.linear_regression(steps, mbs).slope


def last_phase_start(config) -> int:
    """First logged step of the curriculum's last phase, past its transition (0 without a curriculum).
    A phase change asks for more outputs (hidden states, then eager attention maps), so the memory a
    step needs rises there once: a slope across a transition is not a leak."""
    if not config.curriculum.enabled:
        return 0
    first = int(config.curriculum.phase2_end * config.train.max_steps) + 1
    return first + config.train.log_every


def summarize_worker(
    samples: list[tuple[float, int, int, int]], max_steps: int, warmup: int, flat_mb: float, phase3: int
) -> dict[str, Any]:
    warm = [s for s in samples if s[1] >= warmup]
    at_end = [s for s in samples if s[1] >= max_steps] or samples[-1:]
    # The final step adds an eval, a checkpoint and the export: not part of the steady state.
    steady = [s for s in samples if s[1] < max_steps]
    second_half = [s for s in steady if s[1] >= max_steps // 2]
    rss_slope = slope_per_100_steps([(s[1], s[2] / MB) for s in second_half])
    uss_slope = slope_per_100_steps([(s[1], s[3] / MB) for s in second_half])
    last_phase = [s for s in steady if s[1] >= max(phase3, warmup)]
    phase3_slope = slope_per_100_steps([(s[1], s[2] / MB) for s in last_phase])
    return {
        "samples": len(samples),
        "first_step": samples[0][1],
        "last_step": samples[-1][1],
        "rss_start_mb": samples[0][2] / MB,
        "rss_after_warmup_mb": warm[0][2] / MB if warm else float("nan"),
        "rss_end_mb": at_end[0][2] / MB,
        "rss_max_mb": max(s[2] for s in samples) / MB,
        "uss_after_warmup_mb": warm[0][3] / MB if warm else float("nan"),
        "uss_end_mb": at_end[0][3] / MB,
        "rss_slope_mb_per_100_steps": rss_slope,
        "uss_slope_mb_per_100_steps": uss_slope,
        "last_phase_from_step": max(phase3, warmup),
        "last_phase_rss_slope_mb_per_100_steps": phase3_slope,
        "verdict": "flat" if rss_slope < flat_mb else "growing",
        "trace": [
            {"t_s": round(t, 2), "step": step, "rss_mb": round(rss / MB, 2), "uss_mb": round(uss / MB, 2)}
            for t, step, rss, uss in samples
        ],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.summarize:
        return resummarize(Path(args.summarize))
    from orchestrator.config import load_config
    from orchestrator.errors import Interrupted
    from orchestrator.train.run import run_training
    from orchestrator.train.telemetry import METRICS_FILE

    overrides = [*DEFAULT_SET, *args.overrides]
    config = load_config(args.config, overrides)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="worker_memory_")) / "run"
    sampler = Sampler(run_dir / METRICS_FILE, args.interval)
    sampler.start()
    started = time.perf_counter()
    interrupted = None
    try:
        run_training(config, run_dir, echo=False)
    except Interrupted as exc:  # Ctrl-C on a slow machine: keep what was sampled up to there
        interrupted = str(exc)
    finally:
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - started

    max_steps = config.train.max_steps
    if interrupted:
        max_steps = last_step(run_dir / METRICS_FILE)  # the end of what ran
    workers = {
        str(pid): summarize_worker(s, max_steps, args.warmup_steps, args.flat_mb, last_phase_start(config))
        for pid, s in sorted(sampler.samples.items())
        if len(s) >= 2
    }
    import ray

    results: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "config": args.config,
        "overrides": overrides,
        # What --summarize needs of the config, recorded: the config path may not exist on another checkout.
        "last_phase_start": last_phase_start(config),
        "max_steps": config.train.max_steps,
        "steps_run": max_steps,
        "interrupted": interrupted,
        "interval_s": args.interval,
        "warmup_steps": args.warmup_steps,
        "flat_below_mb_per_100_steps": args.flat_mb,
        "wall_s": wall,
        "run_dir": str(run_dir),
        "workers": workers,
        "sampler_errors": sampler.errors[:5],
        "machine": machine(),
        "load_average": os.getloadavg(),
        "ray": ray.__version__,
    }
    print_table(results)
    write_results(results, args.out)
    return results


def resummarize(path: Path) -> dict[str, Any]:
    """A recorded file's per-worker figures computed again from its traces (the summary code changed)."""
    import json

    results = json.loads(path.read_text())
    phase_start = results["last_phase_start"]
    flat_mb = results["flat_below_mb_per_100_steps"]
    for pid, w in results["workers"].items():
        samples = [(t["t_s"], t["step"], t["rss_mb"] * MB, t["uss_mb"] * MB) for t in w["trace"]]
        results["workers"][pid] = summarize_worker(
            samples, results["steps_run"], results["warmup_steps"], flat_mb, phase_start
        )
    print_table(results)
    write_results(results, path)
    return results


def print_table(results: dict[str, Any]) -> None:
    workers = results["workers"]
    print()
    print(
        f"{'worker pid':<12}{'samples':>8}{'steps':>10}{'RSS warm MB':>13}{'RSS end MB':>12}"
        f"{'max MB':>9}{'slope MB/100 st':>17}{'USS slope':>11}{'last phase':>12}  verdict"
    )
    for pid, w in workers.items():
        print(
            f"{pid:<12}{w['samples']:>8}{w['first_step']:>4}-{w['last_step']:<5}{w['rss_after_warmup_mb']:>13.1f}"
            f"{w['rss_end_mb']:>12.1f}{w['rss_max_mb']:>9.1f}{w['rss_slope_mb_per_100_steps']:>+17.2f}"
            f"{w['uss_slope_mb_per_100_steps']:>+11.2f}{w['last_phase_rss_slope_mb_per_100_steps']:>+12.2f}"
            f"  {w['verdict']}"
        )
    print(f"{len(workers)} workers, {results['steps_run']} steps, {results['wall_s']:.0f} s wall")


if __name__ == "__main__":
    main()
