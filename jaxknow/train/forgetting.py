"""Active forgetting: reset a selection of parameters between training steps.

Zhang, Li & Wu reset the upper layers to their pretrained values after a first pass over the
knowledge corpus, then train a second pass with a fresh optimizer. Here the selection (layer
range and/or path patterns), the target (the run's starting values — the pretrained model
when finetuning — or a fresh initialisation), the moments (steps; several cycles) and what
happens to the optimizer state ("all": a fresh optimizer, schedule included; "selected":
fresh moments for the reset parameters only; "none") are all configurable. Under LoRA the
selection applies to the adapters: resetting them to their starting values (B = 0) makes the
merged weights of those layers equal the base weights again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from jaxknow.model.layout import is_per_layer, stack, unstack
from jaxknow.model.params import ParamSpec, flatten, init_param, path_key, unflatten
from jaxknow.train.select import Selection
from jaxknow.train.state import TrainState

# "pretrained": the run's starting values; "init": a fresh initialisation.
ResetTo = Literal["pretrained", "init"]
OptReset = Literal["all", "selected", "none"]


@dataclasses.dataclass(frozen=True)
class ForgetConfig:
    """When and how to reset parameters (see the module docstring); the `forget` section of a
    training config (`config.parse`)."""

    at_steps: tuple[int, ...] = ()
    select: Selection = Selection(layer_fraction=1 / 3)
    to: ResetTo = "pretrained"
    reset_optimizer: OptReset = "all"

    def __post_init__(self) -> None:
        if any(s <= 0 for s in self.at_steps):
            raise ValueError(f"at_steps={list(self.at_steps)}: steps must be positive")


def reset_targets(
    params: Mapping[str, Any],
    paths: list[str],
    to: str,
    specs: Mapping[str, ParamSpec] | None,
    key: jax.Array | None,
) -> dict:
    """Returns {path: value} the selected parameters are reset to: their values in `params`
    (to="pretrained"), or fresh draws from their ParamSpecs (to="init"). `paths`, `params`
    and `specs` are per layer (``layers/3/...``: see `model.layout.unstack`)."""
    flat = flatten(params)
    if to == "pretrained":
        return {p: flat[p] for p in paths}
    if specs is None or key is None:
        raise ValueError("reset to 'init' needs the parameter specs and a key")
    return {p: init_param(specs[p], path_key(key, p), flat[p].dtype) for p in paths}


def reset_state(
    state: TrainState,
    targets: Mapping[str, jax.Array],
    tx: optax.GradientTransformation,
    reset_optimizer: str,
) -> TrainState:
    """Returns `state` with the trainable parameters in `targets` replaced by their target
    values (bit for bit) and the optimizer state reset as asked; other parameters and
    optimizer entries are untouched."""
    flat = flatten(state.params)
    missing = set(targets) - set(flat)
    if missing:
        raise ValueError(f"reset of parameters that are not trained: {sorted(missing)[:5]}")
    new_flat = {p: (targets[p].astype(v.dtype) if p in targets else v) for p, v in flat.items()}
    params = unflatten(new_flat)
    if reset_optimizer == "all":
        opt_state = tx.init(params)
    elif reset_optimizer == "selected":
        # Per-parameter statistics (Adam's moments) start at zero; step counts are shared by
        # all parameters and keep running.
        mask = unflatten({p: p in targets for p in flat})
        opt_state = optax.tree_map_params(
            tx,
            lambda old, m: jnp.zeros_like(old) if m else old,
            state.opt_state,
            mask,
            transform_non_params=lambda x: x,
        )
    else:
        opt_state = state.opt_state
    return state.replace(params=params, opt_state=opt_state)


def make_forget_event(
    cfg: ForgetConfig,
    reference: Mapping[str, Any],
    n_layers: int,
    tx: optax.GradientTransformation,
    specs: Mapping[str, ParamSpec] | None,
    key: jax.Array,
    state_shardings: Any = None,
    on_reset: Callable[[int, list[str]], None] | None = None,
) -> Callable[[int, TrainState], TrainState]:
    """Returns a loop event that resets the selected trainable parameters at cfg.at_steps.
    Selections are made on per-layer paths (``layers/3/...``); a state holding its layers
    stacked is reset in its per-layer view (`model.layout.unstack`) inside one jitted call and
    stacked again: the same values, bit for bit, as resetting a per-layer state.

    `reference` holds the parameters' starting values (for to="pretrained"; stacked or per
    layer); `specs` maps per-layer paths to their ParamSpecs (for to="init", whose cycle c
    draws from fold_in(key, c)). `on_reset(step, paths)` is told of each reset.
    """
    steps = sorted(cfg.at_steps)

    def event(step: int, state: TrainState) -> TrainState:
        if step not in steps:
            return state
        # Selections are by per-layer path (shapes only: nothing is copied here).
        paths = cfg.select.paths(list(flatten(jax.eval_shape(unstack, state.params))), n_layers)
        if not paths:
            raise ValueError(f"forget.select matches no trained parameter ({cfg.select})")
        cycle_key = jax.random.fold_in(key, steps.index(step))
        per_layer = is_per_layer(state)

        def reset(s: TrainState, ref: Any, k: jax.Array) -> TrainState:
            targets = reset_targets(unstack(ref), paths, cfg.to, specs, k)
            s = reset_state(unstack(s), targets, tx, cfg.reset_optimizer)
            return s if per_layer else stack(s)

        fn = jax.jit(reset, out_shardings=state_shardings, donate_argnums=(0,))
        new_state = fn(state, reference, cycle_key)
        if on_reset is not None:
            on_reset(step, paths)
        return new_state

    return event
