"""Trial configs: a sweep's trials and their sampled dotted keys applied to the base config.

All trials are drawn up front (`sample_points`: the space's anchors first, no repeats, seeded) and
handed to Tune as points to evaluate, so `--seed` repeats a sweep whatever the scheduler.
"""

from __future__ import annotations

import copy
from typing import Any

from orchestrator.config import Config, config_from_dict
from orchestrator.dotted import get_dotted, set_dotted
from orchestrator.errors import UserError

# Config sections a trial may not change: data and models are prepared once for the whole sweep.
SHARED_KEYS = ("teacher", "student", "data.", "derive.", "scaling.")


def _plain(value: Any) -> Any:
    """numpy scalars (Tune's samplers return them) -> Python values, so configs dump to YAML."""
    return value.item() if hasattr(value, "item") and callable(value.item) else value


def check_space(space: dict[str, Any], base: dict[str, Any]) -> None:
    """Every key must be a config key a trial may change on its own; raises UserError otherwise."""
    if not space:
        raise UserError("the search space is empty")
    for key in space:
        if key.startswith(SHARED_KEYS) or key in ("teacher", "student"):
            raise UserError(
                f"search space key {key!r}: data, models and scaling are shared by all trials of a sweep"
            )
        try:
            value = get_dotted(base, key)
        except (KeyError, TypeError, ValueError):
            raise UserError(f"search space key {key!r} is not a config key") from None
        if isinstance(value, dict):
            raise UserError(f"search space key {key!r} names a config section, not a value")


def _point_key(point: dict[str, Any]) -> str:
    return repr(sorted(point.items()))


def sample_points(
    space: dict[str, Any], num_samples: int, seed: int, anchors: list[dict[str, Any]] | tuple = ()
) -> list[dict[str, Any]]:
    """The trials of a sweep, drawn up front by Tune's own variant generator (as the Tuner would).

    Each of `num_samples` draws yields one point per grid_search combination. `anchors` come first,
    each completed by sampling the keys it leaves out. Draws that repeat a point already taken are
    drawn again (discrete spaces are small: without this, 8 draws from the curriculum space would
    often repeat one), unless the space runs out of new points. Seeded, so `--seed` repeats a sweep
    exactly, whatever the scheduler does with numpy's generator afterwards.
    """
    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    np.random.seed(seed)  # Tune's samplers and sample_from functions use numpy's global generator
    points: list[dict[str, Any]] = []
    seen: set[str] = set()

    def draw(partial: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            sampled_params(spec["config"]) for _, spec in generate_variants({"config": {**space, **partial}})
        ]

    for anchor in list(anchors)[:num_samples]:
        for point in draw(anchor):
            seen.add(_point_key(point))
            points.append(point)
    draws, attempts = len(list(anchors)[:num_samples]), 0
    while draws < num_samples:
        attempts += 1
        batch = draw({})
        if any(_point_key(p) in seen for p in batch) and attempts < 50 * num_samples:
            continue
        seen.update(_point_key(p) for p in batch)
        points.extend(batch)
        draws += 1
    return points


def pinned_space(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The param space handed to the Tuner when every trial is a pinned point: each key a choice of
    the values its points hold. (A `sample_from` key overwritten by a point trips Tune's placeholder
    resolution; the real space still drives PBT's mutations.)"""
    from ray import tune

    values: dict[str, list[Any]] = {}
    for point in points:
        for key, value in point.items():
            if all(repr(value) != repr(v) for v in values.setdefault(key, [])):
                values[key].append(value)
    return {key: tune.choice(options) for key, options in values.items()}


def sampled_params(trial_config: dict[str, Any]) -> dict[str, Any]:
    return {key: _plain(value) for key, value in trial_config.items()}


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for dotted, value in params.items():
        set_dotted(data, dotted, _plain(value))
    return data


def trial_config(base: dict[str, Any], params: dict[str, Any], tune_checkpoints: bool) -> Config:
    config = config_from_dict(apply_params(base, params))
    if tune_checkpoints:
        # PBT and HyperBand act on eval results and need a checkpoint from that very report.
        config.train.checkpoint_every = config.train.eval_every
        config.train.checkpoints_to_keep = max(2, config.train.checkpoints_to_keep)
    return config


def keep_phases_left(
    params: dict[str, Any], trained: dict[str, Any], step: int, max_steps: int
) -> dict[str, Any]:
    """Phase boundaries for a trial restarting from a checkpoint taken at `step` of `max_steps`.

    `trained` is the curriculum section the checkpoint was trained with. PBT may move boundaries
    only forward in time: a boundary the checkpoint has already crossed (its last trained step had
    progress >= the boundary) keeps its trained value, so the trial never goes back into a phase it
    has left; a boundary not crossed yet may move anywhere from the next step's progress on, never
    into the past. The result keeps phase1_end <= phase2_end.
    """
    keys = ("curriculum.phase1_end", "curriculum.phase2_end")
    if not any(k in params for k in keys) or not trained.get("enabled", True):
        return dict(params)
    last = (step - 1) / max_steps if step > 0 else -1.0
    upcoming = step / max_steps
    bounds = []
    for key, name in zip(keys, ("phase1_end", "phase2_end")):
        old = float(trained[name])
        proposed = float(params.get(key, old))
        bounds.append(old if old <= last else max(proposed, upcoming))
    p1, p2 = bounds[0], max(bounds[1], bounds[0])
    out = dict(params)
    out.update({keys[0]: round(p1, 6), keys[1]: round(p2, 6)})
    return out
