"""orchestrator.dotted: the one walker of dotted config keys (overrides, sweep params, resume diffs)."""

from __future__ import annotations

import pytest

from orchestrator.dotted import flatten, get_dotted, merge, set_dotted, split_key


def test_split_key_refuses_empty_parts():
    assert split_key("loss.kd_temperature") == ["loss", "kd_temperature"]
    for bad in ("", ".a", "a.", "a..b"):
        with pytest.raises(ValueError):
            split_key(bad)


def test_get_dotted_reads_a_leaf_and_a_section():
    data = {"loss": {"kd_kind": "jsd"}, "teacher": "gpt2"}
    assert get_dotted(data, "loss.kd_kind") == "jsd"
    assert get_dotted(data, "loss") == {"kd_kind": "jsd"}
    assert get_dotted(data, "teacher") == "gpt2"
    with pytest.raises(KeyError):
        get_dotted(data, "loss.nope")
    with pytest.raises(TypeError):
        get_dotted(data, "teacher.name")


def test_set_dotted_without_create_needs_the_sections():
    data = {"loss": {"kd_kind": "jsd", "alpha_kd": 0.5}}
    set_dotted(data, "loss.kd_kind", "reverse_kl")
    assert data == {"loss": {"kd_kind": "reverse_kl", "alpha_kd": 0.5}}
    with pytest.raises(KeyError):
        set_dotted(data, "train.lr", 1e-3)


def test_set_dotted_with_create_makes_sections_and_merges_a_section_value():
    data = {"teacher": "gpt2", "loss": {"kd_kind": "jsd", "alpha_kd": 0.5}}
    set_dotted(data, "train.lr", 1e-3, create=True)
    set_dotted(data, "loss", {"alpha_kd": 0.7}, create=True)
    set_dotted(data, "teacher.x", 1, create=True)  # a non-section on the way becomes a section
    assert data == {"teacher": {"x": 1}, "loss": {"kd_kind": "jsd", "alpha_kd": 0.7}, "train": {"lr": 1e-3}}


def test_merge_leaves_its_inputs_alone():
    base, update = {"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}
    assert merge(base, update) == {"a": {"b": 1, "c": 3}}
    assert base == {"a": {"b": 1, "c": 2}} and update == {"a": {"c": 3}}


def test_flatten_is_the_inverse_of_set_dotted():
    data = {"loss": {"kd_kind": "jsd", "layer_map": [1, 2]}, "teacher": "gpt2", "a": {"b": {"c": None}}}
    flat = flatten(data)
    assert flat == {"loss.kd_kind": "jsd", "loss.layer_map": [1, 2], "teacher": "gpt2", "a.b.c": None}
    rebuilt: dict = {}
    for key, value in flat.items():
        set_dotted(rebuilt, key, value, create=True)
    assert rebuilt == data
