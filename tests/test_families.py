"""The family matrix: for each family in tests/families.py, a tiny teacher saved and loaded as a user's
model is (through workers.models), two students (derived from it, and one of the same family at a
smaller width saved as a user's own), a few real `train_step`s on a single-process DeepSpeed engine
with all four loss parts on, then the project's export reloaded with plain transformers.

Plus a cross-family pair that shares one tokenizer (a Llama teacher, a Mistral student built on the
Llama tokenizer), and a Qwen2 pair whose teacher pads its embedding 64 rows past the shared tokenizer.
The Ray + DeepSpeed CLI runs of two families are in tests/test_families_e2e.py.
"""

from __future__ import annotations

import inspect
import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_configs import engine_config
from families import FAMILIES, POSITIONS, WIDTH, save_family
from tiny_llama import CE_ONLY

from workers.curriculum import COMPONENTS
from workers.data import to_batch
from workers.engine import build_engine
from workers.export import export_student
from workers.models import (
    build_model,
    check_vocabularies,
    derive_student,
    distillation_loss_for,
    load_tokenizer,
)
from workers.step import eval_pass, train_step
from workers.student_module import StudentWithLoss
from workers.tokenizer_identity import tokenizer_identity

SEQ, MICRO_BATCH, WINDOWS, STEPS = 32, 2, 4, 8
STUDENT_LAYERS, STUDENT_WIDTH = 2, WIDTH // 2
# Every part on from step 0 (curriculum disabled), so each family's hidden states and attention maps
# are exercised as well as its logits.
RUN = {
    "loss": {**CE_ONLY, "alpha_ce": 0.3, "alpha_kd": 0.7, "alpha_feature": 1.0, "alpha_attention": 1.0},
    "curriculum": {"enabled": False, "phase1_end": 0.0, "phase2_end": 0.0},
}
SAMPLE = "def wrap(text, width=70):\n    return TextWrapper(width=width).wrap(text)  # ünïcode\n"
MAX_NEW_TOKENS = 20


@dataclass(frozen=True)
class Case:
    teacher: str  # the teacher's family
    student: str  # "derived", or the family of a student saved with the teacher's tokenizer
    teacher_pad: int = 0  # embedding rows past the tokenizer's ids (the student has none)

    @property
    def id(self) -> str:
        if self.teacher_pad:
            return f"{self.teacher}-padded_{self.teacher_pad}-vs-{self.student}"
        if self.student == "derived":
            return f"{self.teacher}-derived"
        if self.student == self.teacher:
            return f"{self.teacher}-preset_shaped"
        return f"{self.teacher}+{self.student}-shared_tokenizer"


CASES = [Case(name, kind) for name in FAMILIES for kind in ("derived", name)]
# A pair across families that share one tokenizer: a user's Mistral student trained on the Llama
# tokenizer, distilled from a Llama teacher.
CASES.append(Case("llama", "mistral"))
# The padded-vocabulary pair: one tokenizer, the teacher's embedding padded 64 rows past it (as
# Qwen2.5-7B's 152064 rows against 0.5B's 151936), so KD reads the shared ids only.
CASES.append(Case("qwen2", "qwen2", teacher_pad=64))


@dataclass
class TrainedRun:
    tokenizer: object  # the run's tokenizer (workers.models.load_tokenizer of the teacher dir)
    records: list[dict[str, float]]  # train_step metrics, one per step
    eval_before: dict[str, float]  # eval_pass on the fixed batch, before and after training
    eval_after: dict[str, float]
    student_dir: Path  # the project's export
    student_logits: torch.Tensor  # (1, T, V) of the trained student on SAMPLE, before export


