"""`train.compile`: the model being trained runs compiled, with the same numbers, parameter names and
export as the plain model (so DeepSpeed checkpoints and `student/` do not change format)."""

from __future__ import annotations

import torch
import transformers
from tiny_llama import ce_module
from tiny_llama import tiny_llama as build_tiny_llama
from torch._dynamo.utils import counters

from workers.student_module import StudentWithLoss, compile_for_training

WIDTH, LAYERS, VOCAB = 32, 2, 128


def tiny_llama() -> transformers.LlamaForCausalLM:
    return build_tiny_llama(LAYERS, WIDTH, VOCAB, seed=0)


def loss_and_grads(module: StudentWithLoss, ids: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    breakdown = module(
        input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone(), teacher_out=None, progress=0.5
    ).breakdown
    breakdown.total.backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return float(breakdown.total.detach()), grads


def test_compiled_model_gives_the_same_loss_and_gradients_under_the_same_names(tmp_path):
    ids = torch.randint(3, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))  # (B, T)
    plain = ce_module(tiny_llama())
    compiled = ce_module(tiny_llama())
    torch._dynamo.reset()
    counters.clear()
    compile_for_training(compiled.student)

    plain_loss, plain_grads = loss_and_grads(plain, ids)
    for _ in range(2):  # the first call compiles; the second runs the cached graph
        compiled_loss, compiled_grads = loss_and_grads(compiled, ids)
        assert abs(compiled_loss - plain_loss) < 1e-5
        assert compiled_grads.keys() == plain_grads.keys() and len(plain_grads) > 0
        for name, grad in plain_grads.items():
            torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6)
    assert counters["stats"]["unique_graphs"] >= 1  # it did run compiled

    # Checkpoints and the export see the plain model's parameter names and weights.
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    compiled.student.save_pretrained(tmp_path / "student")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    for name, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, compiled.student.state_dict()[name])
