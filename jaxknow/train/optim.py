"""Optimizer and learning-rate schedules: AdamW with warmup + cosine/linear decay, gradient
clipping and a weight-decay mask chosen by parameter path. The settings are
`jaxknow.config.OptimConfig`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxknow.config import OptimConfig
from jaxknow.model.config import ModelConfig
from jaxknow.model.layout import layer_paths, unstack
from jaxknow.model.params import map_with_path


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Returns the learning rate as a function of the step: linear warmup, then decay."""
    end = cfg.lr * cfg.end_lr_fraction
    decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.end_lr_fraction)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.lr)
    if cfg.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def decays(path: str, no_decay: Sequence[str]) -> bool:
    """Returns True when weight decay applies to the parameter at a per-layer `path`."""
    return not any(re.search(p, path) for p in no_decay)


def decay_mask(params: Any, no_decay: Sequence[str]) -> Any:
    """Returns a tree of bools: True where weight decay applies (paths not matching no_decay).

    Stacked layers are judged by their per-layer paths (``layers/0/...``, ``layers/1/...``),
    so both layouts decay the same parameters; raises ValueError when the layers of one
    stacked parameter would get different answers (such a run keeps a per-layer state:
    `state.homogeneous_layers`).
    """

    def mask(path: str, x: Any) -> bool:
        n = x.shape[0] if getattr(x, "shape", ()) else 1
        answers = {decays(p, no_decay) for p in layer_paths(path, n)}
        if len(answers) != 1:
            raise ValueError(
                f"optim.no_decay={tuple(no_decay)} decays some layers of {path} and not others"
            )
        return answers.pop()

    return map_with_path(mask, params)


def global_norm(tree: Any, layerwise: bool = False) -> jax.Array:
    """Returns the L2 norm of a tree of arrays (gradients, updates). With `layerwise` the
    stacked layers' squares are summed layer by layer, in the order of their per-layer paths
    (`model.layout.unstack`), else each stacked parameter kind at once; the two differ in
    fp32 round-off only (`norm_is_layerwise` says which a model uses)."""
    return optax.tree.norm(unstack(tree) if layerwise else tree)


def norm_is_layerwise(model: ModelConfig | None) -> bool:
    """Returns whether gradient norms of `model` sum layer by layer (`global_norm`): yes for a
    model that loops over its layers (`not model.use_scan`), as it did when it held every
    layer in its own leaf, so that its clipped updates and logged norms stay those of earlier
    versions bit for bit; no for a scanned model or none given."""
    return model is not None and not model.use_scan


def clip_by_global_norm(max_norm: float, layerwise: bool = False) -> optax.GradientTransformation:
    """Returns `optax.clip_by_global_norm` (same state, same arithmetic) with the norm of
    `global_norm`."""

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        g_norm = global_norm(updates, layerwise)
        trigger = jnp.squeeze(g_norm < max_norm)

        def clip_fn(t: jax.Array) -> jax.Array:
            return jax.lax.select(trigger, t, (t / g_norm.astype(t.dtype)) * max_norm)

        return jax.tree.map(clip_fn, updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_optimizer(
    cfg: OptimConfig, model: ModelConfig | None = None
) -> optax.GradientTransformation:
    """Returns AdamW (with the schedule, weight-decay mask and optional global-norm clip,
    whose norm sums as `norm_is_layerwise(model)` says)."""
    parts = []
    if cfg.grad_clip > 0:
        parts.append(clip_by_global_norm(cfg.grad_clip, norm_is_layerwise(model)))
    parts.append(
        optax.adamw(
            make_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=lambda p: decay_mask(p, cfg.no_decay),
        )
    )
    return optax.chain(*parts)
