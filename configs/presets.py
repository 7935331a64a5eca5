"""Choosing a named preset inside a config file."""

from collections.abc import Mapping
from typing import Any


def pick(presets: Mapping[str, Any], name: str, what: str = "preset") -> Any:
    """Returns presets[name]; a ValueError listing the known names when it is unknown."""
    if name not in presets:
        raise ValueError(f"unknown {what} {name!r}; known: {sorted(presets)}")
    return presets[name]
