"""Log-likelihood of continuations and multiple-choice scoring (the lm-eval-harness way).

A (context, continuation) pair is encoded *separately* and concatenated:
``prefix + enc(context) + enc(continuation)`` (prefix = ``tokenizer.prefix()``, i.e. [bos] or
[]), so the continuation's tokens do not depend on the context, and the loss weight is on the
continuation tokens only. Pairs are sorted by length, right-padded to a bucketed length
(`generate.bucket_length`, capped at ``cfg.max_seq_len``) and scored in batches of equal shape
through `jaxknow.train.step.score_batch`; pad positions carry weight 0 and segment id 0. A pair
longer than the model's context is cut from the left of the context.

Multiple choice: either the log-likelihood of the answer letters ``" A"`` .. ``" D"`` after
the MC prompt (``mode="letters"``, the co-occurrence paper's harness) or of each option's text
``" {choice}"`` (``mode="options"``). ``acc`` takes the argmax of the summed log-likelihood;
``acc_norm`` the argmax of the log-likelihood divided by the continuation's length in
*characters* (the continuation string including its leading space), as lm-eval-harness's
``acc_norm`` does. With letters every continuation has 2 characters, so acc_norm = acc.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxknow.data.tokenizer import Tokenizer
from jaxknow.eval.generate import (
    batch_rows,
    bucket_length,
    cfg_key,
    mesh_of,
    place_batch,
    place_params,
)
from jaxknow.model.config import ModelConfig
from jaxknow.parallel.rules import Sharder
from jaxknow.train.step import score_batch
from jaxknow.worlds.facts import MC_LETTERS

MC_MODES = ("letters", "options")

_COMPILED: dict[tuple[Any, ...], Any] = {}


def _score_fn(cfg: ModelConfig, mesh: Mesh | None) -> Any:
    key = (cfg_key(cfg), mesh)
    if key not in _COMPILED:
        sharder = Sharder(mesh)

        def run(params: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
            out = score_batch(params, batch, cfg=cfg, sharder=sharder)
            return out["logprob"], out["num_tokens"]

        _COMPILED[key] = jax.jit(run)
    return _COMPILED[key]


def token_logprobs(
    params: Any,
    cfg: ModelConfig,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 32,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (log-likelihood sums [N] float64, token counts [N] int) of each continuation
    given its context, for (context ids, continuation ids) pairs (context ids include any bos).
    """
    n = len(pairs)
    if n == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    max_len = cfg.max_seq_len + 1  # inputs = ids[:-1] fill at most max_seq_len positions
    seqs: list[tuple[list[int], int]] = []
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            raise ValueError(f"continuation {i} is empty")
        if not ctx:
            raise ValueError(f"context {i} is empty (the first token cannot be scored)")
        if len(cont) >= max_len:
            raise ValueError(f"continuation {i} has {len(cont)} tokens; the model's context is "
                             f"model.max_seq_len={cfg.max_seq_len}")
        ids = (list(ctx) + list(cont))[-max_len:]
        seqs.append((ids, len(cont)))
    mesh = mesh if mesh is not None else mesh_of(params)
    params = place_params(params, cfg, mesh)
    fn = _score_fn(cfg, mesh)
    order = sorted(range(n), key=lambda i: -len(seqs[i][0]))
    rows = batch_rows(n, batch_size, mesh)
    logprob = np.zeros(n, np.float64)
    count = np.zeros(n, np.int64)
    for start in range(0, n, rows):
        idx = order[start:start + rows]
        t = min(bucket_length(max(len(seqs[i][0]) - 1 for i in idx)), cfg.max_seq_len)
        arrays = {
            "inputs": np.zeros((rows, t), np.int32),
            "targets": np.zeros((rows, t), np.int32),
            "weights": np.zeros((rows, t), np.float32),
            "segment_ids": np.zeros((rows, t), np.int32),
            "positions": np.zeros((rows, t), np.int32),
        }
        for r, i in enumerate(idx):
            ids, k = seqs[i]
            m = len(ids) - 1
            arrays["inputs"][r, :m] = ids[:-1]
            arrays["targets"][r, :m] = ids[1:]
            arrays["weights"][r, m - k:m] = 1.0
            arrays["segment_ids"][r, :m] = 1
            arrays["positions"][r, :m] = np.arange(m)
        batch = {k: place_batch(v, mesh) for k, v in arrays.items()}
        lp, cnt = jax.device_get(fn(params, batch))
        for r, i in enumerate(idx):
            logprob[i] = float(lp[r])
            count[i] = int(round(float(cnt[r])))
    return logprob, count


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str
                ) -> tuple[list[int], list[int]]:
    """Returns (prefix + enc(context), enc(continuation)): the two halves encoded separately."""
    return tokenizer.prefix() + tokenizer.encode(context), tokenizer.encode(continuation)


