"""The loss mask of shard format v3 (loss_mask / attention_mask columns) from the shard's rows to every
loss part: `workers.data.to_batch`'s labels and token mask, token by token; masked tokens change no
loss part and no gradient (float64, synthetic model outputs); the Ray Data readers carry the columns."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from workers.curriculum import COMPONENTS
from workers.data import TrainBatches, eval_batches, from_columns, to_batch, token_mask, trained_tokens
from workers.distill_loss import DistillationLoss
from workers.loss_config import CurriculumConfig, LossConfig

PAD = 0
# Row 0: a prompt (10, 11, 12), a completion (13, 14, 15 = its eos), two pads. The loss mask's 1 on
# the first pad must not make it a label: padding is never trained.
# Row 1: unpadded, two trained spans (as two assistant turns): 21-22 and 25-27.
IDS = np.array([[10, 11, 12, 13, 14, 15, PAD, PAD], [20, 21, 22, 23, 24, 25, 26, 27]], dtype=np.int32)
ATTENTION = np.array([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], dtype=np.int8)
LOSS = np.array([[0, 0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 1, 1, 1]], dtype=np.int8)
X = -100
LABELS = [[X, X, X, 13, 14, 15, X, X], [X, 21, 22, X, X, 25, 26, 27]]
# Position t counts iff its target t + 1 is trained; the last position predicts nothing here.
TOKEN_MASK = [[0, 0, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 1, 1, 1, 0]]


def _object_rows(rows: np.ndarray) -> np.ndarray:
    """(B, T) -> an object array of B (T,) arrays, as Ray Data's numpy batches give list columns."""
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        out[i] = row
    return out


# ------------------------------------------------------------------ to_batch, token by token


@pytest.mark.parametrize("layout", [np.asarray, _object_rows], ids=["2d", "object_rows"])
def test_labels_and_token_mask_of_a_padded_row_with_a_masked_prompt(layout):
    batch = to_batch(layout(IDS), loss_mask=layout(LOSS), attention_mask=layout(ATTENTION))

    assert batch["input_ids"].tolist() == IDS.tolist()
    assert batch["attention_mask"].tolist() == ATTENTION.tolist()  # what the model sees: padding only
    assert batch["labels"].tolist() == LABELS
    assert batch["token_mask"].tolist() == TOKEN_MASK
    assert trained_tokens(batch) == 3 + 5
    assert all(t.dtype == torch.long for t in batch.values())


def test_with_a_loss_mask_every_part_counts_the_same_tokens_as_ce():
    batch = to_batch(IDS, loss_mask=LOSS, attention_mask=ATTENTION)
    counts = _loss().token_counts(batch["labels"], token_mask(batch))
    assert counts == {"ce": 8, "kd": 8, "feature": 8, "attention": 8}


def test_without_a_loss_mask_padding_is_masked_as_today():
    batch = to_batch(IDS, attention_mask=ATTENTION)

    assert batch["labels"].tolist() == [[10, 11, 12, 13, 14, 15, X, X], IDS[1].tolist()]
    assert batch["token_mask"].tolist() == ATTENTION.tolist()


def test_without_mask_columns_every_token_is_attended_counted_and_its_own_label():
    batch = to_batch(IDS)

    assert batch["labels"].tolist() == IDS.tolist()
    assert bool((batch["attention_mask"] == 1).all()) and bool((batch["token_mask"] == 1).all())
    assert trained_tokens(batch) == IDS.size


def test_a_batch_built_without_a_token_mask_counts_its_attention_mask():
    mask = torch.tensor(ATTENTION, dtype=torch.long)
    assert token_mask({"input_ids": torch.tensor(IDS), "attention_mask": mask}) is mask


def test_a_mask_column_of_another_length_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"loss_mask rows are \(2, 7\), input_ids rows \(2, 8\)"):
        to_batch(IDS, loss_mask=LOSS[:, :7])


# ------------------------------------------------------------------ masked tokens change nothing

B, T, V = IDS.shape[0], IDS.shape[1], 32
S_WIDTH, T_WIDTH, S_LAYERS, T_LAYERS, S_HEADS, T_HEADS = 6, 10, 2, 3, 2, 3


