"""The decoder-only transformer as pure functions over a parameter tree.

`forward` covers training (packed sequences with segment masking), prefill and cached
decoding; `logits` projects hidden states onto the vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxknow.model import layers
from jaxknow.model.config import ModelConfig
from jaxknow.model.layout import is_per_layer
from jaxknow.parallel.rules import NO_SHARDING, Sharder

Cache = dict[str, dict[str, jax.Array]]

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass
class ForwardOutput:
    """What `forward` returns: the final normalised hidden states [B, T, D] (or [B, R, D] at
    the positions `read_at` asked for), optionally every layer's residual stream
    [L+1, B, T, D] (index 0 = embeddings), and the updated cache."""

    hidden: jax.Array
    hiddens: jax.Array | None = None
    cache: Cache | None = None


def attention_impl(cfg: ModelConfig) -> str:
    """Returns the dot_product_attention implementation to use for this config and backend."""
    if cfg.attention_impl is not None:
        return cfg.attention_impl
    if jax.default_backend() == "gpu" and cfg.dtype in ("bfloat16", "float16"):
        return "cudnn"
    return "xla"


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype: Any = None) -> Cache:
    """Returns an all-zero KV cache for `batch` rows of `length` slots."""
    dtype = dtype or cfg.compute_dtype
    shape = (batch, length, cfg.kv_heads, cfg.dim_per_head)
    return {
        str(i): {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
        for i in range(cfg.n_layers)
    }


CACHE_AXES = ("batch", "cache_length", "act_kv_heads", "head_dim")


def _softcapped_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None,
    is_causal: bool,
    cfg: ModelConfig,
) -> jax.Array:
    """Returns attention [B, T, N, H] with soft-capped logits (`cfg.attn_logit_softcap`),
    written out in XLA ops (`jax.nn.dot_product_attention` has no soft-capping); query head i
    reads key/value head i // (N / K), as there."""
    b, t, n, h = q.shape
    s, kv = k.shape[1], k.shape[2]
    scale = cfg.attn_scale if cfg.attn_scale is not None else h**-0.5
    qg = q.reshape(b, t, kv, n // kv, h)
    scores = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = layers.softcap(scores * scale, cfg.attn_logit_softcap)
    allowed = jnp.ones((1, 1, t, s), bool)
    if mask is not None:
        allowed = allowed & mask
    if is_causal:
        allowed = allowed & jnp.tril(jnp.ones((t, s), bool), s - t)[None, None]
    scores = jnp.where(allowed[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(b, t, n, h)


def query_block(cfg: ModelConfig) -> int:
    """Returns how many queries one block of causal attention holds (0: no blocks; see
    `ModelConfig.attention_query_block`): only XLA attention is blocked, by default on a CPU
    and in blocks of 256 (64-query blocks are as fast from 512 tokens on, and no faster below:
    `benchmarks/bench_attention.py`)."""
    if attention_impl(cfg) != "xla":
        return 0
    if cfg.attention_query_block is not None:
        return cfg.attention_query_block
    return 256 if jax.default_backend() == "cpu" else 0


def _attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None,
    is_causal: bool,
    cfg: ModelConfig,
) -> jax.Array:
    """Returns attention [B, T, N, H] of queries over keys/values [B, S, K, H] (one block)."""
    if cfg.attn_logit_softcap is not None:
        return _softcapped_attention(q, k, v, mask=mask, is_causal=is_causal, cfg=cfg)
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=mask,
        is_causal=is_causal,
        scale=cfg.attn_scale,
        implementation=attention_impl(cfg),
    )


def _blocked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None,
    is_causal: bool,
    q_offset: int | None,
    cfg: ModelConfig,
) -> jax.Array:
    """Returns `_attend`'s result computed in blocks of `query_block(cfg)` queries, when the
    queries' key slots are known statically (`q_offset`: query t sits at slot q_offset + t,
    keys after a query's slot are hidden from it by `is_causal` or by `mask`): each block
    reads only the keys up to its last query's slot, so the masked upper triangle is skipped
    and a block's scores stay in cache. Equal to one block up to the order of the softmax's
    sums (a key hidden from a query weighs exactly 0 either way)."""
    t = q.shape[1]
    block = query_block(cfg)
    if q_offset is None or block <= 0 or t <= block:
        return _attend(q, k, v, mask=mask, is_causal=is_causal, cfg=cfg)
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        keys = min(q_offset + end, k.shape[1])
        m = None if mask is None else mask[:, :, start:end, :keys]
        if is_causal:
            q_slot = q_offset + jnp.arange(start, end)
            causal = (jnp.arange(keys)[None, :] <= q_slot[:, None])[None, None]
            m = causal if m is None else m & causal
        outs.append(
            _attend(q[:, start:end], k[:, :keys], v[:, :keys], mask=m, is_causal=False, cfg=cfg)
        )
    return jnp.concatenate(outs, axis=1)


