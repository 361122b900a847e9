"""`raydistill plan`: per-GPU memory for a teacher/student pair under each ZeRO stage and offload choice.

Model sizes come from configs only: `config.json` of a local directory or a Hugging Face id (the
config file, never the weights), or a `preset:<name>`. The model is built on the `meta` device, so
the parameter count is exact (tied embeddings once, GQA, biases, untied heads) and costs no memory.
The arithmetic lives in `orchestrator.plan.memory_model`.

Exit codes: 0 when something fits, 1 when nothing does, 2 on bad input.
"""

from __future__ import annotations

import argparse

from orchestrator.errors import UserError
from orchestrator.plan import memory_model as mm
from orchestrator.plan.model_shapes import model_shape, teacher_shape

DEFAULT_GPU_MEM_GIB = 80.0
DEFAULT_SEQ_LEN = 1024
DEFAULT_MICRO_BATCH = 2
DEFAULT_GPUS_PER_NODE = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    models = "a Hugging Face id, a local model directory, or preset:<name>"
    parser.add_argument(
        "--teacher", metavar="ID_OR_PATH", help=f"the frozen teacher: {models}; none for a CE-only run"
    )
    parser.add_argument("--student", metavar="ID_OR_PATH", help=f"the trained student: {models}")
    parser.add_argument("--gpus", type=int, metavar="N", help="GPUs in the run (scaling.num_workers)")
    parser.add_argument(
        "--gpu-mem",
        type=float,
        default=DEFAULT_GPU_MEM_GIB,
        metavar="GIB",
        help=f"memory of one GPU in GiB (default {DEFAULT_GPU_MEM_GIB:g}: A100/H100 80GB)",
    )
    parser.add_argument(
        "--seq-len", type=int, metavar="L", help=f"tokens per sequence (default {DEFAULT_SEQ_LEN})"
    )
    parser.add_argument(
        "--micro-batch",
        type=int,
        metavar="B",
        help=f"sequences per GPU per forward (default {DEFAULT_MICRO_BATCH})",
    )
    parser.add_argument(
        "--gpus-per-node",
        type=int,
        default=DEFAULT_GPUS_PER_NODE,
        metavar="G",
        help=f"GPUs on one node, for the node count (default {DEFAULT_GPUS_PER_NODE})",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="a run config whose teacher, student, scaling.num_workers, data.seq_len and "
        "train.micro_batch_size fill in the flags not given",
    )


# ---------------------------------------------------------------------------------------------
# The command.


def _resolve_inputs(args: argparse.Namespace) -> dict:
    values = {
        "teacher": args.teacher,
        "student": args.student,
        "gpus": args.gpus,
        "seq_len": args.seq_len,
        "micro_batch": args.micro_batch,
        "config_option": None,
    }
    if args.config is not None:
        from orchestrator.config import load_config

        config = load_config(args.config)
        defaults = {
            "teacher": config.teacher,
            "student": config.student,
            "gpus": config.scaling.num_workers,
            "seq_len": config.data.seq_len,
            "micro_batch": config.train.micro_batch_size,
        }
        values = {key: defaults.get(key) if value is None else value for key, value in values.items()}
        ds = config.deepspeed
        offload = (
            mm.OFFLOAD_ALL
            if ds.offload_param
            else mm.OFFLOAD_OPTIMIZER
            if ds.offload_optimizer
            else mm.OFFLOAD_NONE
        )
        values["config_option"] = mm.Option(ds.zero_stage, offload, ds.teacher_zero3)
    values["seq_len"] = DEFAULT_SEQ_LEN if values["seq_len"] is None else values["seq_len"]
    values["micro_batch"] = DEFAULT_MICRO_BATCH if values["micro_batch"] is None else values["micro_batch"]
    for key, flag in (("teacher", "--teacher"), ("student", "--student"), ("gpus", "--gpus")):
        if values[key] is None:
            raise UserError(f"plan needs {flag} (or --config with it)")
    if values["student"] == "derived":
        raise UserError("plan needs an explicit --student (a model id, directory or preset), not 'derived'")
    checks = (
        ("--gpus", values["gpus"], 1),
        ("--seq-len", values["seq_len"], 1),
        ("--micro-batch", values["micro_batch"], 1),
        ("--gpus-per-node", args.gpus_per_node, 1),
    )
    for flag, value, least in checks:
        if value < least:
            raise UserError(f"{flag}={value}: must be >= {least}")
    if not args.gpu_mem > 0:
        raise UserError(f"--gpu-mem={args.gpu_mem:g}: must be > 0 (GiB per GPU)")
    return values


def _gib(nbytes: float) -> str:
    return f"{nbytes / mm.GIB:.1f}"