def text_batches(tokenizer) -> list[dict[str, torch.Tensor]]:
    """WINDOWS micro-batches of MICRO_BATCH rows of SEQ tokens: a stdlib module's source (not in the
    tokenizers' training text) tokenised by the family's tokenizer, packed as prepared data is."""
    ids = tokenizer(inspect.getsource(textwrap))["input_ids"]
    needed = WINDOWS * MICRO_BATCH * SEQ
    assert len(ids) >= needed, len(ids)
    rows = np.asarray(ids[:needed]).reshape(WINDOWS, MICRO_BATCH, SEQ)  # (W, B, T)
    return [to_batch(window) for window in rows]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """(family, kind) -> saved dir, each built once per module: kind "teacher" (4 layers at WIDTH) or
    "student" (STUDENT_LAYERS at STUDENT_WIDTH, another seed), optionally on another family's tokenizer."""
    root = tmp_path_factory.mktemp("families")
    saved: dict[tuple[str, str, str], Path] = {}

    def get(family: str, kind: str, tokenizer_of: str | None = None, vocab_pad: int = 0) -> Path:
        key = (family, kind, tokenizer_of or family, vocab_pad)
        if key not in saved:
            shape = {} if kind == "teacher" else {"layers": STUDENT_LAYERS, "width": STUDENT_WIDTH, "seed": 1}
            subdir = f"{family}-{kind}-{tokenizer_of or family}-pad{vocab_pad}"
            saved[key] = save_family(
                family, root, tokenizer_of=tokenizer_of, subdir=subdir, vocab_pad=vocab_pad, **shape
            )
        return saved[key]

    return get


def load_pair(case: Case, model_dirs):
    """(tokenizer, teacher, student) as a worker builds them (workers/worker_setup.py build_models)."""
    teacher_dir = model_dirs(case.teacher, "teacher", vocab_pad=case.teacher_pad)
    tokenizer = load_tokenizer(str(teacher_dir))
    teacher = build_model(str(teacher_dir), tokenizer, POSITIONS, 0, torch.float32)
    teacher.eval().requires_grad_(False)
    if case.student == "derived":
        student = derive_student(teacher, {"num_layers": STUDENT_LAYERS}, 1)
    else:
        student_dir = model_dirs(case.student, "student", tokenizer_of=case.teacher)
        # The tokenizer the student was saved with is the teacher's (what makes the pair valid).
        assert tokenizer_identity(load_tokenizer(str(student_dir))) == tokenizer_identity(tokenizer)
        student = build_model(str(student_dir), tokenizer, POSITIONS, 1, torch.float32)
    vocab_size = check_vocabularies(
        {"teacher": case.teacher, "student": case.student}, teacher, student, tokenizer
    )
    assert teacher.get_output_embeddings().weight.shape[0] == vocab_size + case.teacher_pad
    return tokenizer, teacher, student, vocab_size


def train_and_export(case: Case, model_dirs, out_dir: Path) -> TrainedRun:
    # As a worker seeds itself before building (projectors, dropout): each case is the same run
    # whichever cases ran before it.
    torch.manual_seed(0)
    tokenizer, teacher, student, vocab_size = load_pair(case, model_dirs)
    loss = distillation_loss_for(RUN, student, teacher, vocab_size)
    config = engine_config(0, micro_batch_size=MICRO_BATCH, lr=1e-2, max_steps=STEPS, warmup_steps=1)
    engine = build_engine(StudentWithLoss(student, loss, "auto"), config, 1)
    batches = text_batches(tokenizer)
    eval_before = eval_pass(engine, teacher, batches[:1], 0.0)
    records = []
    for step in range(STEPS):
        result = train_step(engine, teacher, [batches[step % WINDOWS]], step / STEPS)
        assert not result.skipped, (case.id, step, result.nonfinite)
        records.append(result.metrics)
    eval_after = eval_pass(engine, teacher, batches[:1], 1.0)
    student_dir = out_dir / "student"
    export_student(engine, tokenizer, student_dir, rank=0, zero_stage=0)
    trained = engine.module.student.eval()
    with torch.no_grad():
        logits = trained(**tokenizer(SAMPLE, return_tensors="pt")).logits
    return TrainedRun(tokenizer, records, eval_before, eval_after, student_dir, logits)