def rows(x: jax.Array, at: jax.Array) -> jax.Array:
    """Returns x [B, T, ...] at positions `at` [B, R] along its second axis: [B, R, ...]."""
    return jnp.take_along_axis(x, at.reshape(at.shape + (1,) * (x.ndim - 2)), axis=1)


def _mask_rows(
    mask: jax.Array | None, is_causal: bool, read_at: jax.Array, batch: int, keys: int
) -> jax.Array:
    """Returns the attention mask [B, 1, R, S] of the queries at positions `read_at` [B, R]
    over `keys` key slots (of an uncached pass, where query t sits at slot t, or of a cached
    pass, whose `mask` already holds causality)."""
    picked = None
    if mask is not None:
        full = jnp.broadcast_to(mask, (batch, 1) + mask.shape[2:])
        picked = jnp.take_along_axis(full, read_at[:, None, :, None], axis=2)
    if is_causal:
        causal = (jnp.arange(keys)[None, None, :] <= read_at[:, :, None])[:, None]
        picked = causal if picked is None else picked & causal
    if picked is None:
        raise ValueError("read_at needs a causal or an explicit attention mask")
    return picked


def _attention(
    p: Mapping[str, Any],
    x: jax.Array,
    *,
    cfg: ModelConfig,
    positions: jax.Array,
    mask: jax.Array | None,
    is_causal: bool,
    inv_freq: jax.Array | None,
    sharder: Sharder,
    cache: dict[str, jax.Array] | None,
    cache_index: jax.Array | int | None,
    read_at: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """Returns (self-attention's output, the updated cache); with `read_at` [B, R] only the
    queries at those positions attend (`mask` then holds their rows) and the output is theirs."""
    q_positions = positions
    if read_at is None:
        q = layers.dense(p["q"], x, "btd,dnh->btnh", cfg)
    else:
        q = layers.dense(p["q"], rows(x, read_at), "btd,dnh->btnh", cfg)
        q_positions = rows(positions, read_at)
    k = layers.dense(p["k"], x, "btd,dnh->btnh", cfg)
    v = layers.dense(p["v"], x, "btd,dnh->btnh", cfg)
    q = sharder.constrain(q, ("batch", "length", "act_heads", None))
    k = sharder.constrain(k, ("batch", "length", "act_kv_heads", None))
    v = sharder.constrain(v, ("batch", "length", "act_kv_heads", None))
    if cfg.qk_norm:
        q = layers.norm(p["q_norm"], q, cfg)
        k = layers.norm(p["k_norm"], k, cfg)
    if inv_freq is not None:
        q = layers.apply_rope(q, q_positions, inv_freq)
        k = layers.apply_rope(k, positions, inv_freq)
    new_cache = None
    if cache is not None:
        idx = (0, cache_index, 0, 0)
        k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), idx)
        v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), idx)
        k = sharder.constrain(k, CACHE_AXES)
        v = sharder.constrain(v, CACHE_AXES)
        new_cache = {"k": k, "v": v}
        k, v = k.astype(q.dtype), v.astype(q.dtype)
    q_offset: int | None = None  # read rows and decoding steps: one block
    if read_at is None and cache is None:
        q_offset = 0  # query t sits at key slot t
    elif read_at is None and isinstance(cache_index, int):
        q_offset = cache_index  # a prefill at a static slot (0) knows its queries' slots
    out = _blocked_attention(q, k, v, mask=mask, is_causal=is_causal, q_offset=q_offset, cfg=cfg)
    out = sharder.constrain(out, ("batch", "length", "act_heads", None))
    y = layers.dense(p["o"], out, "btnh,nhd->btd", cfg)
    return y, new_cache


