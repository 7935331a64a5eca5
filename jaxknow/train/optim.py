"""Optimizer and learning-rate schedules: AdamW with warmup + cosine/linear decay, gradient
clipping and a weight-decay mask chosen by parameter path."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import optax

from jaxknow.model.params import map_with_path


class OptimConfigError(ValueError):
    """An optimizer setting is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW hyperparameters and the learning-rate schedule."""

    lr: float = 1e-3
    schedule: str = "cosine"  # "cosine", "linear" or "constant" (each after linear warmup)
    warmup_steps: int = 0
    total_steps: int = 1000
    end_lr_fraction: float = 0.1  # final lr as a fraction of `lr` (cosine and linear)
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    # Regexes over parameter paths that get no weight decay (norm scales, biases by default).
    no_decay: tuple[str, ...] = (r"norm/", r"/bias$")

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise OptimConfigError(f"optim.{field}={getattr(self, field)!r}: {why}")

        if self.schedule not in ("cosine", "linear", "constant"):
            bad("schedule", "must be 'cosine', 'linear' or 'constant'")
        if not self.lr > 0:
            bad("lr", "must be positive")
        if self.total_steps <= 0:
            bad("total_steps", "must be positive")
        if not 0 <= self.warmup_steps <= self.total_steps:
            bad("warmup_steps", f"must be in [0, total_steps={self.total_steps}]")
        if not 0 <= self.end_lr_fraction <= 1:
            bad("end_lr_fraction", "must be in [0, 1]")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        for beta in ("b1", "b2"):
            if not 0 <= getattr(self, beta) < 1:
                bad(beta, "must be in [0, 1)")
        if not self.eps > 0:
            bad("eps", "must be positive")
        if self.grad_clip < 0:
            bad("grad_clip", "must be >= 0")
        for pat in self.no_decay:
            try:
                re.compile(pat)
            except re.error as e:
                raise OptimConfigError(f"optim.no_decay: bad regex {pat!r} ({e})") from None


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


def decay_mask(params: Any, no_decay: Sequence[str]) -> Any:
    """Returns a tree of bools: True where weight decay applies (paths not matching no_decay)."""
    pats = [re.compile(p) for p in no_decay]
    return map_with_path(lambda path, _: not any(p.search(path) for p in pats), params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """Returns AdamW (with the schedule, weight-decay mask and optional global-norm clip)."""
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(
        optax.adamw(
            make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=lambda p: decay_mask(p, cfg.no_decay),
        )
    )
    return optax.chain(*parts)


def zeros_like_tree(tree: Any) -> Any:
    """Returns a tree of zeros with the shapes and dtypes of `tree`."""
    return jax.tree.map(lambda x: jax.numpy.zeros(x.shape, x.dtype), tree)