def continuation_logprobs(
    params: Any,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    contexts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 32,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (log p(continuation | context) summed over its tokens [N], continuation token
    counts [N]) for parallel lists of context and continuation strings."""
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    pairs = [encode_pair(tokenizer, c, x) for c, x in zip(contexts, continuations)]
    return token_logprobs(params, cfg, pairs, batch_size=batch_size, mesh=mesh)


@dataclasses.dataclass
class MCResult:
    """Multiple-choice scores: accuracy, length-normalised accuracy, and per item the chosen
    index (`pred`, `pred_norm`) and the log-likelihood of every option (`logprobs`)."""

    acc: float
    acc_norm: float
    pred: list[int]
    pred_norm: list[int]
    logprobs: list[list[float]]

    def metrics(self) -> dict[str, float]:
        """Returns {"acc", "acc_norm"}."""
        return {"acc": self.acc, "acc_norm": self.acc_norm}


def mc_continuations(row: Mapping[str, Any], mode: str = "letters") -> list[str]:
    """Returns the scored continuation of each option of an MC row: ``" A"``.. (letters) or
    ``" {choice}"`` (options)."""
    k = len(row["choices"])
    if mode == "letters":
        if k > len(MC_LETTERS):
            raise ValueError(f"an MC row has {k} choices; letters mode supports at most "
                             f"{len(MC_LETTERS)}")
        return [f" {MC_LETTERS[j]}" for j in range(k)]
    if mode == "options":
        return [f" {c}" for c in row["choices"]]
    raise ValueError(f"MC mode must be one of {MC_MODES}, got {mode!r}")


def score_multiple_choice(
    params: Any,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    *,
    mode: str = "letters",
    batch_size: int = 32,
    mesh: Mesh | None = None,
) -> MCResult:
    """Returns the MCResult of MC rows (``answer`` = index of the right choice), each option
    scored as a continuation of its row's prompt (see the module docstring for the modes)."""
    if len(prompts) != len(rows):
        raise ValueError(f"{len(prompts)} prompts but {len(rows)} rows")
    contexts: list[str] = []
    conts: list[str] = []
    spans: list[tuple[int, int]] = []
    for prompt, row in zip(prompts, rows):
        options = mc_continuations(row, mode)
        spans.append((len(conts), len(conts) + len(options)))
        contexts += [prompt] * len(options)
        conts += options
    lp, _ = continuation_logprobs(params, cfg, tokenizer, contexts, conts, batch_size, mesh)
    if not rows:
        return MCResult(0.0, 0.0, [], [], [])
    pred, pred_norm, all_lp = [], [], []
    hits = hits_norm = 0
    for (a, b), row in zip(spans, rows):
        scores = lp[a:b]
        chars = np.array([len(c) for c in conts[a:b]], np.float64)
        p, pn = int(np.argmax(scores)), int(np.argmax(scores / chars))
        gold = int(row["answer"])
        hits += p == gold
        hits_norm += pn == gold
        pred.append(p)
        pred_norm.append(pn)
        all_lp.append([float(x) for x in scores])
    n = len(rows)
    return MCResult(hits / n, hits_norm / n, pred, pred_norm, all_lp)
