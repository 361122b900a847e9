"""`raydistill plan`: exact parameter counts from configs, DeepSpeed's estimators, verdicts a person can act on.

Model configs are written with `save_pretrained` to a temp dir (config.json only, no weights).
"""

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, LlamaConfig

from orchestrator.cli import main
from orchestrator.errors import UserError
from orchestrator.plan import memory_model as mm
from orchestrator.plan.model_shapes import model_shape

TINY = {
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # GQA
    "vocab_size": 512,
}
# Llama-3.2-1B's and a Llama-2-7B-like shape (configs only; nothing near this size is allocated).
LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}
LLAMA_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan_models")
    dirs = {}
    for name, tied in (("tiny", True), ("tiny-untied", False)):
        kwargs = {
            **TINY,
            "tie_word_embeddings": tied,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        }
        LlamaConfig(**kwargs).save_pretrained(root / name)
        dirs[name] = root / name
    for name, kwargs in (("1b", LLAMA_1B), ("7b", LLAMA_7B)):
        LlamaConfig(**kwargs).save_pretrained(root / name)
        dirs[name] = root / name
    GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=128).save_pretrained(root / "gpt2")
    dirs["gpt2"] = root / "gpt2"
    return dirs


@pytest.fixture(scope="module")
def shapes(model_dirs):
    return {name: model_shape(str(path), max_positions=128) for name, path in model_dirs.items()}


# ---------------------------------------------------------------------------------------------
# Parameter counts


@pytest.mark.parametrize("name", ["tiny", "tiny-untied", "gpt2"])
def test_param_count_matches_a_real_model(model_dirs, shapes, name):
    # A real (tiny) model built from the same config.json, counted the usual way.
    real = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dirs[name]))
    assert shapes[name].params == sum(p.numel() for p in real.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in real.modules())
    assert shapes[name].largest_layer_params == largest


def test_untied_head_counts_the_lm_head_once_more(shapes):
    assert shapes["tiny-untied"].params - shapes["tiny"].params == TINY["vocab_size"] * TINY["hidden_size"]


def test_one_b_shape_is_llama_3_2_1b(shapes):
    shape = shapes["1b"]
    assert shape.params == 1_235_814_400  # Llama-3.2-1B's published count
    assert (shape.num_layers, shape.hidden_size, shape.num_heads) == (16, 2048, 32)
    assert shape.largest_layer_params == LLAMA_1B["vocab_size"] * LLAMA_1B["hidden_size"]  # the embedding


def test_preset_shapes_need_no_files():
    shape = model_shape("preset:tiny-llama", max_positions=128)
    assert shape.num_layers == 4 and shape.hidden_size == 64 and shape.params > 0


# ---------------------------------------------------------------------------------------------
# The arithmetic


def test_zero2_and_zero3_figures_are_deepspeeds_own(shapes):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    params, largest = 1_000_000_000, 100_000_000
    _, zero2 = estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=8, cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(
        params, largest, num_gpus_per_node=8, cpu_offload=False, cpu_offload_params=False
    )
    assert mm.model_states_bytes(params, largest, mm.Option(2), 8, 8)[0] == zero2
    assert mm.model_states_bytes(params, largest, mm.Option(3), 8, 8)[0] == zero3