def _block(
    p: Mapping[str, Any],
    x: jax.Array,
    cache: dict[str, jax.Array] | None,
    *,
    cfg: ModelConfig,
    positions: jax.Array,
    mask: jax.Array | None,
    is_causal: bool,
    inv_freq: jax.Array | None,
    sharder: Sharder,
    cache_index: jax.Array | int | None,
    read_at: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """Returns (one layer's output stream, its updated cache); with `read_at` [B, R] (the
    last layer, when only those positions are read) its queries, attention output and MLP
    run at those positions only: keys and values still come from every position."""
    h = layers.norm(p["attn_norm"], x, cfg)
    a, new_cache = _attention(
        p["attn"],
        h,
        cfg=cfg,
        positions=positions,
        mask=mask,
        is_causal=is_causal,
        inv_freq=inv_freq,
        sharder=sharder,
        cache=cache,
        cache_index=cache_index,
        read_at=read_at,
    )
    if read_at is not None:
        x = rows(x, read_at)
    if cfg.post_norms:
        a = layers.norm(p["attn_post_norm"], a, cfg)
    x = sharder.constrain(x + a, ("batch", "length", "act_embed"))
    h = layers.norm(p["mlp_norm"], x, cfg)
    m = layers.mlp(p["mlp"], h, cfg, sharder)
    if cfg.post_norms:
        m = layers.norm(p["mlp_post_norm"], m, cfg)
    x = sharder.constrain(x + m, ("batch", "length", "act_embed"))
    return x, new_cache


@dataclasses.dataclass
class _LocalLayers:
    """What the sliding-window layers use instead of the global layers' mask and rotary
    frequencies, and which layers they are (bool [L])."""

    mask: jax.Array
    inv_freq: jax.Array | None
    flags: jax.Array


def _window_masks(
    cfg: ModelConfig,
    mask: jax.Array | None,
    is_causal: bool,
    q_slot: jax.Array,
    s: int,
) -> tuple[jax.Array, jax.Array]:
    """Returns (global mask, local mask) for queries at slots `q_slot` [T] over `s` key slots:
    the local one also hides keys `cfg.sliding_window` or more slots back. The global mask is
    made explicit (causal) when `mask` is None, so that a scan can select between the two."""
    k_slot = jnp.arange(s)
    causal = (k_slot[None, :] <= q_slot[:, None])[None, None]  # [1, 1, T, S]
    window = (k_slot[None, :] > q_slot[:, None] - cfg.sliding_window)[None, None]
    if mask is None:
        mask = causal if is_causal else jnp.ones_like(causal)
    elif is_causal:
        mask = mask & causal
    return mask, mask & window


def _scan_blocks(
    block: Any,
    stacked: Any,
    x: jax.Array,
    *,
    positions: jax.Array,
    mask: jax.Array | None,
    inv_freq: jax.Array | None,
    collect_hidden: bool,
    local: _LocalLayers | None = None,
    start_layer: jax.Array | None = None,
    stop_layer: int | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """Runs `block` over the stacked layers with `jax.lax.scan`; returns the last residual
    stream and, with `collect_hidden`, every layer's [L+1, B, T, D] (index 0 = input).

    With `local` (a mix of sliding-window and global layers) the per-layer is-local flags are
    scanned beside the parameters and select each layer's mask and rotary frequencies. With
    `start_layer` the layers below it pass the residual stream through (`forward`); with
    `stop_layer` only the layers below it run."""

    def body(carry: jax.Array, xs: Any) -> tuple[jax.Array, jax.Array | None]:
        layer_p, is_local, i = xs
        if layer_p is None:  # only indices scanned: layer i read in place from the stack
            layer_p = jax.tree.map(lambda w: w[i], stacked)
        m, f = mask, inv_freq
        if local is not None:
            m = jnp.where(is_local, local.mask, mask)
            if inv_freq is not None:
                f = jnp.where(is_local, local.inv_freq, inv_freq)

        def run(h: jax.Array) -> jax.Array:
            return block(
                layer_p, h, None, positions=positions, mask=m, inv_freq=f, cache_index=None
            )[0]

        y = run(carry) if start_layer is None else jax.lax.cond(i >= start_layer, run, _same, carry)
        return y, (y if collect_hidden else None)

    flags = local.flags if local is not None else None
    if stop_layer is not None:
        # The indices below the stop are scanned, each layer read in place, rather than a
        # slice of the stack, which XLA may copy whole before the loop.
        flags = None if flags is None else flags[:stop_layer]
        out, ys = jax.lax.scan(body, x, (None, flags, jnp.arange(stop_layer)))
    else:
        # Layer indices are scanned only when resuming, so a plain pass compiles as it did.
        index = None if start_layer is None else jnp.arange(jax.tree.leaves(stacked)[0].shape[0])
        out, ys = jax.lax.scan(body, x, (stacked, flags, index))
    hiddens = jnp.concatenate([x[None], ys]) if collect_hidden else None
    return out, hiddens


def _same(x: Any) -> Any:
    return x


def embed(
    params: Mapping[str, Any],
    tokens: jax.Array,
    positions: jax.Array,
    cfg: ModelConfig,
    sharder: Sharder = NO_SHARDING,
) -> jax.Array:
    """Returns the input embeddings [B, T, D] in the compute dtype."""
    e = params["embed"]
    dt = cfg.compute_dtype
    # Gather from a whole (all-gathered) table, as FSDP does for every weight it uses.
    table = sharder.constrain(e["tokens"].astype(dt), (None, None))
    x = jnp.take(table, tokens, axis=0)
    if "lora_a" in e:  # low-rank update of the input embedding
        x = x + cfg.lora_scale * (
            jnp.take(e["lora_a"], tokens, axis=0).astype(dt) @ e["lora_b"].astype(dt)
        )
    if cfg.embed_scale:
        x = x * jnp.asarray(cfg.d_model**0.5, dt)
    if cfg.pos_embedding == "learned":
        x = x + jnp.take(e["positions"], positions, axis=0).astype(dt)
    return x


def _last_layer_runner(
    cfg: ModelConfig,
    read_at: jax.Array,
    *,
    mask: jax.Array | None,
    is_causal: bool,
    keys: int,
    local: _LocalLayers | None,
    positions: jax.Array,
    inv_freq: jax.Array | None,
    sharder: Sharder,
    cache_index: jax.Array | int | None,
    start_layer: jax.Array | None,
    remat: bool,
) -> Any:
    """Returns `run(layer_params, x, layer_cache) -> (x at read_at, cache)`: the last layer
    computed at the positions `read_at` only (`forward`); `local`: it is a sliding-window
    layer. When resuming past it (`start_layer` = L) the stream is only read there; `remat`:
    checkpointed as `forward`'s other layers are."""
    b = read_at.shape[0]
    row_mask = _mask_rows(mask if local is None else local.mask, is_causal, read_at, b, keys)
    block = functools.partial(
        _block,
        cfg=cfg,
        is_causal=False,
        sharder=sharder,
        read_at=read_at,
        positions=positions,
        mask=row_mask,
        inv_freq=inv_freq if local is None else local.inv_freq,
        cache_index=cache_index,
    )
    if remat:
        block = jax.checkpoint(block, policy=_REMAT_POLICIES[cfg.remat])

    def run(layer_p: Any, x: jax.Array, layer_cache: Any) -> tuple[jax.Array, Any]:
        if start_layer is None:
            return block(layer_p, x, layer_cache)
        return jax.lax.cond(
            cfg.n_layers - 1 >= start_layer,
            block,
            lambda _, x, c: (rows(x, read_at), c),
            layer_p,
            x,
            layer_cache,
        )

    return run


def forward(
    params: Mapping[str, Any],
    tokens: jax.Array,
    cfg: ModelConfig,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    sharder: Sharder = NO_SHARDING,
    cache: Cache | None = None,
    cache_index: jax.Array | int | None = None,
    kv_valid: jax.Array | None = None,
    collect_hidden: bool = False,
    hidden_in: jax.Array | None = None,
    start_layer: jax.Array | None = None,
    read_at: jax.Array | None = None,
) -> ForwardOutput:
    """Runs the transformer on tokens [B, T]; returns a ForwardOutput.

    Training / scoring: `segment_ids` [B, T] (documents of a packed row; with
    cfg.segment_masking attention never crosses a boundary) and `positions` [B, T].
    Cached decoding: pass `cache` (see `init_cache`), `cache_index` (the slot of tokens[:, 0];
    a Python int when it is known statically, e.g. a prefill's 0, lets attention run in query
    blocks: `_blocked_attention`) and `kv_valid` [B, S] (which cache slots hold real tokens
    once these are written); the tokens attend to valid slots up to their own.
    Sliding-window layers (`cfg.sliding_window`) also hide keys that many slots back or more,
    in every mode.

    `params["layers"]` holds the layers stacked (`model.layout`: one tree with a leading [L]
    axis); with `cfg.use_scan` they run as one `lax.scan` over that axis, otherwise (and in
    cached decoding) as a loop over layer i's slices. Cached decoding may also take the
    per-layer view (`layout.unstack(params)`, made once before a decoding loop so that no
    token step slices the stack again; it always runs the loop).

    Resuming mid-stack: with `hidden_in` [B, T, D] (the residual stream entering layer
    `start_layer`, a traced int, e.g. another model's `hiddens[start_layer]`) the embedding is
    skipped and layers below `start_layer` pass the stream (and their cache entries) through
    unchanged, so models that share their first layers need not recompute them and every start
    runs in one compiled function. `hiddens` then repeats the stream at the skipped layers.

    Reading a few positions: with `read_at` [B, R] (e.g. the scored positions, a prompt's last
    token) `hidden` holds only those positions [B, R, D], and the last layer computes its
    queries, attention output and MLP there alone (keys and values, and so the cache, at every
    position): at R = 1 of 256 positions that layer costs ~6 % of its full pass.
    """
    if (hidden_in is None) != (start_layer is None):
        raise ValueError("hidden_in and start_layer go together (resuming mid-stack)")
    if read_at is not None and collect_hidden:
        raise ValueError("read_at and collect_hidden exclude each other (hiddens need every row)")
    per_layer = is_per_layer(params)
    if per_layer and cache is None:
        raise ValueError("forward takes the layers stacked (see jaxknow.model.layout.stack)")
    b, t = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = None
    is_causal = True
    if cache is not None:
        if cache_index is None or kv_valid is None:
            raise ValueError("cached decoding needs cache_index and kv_valid")
        s = kv_valid.shape[1]
        q_slot = cache_index + jnp.arange(t)
        allowed = jnp.arange(s)[None, :] <= q_slot[:, None]  # [T, S]
        mask = (kv_valid[:, None, :] & allowed[None])[:, None]  # [B, 1, T, S]
        is_causal = False
    elif segment_ids is not None and cfg.segment_masking:
        mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]

    rope = cfg.pos_embedding == "rope"
    inv_freq = layers.rope_inv_freq(cfg) if rope else None
    kinds = cfg.local_layers
    local: _LocalLayers | None = None
    if any(kinds):  # sliding-window layers: their own mask (and rotary base)
        q_slot = jnp.arange(t) if cache is None else cache_index + jnp.arange(t)
        s = t if cache is None else kv_valid.shape[1]
        global_mask, local_mask = _window_masks(cfg, mask, is_causal, q_slot, s)
        local_inv = layers.rope_inv_freq(cfg, local=True) if rope else None
        if all(kinds):
            mask, inv_freq = local_mask, local_inv
        else:
            mask = global_mask
            local = _LocalLayers(local_mask, local_inv, jnp.asarray(kinds))
    x = embed(params, tokens, positions, cfg, sharder) if hidden_in is None else hidden_in
    x = sharder.constrain(x, ("batch", "length", "act_embed"))

    remat = cfg.remat != "none" and cache is None
    block = functools.partial(_block, cfg=cfg, is_causal=is_causal, sharder=sharder)
    if remat:
        block = jax.checkpoint(block, policy=_REMAT_POLICIES[cfg.remat])
    last = cfg.n_layers - 1
    run_last = None
    if read_at is not None:
        run_last = _last_layer_runner(
            cfg,
            read_at,
            mask=mask,
            is_causal=is_causal,
            keys=t if cache is None else kv_valid.shape[1],
            local=local if local is not None and kinds[last] else None,
            positions=positions,
            inv_freq=inv_freq,
            sharder=sharder,
            cache_index=cache_index,
            start_layer=start_layer,
            remat=remat,
        )
    stacked = params["layers"]
    if cache is None and cfg.use_scan and cfg.n_layers >= 2:
        x, hiddens_scan = _scan_blocks(
            block,
            stacked,
            x,
            positions=positions,
            mask=mask,
            inv_freq=inv_freq,
            collect_hidden=collect_hidden,
            local=local,
            start_layer=start_layer,
            stop_layer=None if run_last is None else last,
        )
        if run_last is not None:
            x, _ = run_last(jax.tree.map(lambda w: w[last], stacked), x, None)
        h = layers.norm(params["final_norm"], x, cfg)
        return ForwardOutput(hidden=h, hiddens=hiddens_scan)
    hiddens = [x] if collect_hidden else None
    new_cache: Cache | None = {} if cache is not None else None
    # One split per parameter kind (its gradient is one concatenation of the layers'), not a
    # slice per layer (whose gradients would each be padded to the whole stack and summed).
    if per_layer:
        layer_params = [stacked[str(i)] for i in range(cfg.n_layers)]
    else:
        leaves, treedef = jax.tree.flatten(stacked)
        pieces = [jnp.split(p, cfg.n_layers) for p in leaves]
        layer_params = [
            jax.tree.unflatten(treedef, [p[i][0] for p in pieces]) for i in range(cfg.n_layers)
        ]
    for i in range(cfg.n_layers):
        layer_cache = cache[str(i)] if cache is not None else None
        is_local = local is not None and kinds[i]
        run = functools.partial(
            block,
            layer_params[i],
            positions=positions,
            mask=local.mask if is_local else mask,
            inv_freq=local.inv_freq if is_local else inv_freq,
            cache_index=cache_index,
        )
        if i == last and run_last is not None:
            x, c = run_last(layer_params[i], x, layer_cache)
        elif start_layer is None:
            x, c = run(x, layer_cache)
        else:
            x, c = jax.lax.cond(i >= start_layer, run, lambda *a: a, x, layer_cache)
        if new_cache is not None:
            new_cache[str(i)] = c
        if hiddens is not None:
            hiddens.append(x)
    h = layers.norm(params["final_norm"], x, cfg)
    return ForwardOutput(
        hidden=h,
        hiddens=jnp.stack(hiddens) if hiddens is not None else None,
        cache=new_cache,
    )


def output_kernel(params: Mapping[str, Any]) -> tuple[jax.Array, str]:
    """Returns the output projection and its einsum equation (tied or untied head)."""
    if "lm_head" in params:
        return params["lm_head"]["kernel"], "btd,dv->btv"
    return params["embed"]["tokens"], "btd,vd->btv"


def logits(
    params: Mapping[str, Any], hidden: jax.Array, cfg: ModelConfig, sharder: Sharder = NO_SHARDING
) -> jax.Array:
    """Returns float32 logits [B, T, V] for hidden states [B, T, D] (soft-capped when
    `cfg.final_logit_softcap` is set)."""
    w, eq = output_kernel(params)
    out = layers.project(
        eq, hidden, w.astype(cfg.compute_dtype), preferred_element_type=jnp.float32
    )
    out = layers.softcap(out, cfg.final_logit_softcap)
    return sharder.constrain(out, ("batch", "length", "act_vocab"))


def apply(
    params: Mapping[str, Any], tokens: jax.Array, cfg: ModelConfig, **kwargs: Any
) -> jax.Array:
    """Returns float32 logits [B, T, V] for tokens [B, T] (see `forward` for the options)."""
    out = forward(params, tokens, cfg, **kwargs)
    return logits(params, out.hidden, cfg, kwargs.get("sharder", NO_SHARDING))
