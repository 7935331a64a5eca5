"""Did the model memorise its training text? Greedy next-token hits at chosen positions, and
whole values reproduced by greedy generation.

`next_token_hits` runs the model once per batch of token sequences (jitted, right-padded to a
bucketed length) and reports, for each requested position j, whether the argmax of the logits
at j - 1 is the token at j. `value_token_index` finds the token where a character span (an
attribute value inside a biography) starts, from the tokenizer's offsets.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxknow.eval.generate import (
    mesh_of,
    padded_batches,
    place_batch,
    place_params,
    to_host,
)
from jaxknow.model import transformer
from jaxknow.model.config import ModelConfig
from jaxknow.parallel.rules import Sharder


@functools.partial(jax.jit, static_argnames=("cfg", "sharder"))
def _argmax(
    params: Any, tokens: jax.Array, segment_ids: jax.Array, *, cfg: ModelConfig, sharder: Sharder
) -> jax.Array:
    """Returns the greedy next token [B, T] after every position."""
    logits = transformer.apply(params, tokens, cfg, segment_ids=segment_ids, sharder=sharder)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def next_token_hits(
    params: Any,
    cfg: ModelConfig,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    *,
    batch_size: int = 64,
    mesh: Mesh | None = None,
) -> list[np.ndarray]:
    """Returns, per sequence, a bool array: for each j in `positions[i]`, whether the model's
    greedy prediction after `sequences[i][:j]` is `sequences[i][j]` (j >= 1)."""
    if len(sequences) != len(positions):
        raise ValueError(f"{len(sequences)} sequences but {len(positions)} position lists")
    for i, (seq, pos) in enumerate(zip(sequences, positions)):
        if len(seq) - 1 > cfg.max_seq_len:
            raise ValueError(
                f"sequence {i} has {len(seq)} tokens; the model's context is "
                f"model.max_seq_len={cfg.max_seq_len}"
            )
        if any(j < 1 or j >= len(seq) for j in pos):
            raise ValueError(f"sequence {i}: positions {list(pos)} outside [1, {len(seq)})")
    n = len(sequences)
    out: list[np.ndarray] = [np.zeros(0, bool)] * n
    if n == 0:
        return out
    mesh = mesh if mesh is not None else mesh_of(params)
    params = place_params(params, cfg, mesh)
    sharder = Sharder(mesh)
    for idx, arrays in padded_batches([q[:-1] for q in sequences], cfg, batch_size, mesh):
        pred = to_host(
            _argmax(
                params,
                place_batch(arrays["inputs"], mesh),
                place_batch(arrays["segment_ids"], mesh),
                cfg=cfg,
                sharder=sharder,
            )
        )
        for r, i in enumerate(idx):
            seq = sequences[i]
            out[i] = np.array([pred[r, j - 1] == seq[j] for j in positions[i]], bool)
    return out


def value_token_index(offsets: Sequence[tuple[int, int]], char_start: int) -> int:
    """Returns the index of the token whose character span holds `char_start` (a token may
    begin one character earlier with the leading space a byte-level BPE attaches to words);
    raises ValueError when no token does."""
    for j, (s, e) in enumerate(offsets):
        if s <= char_start < e:
            return j
    raise ValueError(f"no token covers character {char_start}")


def value_token_span(
    offsets: Sequence[tuple[int, int]], char_start: int, char_end: int
) -> tuple[int, int]:
    """Returns [first, end) token indices of the character span [char_start, char_end): from
    the token holding `char_start` (`value_token_index`) to the first token that starts at or
    after `char_end`."""
    first = value_token_index(offsets, char_start)
    end = first + 1
    while end < len(offsets) and offsets[end][0] < char_end:
        end += 1
    return first, end


def extension_table(values: Sequence[Sequence[int]]) -> dict[tuple[int, ...], frozenset[int]]:
    """Returns, for every proper token prefix of the given values (token ids), the set of
    tokens that continue it into a longer value: a generation that reproduces value A and then
    continues into value B (A a prefix of B) has not recalled A."""
    out: dict[tuple[int, ...], set[int]] = {}
    for v in values:
        for m in range(1, len(v)):
            out.setdefault(tuple(v[:m]), set()).add(int(v[m]))
    return {k: frozenset(s) for k, s in out.items()}


def whole_value_hits(
    params: Any,
    cfg: ModelConfig,
    sequences: Sequence[Sequence[int]],
    spans: Sequence[Sequence[tuple[int, int]]],
    *,
    extensions: dict[tuple[int, ...], frozenset[int]] | None = None,
    stop_table: np.ndarray | None = None,
    batch_size: int = 64,
    mesh: Mesh | None = None,
) -> list[np.ndarray]:
    """Returns, per sequence, a bool array: for each value span (j, k) in `spans[i]`, whether
    greedy generation after `sequences[i][:j]` reproduces the whole value `sequences[i][j:k]`
    token for token, and (with `extensions`, see `extension_table`) does not then continue it
    into a longer value. A value whose first token is right but not the rest is a miss.

    Every (sequence, span) is one prompt; all prompts go through one batched greedy generation
    (`generate.generate_tokens`) of max(k - j) + 1 tokens, stopping at `stop_table` tokens."""
    from jaxknow.eval.generate import generate_tokens

    if len(sequences) != len(spans):
        raise ValueError(f"{len(sequences)} sequences but {len(spans)} span lists")
    prompts: list[list[int]] = []
    where: list[tuple[int, int, int]] = []  # (sequence, span index, prompt index)
    for i, (seq, sp) in enumerate(zip(sequences, spans)):
        for s, (j, k) in enumerate(sp):
            if not 1 <= j < k <= len(seq):
                raise ValueError(f"sequence {i}: value span {(j, k)} outside [1, {len(seq)}]")
            where.append((i, s, len(prompts)))
            prompts.append(list(seq[:j]))
    out = [np.zeros(len(sp), bool) for sp in spans]
    if not prompts:
        return out
    longest = max(k - j for sp in spans for j, k in sp)
    gens = generate_tokens(
        params,
        cfg,
        prompts,
        max_new_tokens=longest + 1,
        stop_table=stop_table,
        batch_size=batch_size,
        mesh=mesh,
    )
    ext = extensions or {}
    for i, s, p in where:
        j, k = spans[i][s]
        target = [int(t) for t in sequences[i][j:k]]
        g = [int(t) for t in gens[p]]
        ok = g[: len(target)] == target
        if ok and len(g) > len(target):
            ok = g[len(target)] not in ext.get(tuple(target), frozenset())
        out[i][s] = ok
    return out