def test_zero3_model_states_shrink_as_one_over_n(shapes):
    teacher, student = shapes["7b"], shapes["1b"]
    work = mm.Workload(seq_len=1024, micro_batch=1)
    states = {
        n: mm.estimate(mm.Option(3), teacher, student, work, n, 8).model_states for n in (1, 2, 4, 8, 16)
    }
    largest = 4 * max(
        student.largest_layer_params, student.hidden_size * teacher.hidden_size + teacher.hidden_size
    )
    for n in (2, 4, 8, 16):
        # Sharded part scales as 1/N; only the gathered largest layer stays.
        assert (states[1] - largest) / (states[n] - largest) == pytest.approx(n, rel=1e-6)
        assert states[n] < states[n // 2]
    # ...and the stage-0 figure does not shrink at all.
    assert mm.estimate(mm.Option(0), teacher, student, work, 8, 8).model_states == 20 * (
        student.params + mm.projector_params(student, teacher)
    )


def test_sharded_teacher_shrinks_with_gpus_replicated_does_not(shapes):
    teacher = shapes["7b"]
    work = mm.Workload(seq_len=512, micro_batch=1)
    replicated = [mm.teacher_bytes(teacher, work, False, n) for n in (1, 8)]
    sharded = [mm.teacher_bytes(teacher, work, True, n) for n in (1, 8)]
    assert replicated[0] == replicated[1]
    assert sharded[1] < replicated[1] and sharded[1] < sharded[0]


def test_activations_follow_megatron(shapes):
    student = shapes["1b"]
    s, b = 2048, 4
    work = mm.Workload(seq_len=s, micro_batch=b)
    h, a, layers, vocab = 2048, 32, 16, LLAMA_1B["vocab_size"]
    expected = layers * s * b * h * (34 + 5 * a * s / h) + 10 * b * s * vocab
    assert mm.student_activation_bytes(student, work) == pytest.approx(expected)


def test_recommend_prefers_no_offload_and_the_lowest_stage():
    def fake(option, total):
        return mm.Estimate(option, total, 0, 0, 0, 0)

    estimates = [fake(opt, 100 - 10 * i) for i, opt in enumerate(mm.OPTIONS)]
    assert mm.recommend(estimates, 100).option == mm.Option(0)
    assert mm.recommend(estimates, 75).option == mm.Option(3)  # 70: the 4th, still no offload
    assert mm.recommend(estimates, 5) is None


# ---------------------------------------------------------------------------------------------
# The command


def test_7b_teacher_on_one_16gib_gpu_says_nothing_fits(model_dirs, capsys):
    argv = ["plan", "--teacher", str(model_dirs["7b"]), "--student", str(model_dirs["1b"])]
    code = main(argv + ["--gpus", "1", "--gpu-mem", "16"])
    out = capsys.readouterr().out
    assert code == 1
    assert "nothing fits on 1 x 16 GiB GPUs: smallest need is" in out
    assert "recommended" not in out


def test_1b_student_on_8x80_gets_a_stage_that_fits(model_dirs, shapes, capsys):
    argv = ["plan", "--teacher", str(model_dirs["7b"]), "--student", str(model_dirs["1b"])]
    code = main(argv + ["--gpus", "8", "--gpu-mem", "80", "--seq-len", "1024", "--micro-batch", "2"])
    out = capsys.readouterr().out
    assert code == 0
    recommended = [line for line in out.splitlines() if line.startswith("recommended: ZeRO-")]
    assert len(recommended) == 1 and "1 node of 8 GPUs" in recommended[0]
    work = mm.Workload(seq_len=1024, micro_batch=2)
    best = mm.recommend(mm.estimate_all(shapes["7b"], shapes["1b"], work, 8, 8), 80 * mm.GIB)
    assert best is not None and best.total <= 80 * mm.GIB
    assert f"ZeRO-{best.option.stage}" in recommended[0]
    assert f"--set deepspeed.zero_stage={best.option.stage}" in out
    # The table has one row per option, and the chosen one is marked.
    assert sum(line.startswith("ZeRO-") for line in out.splitlines()) == len(mm.OPTIONS)
    assert out.count(" <-") == 1


def test_node_count_follows_gpus_per_node(model_dirs, capsys):
    argv = ["plan", "--teacher", str(model_dirs["1b"]), "--student", str(model_dirs["tiny"])]
    assert main(argv + ["--gpus", "16", "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    assert "16 GPUs = 4 nodes of 4 GPUs" in out
    assert "warning: the vocabularies differ" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gpus", "0"], "--gpus=0: must be >= 1"),
        (["--gpus", "2", "--gpu-mem", "0"], "--gpu-mem=0: must be > 0"),
        (["--gpus", "2", "--micro-batch", "0"], "--micro-batch=0: must be >= 1"),
    ],
)
def test_bad_numbers_are_one_line_errors(model_dirs, capsys, extra, message):
    argv = ["plan", "--teacher", str(model_dirs["tiny"]), "--student", str(model_dirs["tiny"])]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_missing_path_is_a_one_line_error(tmp_path, model_dirs, capsys):
    missing = tmp_path / "no-such-model"
    code = main(["plan", "--teacher", str(missing), "--student", str(model_dirs["tiny"]), "--gpus", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"raydistill: error: no such model directory: {missing}\n"


def test_directory_without_config_is_a_one_line_error(tmp_path, model_dirs, capsys):
    code = main(["plan", "--teacher", str(tmp_path), "--student", str(model_dirs["tiny"]), "--gpus", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no config.json" in err


def test_unreachable_hub_id_says_pass_a_local_path(monkeypatch, model_dirs, capsys):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nmore detail")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    code = main(["plan", "--teacher", "org/some-model", "--student", str(model_dirs["tiny"]), "--gpus", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "could not fetch the config of 'org/some-model'" in err and "pass a local directory" in err


def test_derived_student_is_refused(model_dirs):
    assert main(["plan", "--teacher", str(model_dirs["tiny"]), "--student", "derived", "--gpus", "1"]) == 2


def test_config_file_supplies_defaults_and_is_judged(tmp_path, model_dirs, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"teacher: {model_dirs['1b']}\nstudent: {model_dirs['tiny']}\n"
        "deepspeed: {zero_stage: 3, precision: bf16}\nscaling: {num_workers: 4, use_gpu: true}\n"
    )
    assert main(["plan", "--config", str(config), "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 x 80 GiB GPUs (1 node of 4 GPUs)" in out
    assert f"{config} as written (ZeRO-3, no offload, teacher replicated):" in out


def test_missing_required_input_is_a_user_error(model_dirs):
    import argparse

    from orchestrator.commands import plan

    parser = argparse.ArgumentParser()
    plan.add_arguments(parser)
    args = parser.parse_args(["--teacher", str(model_dirs["tiny"]), "--student", str(model_dirs["tiny"])])
    with pytest.raises(UserError, match="plan needs --gpus"):
        plan.run(args)


def test_ce_only_run_has_no_teacher_to_place(model_dirs, capsys):
    assert main(["plan", "--teacher", "none", "--student", str(model_dirs["1b"]), "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "teacher none" in out and "sharded" not in out and "projector" not in out
    rows = [line for line in out.splitlines() if line.startswith("ZeRO-")]
    assert len(rows) == len([o for o in mm.OPTIONS if not o.teacher_sharded])
