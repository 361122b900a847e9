"""`raydistill demo`, demo-shaped on tiny settings: a teacher pre-trained for a few steps and cached,
a derived student distilled on 2 Ray Train workers with DeepSpeed ZeRO-2, then summary.json,
report.md (with the health verdict) and a real PNG. Plus the verdict's checks on made-up records."""

from __future__ import annotations

import json
import math

import pytest

from orchestrator.cli import build_parser, main
from orchestrator.commands import demo
from orchestrator.report.health import health_verdict

TINY_DATA = ["data.max_files=40", "data.vocab_size=512", "data.seq_len=64"]
TINY_TRAIN = [
    "train.micro_batch_size=4",
    "train.warmup_steps=2",
    "train.log_every=2",
    "train.eval_batches=2",
]
DISTILL_SETS = [
    *TINY_DATA,
    *TINY_TRAIN,
    "train.max_steps=12",
    "train.eval_every=4",
    "train.checkpoint_every=12",
]
TEACHER_SETS = [
    "student=preset:tiny-llama",
    *TINY_TRAIN,
    "train.max_steps=8",
    "train.eval_every=4",
    "train.checkpoint_every=8",
    "train.compile=false",  # configs/teacher.yaml compiles; tests/test_compile.py covers that path
]
REQUIRED_KEYS = {"teacher_ppl", "student_ppl", "teacher_params", "student_params", "tokens_per_s", "wall_s"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def demo_argv(run_dir, cache_dir) -> list[str]:
    argv = ["demo", "--run-dir", str(run_dir), "--cache-dir", str(cache_dir), "--student", "derived"]
    argv += ["--eval-sequences", "32"]
    for item in DISTILL_SETS:
        argv += ["--set", item]
    for item in TEACHER_SETS:
        argv += ["--teacher-set", item]
    return argv


@pytest.fixture(scope="module")
def demo_run(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    argv = demo_argv(root / "run", root / "cache")
    assert main(argv) == 0
    return root, argv


@pytest.mark.ray
def test_demo_writes_summary_report_and_png(demo_run):
    root, _ = demo_run
    run_dir = root / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert REQUIRED_KEYS <= set(summary)
    for key in ("teacher_ppl", "student_ppl", "tokens_per_s", "wall_s"):
        assert math.isfinite(summary[key]) and summary[key] > 0, (key, summary[key])
    assert summary["teacher_params"] > summary["student_params"] > 0
    assert summary["steps"] == 12

    report = (run_dir / "report.md").read_text()
    assert "## Health verdict" in report
    verdict_lines = [
        line for line in report.splitlines() if line.startswith("- **PASS**") or line.startswith("- **FAIL**")
    ]
    assert len(verdict_lines) == 6
    assert "no non-finite steps" in report and "eval/train ratio" in report

    # The panels themselves are checked on made-up metrics in tests/test_report_plots.py; here, that the
    # run's PNG is that six-panel figure (16 x 8.5 in at 90 dpi) with something drawn in it.
    from PIL import Image

    png = run_dir / "report.png"
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(png) as image:
        assert image.size == (16 * 90, int(8.5 * 90))
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 100
    assert max(count for count, _ in colours) < 0.9 * image.size[0] * image.size[1]

    # The student is a real Hugging Face model next to the report.
    assert (run_dir / "student" / "config.json").is_file()


@pytest.mark.ray
def test_demo_reuses_the_cached_teacher(demo_run):
    root, argv = demo_run
    teachers = list((root / "cache").glob("teacher-*/student/config.json"))
    assert len(teachers) == 1
    args = build_parser().parse_args(argv)
    model_dir, trained_for = demo.ensure_teacher(args, demo.distill_config(args))
    assert trained_for is None  # reused, not trained again
    assert model_dir == teachers[0].parent


def record(step, ratio=None, ppl=None, skipped=0, scaled=None):
    scaled = scaled or {"ce": 1.0, "kd": 1.0}
    r = {
        "step": step,
        "phase": 3,
        "lr": 1e-3,
        "nonfinite_skipped": skipped,
        "loss/total": sum(scaled.values()),
    }
    for c, value in scaled.items():
        r.update({f"loss/{c}/raw": value, f"loss/{c}/weight": 1.0, f"loss/{c}/scaled": value})
    if ppl is not None:
        r.update({"eval/ppl": ppl, "eval_train_ratio": ratio})
    return r


def test_health_verdict_passes_a_healthy_run():
    records = [record(10, 1.1, 50.0), record(20, 1.2, 30.0)]
    verdict = health_verdict(records)
    assert [ok for _, ok, _ in verdict] == [True] * 6
    assert "1.2" in verdict[0][2] and "50" in verdict[5][2] and "30" in verdict[5][2]


def test_health_verdict_names_each_failure_with_its_figure():
    records = [
        record(10, 1.1, 30.0),
        record(20, 2.5, 40.0, skipped=3, scaled={"ce": 0.5, "kd": 1.0, "feature": 4000.0}),
    ]
    verdict = {name: (ok, figure) for name, ok, figure in health_verdict(records)}
    assert verdict["eval/train ratio under 2x"] == (False, "worst 2.5x at step 20, last 2.5x")
    assert verdict["no non-finite steps"] == (False, "3 step(s) skipped")
    ok, figure = verdict["no scaled part more than 10x the others"]
    assert not ok and "feature over kd" in figure and "4e+03" in figure
    ok, figure = verdict["perplexity falling"]
    assert not ok and "30" in figure and "40" in figure


def test_default_run_dir_moves_aside_for_another_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["demo"])
    config = demo.distill_config(args)
    assert demo.choose_run_dir(None, config) == demo.DEFAULT_RUN_DIR
    demo.DEFAULT_RUN_DIR.mkdir(parents=True)
    (demo.DEFAULT_RUN_DIR / "config.yaml").write_text(config.to_yaml())
    assert demo.choose_run_dir(None, config) == demo.DEFAULT_RUN_DIR  # same run: resumed
    other = demo.distill_config(build_parser().parse_args(["demo", "--set", "train.max_steps=700"]))
    moved = demo.choose_run_dir(None, other)
    assert moved.parent == demo.DEFAULT_RUN_DIR.parent and moved.name.startswith("demo-")


def test_bad_override_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(["demo", "--cache-dir", str(tmp_path), "--set", "train.max_steps=0"]) == 2
    assert "train.max_steps" in capsys.readouterr().err
