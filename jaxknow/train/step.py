"""The pure training step and the losses it is built from (scoring for evaluation lives in
`eval/scoring`).

A batch is a dict of [B, T] arrays: ``inputs`` (token ids), ``targets`` (next-token ids),
``weights`` (float per-token loss weights; 0 removes a token from loss and gradient),
``segment_ids`` (document index within a packed row, 0 = padding) and ``positions``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from jaxknow.model import transformer
from jaxknow.model.config import ModelConfig
from jaxknow.parallel.rules import NO_SHARDING, Sharder
from jaxknow.train.optim import global_norm, norm_is_layerwise
from jaxknow.train.state import TrainState, merge_params

Batch = Mapping[str, jax.Array]
BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")
BATCH_AXES = ("batch", "length")


def token_nll(
    params: Mapping[str, Any],
    hidden: jax.Array,
    targets: jax.Array,
    cfg: ModelConfig,
    sharder: Sharder = NO_SHARDING,
    chunk: int = 0,
) -> jax.Array:
    """Returns the negative log-likelihood [B, T] of `targets` under the model's logits.

    With `chunk` > 0 the vocabulary projection and softmax run over `chunk` positions at a
    time under rematerialisation, so the float32 [B, T, V] logits never exist at once.
    """

    def nll_of(h: jax.Array, tgt: jax.Array) -> jax.Array:
        lg = transformer.logits(params, h, cfg, sharder)
        lse = jax.nn.logsumexp(lg, axis=-1)
        picked = jnp.take_along_axis(lg, tgt[..., None], axis=-1)[..., 0]
        return lse - picked

    b, t, d = hidden.shape
    if chunk <= 0 or chunk >= t:
        return nll_of(hidden, targets)
    if t % chunk:
        raise ValueError(f"loss chunk {chunk} must divide the sequence length {t}")
    n = t // chunk
    hs = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)
    ts = targets.reshape(b, n, chunk).swapaxes(0, 1)
    body = jax.checkpoint(lambda _, x: (None, nll_of(*x)))
    _, nll = jax.lax.scan(body, None, (hs, ts))
    return nll.swapaxes(0, 1).reshape(b, t)


def batch_nll(
    params: Mapping[str, Any], batch: Batch, cfg: ModelConfig, sharder: Sharder, chunk: int = 0
) -> jax.Array:
    """Returns the per-token negative log-likelihood [B, T] of a batch."""
    out = transformer.forward(
        params,
        batch["inputs"],
        cfg,
        positions=batch["positions"],
        segment_ids=batch["segment_ids"],
        sharder=sharder,
    )
    return token_nll(params, out.hidden, batch["targets"], cfg, sharder, chunk)


def current_lr(opt_state: Any, schedule: optax.Schedule) -> jax.Array:
    """Returns the learning rate the optimizer applies next (from its schedule counter)."""
    states = [
        s
        for s in jax.tree.leaves(
            opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState)
        )
        if isinstance(s, optax.ScaleByScheduleState)
    ]
    if not states:
        return jnp.zeros((), jnp.float32)
    return jnp.asarray(schedule(states[0].count), jnp.float32)


def weighted_loss(
    trainable: Any,
    frozen: Any,
    batch: Batch,
    denom: jax.Array,
    cfg: ModelConfig,
    sharder: Sharder,
    loss_chunk: int = 0,
) -> jax.Array:
    """Returns the weighted NLL sum of `batch` divided by `denom` (the whole batch's weight
    sum, so that micro-batches and device shards add up to the batch's weighted mean)."""
    nll = batch_nll(merge_params(trainable, frozen), batch, cfg, sharder, loss_chunk)
    return jnp.sum(nll * batch["weights"].astype(jnp.float32)) / denom


def pure_data_axis(sharder: Sharder, batch_size: int) -> str | None:
    """Returns "data" when the sharder's mesh splits only the batch (every other mesh axis has
    size 1, so every parameter is replicated) and `batch_size` rows divide evenly over it,
    else None."""
    mesh = sharder.mesh
    if mesh is None or mesh.shape.get("data", 1) < 2 or batch_size % mesh.shape["data"]:
        return None
    if any(size > 1 for name, size in mesh.shape.items() if name != "data"):
        return None
    return "data"


def _data_parallel_grads(
    state: TrainState,
    batch: Batch,
    denom: jax.Array,
    mesh: Mesh,
    axis: str,
    cfg: ModelConfig,
    loss_chunk: int,
) -> tuple[jax.Array, Any]:
    """Returns (loss, gradients) of the weighted mean NLL, each device differentiating its own
    batch shard and the partial results summed once at the end.

    Left to the partitioner, a scanned model's backward pass all-reduces each layer's
    gradients inside the scan: one collective per layer per step, which on CPU costs more than
    the layer itself at small widths. Here the collectives are one `psum` per parameter kind
    after the backward pass. Only for a mesh that splits nothing but the batch."""

    def local(trainable: Any, frozen: Any, mb: Batch, den: jax.Array) -> tuple[jax.Array, Any]:
        loss, grads = jax.value_and_grad(weighted_loss)(
            trainable, frozen, mb, den, cfg, NO_SHARDING, loss_chunk
        )
        return jax.lax.psum((loss, grads), axis)

    replicated = PartitionSpec()
    fn = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(replicated, replicated, PartitionSpec(axis), replicated),
        out_specs=replicated,
        # Without the varying-value check, the gradient of a replicated input is each device's
        # own partial sum (with it, JAX would insert the reduction where the parameters meet
        # the batch shard: inside the scanned layers again); the psum above is the one sum.
        check_vma=False,
    )
    return fn(state.params, state.frozen, dict(batch), denom)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    cfg: ModelConfig,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    sharder: Sharder = NO_SHARDING,
    grad_accum: int = 1,
    loss_chunk: int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """Returns (new state, metrics) after one optimizer update on `batch`.

    The loss is the weighted mean token NLL over the whole batch; with `grad_accum` > 1 the
    batch is processed in that many micro-batches whose gradients sum to the same value.
    Metrics: loss, grad_norm, lr (the rate used by this update), weight_sum, tokens.
    The state's layers are stacked (a per-layer state, `train.state.homogeneous_layers`, is
    stacked for the forward pass by `merge_params`): the gradients come out in the state's
    layout and each stacked parameter kind is updated by one op.
    """
    total_w = jnp.sum(batch["weights"].astype(jnp.float32))
    denom = jnp.maximum(total_w, 1e-9)

    def loss_of(trainable: Any, mb: Batch) -> jax.Array:
        return weighted_loss(trainable, state.frozen, mb, denom, cfg, sharder, loss_chunk)

    grad_fn = jax.value_and_grad(loss_of)
    data_axis = pure_data_axis(sharder, batch["inputs"].shape[0])
    if grad_accum == 1 and data_axis is not None:
        loss, grads = _data_parallel_grads(
            state, batch, denom, sharder.mesh, data_axis, cfg, loss_chunk
        )
    elif grad_accum == 1:
        loss, grads = grad_fn(state.params, batch)
    else:
        b = batch["inputs"].shape[0]
        if b % grad_accum:
            raise ValueError(f"batch size {b} is not divisible by grad_accum={grad_accum}")

        def split(x: jax.Array) -> jax.Array:
            # [B, T] -> [A, B/A, T] taking every A-th row, so each device's rows stay local.
            x = x.reshape(b // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1)
            return sharder.constrain(x, (None, "batch", "length"))

        micro = {k: split(v) for k, v in batch.items()}
        zero = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)

        def body(carry: Any, mb: Batch) -> tuple[Any, None]:
            acc_loss, acc_grads = carry
            loss_mb, g = grad_fn(state.params, mb)
            return (
                acc_loss + loss_mb,
                jax.tree.map(lambda a, x: a + x.astype(jnp.float32), acc_grads, g),
            ), None

        (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zero), micro)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)

    lr = current_lr(state.opt_state, schedule)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "grad_norm": global_norm(grads, layerwise=norm_is_layerwise(cfg)),
        "lr": lr,
        "weight_sum": total_w,
        "tokens": jnp.sum((batch["segment_ids"] > 0).astype(jnp.float32)),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def scan_steps(step: Callable[..., tuple[Any, Any, Any]]) -> Callable[..., tuple[Any, ...]]:
    """Returns `(state, batches, guard) -> (state, metrics, guards, guard)`: the guarded step
    `step` (`train.guard.guarded`) run once per batch of `batches` (arrays stacked on a leading
    axis of K) in one `lax.scan`, as K calls of `step` would run them; `metrics` and `guards`
    hold every step's values stacked on that axis, `guard` is the last step's."""

    def steps(state: Any, batches: Batch, guard: Any) -> tuple[Any, ...]:
        def body(carry: Any, batch: Batch) -> tuple[Any, Any]:
            s, m, g = step(carry[0], batch, carry[1])
            return (s, g), (m, g)

        (state, guard), (metrics, guards) = jax.lax.scan(body, (state, guard), batches)
        return state, metrics, guards, guard

    return steps
