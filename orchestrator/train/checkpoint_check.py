"""Refuse, on the driver, a run dir whose checkpoints were saved from a model of another shape.

That happens when the student path now holds another model (same config, other width), or when
checkpoints were copied in from another run. DeepSpeed would only find out inside each worker, with a
long size-mismatch traceback, after the cluster has started. Each checkpoint's raydistill_state.json
records the trained module's parameter shapes (workers/checkpointing.py); here the same module is
built on PyTorch's meta device (configs only: no weights are read or allocated) and compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from orchestrator.train.ray_checkpoints import SNAPSHOT_FILE, registered_checkpoints
from workers.checkpointing import STATE_FILE, parameter_shapes


def _meta_model(spec: str, tokenizer, max_positions: int):
    """The causal LM `spec` names, built on the meta device the way workers/models.py builds it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from workers.models import special_token_ids
    from workers.presets import build_preset_config, preset_name

    name = preset_name(spec)
    if name is not None:
        model_config = build_preset_config(name, len(tokenizer), max_positions, special_token_ids(tokenizer))
    else:
        model_config = AutoConfig.from_pretrained(spec)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config)


def expected_shapes(loop_config: dict[str, Any]) -> dict[str, list[int]]:
    """Parameter name -> shape of the module the workers hand to DeepSpeed (student + projectors)."""
    import torch

    from workers.models import (
        DERIVED,
        NO_TEACHER,
        check_vocabularies,
        derive_student,
        distillation_loss_for,
        load_tokenizer,
    )
    from workers.student_module import StudentWithLoss

    config, runtime = loop_config["config"], loop_config["runtime"]
    tokenizer = load_tokenizer(runtime.tokenizer)
    max_positions = runtime.max_positions
    teacher = None
    if config["teacher"] != NO_TEACHER:
        teacher = _meta_model(config["teacher"], tokenizer, max_positions)
    with torch.device("meta"):
        if config["student"] == DERIVED:
            student = derive_student(teacher, config["derive"], int(config["train"]["seed"]) + 1)
        else:
            student = _meta_model(config["student"], tokenizer, max_positions)
        # As workers/worker_setup.py builds it (the vocab width shapes no parameter, but keep them one).
        loss = distillation_loss_for(
            config, student, teacher, check_vocabularies(config, teacher, student, tokenizer)
        )
        module = StudentWithLoss(student, loss, config["train"]["attn_implementation"])
    return parameter_shapes(module)


def first_mismatch(recorded: dict[str, list[int]], expected: dict[str, list[int]]) -> str | None:
    """The first parameter (in the checkpoint's order) whose name or shape differs, described."""
    for name, shape in recorded.items():
        if name not in expected:
            return f"parameter {name} {shape} is not in the model"
        if list(shape) != list(expected[name]):
            return (
                f"parameter {name} has shape {list(shape)} in the checkpoint, {expected[name]} in the model"
            )
    for name, shape in expected.items():
        if name not in recorded:
            return f"the model's parameter {name} {shape} is not in the checkpoint"
    return None


def recorded_checkpoints(run_dir: Path) -> list[tuple[Path, dict[str, list[int]]]]:
    """(checkpoint dir, recorded shapes) of every checkpoint Ray may resume from that records them
    (those written before shapes were recorded are left to DeepSpeed). Dirs Ray never registered,
    cut short by a crash while being written, are not looked at: Ray does not resume from them."""
    found = []
    # Newest first: the one Ray Train resumes from is named when several do not fit.
    for directory in reversed(registered_checkpoints(run_dir)):
        if not directory.is_dir():
            raise UserError(
                f"checkpoint {directory} is listed in {run_dir / SNAPSHOT_FILE} but is gone; "
                "Ray cannot resume this run; use another --run-dir"
            )
        state_file = directory / STATE_FILE
        if not state_file.is_file():
            continue
        try:
            state = json.loads(state_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{state_file}: unreadable ({exc}); the checkpoint is damaged") from None
        shapes = state.get("param_shapes") if isinstance(state, dict) else None
        if isinstance(shapes, dict):
            found.append((directory, shapes))
    return found


def check_checkpoints_fit(run_dir: Path, loop_config: dict[str, Any]) -> None:
    """Raise `UserError` naming the checkpoint and its first mismatching parameter."""
    checkpoints = recorded_checkpoints(run_dir)
    if not checkpoints:
        return
    expected = expected_shapes(loop_config)
    config = loop_config["config"]
    for directory, recorded in checkpoints:
        mismatch = first_mismatch(recorded, expected)
        if mismatch is not None:
            raise UserError(
                f"checkpoint {directory} does not fit the model built from student={config['student']!r} "
                f"(teacher={config['teacher']!r}): {mismatch}; use another --run-dir"
            )
