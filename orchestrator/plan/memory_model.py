"""Per-GPU memory arithmetic for distilling a student under DeepSpeed ZeRO beside a frozen teacher.

Pure arithmetic on parameter counts and shapes: nothing is instantiated, nothing is downloaded.
Every figure is bytes on one GPU at the peak of a training step in curriculum phase 3 (all loss
components on), with bf16 mixed precision and Adam, as `configs/gpu.yaml` runs.

- Model states (student + feature projectors): DeepSpeed's own ZeRO-2 and ZeRO-3 estimators
  (`estimate_zero{2,3}_model_states_mem_needs`, the functions behind the `*_all_cold` printers).
  DeepSpeed has none for stages 0 and 1, so those use the same byte counts per parameter:
  2 (bf16 weights) + 18 (bf16 grads 2, fp32 grads 4, fp32 master weights 4, Adam m and v 8),
  nothing split at stage 0; at stage 1 the 16 fp32 bytes are split across GPUs, the bf16 ones not.
- Activations: the Megatron estimate (Korthikanti et al. 2022, "Reducing Activation Recomputation
  in Large Transformer Models", eq. 1): per layer `s*b*h*(34 + 5*a*s/h)` bytes for 16-bit
  activations without recomputation. The `5*a*s/h` term is the materialised (B, heads, T, T)
  attention maps, which phase 3 has: the attention loss switches to eager attention. Plus the
  student logits (B, T, V): bf16 output 2, fp32 log-softmax 4 and its gradient 4 bytes per entry.
- Teacher: frozen bf16 weights, replicated (2 bytes/param) or sharded by a ZeRO-3 inference engine
  (2/N bytes/param plus the gathered largest layer, as DeepSpeed's ZeRO-3 estimator counts it),
  plus what its forward hands the loss: logits (bf16 + fp32 probabilities, 6 bytes per entry),
  every layer's hidden states and attention maps (bf16).
- A fixed allowance for the CUDA context, NCCL and DeepSpeed's communication buckets.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

GIB = 2**30
# CUDA context (~0.5 GiB), NCCL buffers and DeepSpeed's reduce / all-gather buckets.
OVERHEAD_BYTES = 2 * GIB
# Candidates never scanned past this many GPUs when looking for the smallest cluster that fits.
MAX_GPUS_SEARCHED = 4096

OFFLOAD_NONE = "none"
OFFLOAD_OPTIMIZER = "optimizer"
OFFLOAD_ALL = "optimizer+params"


@dataclass(frozen=True)
class ModelShape:
    """What the arithmetic needs to know about one model."""

    name: str
    params: int  # distinct parameters (tied embeddings counted once)
    largest_layer_params: int  # the largest single module's own parameters (DeepSpeed's definition)
    num_layers: int
    hidden_size: int
    num_heads: int
    vocab_size: int


@dataclass(frozen=True)
class Workload:
    seq_len: int
    micro_batch: int


@dataclass(frozen=True)
class Option:
    """One way to run: the student's ZeRO stage and offload, and where the teacher lives."""

    stage: int
    offload: str = OFFLOAD_NONE
    teacher_sharded: bool = False

    def describe(self, with_teacher: bool = True) -> str:
        offload = "no offload" if self.offload == OFFLOAD_NONE else f"{self.offload} offloaded to CPU"
        if not with_teacher:
            return f"ZeRO-{self.stage}, {offload}"
        teacher = "teacher sharded (ZeRO-3)" if self.teacher_sharded else "teacher replicated"
        return f"ZeRO-{self.stage}, {offload}, {teacher}"

    def overrides(self) -> list[str]:
        """The `--set` flags that select this option in a run config."""
        return [
            f"deepspeed.zero_stage={self.stage}",
            f"deepspeed.offload_optimizer={str(self.offload != OFFLOAD_NONE).lower()}",
            f"deepspeed.offload_param={str(self.offload == OFFLOAD_ALL).lower()}",
            f"deepspeed.teacher_zero3={str(self.teacher_sharded).lower()}",
        ]


