"""Log-likelihoods of several multi-token continuations of one context, the context computed once.

Multiple choice scored by option text (and any request set where one context has several
continuations) would otherwise run the context once per continuation: four options, four
forward passes over a few hundred context tokens for a handful of continuation tokens. Here the
contexts of a batch are left-padded and run once into a key/value cache (`generate.prefill`,
resumable mid-stack for a `shared_prefix.SharedPrefix` model), then each continuation is one
short cached pass over its own tokens from that cache: its first token is scored from the
context's last position, every later one from the pass. The branches never see each other
(each starts from the context's cache); the result equals scoring each (context, continuation)
pair whole, up to floating-point summation order.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxknow.eval import generate, shared_prefix
from jaxknow.eval.generate import batch_rows, bucket_length, place_batch, to_host
from jaxknow.model import transformer
from jaxknow.model.config import ModelConfig
from jaxknow.model.layout import unstack
from jaxknow.parallel.rules import Sharder


def target_scores(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Returns per row (the weighted sum of the targets' log-probabilities, whether every
    weighted target is the argmax) for logits [..., K, V], targets and weights [..., K]."""
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    lp = jnp.sum((picked - jax.nn.logsumexp(logits, axis=-1)) * weights, axis=-1)
    miss = (jnp.argmax(logits, axis=-1) != targets) & (weights > 0)
    return lp, ~jnp.any(miss, axis=-1)


@functools.partial(jax.jit, static_argnames=("cfg", "width", "sharder"))
def _branch_batch(
    params: Any,
    contexts: jax.Array,
    pad: jax.Array,
    conts: jax.Array,
    weights: jax.Array,
    resume: tuple[jax.Array, jax.Array, transformer.Cache] | None = None,
    *,
    cfg: ModelConfig,
    width: int,
    sharder: Sharder,
) -> tuple[jax.Array, jax.Array]:
    """Returns (summed log-likelihood [B, O], all-greedy flag [B, O]) of the continuations
    `conts` [B, O, width] (right-padded; `weights` 1 on real tokens) of the left-padded
    `contexts` [B, P] (`pad` leading pad tokens per row)."""
    params = unstack(params)
    out, kv_valid = generate.prefill(
        params, contexts, pad, cfg=cfg, max_new=width, sharder=sharder, resume=resume
    )
    p = contexts.shape[1]
    last = out.hidden[:, -1:]
    valid = kv_valid | (jnp.arange(kv_valid.shape[1]) >= p)[None, :]
    positions = ((p - pad)[:, None] + jnp.arange(width - 1)[None, :]).astype(jnp.int32)

    def branch(_: None, xs: tuple[jax.Array, jax.Array]) -> tuple[None, tuple[jax.Array, ...]]:
        cont, w = xs
        hidden = last
        if width > 1:
            o = transformer.forward(
                params,
                cont[:, :-1],
                cfg,
                positions=positions,
                sharder=sharder,
                cache=out.cache,
                cache_index=jnp.int32(p),
                kv_valid=valid,
            )
            hidden = jnp.concatenate([last, o.hidden], axis=1)
        return None, target_scores(transformer.logits(params, hidden, cfg, sharder), cont, w)

    xs = (jnp.swapaxes(conts, 0, 1), jnp.swapaxes(weights, 0, 1))
    _, (lp, greedy) = jax.lax.scan(branch, None, xs)
    return lp.T, greedy.T


def score_branches(
    params: Any,
    cfg: ModelConfig,
    groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    *,
    batch_size: int,
    mesh: Mesh | None,
    pad_id: int = 0,
) -> list[list[tuple[float, bool]]]:
    """Returns, per (context ids, continuations) group, (summed log-likelihood, all-greedy)
    of each continuation given the context. `params` are placed on `mesh` (or a
    `SharedPrefix` of placed parameters); contexts must be non-empty and every context plus
    its longest continuation must fit ``cfg.max_seq_len + 1`` tokens (the caller cuts)."""
    plain, shared = shared_prefix.split(params)
    sharder = Sharder(mesh)
    dcfg = generate.decode_cfg(cfg)
    order = sorted(range(len(groups)), key=lambda i: -len(groups[i][0]))
    rows = batch_rows(len(groups), batch_size, mesh)
    out: list[list[tuple[float, bool]]] = [[] for _ in groups]
    for start in range(0, len(order), rows):
        idx = order[start : start + rows]
        p = bucket_length(max(len(groups[i][0]) for i in idx))
        n_opts = max(len(groups[i][1]) for i in idx)
        width = 1 << (max(len(c) for i in idx for c in groups[i][1]) - 1).bit_length()
        contexts, pad = generate.left_pad([groups[i][0] for i in idx], rows, p, pad_id)
        conts = np.zeros((rows, n_opts, width), np.int32)
        weights = np.zeros((rows, n_opts, width), np.float32)
        for r, i in enumerate(idx):
            for j, c in enumerate(groups[i][1]):
                conts[r, j, : len(c)] = c
                weights[r, j, : len(c)] = 1.0
        ctx_dev, pad_dev = place_batch(contexts, mesh), place_batch(pad, mesh)
        settings = dict(cfg=dcfg, max_new=width, sharder=sharder)
        resume = generate.prefill_resume(
            shared, "branch prefill", (contexts, pad), (ctx_dev, pad_dev), settings
        )
        lp, greedy = to_host(
            _branch_batch(
                plain,
                ctx_dev,
                pad_dev,
                place_batch(conts, mesh),
                place_batch(weights, mesh),
                resume,
                cfg=dcfg,
                width=width,
                sharder=sharder,
            )
        )
        for r, i in enumerate(idx):
            out[i] = [(float(lp[r, j]), bool(greedy[r, j])) for j in range(len(groups[i][1]))]
    return out
