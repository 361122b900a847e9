"""report.png's panels (orchestrator/report/plots.py) drawn from made-up metrics: each panel shows the
values it is given, the curriculum weights come from the run's schedule, the PNG is the figure."""

from __future__ import annotations

import pytest

from orchestrator.report.plots import build_figure, write_plot

MAX_STEPS = 10
ALPHA = {"ce": 0.3, "kd": 0.7, "feature": 1.5, "attention": 2.0}
RUN_CONFIG = {
    "curriculum": {"enabled": True, "phase1_end": 0.3, "phase2_end": 0.6},
    "loss": {f"alpha_{c}": v for c, v in ALPHA.items()},
    "train": {"max_steps": MAX_STEPS},
}
TITLES = [
    "loss parts, raw (phases shaded)",
    "loss parts, weighted (phases shaded)",
    "curriculum weights",
    "eval/train loss ratio (same weights)",
    "learning rate",
    "in-run eval perplexity (evenly spaced eval sequences)",
]


def phase_of(step: int) -> int:
    progress = (step - 1) / MAX_STEPS  # step s trains at progress (s - 1) / max_steps
    return 1 if progress < 0.3 else 2 if progress < 0.6 else 3


def weights_of(step: int) -> dict[str, float]:
    """The DESIGN.md table at p1 = 0.3, p2 = 0.6, by hand."""
    progress, phase = (step - 1) / MAX_STEPS, phase_of(step)
    ramp = {1: 0.0, 2: (progress - 0.3) / 0.3, 3: 1.0}[phase]
    return {**ALPHA, "feature": ALPHA["feature"] * ramp, "attention": ALPHA["attention"] * (phase == 3)}


def records() -> list[dict]:
    """One record per step; eval at steps 5 and 10; each value distinct so a swapped series shows."""
    out = []
    for step in range(1, MAX_STEPS + 1):
        weights = weights_of(step)
        r = {"step": step, "phase": phase_of(step), "lr": 1e-3 * step, "nonfinite_skipped": 0}
        for k, c in enumerate(ALPHA):
            raw = 5.0 - 0.1 * step + k
            r.update(
                {f"loss/{c}/raw": raw, f"loss/{c}/weight": weights[c], f"loss/{c}/scaled": raw * weights[c]}
            )
        r["loss/total"] = sum(r[f"loss/{c}/scaled"] for c in ALPHA)
        if step % 5 == 0:
            r.update({"eval/ppl": 100.0 / step, "eval/ce": 1.0, "eval_train_ratio": 1.0 + step / 100})
        out.append(r)
    return out


def lines(ax) -> dict[str, tuple[list, list]]:
    """The axis's labelled lines (legend entries): label -> (x data, y data) as lists."""
    return {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
    }


def unlabelled(ax) -> list[tuple[list, list]]:
    """Lines without a legend entry: the phase dividers (vertical) and single unnamed series."""
    return [
        (list(line.get_xdata()), list(line.get_ydata()))
        for line in ax.get_lines()
        if line.get_label().startswith("_")
    ]


@pytest.fixture
def figure():
    import matplotlib.pyplot as plt

    fig = build_figure(records(), RUN_CONFIG)
    yield fig
    plt.close(fig)


def test_six_panels_with_their_titles(figure):
    assert [ax.get_title() for ax in figure.axes] == TITLES
    assert [ax.get_xlabel() for ax in figure.axes] == ["step"] * 6


def test_loss_panels_show_each_part_while_its_weight_is_on_and_the_total(figure):
    raw_ax, scaled_ax = figure.axes[:2]
    data = records()
    for ax, kind in ((raw_ax, "raw"), (scaled_ax, "scaled")):
        shown = lines(ax)
        for c in ALPHA:
            on = [r for r in data if r[f"loss/{c}/weight"] > 0]
            assert shown[c] == ([r["step"] for r in on], [r[f"loss/{c}/{kind}"] for r in on]), (kind, c)
        assert ax.get_yscale() == "log"
    # Feature is off in phase 1 and at the ramp's start (step 4): its line begins at step 5.
    assert lines(raw_ax)["feature"][0] == [5, 6, 7, 8, 9, 10]
    assert lines(raw_ax)["attention"][0] == [7, 8, 9, 10]
    assert "total" not in lines(raw_ax)
    assert lines(scaled_ax)["total"] == ([r["step"] for r in data], [r["loss/total"] for r in data])


def test_weight_panel_draws_the_runs_schedule_and_names_the_phases(figure):
    weight_ax = figure.axes[2]
    shown = lines(weight_ax)
    assert set(shown) == set(ALPHA)
    steps = list(range(1, MAX_STEPS + 1))
    for c in ALPHA:
        assert shown[c][0] == steps
        assert shown[c][1] == pytest.approx([weights_of(s)[c] for s in steps], abs=1e-12), c
    assert shown["feature"][1][3:7] == pytest.approx([0.0, 0.5, 1.0, 1.5])  # the ramp, steps 4-7
    assert [t.get_text() for t in weight_ax.texts] == ["phase 1", "phase 2", "phase 3"]
    # Dotted dividers where phase 2 and phase 3 begin: after step 3 and after step 6.
    assert [x for x, _ in unlabelled(weight_ax)] == [[3, 3], [6, 6]]


def test_weight_panel_without_a_run_config_steps_through_the_logged_weights():
    import matplotlib.pyplot as plt

    data = records()[::2]  # steps 1, 3, 5, 7, 9
    fig = build_figure(data, None)
    try:
        shown = lines(fig.axes[2])
        for c in ALPHA:
            assert shown[c] == ([1, 3, 5, 7, 9], [r[f"loss/{c}/weight"] for r in data])
    finally:
        plt.close(fig)


def test_eval_lr_and_perplexity_panels_show_their_values(figure):
    ratio_ax, lr_ax, ppl_ax = figure.axes[3:]
    ratio = lines(ratio_ax)
    assert ratio["eval / train"] == ([5, 10], [1.05, 1.1])
    assert ratio["2x limit"][1] == [2.0, 2.0]  # the stopper's limit as a horizontal line
    assert unlabelled(lr_ax) == [(list(range(1, 11)), [1e-3 * s for s in range(1, 11)])]
    dividers = [([3, 3], [0, 1]), ([6, 6], [0, 1])]
    assert unlabelled(ppl_ax) == [*dividers, ([5, 10], [20.0, 10.0])]
    assert lr_ax.get_yscale() == ppl_ax.get_yscale() == "log"


def test_the_png_is_the_figure_at_90_dpi_and_not_blank(tmp_path):
    from PIL import Image

    path = write_plot(records(), tmp_path / "report.png", RUN_CONFIG)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (16 * 90, int(8.5 * 90))
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 100  # lines, shading, text: far from a blank canvas
    largest = max(count for count, _ in colours)
    assert largest < 0.9 * image.size[0] * image.size[1]