# Cheapest first: no offload before offload (PCIe traffic and CPU Adam), a lower stage before a
# higher one (fewer collectives), a replicated teacher before a sharded one (no per-layer all-gather
# in every teacher forward). A sharded teacher goes with a ZeRO-3 student, as TRL runs it.
OPTIONS: tuple[Option, ...] = (
    Option(0),
    Option(1),
    Option(2),
    Option(3),
    Option(3, teacher_sharded=True),
    Option(2, OFFLOAD_OPTIMIZER),
    Option(3, OFFLOAD_OPTIMIZER),
    Option(3, OFFLOAD_OPTIMIZER, teacher_sharded=True),
    Option(3, OFFLOAD_ALL),
    Option(3, OFFLOAD_ALL, teacher_sharded=True),
)


@dataclass(frozen=True)
class Estimate:
    option: Option
    model_states: int
    activations: int
    teacher: int
    overhead: int
    host_per_node: int  # CPU RAM per node for model states, DeepSpeed's estimate (0 where it has none)

    @property
    def total(self) -> int:
        return self.model_states + self.activations + self.teacher + self.overhead

    def fits(self, gpu_mem_bytes: float) -> bool:
        return self.total <= gpu_mem_bytes


@contextlib.contextmanager
def _quiet_deepspeed_import():
    """Drop DeepSpeed's "Setting accelerator to CPU" import-time warning: the plan runs where no GPU is."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Setting accelerator to CPU" not in record.getMessage()

    ds_logger = logging.getLogger("DeepSpeed")
    drop = _Drop()
    ds_logger.addFilter(drop)
    try:
        yield
    finally:
        ds_logger.removeFilter(drop)


def _deepspeed_estimators():
    with _quiet_deepspeed_import():
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs


def nodes_for(gpus: int, gpus_per_node: int) -> int:
    return math.ceil(gpus / gpus_per_node)


def model_states_bytes(
    params: int, largest_layer_params: int, option: Option, gpus: int, gpus_per_node: int
) -> tuple[int, int]:
    """(GPU bytes per GPU, CPU bytes per node) for the trained parameters' weights, grads and Adam."""
    zero2, zero3 = _deepspeed_estimators()
    offload = option.offload != OFFLOAD_NONE
    # GPU figures depend only on the total GPU count; host RAM is per node.
    per_node = min(gpus, gpus_per_node)
    nodes = nodes_for(gpus, gpus_per_node)
    if option.stage == 0:
        return 20 * params, 0
    if option.stage == 1:
        # bf16 weights and grads whole on every GPU; fp32 grads, master weights and Adam state split.
        return 4 * params + int(16 * params / gpus), 0
    if option.stage == 2:
        _, gpu = zero2(params, num_gpus_per_node=gpus, num_nodes=1, cpu_offload=offload)
        cpu, _ = zero2(params, num_gpus_per_node=per_node, num_nodes=nodes, cpu_offload=offload)
        return gpu, cpu if offload else 0
    offload_params = option.offload == OFFLOAD_ALL
    kwargs = {"cpu_offload": offload, "cpu_offload_params": offload_params, "zero_init": False}
    _, gpu, _ = zero3(params, largest_layer_params, num_gpus_per_node=gpus, num_nodes=1, **kwargs)
    cpu, _, _ = zero3(params, largest_layer_params, num_gpus_per_node=per_node, num_nodes=nodes, **kwargs)
    return gpu, cpu if offload else 0


def options_for(teacher: ModelShape | None) -> tuple[Option, ...]:
    """Without a teacher (`teacher: none`, a CE-only run) there is no teacher to shard."""
    return OPTIONS if teacher is not None else tuple(o for o in OPTIONS if not o.teacher_sharded)