def _loss(feature_norm: str = "layernorm") -> DistillationLoss:
    torch.manual_seed(0)
    return DistillationLoss(
        LossConfig(
            alpha_ce=0.3,
            alpha_kd=0.7,
            alpha_feature=1.0,
            alpha_attention=1.0,
            kd_temperature=2.0,
            feature_norm=feature_norm,
        ),
        CurriculumConfig(enabled=False, phase1_end=0.0, phase2_end=0.0),
        student_hidden_size=S_WIDTH,
        teacher_hidden_size=T_WIDTH,
        student_num_layers=S_LAYERS,
        teacher_num_layers=T_LAYERS,
    ).double()


def _attention_maps(heads: int, generator: torch.Generator) -> torch.Tensor:
    """(B, heads, T, T) causal attention probabilities, float64."""
    scores = torch.randn(B, heads, T, T, generator=generator, dtype=torch.float64)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def _outputs(seed: int, layers: int, width: int, heads: int) -> SimpleNamespace:
    """A CausalLMOutput-like of float64 tensors: logits (B, T, V), layers+1 hidden states (B, T, width),
    `layers` attention maps (B, heads, T, T)."""
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(
        logits=torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3,
        hidden_states=tuple(
            torch.randn(B, T, width, generator=g, dtype=torch.float64) for _ in range(layers + 1)
        ),
        attentions=tuple(_attention_maps(heads, g) for _ in range(layers)),
    )


def _perturbed(out: SimpleNamespace, where: torch.Tensor, seed: int) -> SimpleNamespace:
    """`out` with logits, every hidden state and every attention query row replaced at the (B, T)
    positions `where` by other values (attention rows by other causal distributions)."""
    other = _outputs(seed, len(out.attentions), out.hidden_states[0].shape[-1], out.attentions[0].shape[1])
    pick = where.bool()[..., None]  # (B, T, 1)
    row = where.bool()[:, None, :, None]  # (B, 1, T, 1): query rows of every head
    return SimpleNamespace(
        logits=torch.where(pick, other.logits * 10, out.logits),
        hidden_states=tuple(
            torch.where(pick, o * 10, h) for o, h in zip(other.hidden_states, out.hidden_states)
        ),
        attentions=tuple(torch.where(row, o, a) for o, a in zip(other.attentions, out.attentions)),
    )


def _leaves(out: SimpleNamespace) -> SimpleNamespace:
    """Detached copies that require grad: the student's inputs to the loss."""
    return SimpleNamespace(
        logits=out.logits.detach().requires_grad_(),
        hidden_states=tuple(h.detach().requires_grad_() for h in out.hidden_states),
        attentions=tuple(a.detach().requires_grad_() for a in out.attentions),
    )


def _loss_and_grads(module: DistillationLoss, student, teacher, batch):
    """Total, raw parts, and d total / d (student logits, hidden states, attentions, projector weights)."""
    student = _leaves(student)
    breakdown = module(
        student, teacher, batch["labels"], batch["attention_mask"], 1.0, token_mask=batch["token_mask"]
    )
    inputs = [student.logits, *student.hidden_states, *student.attentions]
    params = list(module.parameters())
    grads = torch.autograd.grad(breakdown.total, inputs + params, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs + params, grads)]
    return breakdown, grads[: len(inputs)], grads[len(inputs) :]


def _at(grad: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """A student input's gradient at the (B, T) positions `keep` (attention maps: their query rows)."""
    return grad.transpose(1, 2)[keep] if grad.dim() == 4 else grad[keep]


@pytest.mark.parametrize("feature_norm", ["none", "layernorm", "std", "cosine"])
def test_masked_positions_change_no_loss_part_and_no_gradient(feature_norm):
    module = _loss(feature_norm)
    batch = to_batch(IDS, loss_mask=LOSS, attention_mask=ATTENTION)
    keep = batch["token_mask"].bool()  # (B, T)
    student = _outputs(1, S_LAYERS, S_WIDTH, S_HEADS)
    teacher = _outputs(2, T_LAYERS, T_WIDTH, T_HEADS)

    reference, ref_inputs, ref_params = _loss_and_grads(module, student, teacher, batch)
    assert set(reference.raw) == set(COMPONENTS)
    assert all(float(reference.raw[c].detach()) > 0 for c in COMPONENTS)

    masked = ~keep
    garbled, inputs, params = _loss_and_grads(
        module, _perturbed(student, masked, 3), _perturbed(teacher, masked, 4), batch
    )
    torch.testing.assert_close(garbled.total, reference.total, rtol=1e-13, atol=0)
    for c in COMPONENTS:
        torch.testing.assert_close(garbled.raw[c], reference.raw[c], rtol=1e-13, atol=0)
    for got, want in zip(inputs, ref_inputs):
        torch.testing.assert_close(_at(got, keep), _at(want, keep), rtol=1e-12, atol=1e-15)
        assert bool((_at(got, masked) == 0).all())  # nothing flows into a masked position
    for got, want in zip(params, ref_params):  # the projectors
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)

    # The same perturbation at the kept positions does change every part: the check above can fail.
    moved, _, _ = _loss_and_grads(module, _perturbed(student, keep, 3), _perturbed(teacher, keep, 4), batch)
    for c in COMPONENTS:
        assert not torch.allclose(moved.raw[c], reference.raw[c], rtol=1e-6), c


