"""Optimizer and learning-rate schedules: AdamW with warmup + cosine/linear decay, gradient
clipping and a weight-decay mask chosen by parameter path. The settings are
`jaxknow.config.OptimConfig`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import optax

from jaxknow.config import OptimConfig
from jaxknow.model.layout import layer_paths
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


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """Returns AdamW (with the schedule, weight-decay mask and optional global-norm clip)."""
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
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
