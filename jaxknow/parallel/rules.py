"""Logical axis names and the rules that map them to mesh axes.

Parameters and activations are annotated with logical names ("embed", "heads", "batch", ...);
a rule table maps each name to zero or more mesh axes. A mesh axis that does not divide a
dimension, or that an earlier dimension already uses, is dropped for that dimension, so one
rule table serves every model size and mesh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
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


def logical_to_spec(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> PartitionSpec:
    """Returns the PartitionSpec for an array of `shape` annotated with logical `axes`."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec: list[Any] = []
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
            if ax in used or n == 1 or dim % (size * n):
                continue
            chosen.append(ax)
            size *= n
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def logical_to_sharding(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> NamedSharding:
    """Returns the NamedSharding for an array of `shape` annotated with logical `axes`."""
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def tree_shardings(axes_tree: Any, shapes_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Returns a tree of NamedShardings for a tree of arrays (or ShapeDtypeStructs).

    `axes_tree` has the same structure with tuples of logical names as leaves.
    """
    return jax.tree.map(
        lambda ax, s: logical_to_sharding(
            ax, np.shape(s) if not hasattr(s, "shape") else s.shape, mesh, rules
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
