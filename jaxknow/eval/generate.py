"""Batched greedy generation with a KV cache, jitted and sharded like training.

How a batch runs:

- Prompts are sorted by length and cut into the fewest batches of at most `batch_size` rows,
  evened out to a multiple of 8 rows (`batch_rows`; the last batch is filled with inert dummy
  rows, so every batch of a call has one shape). Each batch is
  left-padded to a *bucketed* length (`bucket_length`: 16, 32, 64, 128, 256, then multiples
  of 256), which bounds the number of compiles.
- One jitted function runs the prefill over the padded prompts (writing cache slots 0..P-1)
  and then a `jax.lax.while_loop` that feeds one token per step (cache slot P + i - 1) and
  exits as soon as every row has stopped or `max_new_tokens` tokens exist. Positions are
  counted per row from its first real token and the cache's `kv_valid` mask hides the left
  pads, so a row decodes exactly as it would alone and unpadded.
- Stops: a boolean table over the vocabulary (`make_stop_table`); EOS and, for text generation,
  every token whose decoded text contains a newline (`newline_stop_table`). The stopping token
  is the last token returned for its row; `generate_text` drops EOS and cuts the text at the
  first newline.
- Sharding: the batch is split over the (data, fsdp) mesh axes, parameters keep their logical
  shardings (`param_shardings`) and the KV cache is sharded like activations
  (`transformer.CACHE_AXES`). Without a mesh (and with unsharded parameters) it runs on one
  device.

Parameters may come as a `shared_prefix.SharedPrefix` (a layer-delta ablation's model): the
prefill then resumes at the first layer it does not share with its reference, from the
reference's residual stream and cache (computed once per batch); decoding runs the whole model.

Prompts longer than ``cfg.max_seq_len - max_new_tokens`` tokens are cut from the left (like
lm-eval-harness), so no position exceeds what the model was built for. Cached decoding always
uses the XLA attention path: the fused cuDNN kernel is meant for training shapes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxknow.data.tokenizer import Tokenizer
from jaxknow.eval import shared_prefix
from jaxknow.model import transformer
from jaxknow.model.config import ModelConfig
from jaxknow.model.layout import unstack
from jaxknow.model.params import flatten, map_with_path, param_specs
from jaxknow.parallel.rules import DEFAULT_RULES, Rules, Sharder, logical_to_sharding

_BUCKETS = (16, 32, 64, 128, 256)


class ModelLike(Protocol):
    """Anything with parameters, a model config and a tokenizer (e.g. `LoadedModel`)."""

    params: Any
    cfg: ModelConfig
    tokenizer: Tokenizer | None


def unpack_model(
    model: ModelLike | tuple[Any, ModelConfig, Tokenizer],
) -> tuple[Any, ModelConfig, Tokenizer]:
    """Returns (params, cfg, tokenizer) of a model object or a (params, cfg, tokenizer) tuple;
    raises ValueError when there is no tokenizer."""
    if isinstance(model, tuple):
        params, cfg, tok = model
    else:
        params, cfg, tok = model.params, model.cfg, model.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer (put a tokenizer.json in its directory)")
    return params, cfg, tok


# --------------------------------------------------------------------------------------------
# Shapes and shardings shared with scoring.
# --------------------------------------------------------------------------------------------


def bucket_length(n: int) -> int:
    """Returns the padded length for `n` tokens: the next of 16, 32, 64, 128, 256, then the
    next multiple of 64 (a 5-shot prompt of ~270 tokens pads to 320, not 512: padding is
    arithmetic; each bucket compiles once)."""
    for b in _BUCKETS:
        if n <= b:
            return b
    return -(-n // 64) * 64


def batch_axis_size(mesh: Mesh | None) -> int:
    """Returns how many ways the batch is split on `mesh` (data x fsdp; 1 without a mesh)."""
    if mesh is None:
        return 1
    return int(mesh.shape["data"]) * int(mesh.shape["fsdp"])


def batch_rows(n: int, batch_size: int, mesh: Mesh | None) -> int:
    """Returns the row count of every batch for `n` items: the fewest batches of at most
    `batch_size` rows, their rows evened out and rounded up to a multiple of 8 (bounding the
    number of compiled shapes) and of the mesh's batch split. E.g. 40 items at batch 64 run
    as one batch of 40 rows, 120 as two of 64, 200 as four of 56."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    batches = max(-(-n // batch_size), 1)
    rows = -(-max(n, 1) // batches)
    rows = -(-rows // 8) * 8
    k = batch_axis_size(mesh)
    return -(-rows // k) * k


def mesh_of(params: Any) -> Mesh | None:
    """Returns the mesh the parameters are laid out on (None when they are not on a
    multi-device mesh)."""
    params, _ = shared_prefix.split(params)
    for leaf in jax.tree.leaves(params):
        sh = getattr(leaf, "sharding", None)
        if isinstance(sh, NamedSharding) and sh.mesh.size > 1:
            return sh.mesh
    return None


def param_shardings(params: Any, cfg: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """Returns the NamedSharding tree of `params` from their logical axes
    (`param_specs(cfg)`); leaves without a spec (e.g. LoRA adapters) are replicated."""
    specs = flatten(param_specs(cfg))

    def one(path: str, leaf: Any) -> NamedSharding:
        shape = tuple(np.shape(leaf))
        spec = specs.get(path)
        if spec is None or tuple(spec.shape) != shape:
            return NamedSharding(mesh, PartitionSpec())
        return logical_to_sharding(spec.axes, shape, mesh, rules, where=path)

    return map_with_path(one, params)


def place_params(params: Any, cfg: ModelConfig, mesh: Mesh | None) -> Any:
    """Returns `params` laid out with their logical shardings on `mesh` (unchanged without);
    a `SharedPrefix` comes back with its model and reference placed."""
    if mesh is None:
        return params
    plain, shared = shared_prefix.split(params)
    if shared is not None:
        return dataclasses.replace(
            shared,
            params=place_params(plain, cfg, mesh),
            reference=place_params(shared.reference, cfg, mesh),
        )
    return jax.device_put(params, param_shardings(params, cfg, mesh))


def padded_batches(
    inputs: Sequence[Sequence[int]], cfg: ModelConfig, batch_size: int, mesh: Mesh | None
) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
    """Yields (indices into `inputs`, host arrays) batches of the input sequences, longest
    first, each right-padded to a bucketed length (capped at ``cfg.max_seq_len``): ``inputs``,
    ``segment_ids`` (1 on real tokens) and ``positions``; every batch has the same row count."""
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    rows = batch_rows(len(inputs), batch_size, mesh)
    for start in range(0, len(order), rows):
        idx = order[start : start + rows]
        t = min(bucket_length(max(len(inputs[i]) for i in idx)), cfg.max_seq_len)
        arrays = {k: np.zeros((rows, t), np.int32) for k in ("inputs", "segment_ids", "positions")}
        for r, i in enumerate(idx):
            m = len(inputs[i])
            arrays["inputs"][r, :m] = inputs[i]
            arrays["segment_ids"][r, :m] = 1
            arrays["positions"][r, :m] = np.arange(m)
        yield idx, arrays


def place_batch(x: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """Returns a host array on the devices, rows split over the mesh's (data, fsdp) axes. On a
    mesh spanning several processes every process passes the same whole array and keeps its
    own rows (`jax.device_put` of a host value onto a global sharding)."""
    if mesh is None:
        return jnp.asarray(x)
    axes = ("batch",) + (None,) * (x.ndim - 1)
    return jax.device_put(x, logical_to_sharding(axes, x.shape, mesh))


def to_host(tree: Any) -> Any:
    """Returns the arrays of `tree` as whole numpy arrays. An array spread over several
    processes' devices is all-gathered (`multihost_utils.process_allgather`), so every process
    gets all of it; every process must then call this alike."""

    def one(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


# --------------------------------------------------------------------------------------------
# Stop tables.
# --------------------------------------------------------------------------------------------


def make_stop_table(
    vocab_size: int, stop_ids: Sequence[int] = (), base: np.ndarray | None = None
) -> np.ndarray:
    """Returns a bool [vocab_size] table, True for tokens that end a row: `stop_ids` plus the
    True entries of `base` (which may be shorter than the vocabulary)."""
    table = np.zeros(vocab_size, bool)
    if base is not None:
        base = np.asarray(base, bool)
        table[: min(len(base), vocab_size)] = base[:vocab_size]
    for i in stop_ids:
        if 0 <= int(i) < vocab_size:
            table[int(i)] = True
    return table


@functools.lru_cache(maxsize=8)
def _newline_table(tokenizer: Tokenizer) -> np.ndarray:
    n = tokenizer.vocab_size
    texts = tokenizer.tok.decode_batch([[i] for i in range(n)], skip_special_tokens=True)
    return np.array(["\n" in t for t in texts], bool)


def newline_stop_table(tokenizer: Tokenizer, vocab_size: int) -> np.ndarray:
    """Returns a bool [vocab_size] table, True for every token whose decoded text contains a
    newline (the stop string of free-form answers)."""
    return make_stop_table(vocab_size, base=_newline_table(tokenizer))


# --------------------------------------------------------------------------------------------
# The jitted prefill + decode loop.
# --------------------------------------------------------------------------------------------


def decode_cfg(cfg: ModelConfig) -> ModelConfig:
    """Returns the config cached passes run with (XLA attention: the fused kernels take no
    cache)."""
    return cfg if cfg.attention_impl == "xla" else cfg.replace(attention_impl="xla")


def prefill(
    params: Any,
    tokens: jax.Array,
    pad: jax.Array,
    *,
    cfg: ModelConfig,
    max_new: int,
    sharder: Sharder,
    resume: tuple[jax.Array, jax.Array, transformer.Cache] | None = None,
    collect_hidden: bool = False,
) -> tuple[transformer.ForwardOutput, jax.Array]:
    """Returns (the forward pass over left-padded prompts into a fresh cache of
    ``P + max_new`` slots, the valid-slot mask [B, S]). `params` hold the per-layer view.
    Its `hidden` is the last position's [B, 1, D] (the last layer computes no other position's
    queries or MLP), unless `collect_hidden` asks for every layer's residual stream.
    `resume` = (residual stream entering layer j, j, a cache whose layers below j hold the
    prompts' keys and values): the prefill starts at layer j (`transformer.forward`)."""
    b, p = tokens.shape
    s = p + max_new
    slots = jnp.arange(s)
    if resume is None:
        cache = transformer.init_cache(cfg, b, s)
        hidden_in = start = None
    else:
        hidden_in, start, cache = resume
    cache = jax.tree.map(lambda c: sharder.constrain(c, transformer.CACHE_AXES), cache)
    positions = jnp.maximum(jnp.arange(p, dtype=jnp.int32)[None, :] - pad[:, None], 0)
    kv_valid = (slots[None, :] >= pad[:, None]) & (slots[None, :] < p)
    out = transformer.forward(
        params,
        tokens,
        cfg,
        positions=positions,
        sharder=sharder,
        cache=cache,
        cache_index=0,  # static: the prompts' slots are known, so attention runs in blocks
        kv_valid=kv_valid,
        collect_hidden=collect_hidden,
        hidden_in=hidden_in,
        start_layer=start,
        read_at=None if collect_hidden else jnp.full((b, 1), p - 1, jnp.int32),
    )
    return out, kv_valid


@functools.partial(jax.jit, static_argnames=("cfg", "max_new", "sharder"))
def reference_prefill(
    params: Any,
    tokens: jax.Array,
    pad: jax.Array,
    *,
    cfg: ModelConfig,
    max_new: int,
    sharder: Sharder,
) -> tuple[jax.Array, transformer.Cache]:
    """Returns (the residual stream at every layer [L+1, B, P, D], the prefill cache) of
    left-padded prompts: what `_generate_batch` resumes from (`shared_prefix`)."""
    out, _ = prefill(
        unstack(params),
        tokens,
        pad,
        cfg=cfg,
        max_new=max_new,
        sharder=sharder,
        collect_hidden=True,
    )
    return out.hiddens, out.cache


def left_pad(
    seqs: Sequence[Sequence[int]], rows: int, length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (tokens [rows, length], leading pad count [rows]) of `seqs` left-padded to
    `length`; rows past the sequences are dummies holding one pad token."""
    tokens = np.full((rows, length), pad_id, np.int32)
    pad = np.full((rows,), length - 1, np.int32)
    for r, ids in enumerate(seqs):
        tokens[r, length - len(ids) :] = ids
        pad[r] = length - len(ids)
    return tokens, pad


def prefill_resume(
    shared: shared_prefix.SharedPrefix | None,
    what: str,
    host: tuple[np.ndarray, np.ndarray],
    device: tuple[jax.Array, jax.Array],
    settings: dict[str, Any],
) -> tuple[jax.Array, jax.Array, transformer.Cache] | None:
    """Returns where a `SharedPrefix` model's prefill of these left-padded prompts resumes
    (the reference's stream at its first own layer, that layer, the reference's prefill
    cache; computed once per batch), or None to run it whole. `host` / `device` hold
    (tokens, pad) on the host and placed; `settings` are `reference_prefill`'s."""
    if shared is None or shared.start == 0:
        return None
    hiddens, cache = shared.reference_output(
        f"{what} max_new={settings['max_new']}",
        {"tokens": host[0], "pad": host[1]},
        lambda ref: reference_prefill(ref, *device, **settings),
    )
    return hiddens[shared.start], jnp.int32(shared.start), cache


@functools.partial(jax.jit, static_argnames=("cfg", "max_new", "sharder"))
def _generate_batch(
    params: Any,
    tokens: jax.Array,
    pad: jax.Array,
    active: jax.Array,
    stops: jax.Array,
    pad_id: jax.Array,
    resume: tuple[jax.Array, jax.Array, transformer.Cache] | None = None,
    *,
    cfg: ModelConfig,
    max_new: int,
    sharder: Sharder,
) -> tuple[jax.Array, jax.Array]:
    """Returns (generated tokens [B, max_new], their counts [B]) for left-padded prompts,
    the prefill resumed mid-stack when `resume` is given (`prefill`)."""
    # The layers' per-layer view, sliced once here: each token step then reads every layer's
    # weights in place, where slicing the stack inside the loop copied them at every token.
    params = unstack(params)
    b, p = tokens.shape
    prompt_len = p - pad
    out, kv_valid = prefill(
        params, tokens, pad, cfg=cfg, max_new=max_new, sharder=sharder, resume=resume
    )
    slots = jnp.arange(kv_valid.shape[1])

    def next_token(hidden_last: jax.Array) -> jax.Array:
        lg = transformer.logits(params, hidden_last, cfg, sharder)[:, 0]
        return jnp.argmax(lg, axis=-1).astype(jnp.int32)

    tok = next_token(out.hidden[:, -1:])
    done = ~active | stops[tok]
    buf = jnp.full((b, max_new), pad_id, jnp.int32).at[:, 0].set(tok)
    buf = sharder.constrain(buf, ("batch", None))
    counts = jnp.ones((b,), jnp.int32)

    def cond(state: tuple[Any, ...]) -> jax.Array:
        i, _, done, *_ = state
        return (i < max_new) & ~jnp.all(done)

    def body(state: tuple[Any, ...]) -> tuple[Any, ...]:
        i, tok, done, buf, counts, cache, kv_valid = state
        slot = p + i - 1
        kv_valid = kv_valid | (slots == slot)[None, :]
        pos = (prompt_len + i - 1)[:, None].astype(jnp.int32)
        o = transformer.forward(
            params,
            tok[:, None],
            cfg,
            positions=pos,
            sharder=sharder,
            cache=cache,
            cache_index=slot.astype(jnp.int32),
            kv_valid=kv_valid,
        )
        nxt = jnp.where(done, pad_id, next_token(o.hidden))
        buf = jax.lax.dynamic_update_slice(buf, nxt[:, None], (0, i))
        counts = counts + (~done).astype(jnp.int32)
        done = done | stops[nxt]
        return i + 1, nxt, done, buf, counts, o.cache, kv_valid

    state = (jnp.int32(1), tok, done, buf, counts, out.cache, kv_valid)
    _, _, _, buf, counts, _, _ = jax.lax.while_loop(cond, body, state)
    return buf, counts


def generate_tokens(
    params: Any,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    stop_table: np.ndarray | None = None,
    pad_id: int = 0,
    batch_size: int = 64,
    mesh: Mesh | None = None,
) -> list[list[int]]:
    """Returns the greedy continuation of each prompt (token ids), in prompt order.

    A row ends after `max_new_tokens` tokens or at the first token in `stop_ids` or marked in
    `stop_table` (bool [>= vocab]); that stopping token is the last one returned. Equal to
    step-by-step greedy decoding without a cache. `mesh` defaults to the parameters' mesh.
    """
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    limit = cfg.max_seq_len - max_new_tokens
    if limit <= 0:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in "
            f"model.max_seq_len={cfg.max_seq_len}"
        )
    if not prompts:
        return []
    for i, pr in enumerate(prompts):
        if len(pr) == 0:
            raise ValueError(f"prompt {i} is empty (prompts need at least one token)")
    mesh = mesh if mesh is not None else mesh_of(params)
    params, shared = shared_prefix.split(place_params(params, cfg, mesh))
    stops = make_stop_table(cfg.vocab_size, stop_ids, stop_table)
    stops_dev = (
        jnp.asarray(stops)
        if mesh is None
        else jax.device_put(stops, NamedSharding(mesh, PartitionSpec()))
    )
    settings = dict(cfg=decode_cfg(cfg), max_new=max_new_tokens, sharder=Sharder(mesh))
    fn = functools.partial(_generate_batch, **settings)
    cut = [list(pr)[-limit:] for pr in prompts]
    order = sorted(range(len(cut)), key=lambda i: -len(cut[i]))
    rows = batch_rows(len(cut), batch_size, mesh)
    results: list[list[int]] = [[] for _ in cut]
    for start in range(0, len(order), rows):
        idx = order[start : start + rows]
        p = bucket_length(max(len(cut[i]) for i in idx))
        tokens, pad = left_pad([cut[i] for i in idx], rows, p, pad_id)
        active = np.arange(rows) < len(idx)  # dummy rows: inactive
        tokens_dev, pad_dev = place_batch(tokens, mesh), place_batch(pad, mesh)
        resume = prefill_resume(shared, "prefill", (tokens, pad), (tokens_dev, pad_dev), settings)
        buf, counts = fn(
            params,
            tokens_dev,
            pad_dev,
            place_batch(active, mesh),
            stops_dev,
            jnp.int32(pad_id),
            resume,
        )
        buf, counts = to_host((buf, counts))
        for r, i in enumerate(idx):
            results[i] = buf[r, : counts[r]].tolist()
    return results


def generate_text(
    model: ModelLike | tuple[Any, ModelConfig, Tokenizer],
    prompts: Sequence[str],
    max_new_tokens: int = 50,
    stop_at_newline: bool = True,
    *,
    batch_size: int = 64,
    mesh: Mesh | None = None,
    bos: bool = True,
) -> list[str]:
    """Returns the greedy continuation text of each prompt (prompt ids =
    ``tokenizer.prefix() + tokenizer.encode(prompt)``, without the prefix when not `bos`),
    stopping at EOS and, when `stop_at_newline`, at the first newline (the text is cut before
    it)."""
    params, cfg, tok = unpack_model(model)
    base = newline_stop_table(tok, cfg.vocab_size) if stop_at_newline else None
    table = make_stop_table(cfg.vocab_size, (tok.eos_id,), base)
    prefix = tok.prefix() if bos else []
    ids = [prefix + tok.encode(p) for p in prompts]
    outs = generate_tokens(
        params,
        cfg,
        ids,
        max_new_tokens=max_new_tokens,
        stop_table=table,
        pad_id=tok.pad_id,
        batch_size=batch_size,
        mesh=mesh,
    )
    texts = []
    for out in outs:
        if out and out[-1] == tok.eos_id:
            out = out[:-1]
        text = tok.decode(out)
        texts.append(text.split("\n", 1)[0] if stop_at_newline else text)
    return texts
