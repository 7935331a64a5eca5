"""A synthetic token world: arithmetic progressions of token ids, learnable by a tiny model.

Used by benchmarks and pipeline tests that need documents without a tokenizer. Id 0 is the
end-of-text token (bos and eos).
"""

from __future__ import annotations

import numpy as np


def progression_docs(
    num_docs: int, vocab_size: int, min_len: int, max_len: int, seed: int
) -> list[tuple[np.ndarray, int]]:
    """Returns documents ``[0, a, a+s, a+2s, ..., 0]`` (mod vocab, skipping id 0) with
    random start a, step s in 1..4 and length in [min_len, max_len]; loss_start 0."""
    if vocab_size < 8 or not 2 <= min_len <= max_len:
        raise ValueError("progression_docs needs vocab_size >= 8 and 2 <= min_len <= max_len")
    rng = np.random.default_rng(seed)
    span = vocab_size - 1
    starts = rng.integers(0, span, num_docs)
    steps = rng.integers(1, 5, num_docs)
    lengths = rng.integers(min_len, max_len + 1, num_docs)
    docs = []
    for a, s, n in zip(starts, steps, lengths):
        body = (a + s * np.arange(n - 2)) % span + 1
        docs.append((np.concatenate([[0], body, [0]]).astype(np.int32), 0))
    return docs
