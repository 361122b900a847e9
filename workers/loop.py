"""`train_loop_per_worker`: what each Ray Train worker runs.

Everything arrives through the loop config (the function is pickled to other processes, so no module globals): `{"config": <resolved run config dict>,
"runtime": {"tokenizer": path, "run_dir": path, "max_positions": int, "eval_sequences": int, ...}}`.
Every rank calls `ray.train.report` the same number of times (it is a barrier in Train V2) and all
reported metrics are all-reduced first, since only rank 0's are kept.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from workers.checkpointing import (
    TrainingPosition,
    remove_orphaned_temp_checkpoints,
    restore,
    saved_checkpoint,
)
from workers.curriculum import COMPONENTS
from workers.data import TrainBatches, eval_batches
from workers.dist import any_rank, barrier
from workers.engine import build_engine, place_teacher
from workers.export import export_student
from workers.faults import FaultInjector
from workers.models import (
    DERIVED,
    NO_TEACHER,
    build_model,
    check_vocabularies,
    count_parameters,
    derive_student,
    distillation_loss_for,
    load_tokenizer,
    teacher_dtype,
)
from workers.precision import (
    precision_note,
    resolve_precision,
    resolve_teacher_precision,
    teacher_precision_note,
)
from workers.step import eval_pass, train_step
from workers.student_module import StudentWithLoss, compile_for_training
from workers.tune_decision import wait_for_decision


class TooManyNonFiniteSteps(RuntimeError):
    pass


def with_resolved_precision(config: dict[str, Any], rank: int) -> dict[str, Any]:
    """The run config with `deepspeed.precision: auto` decided on this worker's hardware (and a
    console line from rank 0 when the choice or an emulated bf16 deserves one)."""
    use_gpu = bool(config["scaling"]["use_gpu"])
    ds = config["deepspeed"]
    resolved = resolve_precision(ds["precision"], use_gpu)
    teacher = resolve_teacher_precision(ds["teacher_precision"], resolved, use_gpu)
    notes = [precision_note(ds["precision"], resolved, use_gpu)]
    if config["teacher"] != NO_TEACHER:
        notes.append(teacher_precision_note(ds["teacher_precision"], teacher, resolved, use_gpu))
    for note in notes:
        if note is not None and rank == 0:
            print(f"raydistill: {note}", flush=True)
    return {**config, "deepspeed": {**ds, "precision": resolved, "teacher_precision": teacher}}


def build_models(config: dict[str, Any], runtime: dict[str, Any]):
    train, ds = config["train"], config["deepspeed"]
    tokenizer = load_tokenizer(runtime["tokenizer"])
    max_positions = int(runtime["max_positions"])
    dtype = teacher_dtype(ds["teacher_precision"])
    teacher = None
    if config["teacher"] != NO_TEACHER:
        teacher = build_model(config["teacher"], tokenizer, max_positions, train["seed"], dtype)
        teacher.eval().requires_grad_(False)
    if config["student"] == DERIVED:
        student = derive_student(teacher, config["derive"], train["seed"] + 1)
    else:
        student = build_model(config["student"], tokenizer, max_positions, train["seed"] + 1, torch.float32)
    if teacher is not None:
        check_vocabularies(teacher, student, tokenizer)
    return tokenizer, teacher, student, distillation_loss_for(config, student, teacher)


class TrainRawAverager:
    """Mean raw value per component over the steps since the last eval, recombined with the current
    weights, so `eval_train_ratio` compares eval and train totals at the same weights."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, float]) -> None:
        for c in COMPONENTS:
            if metrics.get(f"loss/{c}/weight", 0.0) > 0:
                self.sums[c] = self.sums.get(c, 0.0) + metrics[f"loss/{c}/raw"]
                self.counts[c] = self.counts.get(c, 0) + 1

    def total_at(self, weights: dict[str, float]) -> float:
        return sum(
            w * self.sums[c] / self.counts[c] for c, w in weights.items() if w > 0 and self.counts.get(c)
        )

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()