@pytest.fixture(scope="module")
def trained(single_process_group, model_dirs, tmp_path_factory):
    """Case id -> TrainedRun, each case trained once for the module's tests."""
    runs: dict[str, TrainedRun] = {}

    def get(case: Case) -> TrainedRun:
        if case.id not in runs:
            runs[case.id] = train_and_export(case, model_dirs, tmp_path_factory.mktemp(case.id))
        return runs[case.id]

    return get


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_every_part_is_finite_at_every_step_and_the_loss_falls(case, trained):
    run = trained(case)
    for step, metrics in enumerate(run.records, start=1):
        for c in COMPONENTS:
            raw, weight = metrics[f"loss/{c}/raw"], metrics[f"loss/{c}/weight"]
            # On and computed: a weight > 0 and a finite, positive raw value (0 would mean skipped).
            assert weight > 0 and math.isfinite(raw) and raw > 0, (step, c, raw, weight)
        assert math.isfinite(metrics["loss/total"])
    before, after = run.eval_before, run.eval_after
    # The same fixed batch at the same weights, before and after STEPS steps.
    assert after["eval/total"] < before["eval/total"], (before["eval/total"], after["eval/total"])
    first, last = run.records[0]["loss/total"], run.records[-1]["loss/total"]
    print(
        f"\n{case.id}: train total {first:.3f} -> {last:.3f}, "
        f"eval total {before['eval/total']:.3f} -> {after['eval/total']:.3f}"
    )


def greedy_with_eos_gaps(model, prompt: torch.Tensor, eos: int, steps: int):
    """Greedy continuation of `prompt` (1, P) for `steps` tokens, no stopping, and at each step how far
    eos's output-layer score (before any logit soft-capping) is below the best one."""
    raw: list[torch.Tensor] = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, out: raw.append(out[0, -1]))
    ids, tokens, gaps = prompt, [], []
    try:
        with torch.no_grad():
            for _ in range(steps):
                token = int(model(input_ids=ids).logits[0, -1].argmax())
                scores = raw.pop()  # (V,)
                tokens.append(token)
                gaps.append(float(scores.max() - scores[eos]))
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    finally:
        hook.remove()
    return tokens, gaps


def make_eos_win_at_one_step(model, prompt: torch.Tensor, eos: int) -> list[int]:
    """Give the output layer a bias on eos just large enough that greedy decoding emits eos at step k
    (the step where eos is closest to winning) and nowhere before it: the continuation is then exactly
    the unbiased one's first k tokens, then eos. Returns those expected new tokens."""
    tokens, gaps = greedy_with_eos_gaps(model, prompt, eos, MAX_NEW_TOKENS - 5)
    k = int(np.argmin(gaps))  # the first minimum: every earlier gap is strictly larger
    margin = (min(gaps[:k]) - gaps[k]) / 2 if k > 0 else 1.0
    assert margin > 1e-4, (gaps, k)  # room for float noise between a cached and a full forward
    head = model.get_output_embeddings()
    bias = torch.zeros(head.out_features)
    bias[eos] = gaps[k] + margin
    head.bias = torch.nn.Parameter(bias)  # a Linear built without bias takes one (its weight may be tied)
    return tokens[:k] + [eos]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_export_loads_with_the_runs_tokenizer_and_generate_stops_at_its_eos(case, trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = trained(case)
    model = AutoModelForCausalLM.from_pretrained(run.student_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run.student_dir)
    original = run.tokenizer

    # The run's tokenizer, whole: same ids for a text, same identity (specials, chat template...).
    assert tokenizer(SAMPLE)["input_ids"] == original(SAMPLE)["input_ids"]
    assert tokenizer_identity(tokenizer) == tokenizer_identity(original)
    if original.chat_template is not None:
        chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": SAMPLE}]
        assert tokenizer.apply_chat_template(chat, tokenize=False) == original.apply_chat_template(
            chat, tokenize=False
        )

    # config.json and generation_config.json carry the tokenizer's special ids.
    files = [json.loads((run.student_dir / f).read_text()) for f in ("config.json", "generation_config.json")]
    names = ["eos_token_id", "pad_token_id"] + (
        ["bos_token_id"] if tokenizer.bos_token_id is not None else []
    )
    for saved in files:
        for name in names:
            assert saved.get(name) == getattr(tokenizer, name) == getattr(original, name), name
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None

    # The trained weights were exported, not the initial ones.
    inputs = tokenizer(SAMPLE, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, run.student_logits, rtol=1e-4, atol=1e-4)

    # generate, with nothing but the exported generation config, stops at the tokenizer's eos.
    prompt = tokenizer("def wrap(text", return_tensors="pt")["input_ids"]  # (1, P)
    expected = make_eos_win_at_one_step(model, prompt, tokenizer.eos_token_id)
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
    )
    new = out[0, prompt.shape[1] :].tolist()
    assert new == expected and len(new) < MAX_NEW_TOKENS, (new, expected)
