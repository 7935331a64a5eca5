"""Errors raised in several layers, and the one check of enumerated (`Literal`) config fields:
this module imports nothing from jaxknow, so the lowest layer can raise and use them and every
layer above can catch them (WORKSPACE.md, "Layers")."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any


class CorpusFormatError(ValueError):
    """A corpus or data file is malformed; the message names the file and the line."""


@functools.cache
def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """Returns {field: allowed values} for the fields of dataclass `cls` typed `Literal[...]`
    (or `Literal[...] | None`, which also allows None)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        args = typing.get_args(tp) if union else (tp,)
        literals = [a for a in args if typing.get_origin(a) is typing.Literal]
        if literals:
            allowed = tuple(v for lit in literals for v in typing.get_args(lit))
            out[f.name] = allowed + ((None,) if type(None) in args else ())
    return out


def check_choices(obj: Any, section: str, error: type[Exception] = ValueError) -> None:
    """Raises `error` naming ``section.field`` (``field`` when `section` is empty), the value
    and the allowed values for the first `Literal`-typed field of dataclass `obj` whose value
    is not one of its type's values.

    Each config dataclass calls this from `__post_init__`, so an enumerated field is checked
    in the dataclass that declares it, whichever way the dataclass is built.
    """
    for name, allowed in _choices(type(obj)).items():
        value = getattr(obj, name)
        if value not in allowed:
            where = f"{section}.{name}" if section else name
            raise error(f"{where}={value!r}: must be one of {allowed}")