def quiet_ray_train_reports() -> None:
    """Ray Train logs every `report` call at INFO from a logger named after its module's file path
    (so `LoggingConfig(log_level=...)` misses it); the console line comes from raydistill instead."""
    import logging

    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    quiet_ray_train_reports()
    config, runtime = loop_config["config"], loop_config["runtime"]
    train = config["train"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # Ray gives each worker `cpus_per_worker` CPUs; more intra-op threads than that oversubscribes.
    torch.set_num_threads(max(1, int(config["scaling"]["cpus_per_worker"])))
    config = with_resolved_precision(config, rank)
    torch.manual_seed(train["seed"] + rank)

    device = ray.train.torch.get_device()  # cuda:<local rank> on GPU workers, cpu otherwise
    tokenizer, teacher, student, loss = build_models(config, runtime)
    # Counted before DeepSpeed: under ZeRO-3 parameters become empty placeholders.
    static = {
        "student_params": count_parameters(student),
        "teacher_params": count_parameters(teacher) if teacher is not None else 0,
        "world_size": world,
    }
    if train["compile"]:
        compile_for_training(student)
        if rank == 0:
            print(
                "raydistill: train.compile: the first step compiles the model (tens of seconds on CPU)",
                flush=True,
            )
    faults = FaultInjector(runtime.get("faults"), rank)
    for orphan in remove_orphaned_temp_checkpoints():
        print(f"raydistill: removed {orphan}, a temp checkpoint left by a killed worker", flush=True)
    faults.attach(teacher)
    engine = build_engine(StudentWithLoss(student, loss, train["attn_implementation"]), config, world)
    if teacher is not None:
        teacher = place_teacher(teacher, config, device)

    position = TrainingPosition()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and runtime.get("start_checkpoint"):
        # A sweep trial that Tune restarts from its checkpoint (PBT, HyperBand) begins a new Train run.
        checkpoint = ray.train.Checkpoint(runtime["start_checkpoint"])
    if checkpoint is not None:
        position = restore(engine, checkpoint, rank)

    max_steps = int(train["max_steps"])
    train_iter = TrainBatches(
        ray.train.get_dataset_shard("train"),
        int(train["micro_batch_size"]),
        int(train["seed"]),
        device=device,
        **position.data,
    )
    evals = eval_batches(
        ray.train.get_dataset_shard("eval"),
        int(train["micro_batch_size"]),
        int(train["eval_batches"]),
        device,
        shard_sequences=int(runtime.get("eval_sequences", 0)) // world,
    )

    nonfinite_streak = 0
    averager = TrainRawAverager()
    window_tokens, window_start = 0, time.perf_counter()
    step = position.step
    stop_file = runtime.get("stop_file")
    # Written by the driver on Ctrl-C / SIGTERM (orchestrator.interrupt): checkpoint this step, then leave.
    interrupt_file = runtime.get("interrupt_file")
    decision_file = runtime.get("decision_file")  # a sweep trial's: see workers.tune_decision
    # A sweep's shared phase-1 prefix (orchestrator.shared_prefix) trains on the full run's schedule
    # but stops early, with a checkpoint at every step a trial forks from.
    stop_at = int(runtime.get("stop_at_step") or max_steps)
    checkpoint_steps = {int(s) for s in runtime.get("checkpoint_steps", ())}
    while step < stop_at:
        # A sweep trial Tune has stopped: leave at once (checked every step, not at the next report,
        # so a stopped trial trains no further while Ray tears it down), no export.
        if stop_file and any_rank(os.path.exists(stop_file)):
            return
        progress = step / max_steps
        faults.before_step(step + 1)
        result = train_step(engine, teacher, train_iter.window(int(train["grad_accum"])), progress)
        faults.after_step()
        step += 1
        window_tokens += result.tokens
        if result.skipped:
            position.nonfinite_skipped += 1
            nonfinite_streak += 1
        else:
            nonfinite_streak = 0
            averager.add(result.metrics)

        is_last = step == max_steps
        do_eval = step % int(train["eval_every"]) == 0 or is_last
        do_checkpoint = step % int(train["checkpoint_every"]) == 0 or is_last or step in checkpoint_steps
        # Checked on every rank after each step, so all ranks save the same step's checkpoint.
        interrupted = bool(interrupt_file) and any_rank(os.path.exists(interrupt_file)) and not is_last
        do_checkpoint = do_checkpoint or interrupted
        do_log = step % int(train["log_every"]) == 0 or do_eval or do_checkpoint or result.skipped
        too_many = nonfinite_streak >= int(train["max_nonfinite_in_a_row"])
        if not (do_log or too_many):
            continue

        elapsed = time.perf_counter() - window_start
        record: dict[str, Any] = {
            "step": step,
            "max_steps": max_steps,
            "progress": progress,
            "phase": loss.schedule.phase(progress),
            "lr": float(engine.optimizer.param_groups[0]["lr"]),
            "tokens_per_s": window_tokens / elapsed if elapsed > 0 else 0.0,
            "nonfinite_skipped": position.nonfinite_skipped,
            **result.metrics,
            **static,
        }
        if result.skipped:
            record["nonfinite_components"] = ",".join(result.nonfinite)
        if stop_at < max_steps:
            record["stop_step"] = stop_at  # the progress line's eta counts to here
        if do_eval:
            eval_metrics = eval_pass(engine, teacher, evals, progress)
            record.update(eval_metrics)
            train_total = averager.total_at(loss.weights(progress))
            record["eval_train_ratio"] = (
                eval_metrics["eval/total"] / train_total if train_total > 0 else math.nan
            )
            averager.reset()
        if too_many:
            # The last good checkpoint stays the run's latest; report, then fail loudly.
            ray.train.report(record)
            raise TooManyNonFiniteSteps(
                f"{nonfinite_streak} non-finite steps in a row (components: {', '.join(result.nonfinite)}) at step "
                f"{step}; stopping. The last good checkpoint is kept (train.max_nonfinite_in_a_row)"
            )
        position.step, position.data = step, train_iter.position()
        if do_checkpoint:
            with saved_checkpoint(engine, position, config, rank, max_steps) as directory:
                ray.train.report(
                    record,
                    checkpoint=ray.train.Checkpoint.from_directory(directory),
                    checkpoint_upload_fn=faults.checkpoint_upload_fn(step),  # None: Ray's own copy
                )
        else:
            ray.train.report(record)
        if interrupted:
            return  # no export: the rerun resumes from this checkpoint
        if do_eval and decision_file:
            # Tune may stop the trial on this eval: train no step past it until Tune has decided.
            wait_for_decision(decision_file, stop_file, step)
        window_tokens, window_start = 0, time.perf_counter()

    if stop_at < max_steps:
        return  # a prefix run: its checkpoints are what the trials need, not a half-trained student
    export_student(engine, tokenizer, runtime["student_dir"], rank, int(config["deepspeed"]["zero_stage"]))
    barrier()
