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
        lg = transformer.logits(params, hidden, cfg, sharder)
        picked = jnp.take_along_axis(lg, cont[..., None], axis=-1)[..., 0]
        lp = jnp.sum((picked - jax.nn.logsumexp(lg, axis=-1)) * w, axis=-1)
        miss = (jnp.argmax(lg, axis=-1) != cont) & (w > 0)
        return None, (lp, ~jnp.any(miss, axis=-1))

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
        contexts = np.full((rows, p), pad_id, np.int32)
        pad = np.full((rows,), p - 1, np.int32)  # dummy rows: one pad token
        conts = np.zeros((rows, n_opts, width), np.int32)
        weights = np.zeros((rows, n_opts, width), np.float32)
        for r, i in enumerate(idx):
            ctx, options = groups[i]
            contexts[r, p - len(ctx) :] = ctx
            pad[r] = p - len(ctx)
            for j, c in enumerate(options):
                conts[r, j, : len(c)] = c
                weights[r, j, : len(c)] = 1.0
        ctx_dev, pad_dev = place_batch(contexts, mesh), place_batch(pad, mesh)
        resume = None
        if shared is not None and shared.start > 0:
            hiddens, cache = shared.reference_output(
                f"branch prefill max_new={width}",
                {"tokens": contexts, "pad": pad},
                lambda ref, t=ctx_dev, n=pad_dev, w=width: generate.reference_prefill(
                    ref, t, n, cfg=dcfg, max_new=w, sharder=sharder
                ),
            )
            resume = (hiddens[shared.start], jnp.int32(shared.start), cache)
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
