"""The non-finite guard: a wrapper around the train step that notices a non-finite loss or
gradient norm inside the jitted step (no extra host synchronisation per step).

The wrapped step carries a small `GuardState` (replicated scalars) from step to step: the first
step whose loss or gradient norm was not finite, its values, and how many updates were skipped.
With ``mode="skip"`` such an update is dropped inside the jit (parameters and optimizer state
stay as they were; the step counter advances). The loop reads the guard state only when it
already synchronises (logged steps, checkpoint saves, the end of the run) and, with
``mode="stop"``, stops there without saving the damaged state.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxknow.config import Nonfinite

MODES = typing.get_args(Nonfinite)

GuardState = dict[str, jax.Array]


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient norm; the message names the step."""


def initial_guard() -> GuardState:
    """Returns the guard state of a run that has seen no non-finite step."""
    return {
        "bad_step": jnp.zeros((), jnp.int32),
        "bad_loss": jnp.zeros((), jnp.float32),
        "bad_grad_norm": jnp.zeros((), jnp.float32),
        "skipped": jnp.zeros((), jnp.int32),
    }


def guarded(
    step_fn: Callable[..., tuple[Any, dict[str, jax.Array]]], mode: str
) -> Callable[..., tuple[Any, dict[str, jax.Array], GuardState]]:
    """Returns `(state, batch, guard) -> (state, metrics, guard)` around
    `step_fn(state, batch) -> (state, metrics)`; `metrics` must hold "loss" and "grad_norm"
    and `state.step` the step count."""
    if mode not in MODES:
        raise ValueError(f"non-finite mode {mode!r}: must be one of {MODES}")

    def step(state: Any, batch: Any, guard: GuardState) -> tuple[Any, dict, GuardState]:
        new, metrics = step_fn(state, batch)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        first = (~finite) & (guard["bad_step"] == 0)
        guard = {
            "bad_step": jnp.where(first, state.step + 1, guard["bad_step"]).astype(jnp.int32),
            "bad_loss": jnp.where(first, metrics["loss"], guard["bad_loss"]).astype(jnp.float32),
            "bad_grad_norm": jnp.where(first, metrics["grad_norm"], guard["bad_grad_norm"]).astype(
                jnp.float32
            ),
            "skipped": guard["skipped"],
        }
        if mode == "skip":
            kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
            new = kept.replace(step=new.step)
            guard["skipped"] = guard["skipped"] + (~finite).astype(jnp.int32)
        return new, metrics, guard

    return step


def check(guard: GuardState, mode: str, max_skipped: int, last_checkpoint: int | None) -> int:
    """Raises NonFiniteError when the fetched guard state says the run must stop (mode "stop"
    and a non-finite step was seen, or more than `max_skipped` updates skipped); returns the
    number of skipped updates. Fetches a few scalars (a host synchronisation)."""
    g = jax.device_get(guard)
    bad = int(g["bad_step"])
    skipped = int(g["skipped"])
    where = (
        f"the newest checkpoint is step {last_checkpoint}"
        if last_checkpoint is not None
        else "no checkpoint was saved"
    )
    if mode == "stop" and bad:
        raise NonFiniteError(
            f"non-finite training at step {bad} (loss={float(g['bad_loss'])}, "
            f"grad_norm={float(g['bad_grad_norm'])}); stopped without saving, {where} "
            f"(lower optim.lr, or set train.nonfinite='skip' to skip such updates)"
        )
    if mode == "skip" and skipped > max_skipped:
        raise NonFiniteError(
            f"{skipped} non-finite updates skipped (the first at step {bad}, "
            f"loss={float(g['bad_loss'])}), more than train.max_skipped={max_skipped}; "
            f"stopped without saving, {where}"
        )
    return skipped
