"""Did the model memorise its training text? Greedy next-token hits at chosen positions.

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
        pred = np.asarray(
            jax.device_get(
                _argmax(
                    params,
                    place_batch(arrays["inputs"], mesh),
                    place_batch(arrays["segment_ids"], mesh),
                    cfg=cfg,
                    sharder=sharder,
                )
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