def _params(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def _describe_model(role: str, shape: mm.ModelShape) -> str:
    return (
        f"{role} {shape.name}: {_params(shape.params)} params, {shape.num_layers} layers, "
        f"hidden {shape.hidden_size}, {shape.num_heads} heads, vocab {shape.vocab_size}"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _cluster(gpus: int, gpus_per_node: int) -> str:
    nodes = mm.nodes_for(gpus, gpus_per_node)
    return f"{_plural(nodes, 'node')} of {_plural(min(gpus, gpus_per_node), 'GPU')}"


def format_table(
    estimates: list[mm.Estimate], gpu_mem_bytes: float, chosen: mm.Estimate | None, with_teacher: bool
) -> str:
    header = (
        "stage",
        "offload",
        "teacher",
        "model states",
        "activations",
        "teacher",
        "total",
        "fits",
        "host RAM/node",
    )
    rows = [header]
    for item in estimates:
        opt = item.option
        placement = ("sharded" if opt.teacher_sharded else "replicated") if with_teacher else "-"
        rows.append(
            (
                f"ZeRO-{opt.stage}",
                opt.offload,
                placement,
                _gib(item.model_states),
                _gib(item.activations),
                _gib(item.teacher),
                _gib(item.total),
                ("yes" if item.fits(gpu_mem_bytes) else "no") + (" <-" if item is chosen else ""),
                _gib(item.host_per_node) if item.host_per_node else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {3, 4, 5, 6, 8}  # numbers align right
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _print_inputs(teacher: mm.ModelShape | None, student: mm.ModelShape, work: mm.Workload, args, gpus: int):
    if teacher is None:
        print("teacher none: the student trains on hard labels alone (CE only)")
        print(_describe_model("student", student))
    else:
        print(_describe_model("teacher", teacher))
        projectors = _params(mm.projector_params(student, teacher))
        print(_describe_model("student", student) + f" (+{projectors} trained projector params)")
        if teacher.vocab_size != student.vocab_size:
            print(
                f"warning: the vocabularies differ (teacher {teacher.vocab_size}, student "
                f"{student.vocab_size}): fine when both pad one tokenizer, but logit distillation needs "
                "a shared tokenizer (`raydistill train` checks)"
            )
    print(
        f"{gpus} x {args.gpu_mem:g} GiB GPUs ({_cluster(gpus, args.gpus_per_node)}), seq_len {work.seq_len}, "
        f"micro_batch {work.micro_batch}, bf16 + AdamW"
    )


def run(args: argparse.Namespace) -> int:
    values = _resolve_inputs(args)
    gpus, gpus_per_node = values["gpus"], args.gpus_per_node
    work = mm.Workload(seq_len=values["seq_len"], micro_batch=values["micro_batch"])
    teacher = teacher_shape(values["teacher"], work.seq_len)
    student = model_shape(values["student"], work.seq_len)
    gpu_mem = args.gpu_mem * mm.GIB
    with_teacher = teacher is not None

    def describe(item: mm.Estimate) -> str:
        return item.option.describe(with_teacher)

    estimates = mm.estimate_all(teacher, student, work, gpus, gpus_per_node)
    chosen = mm.recommend(estimates, gpu_mem)

    _print_inputs(teacher, student, work, args, gpus)
    print()
    peak = "a phase-3 step (every loss component on)" if with_teacher else "a training step"
    print(f"per-GPU memory in GiB at the peak of {peak}:")
    print(format_table(estimates, gpu_mem, chosen, with_teacher))
    print()
    print(
        "model states: DeepSpeed's ZeRO-2/3 estimators (stages 0-1: the same bytes per parameter); "
        "activations: Megatron's s*b*h*(34+5*a*s/h) per layer plus logits; "
        f"total includes {_gib(mm.OVERHEAD_BYTES)} GiB for CUDA context and NCCL/DeepSpeed buffers."
    )

    if values["config_option"] is not None:
        own = mm.estimate(values["config_option"], teacher, student, work, gpus, gpus_per_node)
        verdict = "fits" if own.fits(gpu_mem) else "does NOT fit"
        print(f"\n{args.config} as written ({describe(own)}): {_gib(own.total)} GiB per GPU, {verdict}")

    if chosen is not None:
        print()
        print(
            f"recommended: {describe(chosen)}: {_gib(chosen.total)} of {args.gpu_mem:g} GiB per GPU; "
            f"{gpus} GPUs = {_cluster(gpus, gpus_per_node)}"
        )
        sets = chosen.option.overrides() + [f"scaling.num_workers={gpus}", "scaling.use_gpu=true"]
        print("  " + " ".join(f"--set {item}" for item in sets))
        fewest = mm.smallest_fitting_gpus(teacher, student, work, gpus_per_node, gpu_mem, start=0)
        if fewest is not None and fewest[0] < gpus:
            print(f"  (something fits on as few as {_plural(fewest[0], 'GPU')}: {describe(fewest[1])})")
        return 0

    smallest = min(estimates, key=lambda item: item.total)
    print()
    print(
        f"nothing fits on {gpus} x {args.gpu_mem:g} GiB GPUs: smallest need is {_gib(smallest.total)} GiB "
        f"per GPU ({describe(smallest)})."
    )
    more = mm.smallest_fitting_gpus(teacher, student, work, gpus_per_node, gpu_mem, start=gpus)
    if more is not None:
        n, best = more
        print(
            f"  with {n} GPUs ({_cluster(n, gpus_per_node)}) it fits: {describe(best)}, {_gib(best.total)} GiB"
        )
    else:
        floor = mm.floor_bytes(teacher, student, work, gpus_per_node)
        print(
            f"  no GPU count helps: activations, teacher outputs and buffers alone need {_gib(floor)} GiB "
            "per GPU"
        )
    print("  or lower --micro-batch / --seq-len, or use GPUs with more memory.")
    return 1
