"""Train state (trainable parameters, frozen parameters, optimizer state, step) and its
sharded creation.

When the model scans its layers, the state holds them stacked (`stacks_layers`): parameters,
frozen parameters and the optimizer state built from them have one ``layers`` tree with a
leading [L] axis, unsharded (`stack_axes`), so the step scans over it directly and updates each
parameter kind with one op. Checkpoints and whatever training returns are per layer
(`to_per_layer`); `to_stacked` converts a restored per-layer state back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxknow.model.config import ModelConfig
from jaxknow.model.params import (
    can_stack_layers,
    flatten,
    same_for_every_layer,
    stack_layers,
    stacked_layer_count,
    unflatten,
    unstack_layers,
)
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
        """Returns the full parameter tree the model runs with."""
        return merge_params(self.params, self.frozen)


def merge_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the union of two nested dicts with disjoint leaf paths."""
    fa, fb = flatten(a), flatten(b)
    overlap = set(fa) & set(fb)
    if overlap:
        raise ValueError(f"parameter paths both trainable and frozen: {sorted(overlap)[:5]}")
    return unflatten({**fa, **fb})


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


def stacks_layers(
    cfg: ModelConfig, trainable: Any, frozen: Any, no_decay: tuple[str, ...] = ()
) -> bool:
    """Returns whether a run keeps its layers stacked in the train state: the model scans its
    layers (`cfg.use_scan`), the trainable and the frozen parameters (per layer, arrays or
    shapes) each hold either no layer or all layers with one tree structure, and the
    weight-decay patterns `no_decay` treat every layer alike. Otherwise (e.g. only some layers
    trained, adapters on some layers, a layer-specific no_decay pattern) the run keeps
    per-layer storage, as before stacking existed."""
    if not cfg.use_scan or cfg.n_layers < 2:
        return False
    if not (can_stack_layers(trainable) and can_stack_layers(frozen)):
        return False
    return same_for_every_layer(lambda p: decays(p, no_decay), flatten(trainable))


def _is_axes(x: Any) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def stack_axes(axes: Any) -> Any:
    """Returns a tree of logical-axis tuples in the stacked layout: the new leading layer axis
    is never sharded (None)."""
    return stack_layers(axes, combine=lambda xs: (None, *xs[0]), is_leaf=_is_axes)


def stacked_layout(trainable: Any, frozen: Any, t_axes: Any, f_axes: Any) -> tuple[Any, ...]:
    """Returns (trainable shapes, frozen shapes, trainable axes, frozen axes) of per-layer
    parameters (arrays or shapes) and their logical axes, in the stacked layout."""
    t_abs, f_abs = jax.eval_shape(stack_layers, (trainable, frozen))
    return t_abs, f_abs, stack_axes(t_axes), stack_axes(f_axes)


def _is_sharding(x: Any) -> bool:
    return isinstance(x, jax.sharding.Sharding)


def _stack_sharding(shs: list[Any]) -> Any:
    sh = shs[0]
    if not isinstance(sh, NamedSharding):
        return sh
    return NamedSharding(sh.mesh, PartitionSpec(None, *sh.spec))


def _drop_layer_axis(sh: Any) -> Any:
    if not isinstance(sh, NamedSharding):
        return sh
    return NamedSharding(sh.mesh, PartitionSpec(*sh.spec[1:]))


def stacked_shardings(shardings: Any) -> Any:
    """Returns a tree of shardings of the per-layer layout (e.g. a TrainState of
    NamedShardings) in the stacked layout: each layer's sharding with an unsharded leading
    layer axis."""
    return stack_layers(shardings, combine=_stack_sharding, is_leaf=_is_sharding)


def to_stacked(state: Any, shardings: Any) -> Any:
    """Returns a per-layer state (or parameter tree) stacked (`stack_layers`) and laid out
    by `shardings` (of the stacked layout). A copy: the input stays valid."""
    return jax.jit(stack_layers, out_shardings=shardings)(state)


def to_per_layer(state: Any) -> Any:
    """Returns a state (or parameter / optimizer tree) in the per-layer layout, each layer's
    arrays sharded like the stacked ones without their layer axis; unchanged when nothing is
    stacked. A copy, made on the devices (a checkpoint save holds it until its device-to-host
    transfer has run)."""
    n = stacked_layer_count(state)
    if n is None:
        return state
    out_sh = unstack_layers(
        jax.tree.map(lambda x: x.sharding, state),
        n_layers=n,
        take=lambda sh, _: _drop_layer_axis(sh),
        is_leaf=_is_sharding,
    )
    return jax.jit(unstack_layers, out_shardings=out_sh)(state)
