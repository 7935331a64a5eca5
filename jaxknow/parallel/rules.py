"""Logical axis names and the rules that map them to mesh axes.

Parameters and activations are annotated with logical names ("embed", "heads", "batch", ...);
a rule table maps each name to zero or more mesh axes. A mesh axis that does not divide a
dimension, or that an earlier dimension already uses, is dropped for that dimension, so one
rule table serves every model size and mesh.

A parameter dimension left unsharded because a mesh axis does not divide it (a vocabulary not
divisible by the tensor axis replicates the embedding over that axis) is said: `tree_shardings`
and `logical_to_sharding(..., where=path)` log a warning once per (logical axis, size, mesh
axis), `reported_drops` lists those logged so far, and `dropped_axes` computes them for one
array (what `train.memory.plan_memory` shows). The rule table is the project's own
(`DEFAULT_RULES`; no config asks for a particular sharding), so a drop is reported, not refused.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# name -> mesh axes, in order of preference
Rules = Mapping[str, tuple[str, ...]]

DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    # parameters
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "norm": (),
    "positions": (),
    "lora_rank": ("fsdp",),  # adapters with no embed dim still shard over fsdp
    # activations
    "batch": ("data", "fsdp"),
    "length": (),
    "act_embed": (),
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
    "cache_length": (),
}


class ShardingRuleError(KeyError):
    """A logical axis name has no rule."""


@dataclasses.dataclass(frozen=True)
class DroppedAxis:
    """A mesh axis a rule asked for that does not divide a dimension, so the dimension is not
    split over it (the array is replicated over that mesh axis).

    `shards` is the number of pieces the dimension would have had with this axis (its size
    times that of the mesh axes already chosen for the dimension); `where` names the first
    array seen with it (a parameter path), or is empty.
    """

    logical: str
    dim: int
    mesh_axis: str
    shards: int
    where: str = ""

    @property
    def key(self) -> tuple[str, int, str, int]:
        """Returns what makes two drops the same kind (all but `where`)."""
        return self.logical, self.dim, self.mesh_axis, self.shards

    def __str__(self) -> str:
        at = f"{self.where}: " if self.where else ""
        return (
            f"{at}logical axis {self.logical!r} of size {self.dim} is not divisible by "
            f"{self.shards} shards, so it is not split over mesh axis {self.mesh_axis!r} "
            "(replicated over it)"
        )


def _resolve(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Any, rules: Rules
) -> tuple[PartitionSpec, list[DroppedAxis]]:
    """Returns (PartitionSpec, mesh axes dropped for not dividing a dimension)."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec: list[Any] = []
    dropped: list[DroppedAxis] = []
    for name, dim in zip(axes, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ShardingRuleError(f"no sharding rule for logical axis {name!r}")
        chosen: list[str] = []
        size = 1
        for ax in rules[name]:
            n = mesh.shape[ax]
            if ax in used or n == 1:
                continue
            if dim % (size * n):
                dropped.append(DroppedAxis(name, int(dim), ax, size * n))
                continue
            chosen.append(ax)
            size *= n
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec), dropped


def logical_to_spec(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> PartitionSpec:
    """Returns the PartitionSpec for an array of `shape` annotated with logical `axes`."""
    return _resolve(axes, shape, mesh, rules)[0]


def dropped_axes(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Any, rules: Rules = DEFAULT_RULES
) -> list[DroppedAxis]:
    """Returns the mesh axes the rules ask for that do not divide a dimension of `shape` (so
    the array is replicated over them); `mesh` needs only a `shape` mapping."""
    return _resolve(axes, shape, mesh, rules)[1]


_REPORTED: dict[tuple[str, int, str, int], DroppedAxis] = {}
_REPORTED_LOCK = threading.Lock()


def report_drops(drops: Sequence[DroppedAxis], where: str = "") -> None:
    """Logs a warning for each drop whose kind (logical axis, size, mesh axis, shards) has not
    been logged yet in this process, naming `where` (a parameter path)."""
    for d in drops:
        d = dataclasses.replace(d, where=d.where or where)
        with _REPORTED_LOCK:
            if d.key in _REPORTED:
                continue
            _REPORTED[d.key] = d
        logging.warning("sharding: %s", d)


def reported_drops() -> list[DroppedAxis]:
    """Returns the drops logged so far in this process (one per kind), oldest first."""
    with _REPORTED_LOCK:
        return list(_REPORTED.values())


def forget_reported_drops() -> None:
    """Forgets which drops were logged (each is logged again when next met); for tests."""
    with _REPORTED_LOCK:
        _REPORTED.clear()


def logical_to_sharding(
    axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
    *,
    where: str | None = None,
) -> NamedSharding:
    """Returns the NamedSharding for an array of `shape` annotated with logical `axes`.

    With `where` (the path of a parameter) a mesh axis dropped for not dividing a dimension
    is reported (`report_drops`); activations and batches pass no `where` and are not.
    """
    spec, drops = _resolve(axes, shape, mesh, rules)
    if where is not None and drops:
        report_drops(drops, where)
    return NamedSharding(mesh, spec)


def _path_name(path: Sequence[Any]) -> str:
    """Returns a tree path as "a/b/0"."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def tree_shardings(axes_tree: Any, shapes_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Returns a tree of NamedShardings for a tree of arrays (or ShapeDtypeStructs).

    `axes_tree` has the same structure with tuples of logical names as leaves. The leaves are
    parameters (or optimizer state laid out like them): a mesh axis dropped for not dividing
    a dimension is logged once per kind (`report_drops`).
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, ax, s: logical_to_sharding(
            ax,
            np.shape(s) if not hasattr(s, "shape") else s.shape,
            mesh,
            rules,
            where=_path_name(path),
        ),
        axes_tree,
        shapes_tree,
        is_leaf=lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x),
    )


class Sharder:
    """Applies sharding constraints to activations inside jitted code.

    A Sharder with `mesh=None` does nothing, so model code runs unchanged on one device or
    outside a mesh (for example in evaluation helpers and tests). Sharders with the same mesh
    and rules are equal and hash alike, so a Sharder is a static argument of `jax.jit`.
    """

    def __init__(self, mesh: Mesh | None, rules: Rules = DEFAULT_RULES):
        self.mesh = mesh
        self.rules = dict(rules)

    def _key(self) -> tuple[Any, ...]:
        return self.mesh, tuple(sorted((k, tuple(v)) for k, v in self.rules.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sharder) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def constrain(self, x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
        """Returns `x` constrained to the sharding of its logical `axes` (no-op without a mesh)."""
        if self.mesh is None:
            return x
        spec = logical_to_spec(axes, x.shape, self.mesh, self.rules)
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))


NO_SHARDING = Sharder(None)
