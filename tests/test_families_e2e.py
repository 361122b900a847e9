"""Two families end to end through `raydistill train` (real local Ray, Ray Train workers, DeepSpeed on
gloo, no mocks): a saved tiny teacher dir as a user would name it, a derived student, data tokenised
with the teacher's tokenizer (data.tokenizer unset), then the exported student/ loaded with plain
transformers. Gemma 2 has no sdpa (attention "auto" must resolve to eager; 2 workers, ZeRO-3); OPT keeps
its layers at model.decoder.layers (1 worker, ZeRO-2). The rest of the matrix: tests/test_families.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from families import save_family

from orchestrator.cli import main
from orchestrator.train.telemetry import read_metrics
from workers.curriculum import COMPONENTS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray

STEPS = 4  # at configs/tiny.yaml's boundaries 0.3 / 0.6: phases 1, 1, 2, 3, so every part is computed
RUNS = {
    "gemma2": ["scaling.num_workers=2", "deepspeed.zero_stage=3"],
    "opt": ["scaling.num_workers=1", "deepspeed.zero_stage=2"],
}
SAMPLE = "def wrap(text, width=70):\n    return text\n"


def train_family(family: str, root: Path, capsys) -> tuple[Path, Path, str]:
    """(teacher dir, run dir, driver console) of one `raydistill train` run of `family`."""
    teacher = save_family(family, root / "teachers")
    run_dir = root / family
    overrides = [
        f"teacher={teacher}",
        "student=derived",
        "derive.num_layers=2",
        "data.source=stdlib",
        "data.max_files=12",
        "data.seq_len=32",
        f"data.cache_dir={root / 'data-cache'}",
        f"train.max_steps={STEPS}",
        "train.micro_batch_size=2",
        "train.log_every=1",
        f"train.eval_every={STEPS}",
        f"train.checkpoint_every={STEPS}",
        "train.warmup_steps=1",
        "train.eval_batches=1",
        *RUNS[family],
    ]
    args = ["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--run-dir", str(run_dir)]
    capsys.readouterr()
    code = main(args + [item for o in overrides for item in ("--set", o)])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return teacher, run_dir, out


@pytest.mark.parametrize("family", list(RUNS))
def test_a_saved_family_teacher_distils_through_the_cli_and_exports(family, ray_cluster, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher, run_dir, console = train_family(family, tmp_path, capsys)
    assert f"tokenising with the teacher's tokenizer ({teacher})" in console

    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert {r["nonfinite_skipped"] for r in records} == {0}
    for r in records:
        parts = [
            f"{prefix}/{c}/{kind}"
            for prefix in ("loss", "eval")
            for c in COMPONENTS
            for kind in ("raw", "scaled")
        ]
        assert all(math.isfinite(r[k]) for k in parts if k in r), r
        assert all(f"loss/{c}/raw" in r for c in COMPONENTS) and ("eval/total" in r) == (r["step"] == STEPS)
    last = records[-1]  # phase 3: every part on and computed (a part not computed logs exactly 0)
    assert last["phase"] == 3 and all(last[f"loss/{c}/weight"] > 0 for c in COMPONENTS), last
    assert all(last[f"loss/{c}/raw"] > 0 for c in ("ce", "kd", "feature")), last
    # The teacher runs in bf16 here (teacher_precision auto on a bf16 CPU): attention rows are
    # renormalised after the upcast (workers/losses.py), so even near-identical maps give a KL >= 0.
    assert last["loss/attention/raw"] > 0, last

    student_dir = run_dir / "student"
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    original = AutoTokenizer.from_pretrained(teacher)
    assert model.config.model_type == json.loads((teacher / "config.json").read_text())["model_type"]
    assert model.config.num_hidden_layers == 2
    assert tokenizer(SAMPLE)["input_ids"] == original(SAMPLE)["input_ids"]
    eos = original.eos_token_id
    assert tokenizer.eos_token_id == model.config.eos_token_id == model.generation_config.eos_token_id == eos
