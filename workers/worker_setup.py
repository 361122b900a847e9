"""A Ray Train worker's set-up before its first step: precision, models, DeepSpeed engine, the
restored position, and its data shards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workers.checkpointing import TrainingPosition, remove_orphaned_temp_checkpoints, restore
from workers.data import TrainBatches, eval_batches
from workers.engine import build_engine, place_teacher
from workers.faults import FaultInjector
from workers.models import (
    DERIVED,
    NO_TEACHER,
    ModelSetupError,
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
from workers.runtime import WorkerRuntime
from workers.student_module import StudentWithLoss, compile_for_training
from workers.worker_errors import first_line, is_out_of_memory


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


def load_model(key: str, spec: str, tokenizer, max_positions: int, seed: int, dtype: torch.dtype):
    """`build_model` for the config's `key` (teacher or student). A model the driver's checks passed
    (config.json read) whose weights still do not load (cut short, wrong shapes, an unknown class)
    is the user's input at fault: ModelSetupError naming the key and the model, the cause chained."""
    try:
        return build_model(spec, tokenizer, max_positions, seed, dtype)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise  # reported as memory, not as a bad model
        # build_model's own "cannot load model" error hides its OSError (`from None`): show the OSError.
        reason = exc.__context__ if isinstance(exc, ModelSetupError) and exc.__context__ else exc
        raise ModelSetupError(f"{key} {spec!r} cannot be loaded: {first_line(reason)}") from exc


def build_models(config: dict[str, Any], runtime: WorkerRuntime):
    """(tokenizer, teacher or None, student, distillation loss), the teacher frozen in eval mode."""
    train, ds = config["train"], config["deepspeed"]
    tokenizer = load_tokenizer(runtime.tokenizer)
    max_positions = int(runtime.max_positions)
    dtype = teacher_dtype(ds["teacher_precision"])
    teacher = None
    if config["teacher"] != NO_TEACHER:
        teacher = load_model("teacher", config["teacher"], tokenizer, max_positions, train["seed"], dtype)
        teacher.eval().requires_grad_(False)
    if config["student"] == DERIVED:
        student = derive_student(teacher, config["derive"], train["seed"] + 1)
    else:
        seed = train["seed"] + 1
        student = load_model("student", config["student"], tokenizer, max_positions, seed, torch.float32)
    vocab_size = check_vocabularies(config, teacher, student, tokenizer)
    return tokenizer, teacher, student, distillation_loss_for(config, student, teacher, vocab_size)


@dataclass
class Worker:
    """One worker's state once set up: what its training steps use."""

    config: dict[str, Any]  # the run config, precision resolved
    runtime: WorkerRuntime
    rank: int
    tokenizer: Any
    teacher: torch.nn.Module | None  # placed on the worker's device, frozen
    loss: Any  # workers.distill_loss: `.schedule.phase(progress)`, `.weights(progress)`
    engine: Any  # the DeepSpeed engine around StudentWithLoss
    faults: FaultInjector
    position: TrainingPosition  # restored from a checkpoint, or step 0
    train_iter: TrainBatches
    evals: list  # this worker's eval micro-batches, the same at every eval
    static: dict[str, int]  # parameter counts and world size, in every record


def set_up(config: dict[str, Any], runtime: WorkerRuntime, rank: int, world: int) -> Worker:
    import ray.train
    import ray.train.torch

    train = config["train"]
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
    faults = FaultInjector(runtime.faults, rank)
    for orphan in remove_orphaned_temp_checkpoints():
        print(f"raydistill: removed {orphan}, a temp checkpoint left by a killed worker", flush=True)
    faults.attach(teacher)
    engine = build_engine(StudentWithLoss(student, loss, train["attn_implementation"]), config, world)
    if teacher is not None:
        teacher = place_teacher(teacher, config, device)

    position = TrainingPosition()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and runtime.start_checkpoint:
        # A sweep trial that Tune restarts from its checkpoint (PBT, HyperBand) begins a new Train run.
        checkpoint = ray.train.Checkpoint(runtime.start_checkpoint)
    if checkpoint is not None:
        position = restore(engine, checkpoint, rank)

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
        shard_sequences=int(runtime.eval_sequences) // world,
    )
    return Worker(
        config, runtime, rank, tokenizer, teacher, loss, engine, faults, position, train_iter, evals, static
    )
