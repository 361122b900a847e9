"""A worker's error, classified (workers/worker_errors.py) and told on the driver in one line with a log
(orchestrator/train/worker_failure.py). No Ray cluster: Ray's own exception classes wrap the errors as
Ray Train does; the real CLI run is in tests/test_train_e2e.py."""

from __future__ import annotations

import pickle

import pytest
import torch
from ray.train import ControllerError
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
from ray.train.v2.api.exceptions import WorkerGroupError
from tiny_llama import tiny_llama
from transformers import PreTrainedTokenizerFast

from orchestrator.train.worker_failure import (
    LOG_NAME,
    NoRetryOnUserError,
    failure_message,
    worker_failures,
)
from workers.attention import AttentionChoiceError
from workers.models import ModelSetupError
from workers.worker_errors import OOM_HINT, WorkerFailed, classify, worker_failed
from workers.worker_setup import load_model


def raised(exc: BaseException, rank: int = 0) -> WorkerFailed:
    """`exc` raised and caught as the worker loop does (a real traceback)."""
    try:
        raise exc
    except Exception as caught:
        return worker_failed(caught, rank)


@pytest.mark.parametrize(
    "exc, shown",
    [
        (
            ModelSetupError("student '/m' cannot be loaded: bad header"),
            "student '/m' cannot be loaded: bad header",
        ),
        (
            AttentionChoiceError("train.attn_implementation='sdpa': no"),
            "train.attn_implementation='sdpa': no",
        ),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "ran out of memory"),
        (MemoryError(), "ran out of memory (MemoryError)"),
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
            OOM_HINT,
        ),
        (
            RuntimeError(
                "Error(s) in loading state_dict:\n\tsize mismatch for w: copying [4, 8] into [4, 16]"
            ),
            "a checkpoint does not fit the model: size mismatch for w",
        ),
    ],
)
def test_the_users_errors_are_classified_as_such_with_one_line(exc, shown):
    user, line = classify(exc)
    assert user and shown in line and "\n" not in line


@pytest.mark.parametrize(
    "exc, line",
    [
        (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
        (KeyError("loss/kd"), "KeyError: 'loss/kd'"),
        (
            RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x4)"),
            "RuntimeError: mat1 and mat2",
        ),
    ],
)
def test_other_errors_are_bugs_named_by_type(exc, line):
    user, shown = classify(exc)
    assert not user and shown.startswith(line)


def test_worker_failed_pickles_with_its_traceback_and_cause():
    try:
        try:
            raise ValueError("the reason")
        except ValueError as cause:
            raise ModelSetupError("student 'x' cannot be loaded: the reason") from cause
    except ModelSetupError as exc:
        failed = worker_failed(exc, rank=1)
    back = pickle.loads(pickle.dumps(failed))
    assert (back.user, back.rank, str(back)) == (True, 1, "student 'x' cannot be loaded: the reason")
    assert "Traceback" in back.details and "ValueError: the reason" in back.details


def tokenizer() -> PreTrainedTokenizerFast:
    from orchestrator.data.tokenizer_training import train_bpe

    return train_bpe(["def f(x):\n    return x\n"] * 8, vocab_size=300)


def test_a_student_whose_weights_are_cut_short_is_a_model_setup_error_naming_it(tmp_path):
    path = tmp_path / "student"
    tiny_llama(2, 32, 300, seed=0).save_pretrained(path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelSetupError) as info:
        load_model("student", str(path), tokenizer(), 128, 0, torch.float32)
    assert str(info.value).startswith(f"student '{path}' cannot be loaded: ")
    assert "incomplete metadata" in str(info.value)
    assert classify(info.value) == (True, str(info.value))


def test_a_teacher_dir_without_weights_is_named_by_its_own_oserror(tmp_path):
    path = tmp_path / "teacher"
    tiny_llama(2, 32, 300, seed=0).save_pretrained(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelSetupError) as info:
        load_model("teacher", str(path), tokenizer(), 128, 0, torch.float32)
    line = str(info.value)
    assert line.startswith(f"teacher '{path}' cannot be loaded: ") and "cannot load model" not in line


def test_failures_are_found_inside_what_ray_train_raises_each_rank_once():
    user, bug = raised(ModelSetupError("student 'm' cannot be loaded: x"), 1), raised(KeyError("k"), 0)
    group = WorkerGroupError(
        "2 workers failed",
        {0: UserExceptionWithTraceback(bug, "tb0"), 1: UserExceptionWithTraceback(user, "tb1")},
    )
    assert [f.rank for f in worker_failures(group)] == [0, 1]
    assert [f.rank for f in worker_failures(ControllerError(user))] == [1]
    assert worker_failures(RuntimeError("The actor died unexpectedly")) == []


def test_a_user_error_stops_the_run_on_the_controller_and_a_bug_does_not():
    callback = NoRetryOnUserError()
    bug = UserExceptionWithTraceback(raised(KeyError("k")), "tb")
    callback.after_exception(None, {0: bug})  # left to FailureConfig(max_failures)
    user = UserExceptionWithTraceback(raised(AttentionChoiceError("train.attn_implementation: no"), 1), "tb")
    with pytest.raises(ControllerError) as info:
        callback.after_exception(None, {0: bug, 1: user})
    assert isinstance(info.value.controller_failure, WorkerFailed) and info.value.controller_failure.user


def test_the_driver_line_names_the_problem_and_the_log_holding_every_traceback(tmp_path):
    load = raised(ModelSetupError("student '/m' cannot be loaded: bad header"), 0)
    other = raised(KeyError("k"), 1)
    group = WorkerGroupError(
        "x", {0: UserExceptionWithTraceback(load, ""), 1: UserExceptionWithTraceback(other, "")}
    )
    user, line = failure_message(ControllerError(group), tmp_path)
    log = tmp_path / LOG_NAME
    assert user and line == f"student '/m' cannot be loaded: bad header (full log: {log})"
    text = log.read_text()
    assert "=== rank 0 ===" in text and "=== rank 1 ===" in text and text.count("Traceback") == 2

    user, line = failure_message(WorkerGroupError("x", {1: UserExceptionWithTraceback(other, "")}), tmp_path)
    assert not user and line == f"training failed: KeyError: 'k' (full log: {log})"

    try:
        raise RuntimeError(
            "The actor died because its worker process has died.\nWorker exit type: SYSTEM_ERROR"
        )
    except RuntimeError as exc:
        user, line = failure_message(exc, tmp_path)
    assert not user and line == f"training failed: Worker exit type: SYSTEM_ERROR (full log: {log})"
    assert "The actor died" in log.read_text()