def projector_params(student: ModelShape, teacher: ModelShape | None) -> int:
    """One Linear(H_s, H_t) with bias per student layer (the `auto` layer map pairs every student layer)."""
    if teacher is None:
        return 0
    return student.num_layers * (student.hidden_size * teacher.hidden_size + teacher.hidden_size)


def student_activation_bytes(student: ModelShape, work: Workload) -> int:
    s, b, h, a = work.seq_len, work.micro_batch, student.hidden_size, student.num_heads
    # Megatron eq. 1, bytes per layer: s*b*h*(34 + 5*a*s/h) = 34*s*b*h + 5*a*s*s*b.
    per_layer = 34 * s * b * h + 5 * a * s * s * b
    logits = 10 * b * s * student.vocab_size  # bf16 logits + fp32 log-softmax + its gradient
    return student.num_layers * per_layer + logits


def teacher_bytes(teacher: ModelShape | None, work: Workload, sharded: bool, gpus: int) -> int:
    if teacher is None:
        return 0
    if sharded:
        weights = int(2 * teacher.params / gpus) + 4 * teacher.largest_layer_params
    else:
        weights = 2 * teacher.params
    s, b = work.seq_len, work.micro_batch
    logits = 6 * b * s * teacher.vocab_size  # bf16 logits + fp32 softmax(t / T)
    hidden = 2 * (teacher.num_layers + 1) * b * s * teacher.hidden_size  # (B, T, H) per layer + embeddings
    attention = 2 * teacher.num_layers * b * teacher.num_heads * s * s  # (B, heads, T, T) per layer
    return weights + logits + hidden + attention


def estimate(
    option: Option,
    teacher: ModelShape | None,
    student: ModelShape,
    work: Workload,
    gpus: int,
    gpus_per_node: int,
) -> Estimate:
    trained = student.params + projector_params(student, teacher)
    projector = 0 if teacher is None else student.hidden_size * teacher.hidden_size + teacher.hidden_size
    largest = max(student.largest_layer_params, projector)
    gpu_states, host = model_states_bytes(trained, largest, option, gpus, gpus_per_node)
    return Estimate(
        option=option,
        model_states=gpu_states,
        activations=student_activation_bytes(student, work),
        teacher=teacher_bytes(teacher, work, option.teacher_sharded, gpus),
        overhead=OVERHEAD_BYTES,
        host_per_node=host,
    )


def estimate_all(
    teacher: ModelShape | None, student: ModelShape, work: Workload, gpus: int, gpus_per_node: int
) -> list[Estimate]:
    return [estimate(option, teacher, student, work, gpus, gpus_per_node) for option in options_for(teacher)]


def recommend(estimates: list[Estimate], gpu_mem_bytes: float) -> Estimate | None:
    """The first option, in `OPTIONS` order (cheapest first), that fits; None when none does."""
    for item in estimates:
        if item.fits(gpu_mem_bytes):
            return item
    return None


def smallest_fitting_gpus(
    teacher: ModelShape | None,
    student: ModelShape,
    work: Workload,
    gpus_per_node: int,
    gpu_mem_bytes: float,
    start: int,
) -> tuple[int, Estimate] | None:
    """The fewest GPUs (> start) on which some option fits, or None below `MAX_GPUS_SEARCHED`.

    Per-GPU memory never grows with the GPU count, so the first hit is the smallest.
    """
    if floor_bytes(teacher, student, work, gpus_per_node) > gpu_mem_bytes:
        return None
    for gpus in range(start + 1, MAX_GPUS_SEARCHED + 1):
        best = recommend(estimate_all(teacher, student, work, gpus, gpus_per_node), gpu_mem_bytes)
        if best is not None:
            return gpus, best
    return None


def floor_bytes(teacher: ModelShape | None, student: ModelShape, work: Workload, gpus_per_node: int) -> int:
    """What no GPU count gets below: activations, teacher outputs, gathered layers, the overhead."""
    unlimited = 10**12
    return estimate(options_for(teacher)[-1], teacher, student, work, unlimited, gpus_per_node).total
