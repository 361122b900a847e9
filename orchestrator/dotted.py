"""Dotted config keys (`loss.kd_temperature`) over nested dicts: the one walker every caller uses.

`search_spaces/` and `workers/` hold dotted keys only as data (a space's keys, a worker's config
sections) and walk none, so this lives on the orchestrator side.
"""

from __future__ import annotations

from typing import Any


def split_key(dotted: str) -> list[str]:
    """`a.b` -> ["a", "b"]; ValueError for an empty key or an empty part (`a..b`, `.a`)."""
    parts = dotted.split(".")
    if not dotted or any(not part for part in parts):
        raise ValueError(f"empty key in {dotted!r}")
    return parts


def _parent(data: dict, dotted: str, create: bool) -> tuple[dict, str]:
    """The dict holding the last part of `dotted`, and that part. With `create`, a missing or
    non-dict section on the way becomes an empty dict; without it, KeyError/TypeError as `[]` gives."""
    *parents, leaf = split_key(dotted)
    node = data
    for part in parents:
        if create and not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if not isinstance(node, dict):
        raise TypeError(f"{dotted!r}: {node!r} is not a section")
    return node, leaf


def get_dotted(data: dict, dotted: str) -> Any:
    """`data["a"]["b"]` for `a.b`; KeyError or TypeError if the path is not there."""
    node, leaf = _parent(data, dotted, create=False)
    return node[leaf]


def set_dotted(data: dict, dotted: str, value: Any, create: bool = False) -> None:
    """`data["a"]["b"] = value` in place. A dict value is merged into a dict already there (an
    override of a section changes only the keys it names). `create` makes missing sections."""
    node, leaf = _parent(data, dotted, create)
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        value = merge(node[leaf], value)
    node[leaf] = value


def merge(base: dict, update: dict) -> dict:
    """`update` over `base`, section by section; neither is changed."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Nested sections -> {dotted key: leaf value}, the inverse of `set_dotted` over every leaf."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out
