"""`deepspeed.precision: auto` is decided on the worker's hardware: bf16 only where it is native."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orchestrator.config import load_config
from workers import precision
from workers.ds_config import build_deepspeed_config
from workers.worker_setup import with_resolved_precision


def set_cpu_bf16(monkeypatch, amx: bool, avx512_bf16: bool) -> None:
    """Make torch's CPU capability probes answer as another CPU would."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


@pytest.mark.parametrize(
    "amx, avx512_bf16, expected",
    [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16"), (True, True, "bf16")],
)
def test_auto_on_cpu_picks_bf16_only_with_native_units(monkeypatch, amx, avx512_bf16, expected):
    set_cpu_bf16(monkeypatch, amx, avx512_bf16)
    assert precision.resolve_precision("auto", use_gpu=False) == expected


def cpu_flags() -> set[str]:
    """The flags the kernel reports for this machine's CPU (Linux), read independently of torch."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    lines = [line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")]
    return set(lines[0].split(":", 1)[1].split()) if lines else set()


def test_auto_follows_this_machines_cpu_flags():
    """What a user on this machine gets: bf16 exactly when the CPU has AMX or AVX512-BF16 units, and
    torch's probes (what the resolution asks) agree with the kernel's flags."""
    flags = cpu_flags()
    assert torch.cpu._is_avx512_bf16_supported() == ("avx512_bf16" in flags)
    assert torch.cpu._is_amx_tile_supported() == ("amx_tile" in flags)
    native = "amx_tile" in flags or "avx512_bf16" in flags
    assert precision.resolve_precision("auto", use_gpu=False) == ("bf16" if native else "fp32")
    assert precision.resolve_teacher_precision("auto", "fp32", use_gpu=False) == (
        "bf16" if native else "fp32"
    )


@pytest.mark.parametrize("teacher_precision", ["auto", "fp32", "bf16"])
def test_built_models_have_the_resolved_dtypes(tmp_path, teacher_precision):
    """The models a worker builds from the tiny config: the frozen teacher in the dtype its resolved
    precision names (auto: bf16 exactly where this CPU has native bf16), the student always fp32."""
    from orchestrator.data.tokenizer_training import save_trained, train_bpe
    from workers.runtime import WorkerRuntime
    from workers.worker_setup import build_models

    save_trained(train_bpe(["def main():\n    return 0\n"] * 4, vocab_size=300), tmp_path / "tokenizer")
    config = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
        ["deepspeed.precision=fp32", f"deepspeed.teacher_precision={teacher_precision}"],
    ).to_dict()
    resolved = with_resolved_precision(config, rank=1)
    runtime = WorkerRuntime(
        tokenizer=str(tmp_path / "tokenizer"), max_positions=64, student_dir=str(tmp_path)
    )
    _, teacher, student, _ = build_models(resolved, runtime)
    native = bool({"amx_tile", "avx512_bf16"} & cpu_flags())
    expected = {
        "auto": torch.bfloat16 if native else torch.float32,
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
    }
    assert {p.dtype for p in teacher.parameters()} == {expected[teacher_precision]}
    assert {p.dtype for p in student.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in teacher.parameters())


def test_auto_on_a_gpu_worker_without_cuda_is_fp32():
    # use_gpu on a machine with no CUDA (as here): never bf16 by guess.
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert precision.resolve_precision("auto", use_gpu=True) == "fp32"


@pytest.mark.parametrize("requested", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_is_kept(monkeypatch, requested):
    set_cpu_bf16(monkeypatch, False, False)
    assert precision.resolve_precision(requested, use_gpu=False) == requested


def test_explicit_bf16_on_a_cpu_without_it_is_warned_in_one_line(monkeypatch):
    set_cpu_bf16(monkeypatch, False, False)
    note = precision.precision_note("bf16", "bf16", use_gpu=False)
    assert note is not None and "without native bf16" in note and "use fp32 or auto" in note
    assert "\n" not in note
    set_cpu_bf16(monkeypatch, True, False)
    assert precision.precision_note("bf16", "bf16", use_gpu=False) is None
    assert precision.precision_note("fp32", "fp32", use_gpu=False) is None


def test_auto_says_what_it_chose(monkeypatch):
    set_cpu_bf16(monkeypatch, False, False)
    assert precision.precision_note("auto", "fp32", False) == (
        "deepspeed.precision auto -> fp32 (CPU with no native bf16)"
    )


def test_worker_config_and_deepspeed_config_follow_the_resolution(monkeypatch, capsys):
    config = load_config(None, ["deepspeed.precision=auto"]).to_dict()
    for native, section in ((False, None), (True, {"enabled": True})):
        set_cpu_bf16(monkeypatch, native, False)
        resolved = with_resolved_precision(config, rank=0)
        assert resolved["deepspeed"]["precision"] == ("bf16" if native else "fp32")
        assert build_deepspeed_config(resolved, world_size=2).get("bf16") == section
    assert config["deepspeed"]["precision"] == "auto"  # the run's own config is left as written
    assert "deepspeed.precision auto -> bf16" in capsys.readouterr().out
    with_resolved_precision(config, rank=1)
    assert capsys.readouterr().out == ""  # only rank 0 prints


@pytest.mark.parametrize(
    "native, student, expected",
    [(False, "fp32", "fp32"), (True, "fp32", "bf16"), (False, "bf16", "bf16"), (True, "bf16", "bf16")],
)
def test_teacher_auto_is_bf16_where_native_or_where_the_student_trains_in_bf16(
    monkeypatch, native, student, expected
):
    set_cpu_bf16(monkeypatch, native, False)
    assert precision.resolve_teacher_precision("auto", student, use_gpu=False) == expected


@pytest.mark.parametrize("requested", ["fp32", "bf16"])
def test_an_explicit_teacher_precision_is_kept(monkeypatch, requested):
    set_cpu_bf16(monkeypatch, True, False)
    assert precision.resolve_teacher_precision(requested, "fp32", use_gpu=False) == requested


def test_worker_config_resolves_the_teachers_precision_and_says_so_once(monkeypatch, capsys):
    config = load_config(None, ["deepspeed.precision=fp32"]).to_dict()
    assert config["deepspeed"]["teacher_precision"] == "auto"  # the default
    set_cpu_bf16(monkeypatch, True, False)
    resolved = with_resolved_precision(config, rank=0)
    assert resolved["deepspeed"]["teacher_precision"] == "bf16"
    assert resolved["deepspeed"]["precision"] == "fp32"  # the student is untouched
    assert capsys.readouterr().out.strip() == (
        "raydistill: deepspeed.teacher_precision auto -> bf16 (frozen teacher; the student trains in fp32)"
    )
    set_cpu_bf16(monkeypatch, False, False)
    assert with_resolved_precision(config, rank=0)["deepspeed"]["teacher_precision"] == "fp32"
    assert capsys.readouterr().out == ""  # same as the student's: nothing to say
    no_teacher = {**config, "teacher": "none"}
    set_cpu_bf16(monkeypatch, True, False)
    with_resolved_precision(no_teacher, rank=0)
    assert capsys.readouterr().out == ""  # no teacher, no teacher line


def test_an_explicit_bf16_teacher_on_a_cpu_without_native_bf16_is_warned_about(monkeypatch, capsys):
    config = load_config(None, ["deepspeed.precision=fp32", "deepspeed.teacher_precision=bf16"]).to_dict()
    set_cpu_bf16(monkeypatch, False, False)
    resolved = with_resolved_precision(config, rank=0)
    assert resolved["deepspeed"]["teacher_precision"] == "bf16"  # what was asked for, warned about
    assert capsys.readouterr().out.strip() == (
        "raydistill: deepspeed.teacher_precision bf16 on a CPU without native bf16: matmuls are emulated "
        "and can run ~30x slower than fp32; use fp32 or auto"
    )
    set_cpu_bf16(monkeypatch, True, False)
    with_resolved_precision(config, rank=0)
    assert capsys.readouterr().out.strip() == (
        "raydistill: deepspeed.teacher_precision bf16 (frozen teacher; the student trains in fp32)"
    )
