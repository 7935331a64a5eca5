"""Train state (trainable parameters, frozen parameters, optimizer state, step) and its
sharded creation.

The state holds the layers stacked (`model.layout`), as parameters everywhere are: parameters,
frozen parameters and the optimizer state built from them have one ``layers`` tree with a
leading, unsharded [L] axis, so each parameter kind is updated by one op. Only a run that
treats its layers differently (`homogeneous_layers` is False: some layers trained and others
not, a layer-specific no_decay pattern) keeps a per-layer state; the model still sees its
parameters stacked (`merge_params`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxknow.model.layout import layer_paths, stack
from jaxknow.model.params import flatten, unflatten
from jaxknow.parallel.rules import Rules, tree_shardings
from jaxknow.train.optim import decays


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes.

    `params` are trained; `frozen` holds parameters that take part in the forward pass but are
    not trained (e.g. base weights under LoRA); the model sees `merge_params(params, frozen)`.
    """

    step: jax.Array
    params: dict[str, Any]
    opt_state: Any
    frozen: dict[str, Any]

    def model_params(self) -> dict[str, Any]:
        """Returns the full parameter tree the model runs with (layers stacked)."""
        return merge_params(self.params, self.frozen)


def merge_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the union of two nested dicts with disjoint leaf paths, its layers stacked
    (the trainable and frozen parts of a per-layer state are stacked together)."""
    fa, fb = flatten(a), flatten(b)
    overlap = set(fa) & set(fb)
    if overlap:
        raise ValueError(f"parameter paths both trainable and frozen: {sorted(overlap)[:5]}")
    return stack(unflatten({**fa, **fb}))


def split_params(
    params: Mapping[str, Any], is_trainable: Callable[[str], bool]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (trainable, frozen): the parameters split by a predicate on their path."""
    flat = flatten(params)
    return (
        unflatten({p: v for p, v in flat.items() if is_trainable(p)}),
        unflatten({p: v for p, v in flat.items() if not is_trainable(p)}),
    )


def opt_state_shardings(
    tx: optax.GradientTransformation,
    param_shapes: Any,
    param_shardings: Any,
    replicated: NamedSharding,
) -> Any:
    """Returns shardings for tx's state: per-parameter statistics follow their parameter,
    scalars (counts, schedule state) are replicated."""
    shapes = jax.eval_shape(tx.init, param_shapes)
    return optax.tree_map_params(
        tx,
        lambda _, sh: sh,
        shapes,
        param_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


def state_shardings(
    tx: optax.GradientTransformation,
    trainable_shapes: Any,
    trainable_axes: Any,
    frozen_shapes: Any,
    frozen_axes: Any,
    mesh: jax.sharding.Mesh,
    rules: Rules,
) -> TrainState:
    """Returns a TrainState whose leaves are the NamedShardings of the real state."""
    replicated = NamedSharding(mesh, PartitionSpec())
    p_sh = tree_shardings(trainable_axes, trainable_shapes, mesh, rules)
    f_sh = tree_shardings(frozen_axes, frozen_shapes, mesh, rules)
    return TrainState(
        step=replicated,
        params=p_sh,
        opt_state=opt_state_shardings(tx, trainable_shapes, p_sh, replicated),
        frozen=f_sh,
    )


def new_state(
    params: dict[str, Any], frozen: dict[str, Any], tx: optax.GradientTransformation
) -> TrainState:
    """Returns a fresh TrainState at step 0 for the given parameters."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), frozen=frozen
    )


def homogeneous_layers(
    paths: Iterable[str],
    n_layers: int,
    is_trainable: Callable[[str], bool],
    no_decay: tuple[str, ...] = (),
) -> bool:
    """Returns whether a run treats every layer alike: for each stacked parameter path in
    `paths`, `is_trainable` (a predicate on per-layer paths) and, for a trained parameter,
    the weight-decay patterns `no_decay` give one answer for all its layers
    (``layers/0/...``, ``layers/1/...``, ...). Then the train state holds the layers stacked;
    otherwise (only some layers trained, a layer-specific no_decay pattern) it holds them per
    layer."""
    for path in paths:
        per_layer = layer_paths(path, n_layers)
        trained = {bool(is_trainable(p)) for p in per_layer}
        if len(trained) > 1:
            return False
        if trained == {True} and len({decays(p, no_decay) for p in per_layer}) > 1:
            return False
    return True
