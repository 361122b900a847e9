"""Padded vocabularies train; different tokenizers are refused before Ray starts.

Inside a family teacher and student share a tokenizer but pad their embeddings to different widths
(Qwen2.5-7B 152064 rows, 0.5B 151936, tokenizer 151665). The loss reads only the tokenizer's columns
(workers/distill_loss.py), the workers require a row per token (workers/models.py), and the driver
compares the two models' tokenizers (orchestrator/train/shared_tokenizer.py).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from families import save_family
from test_bad_input import TINY, no_ray_start, refused  # noqa: F401 (no_ray_start: an autouse fixture)

from orchestrator.config import load_config
from orchestrator.errors import UserError
from orchestrator.train.data_models import TOKENIZER_FILES
from orchestrator.train.preflight import preflight
from orchestrator.train.shared_tokenizer import check_vocabularies
from workers.distill_loss import DistillationLoss
from workers.loss_config import CurriculumConfig, LossConfig
from workers.losses import ce_loss, kd_loss
from workers.models import ModelSetupError, load_tokenizer
from workers.runtime import WorkerRuntime
from workers.student_module import LossMode, StudentWithLoss, model_outputs
from workers.worker_setup import build_models

V, S_PAD, T_PAD = 37, 5, 19  # tokenizer length; the student's and the teacher's padding past it
B, T = 2, 6


def logit_loss(kind: str, vocab_size: int | None, alpha_ce=0.4) -> DistillationLoss:
    """ce + kd only, every part on from step 0 (no hidden states or attention maps read)."""
    config = LossConfig(
        alpha_ce=alpha_ce,
        alpha_kd=0.6,
        alpha_feature=0.0,
        alpha_attention=0.0,
        kd_temperature=2.0,
        kd_kind=kind,
        jsd_beta=0.3,
    )
    return DistillationLoss(
        config,
        CurriculumConfig(enabled=False, phase1_end=0.0, phase2_end=0.0),
        student_hidden_size=8,
        teacher_hidden_size=8,
        student_num_layers=1,
        teacher_num_layers=1,
        vocab_size=vocab_size,
    )


def batch():
    """float64 logits over the tokenizer's V ids, the same logits with padded columns of large random
    values (different widths for student and teacher), labels and a mask with right padding."""
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(B, T, V, generator=gen, dtype=torch.float64)
    teacher = torch.randn(B, T, V, generator=gen, dtype=torch.float64)
    # Large enough to dominate any softmax they were allowed into.
    s_pad = torch.randn(B, T, S_PAD, generator=gen, dtype=torch.float64) * 50 + 30
    t_pad = torch.randn(B, T, T_PAD, generator=gen, dtype=torch.float64) * 50 + 30
    labels = torch.randint(0, V, (B, T), generator=gen)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0
    labels = labels.masked_fill(mask == 0, -100)
    return (
        (student, teacher),
        (torch.cat([student, s_pad], -1), torch.cat([teacher, t_pad], -1)),
        labels,
        mask,
    )


def leaves(*tensors):
    return [t.clone().requires_grad_(True) for t in tensors]


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_padded_columns_change_no_value_and_no_gradient(kind):
    (student, teacher), (student_padded, teacher_padded), labels, mask = batch()
    s, t = leaves(student, teacher)
    sp, tp = leaves(student_padded, teacher_padded)
    plain = logit_loss(kind, None)(SimpleNamespace(logits=s), SimpleNamespace(logits=t), labels, mask, 0.5)
    padded = logit_loss(kind, V)(SimpleNamespace(logits=sp), SimpleNamespace(logits=tp), labels, mask, 0.5)
    assert set(plain.raw) == set(padded.raw) == {"ce", "kd"}
    for name in ("ce", "kd"):
        assert torch.equal(padded.raw[name], plain.raw[name]), name
    assert torch.equal(padded.total, plain.total)
    plain.total.backward()
    padded.total.backward()
    for grad, grad_padded in ((s.grad, sp.grad), (t.grad, tp.grad)):
        assert torch.equal(grad_padded[..., :V], grad)
        assert torch.count_nonzero(grad_padded[..., V:]) == 0
    assert torch.count_nonzero(s.grad) > 0 and torch.count_nonzero(t.grad) > 0  # the test can fail


def test_padded_loss_differs_when_the_padding_is_let_in():
    """Guard for the test above: the padded columns are large enough to change every part if read."""
    (student, teacher), (student_padded, teacher_padded), labels, mask = batch()
    same_width = torch.cat([student, student_padded[..., V : V + 2]], -1)
    widened_teacher = torch.cat([teacher, teacher_padded[..., V : V + 2]], -1)
    plain = logit_loss("forward_kl", None)(
        SimpleNamespace(logits=student), SimpleNamespace(logits=teacher), labels, mask, 0.5
    )
    let_in = logit_loss("forward_kl", None)(
        SimpleNamespace(logits=same_width), SimpleNamespace(logits=widened_teacher), labels, mask, 0.5
    )
    for name in ("ce", "kd"):
        assert abs(float(let_in.raw[name] - plain.raw[name])) > 1e-3, name


def test_eval_plain_ce_reads_the_shared_columns_only():
    (student, _), (student_padded, _), labels, _ = batch()
    loss = logit_loss("forward_kl", V, alpha_ce=0.0)  # ce is off: eval computes plain CE on its own
    assert torch.equal(loss.ce(student_padded, labels), ce_loss(student, labels))


def test_without_vocab_size_equal_widths_are_read_whole():
    (student, teacher), _, labels, mask = batch()
    loss = logit_loss("forward_kl", None)
    out = loss(SimpleNamespace(logits=student), SimpleNamespace(logits=teacher), labels, mask, 0.5)
    assert torch.equal(out.raw["ce"], ce_loss(student, labels))
    assert torch.equal(out.raw["kd"], kd_loss(student, teacher, 2.0, mask=mask.bool()))
    # Logits exactly vocab_size wide are passed on as they are: no slice, no copy of their gradient.
    assert logit_loss("forward_kl", V).shared_logits(student) is student
    assert loss.shared_logits(student) is student


def test_widths_that_cannot_hold_the_tokenizer_are_refused():
    (student, teacher), (student_padded, _), labels, mask = batch()
    with pytest.raises(ValueError, match="differ in vocab size"):  # no vocab_size: widths must match
        logit_loss("forward_kl", None)(
            SimpleNamespace(logits=student_padded), SimpleNamespace(logits=teacher), labels, mask, 0.5
        )
    with pytest.raises(
        ValueError, match=f"teacher logits have {V} columns, fewer than the tokenizer's {V + 1}"
    ):
        logit_loss("forward_kl", V + 1)(
            SimpleNamespace(logits=student_padded), SimpleNamespace(logits=teacher), labels, mask, 0.5
        )


# ---------------------------------------------------------------------------------------------
# Real models of one family, through the workers' set-up.


def family_pair(tmp_path, teacher_pad: int, student_pad: int, family: str = "qwen2"):
    teacher = save_family(family, tmp_path / "teacher", vocab_pad=teacher_pad, seed=1)
    student = save_family(family, tmp_path / "student", vocab_pad=student_pad, layers=2, seed=2)
    return teacher, student


def worker_config(teacher, student) -> dict:
    return load_config(TINY, [f"teacher={teacher}", f"student={student}", "data.seq_len=32"]).to_dict()


@pytest.mark.parametrize("teacher_pad, student_pad", [(64, 0), (0, 64)])
def test_a_padded_family_pair_builds_and_trains_on_the_shared_ids(tmp_path, teacher_pad, student_pad):
    teacher_dir, student_dir = family_pair(tmp_path, teacher_pad, student_pad)
    runtime = WorkerRuntime(tokenizer=str(teacher_dir), max_positions=128, student_dir="")
    tokenizer, teacher, student, loss = build_models(worker_config(teacher_dir, student_dir), runtime)
    vocab = len(tokenizer)
    assert loss.vocab_size == vocab
    assert teacher.get_output_embeddings().weight.shape[0] == vocab + teacher_pad
    assert student.get_output_embeddings().weight.shape[0] == vocab + student_pad

    text = ["def main():\n    return json.dumps({'a': 1})\n", "import inspect\nprint(inspect.getsource(f))\n"]
    encoded = tokenizer(text, return_tensors="pt", padding=True)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    progress = 0.9  # phase 3: every part on
    request = loss.required_outputs(progress)
    with torch.no_grad():
        teacher_out = model_outputs(teacher, ids, mask, request)
    module = StudentWithLoss(student, loss)
    result = module(
        input_ids=ids,
        attention_mask=mask,
        labels=labels,
        teacher_out=teacher_out,
        progress=progress,
        mode=LossMode.EVAL,
    )
    breakdown = result.breakdown
    assert set(breakdown.raw) == {"ce", "kd", "feature", "attention"}
    assert breakdown.nonfinite() == [] and torch.isfinite(breakdown.total)
    student_logits = model_outputs(student, ids, mask, request).logits.detach()
    assert torch.allclose(result.plain_ce, ce_loss(student_logits[..., :vocab], labels))
    breakdown.total.backward()
    head = student.get_output_embeddings().weight.grad
    assert torch.count_nonzero(head[:vocab]) > 0
    assert torch.count_nonzero(head[vocab:]) == 0  # padded rows take no part in any gradient


def test_a_model_with_fewer_rows_than_the_tokenizer_is_refused_in_the_worker(tmp_path):
    teacher_dir, student_dir = family_pair(tmp_path, -8, 0)
    runtime = WorkerRuntime(tokenizer=str(student_dir), max_positions=128, student_dir="")
    with pytest.raises(ModelSetupError) as error:
        build_models(worker_config(teacher_dir, student_dir), runtime)
    tokens = len(load_tokenizer(str(student_dir)))
    assert str(error.value) == (
        f"teacher '{teacher_dir}': its output embedding has {tokens - 8} rows but the run's tokenizer has "
        f"{tokens} tokens; every token id needs a row"
    )


# ---------------------------------------------------------------------------------------------
# The driver: before Ray starts.


def test_preflight_accepts_a_padded_family_pair(tmp_path):
    teacher, student = family_pair(tmp_path, 64, 0)
    preflight(load_config(TINY, [f"teacher={teacher}", f"student={student}", "data.seq_len=32"]))
    teacher, student = family_pair(tmp_path / "other-way", 0, 64)
    preflight(load_config(TINY, [f"teacher={teacher}", f"student={student}", "data.seq_len=32"]))


def test_a_cross_tokenizer_pair_is_refused_in_one_line_naming_both(tmp_path, capsys):
    from transformers import AutoTokenizer

    teacher = save_family("qwen2", tmp_path / "teacher", vocab_pad=64)
    student = save_family("llama", tmp_path / "student")
    t_tok, s_tok = AutoTokenizer.from_pretrained(teacher), AutoTokenizer.from_pretrained(student)
    line = refused(capsys, tmp_path / "run", f"teacher={teacher}", f"student={student}", "data.seq_len=32")
    assert line.startswith(
        f"raydistill: error: teacher '{teacher}' ({type(t_tok).__name__} of {len(t_tok)} tokens, vocab_size "
        f"{len(t_tok) + 64}) and student '{student}' ({type(s_tok).__name__} of {len(s_tok)} tokens, "
        f"vocab_size {len(s_tok)}) use different tokenizers (bos None vs '<s>'; eos '<|im_end|>' vs '</s>'"
    )
    assert line.endswith(
        "vocabulary/merges/normaliser; chat template): cross-tokenizer distillation is not supported; "
        "pick a student of the teacher's tokenizer, or student=derived"
    )
    assert not (tmp_path / "run").exists()


def test_a_base_student_of_an_instruct_teacher_trains_with_the_teachers_tokenizer(tmp_path, capsys):
    """Qwen2.5 base and Instruct share every id but not eos or the chat template: the pair distils (ids
    mean the same text), the run uses the teacher's tokenizer, and the student's other eos is said."""
    from transformers import AutoTokenizer

    teacher, student = family_pair(tmp_path, 64, 0)
    base = AutoTokenizer.from_pretrained(student)
    base.chat_template = None
    base.eos_token = "<|endoftext|>"
    base.save_pretrained(student)
    (student / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((student / "config.json").read_text())
    (student / "config.json").write_text(json.dumps({**config, "eos_token_id": base.eos_token_id}))

    preflight(load_config(TINY, [f"teacher={teacher}", f"student={student}", "data.seq_len=32"]))
    note = capsys.readouterr().out
    assert (
        f"student='{student}': config.json eos_token_id={base.eos_token_id}, but the data's tokenizer" in note
    )
    assert "the student learns and is exported with the data's" in note


def without_tokenizer(model_dir):
    for name in (*TOKENIZER_FILES, "special_tokens_map.json", "chat_template.jinja"):
        (model_dir / name).unlink(missing_ok=True)
    return model_dir


def test_without_tokenizer_files_only_equal_vocab_sizes_pass(tmp_path):
    from transformers import AutoTokenizer

    teacher, student = family_pair(tmp_path, 64, 0)
    without_tokenizer(student)
    with pytest.raises(UserError) as error:
        check_vocabularies(load_config(TINY, [f"teacher={teacher}", f"student={student}"]))
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    tokens = len(tokenizer)
    assert str(error.value) == (
        f"teacher '{teacher}' ({type(tokenizer).__name__} of {tokens} tokens, vocab_size {tokens + 64}) and "
        f"student '{student}' (no tokenizer files, vocab_size {tokens}) differ in vocab_size and their "
        "tokenizers cannot be compared: save each model's tokenizer beside its config.json "
        "(tokenizer.save_pretrained(model_dir)) so raydistill can check they share one"
    )
    same = save_family("qwen2", tmp_path / "same", vocab_pad=64)
    check_vocabularies(load_config(TINY, [f"teacher={teacher}", f"student={without_tokenizer(same)}"]))