def test_an_all_masked_batch_gives_zero_parts_and_finite_zero_gradients():
    module = _loss()
    batch = to_batch(IDS, loss_mask=np.zeros_like(LOSS), attention_mask=ATTENTION)
    assert int(batch["token_mask"].sum()) == 0 and trained_tokens(batch) == 0
    breakdown, inputs, params = _loss_and_grads(
        module, _outputs(1, S_LAYERS, S_WIDTH, S_HEADS), _outputs(2, T_LAYERS, T_WIDTH, T_HEADS), batch
    )
    assert breakdown.nonfinite() == [] and float(breakdown.total.detach()) == 0.0
    assert all(float(breakdown.raw[c].detach()) == 0.0 for c in COMPONENTS)
    assert all(bool((g == 0).all()) for g in inputs + params)


# ------------------------------------------------------------------ the Ray Data readers


@pytest.fixture(scope="module")
def masked_rows(ray_cluster, tmp_path_factory):
    """40 copies of the two hand-built rows as a v3 shard: list<int32> input_ids, list<int8> masks."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data

    rows = [i % 2 for i in range(40)]
    table = pa.table(
        {
            "input_ids": pa.array([IDS[r].tolist() for r in rows], pa.list_(pa.int32())),
            "loss_mask": pa.array([LOSS[r].tolist() for r in rows], pa.list_(pa.int8())),
            "attention_mask": pa.array([ATTENTION[r].tolist() for r in rows], pa.list_(pa.int8())),
        }
    )
    path = tmp_path_factory.mktemp("v3") / "part-0.parquet"
    pq.write_table(table, path)
    return ray.data.read_parquet(str(path))


def _by_first_token(batch) -> dict[int, tuple[list[int], list[int], list[int]]]:
    return {
        int(ids[0]): (ids.tolist(), labels.tolist(), mask.tolist())
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["token_mask"])
    }


EXPECTED_ROWS = {int(IDS[i][0]): (IDS[i].tolist(), LABELS[i], TOKEN_MASK[i]) for i in range(2)}


def test_training_batches_carry_the_mask_columns(masked_rows):
    batches = TrainBatches(masked_rows, micro_batch_size=4, seed=0)
    window = batches.window(3)
    del batches  # closes the half-read epoch while Ray is still up
    gc.collect()
    for batch in window:
        assert _by_first_token(batch) == EXPECTED_ROWS
        assert batch["attention_mask"].shape == (4, T)


def test_eval_batches_carry_the_mask_columns(masked_rows):
    batches = eval_batches(masked_rows, micro_batch_size=4, max_batches=2, shard_sequences=40)
    assert len(batches) == 2
    for batch in batches:
        assert _by_first_token(batch) == EXPECTED_ROWS
        assert batch["attention_mask"].tolist() == [
            ATTENTION[int(r[0] != IDS[0][0])].tolist() for r in batch["input_ids"]
        ]


def test_from_columns_reads_whichever_mask_columns_exist():
    only_attention = from_columns({"input_ids": IDS, "attention_mask": ATTENTION})
    assert only_attention["token_mask"].tolist() == ATTENTION.tolist()
    both = from_columns({"input_ids": IDS, "attention_mask": ATTENTION, "loss_mask": LOSS})
    assert both["labels"].tolist() == LABELS
