"""Parameter trees in their sharded layout: abstract (shapes, dtypes and shardings, for
restoring a checkpoint or compiling without allocating) or freshly initialised on the mesh."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh

from jaxknow.model.params import init_params, param_axes, param_shapes
from jaxknow.parallel.rules import DEFAULT_RULES, Rules, tree_shardings


def abstract_params(specs: Any, dtype: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """Returns ShapeDtypeStructs (with shardings) for a ParamSpec tree."""
    shapes = param_shapes(specs, dtype)
    shardings = tree_shardings(param_axes(specs), shapes, mesh, rules)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )


def init_sharded_params(
    specs: Any, key: jax.Array, dtype: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> Any:
    """Returns freshly initialised parameters created directly in their sharded layout."""
    shardings = tree_shardings(param_axes(specs), param_shapes(specs, dtype), mesh, rules)
    return jax.jit(lambda k: init_params(specs, k, dtype), out_shardings=shardings)(key)
