"""Log-likelihood of continuations and multiple-choice scoring (the lm-eval-harness way).

A (context, continuation) pair is tokenised as the harness's ``BaseLM._encode_pair`` does
(the authors' fork, ``lm_eval/base.py``; 0.4.x ``TemplateLM._encode_pair`` is the same):
trailing whitespace of the context moves to the continuation, ``context + continuation`` is
encoded whole and split at the length of the encoded context, so the continuation's tokens are
those of the whole string. The sequence is ``prefix + enc(context) + continuation tokens`` where
the prefix is ``[bos]`` or nothing (`use_bos`: the fork's ``hf-causal-experimental`` model
adds no special tokens, so converted Hugging Face models are scored without BOS by default;
jaxknow-trained models saw ``[bos]`` before every document and keep it). An empty context
becomes the prefix, or ``[eos]`` without one (the fork's end-of-text context).

Pairs are sorted by length, right-padded to a bucketed length (`generate.bucket_length`,
capped at ``cfg.max_seq_len``) and scored in batches of equal shape; pad positions carry
weight 0. A pair longer than the model's context is cut from the left of the context (the
harness's ``(context + continuation)[-(max_length + 1):]``). Besides the summed
log-likelihood, each pair reports whether every continuation token is the greedy (argmax)
token, the harness's ``is_greedy``. Pairs whose continuation is one token (multiple-choice
letters) are grouped by context: one forward pass per context gives every such continuation's
log-likelihood (lm-eval's own ``hf`` model shares contexts the same way). Several longer
continuations of one context (options scored by text) share it too (`branches`: the context
once into a cache, each continuation a short pass from it).

Parameters may come as a `shared_prefix.SharedPrefix` (a layer-delta ablation's model): each
batch then resumes at the first layer the model does not share with its reference, from the
reference's residual stream (computed once per batch).

Multiple choice: either the log-likelihood of the answer letters ``" A"`` .. ``" D"`` after
the MC prompt (``mode="letters"``, the co-occurrence paper's harness: always all four letters,
whatever the number of choices) or of each option's text ``" {choice}"`` (``mode="options"``;
`tasks` then has the demonstrations answer by text too, ``fewshot.build_prompts``).
``acc`` takes the argmax of the summed log-likelihood; ``acc_norm`` the argmax of the
log-likelihood divided by the continuation's length in *characters*, as lm-eval-harness's
``acc_norm`` does. With letters every continuation has the same length, so acc_norm = acc.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxknow.data.tokenizer import Tokenizer
from jaxknow.eval import branches, shared_prefix
from jaxknow.eval.generate import mesh_of, padded_batches, place_batch, place_params, to_host
from jaxknow.formats import MC_LETTERS
from jaxknow.model import transformer
from jaxknow.model.config import ModelConfig
from jaxknow.parallel.rules import Sharder

McMode = Literal["letters", "options"]
# "auto": none for models converted from Hugging Face
BosMode = Literal["auto", "always", "never"]
MC_MODES = get_args(McMode)
BOS_MODES = get_args(BosMode)


def use_bos(mode: str, meta: Mapping[str, Any] | None = None) -> bool:
    """Returns whether prompts start with the tokenizer's BOS: ``"always"``, ``"never"``, or
    ``"auto"`` = not for a model converted from Hugging Face (checkpoint metadata
    ``source == "huggingface"``; the fork's ``hf-causal-experimental`` adds no special
    tokens), yes for a jaxknow-trained one (trained with ``[bos]`` before every document)."""
    if mode not in BOS_MODES:
        raise ValueError(f"bos={mode!r}: must be one of {BOS_MODES}")
    if mode == "auto":
        return (meta or {}).get("source") != "huggingface"
    return mode == "always"


Resume = tuple[jax.Array, jax.Array]  # (residual stream entering layer j, j)


def _forward(
    params: Any,
    batch: Mapping[str, jax.Array],
    cfg: ModelConfig,
    sharder: Sharder,
    resume: Resume | None = None,
    collect_hidden: bool = False,
    read_at: jax.Array | None = None,
) -> transformer.ForwardOutput:
    """Runs the model on a padded batch (inputs, positions, segment ids), from layer j on
    when `resume` = (residual stream entering layer j, j) is given (`shared_prefix`), its
    final hidden states only at the positions `read_at` [rows, K] when given."""
    hidden_in, start = resume if resume is not None else (None, None)
    return transformer.forward(
        params,
        batch["inputs"],
        cfg,
        positions=batch["positions"],
        segment_ids=batch["segment_ids"],
        sharder=sharder,
        collect_hidden=collect_hidden,
        hidden_in=hidden_in,
        start_layer=start,
        read_at=read_at,
    )


def _hidden_at(
    params: Any,
    batch: Mapping[str, jax.Array],
    read_at: jax.Array,
    cfg: ModelConfig,
    sharder: Sharder,
    resume: Resume | None = None,
) -> jax.Array:
    """Returns the final hidden states of a padded batch at positions `read_at` [rows, K]
    (see `_forward`)."""
    return _forward(params, batch, cfg, sharder, resume, read_at=read_at).hidden


@functools.partial(jax.jit, static_argnames=("cfg", "sharder"))
def _reference_hiddens(
    params: Any, batch: Mapping[str, jax.Array], *, cfg: ModelConfig, sharder: Sharder
) -> jax.Array:
    """Returns a padded batch's residual stream at every layer [L+1, B, T, D]: what the
    scoring functions resume from (`shared_prefix`)."""
    return _forward(params, batch, cfg, sharder, collect_hidden=True).hiddens


def _resume_for(
    shared: shared_prefix.SharedPrefix | None,
    arrays: Mapping[str, np.ndarray],
    batch: Mapping[str, jax.Array],
    cfg: ModelConfig,
    sharder: Sharder,
) -> Resume | None:
    """Returns where a `SharedPrefix` model resumes on this batch (None: run it whole)."""
    if shared is None or shared.start == 0:
        return None
    keys = ("inputs", "positions", "segment_ids")
    hiddens = shared.reference_output(
        "scoring",
        {k: arrays[k] for k in keys},
        lambda ref: _reference_hiddens(ref, {k: batch[k] for k in keys}, cfg=cfg, sharder=sharder),
    )
    return hiddens[shared.start], jnp.int32(shared.start)


@functools.partial(jax.jit, static_argnames=("cfg", "sharder"))
def _score_batch(
    params: Any,
    batch: Mapping[str, jax.Array],
    resume: Resume | None = None,
    *,
    cfg: ModelConfig,
    sharder: Sharder,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns per row (summed weighted log-likelihood, weight sum, all-greedy flag) of the
    targets at positions ``score_at`` ([rows, K]): the vocabulary projection (and the last
    layer but for its keys and values) runs at those K positions only, not at every position
    of the row (at a 262k vocabulary the projection is most of a full-row forward's arithmetic
    and memory)."""
    at = _hidden_at(params, batch, batch["score_at"], cfg, sharder, resume)
    lg = transformer.logits(params, at, cfg, sharder)
    w = batch["weights"].astype(jnp.float32)
    lp, greedy = branches.target_scores(lg, batch["targets"], w)
    return lp, jnp.sum(w, axis=-1), greedy


@functools.partial(jax.jit, static_argnames=("cfg", "sharder"))
def _last_logprobs(
    params: Any,
    batch: Mapping[str, jax.Array],
    resume: Resume | None = None,
    *,
    cfg: ModelConfig,
    sharder: Sharder,
) -> jax.Array:
    """Returns per row the log-softmax over the vocabulary after its last real token."""
    last = _hidden_at(params, batch, batch["last"][:, None], cfg, sharder, resume)
    return jax.nn.log_softmax(transformer.logits(params, last, cfg, sharder)[:, 0], axis=-1)


@dataclasses.dataclass
class TokenScores:
    """Per pair: summed continuation log-likelihood, continuation token count, whether every
    continuation token is the argmax, and how many context tokens were cut off the left."""

    logprob: np.ndarray
    count: np.ndarray
    greedy: np.ndarray
    truncated: np.ndarray


def score_pairs(
    params: Any,
    cfg: ModelConfig,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 32,
    mesh: Mesh | None = None,
    share_contexts: bool = True,
) -> TokenScores:
    """Returns the TokenScores of (context ids, continuation ids) pairs (context ids include
    any bos). A pair longer than ``max_seq_len + 1`` tokens loses context tokens from the left
    (counted in ``truncated``); a continuation that alone fills the context is an error.
    `share_contexts=False` runs every multi-token pair whole (for checks and benchmarks)."""
    n = len(pairs)
    if n == 0:
        z = np.zeros(0, np.int64)
        return TokenScores(np.zeros(0), z, np.zeros(0, bool), z)
    max_len = cfg.max_seq_len + 1  # inputs = ids[:-1] fill at most max_seq_len positions
    seqs: list[tuple[list[int], int]] = []
    truncated = np.zeros(n, np.int64)
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            raise ValueError(f"continuation {i} is empty")
        if not ctx:
            raise ValueError(f"context {i} is empty (the first token cannot be scored)")
        if len(cont) >= max_len:
            raise ValueError(
                f"continuation {i} has {len(cont)} tokens; the model's context is "
                f"model.max_seq_len={cfg.max_seq_len}"
            )
        ids = list(ctx) + list(cont)
        truncated[i] = max(0, len(ids) - max_len)
        seqs.append((ids[-max_len:], len(cont)))
    mesh = mesh if mesh is not None else mesh_of(params)
    params = place_params(params, cfg, mesh)
    sharder = Sharder(mesh)
    plain, shared_model = shared_prefix.split(params)
    logprob = np.zeros(n, np.float64)
    count = np.zeros(n, np.int64)
    greedy = np.zeros(n, bool)
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (ids, k) in enumerate(seqs):
        by_context.setdefault(tuple(ids[:-k]), []).append(i)
    # Several continuations of one context, some longer than a token (options scored by
    # text): the context once into a cache, each continuation a short pass from it.
    groups = [
        (c, m)
        for c, m in by_context.items()
        if share_contexts and len(m) > 1 and any(seqs[i][1] > 1 for i in m)
    ]
    if groups:
        scored = branches.score_branches(
            params,
            cfg,
            [(ctx, [seqs[i][0][-seqs[i][1] :] for i in members]) for ctx, members in groups],
            batch_size=batch_size,
            mesh=mesh,
        )
        for (_, members), results in zip(groups, scored):
            for i, (lp, gr) in zip(members, results):
                logprob[i], count[i], greedy[i] = lp, seqs[i][1], gr
    branched = {i for _, members in groups for i in members}
    # One-token continuations of one context (multiple-choice letters) share one forward pass.
    shared = {
        c: ones
        for c, m in by_context.items()
        if (ones := [i for i in m if seqs[i][1] == 1 and i not in branched])
    }
    if shared:
        ctxs = list(shared)
        rows_by_ctx = _score_last_tokens(params, cfg, ctxs, batch_size, mesh, sharder)
        for ctx, row in zip(ctxs, rows_by_ctx):
            best = int(np.argmax(row))
            for i in shared[ctx]:
                tok = seqs[i][0][-1]
                logprob[i], count[i], greedy[i] = float(row[tok]), 1, tok == best
    rest = [i for i in range(n) if seqs[i][1] > 1 and i not in branched]
    for idx, arrays in padded_batches([seqs[i][0][:-1] for i in rest], cfg, batch_size, mesh):
        # The continuation's positions, right-aligned in K columns (K a power of two, so that
        # few shapes compile); unused columns point at position 0 with weight 0.
        width = 1 << (max(seqs[rest[j]][1] for j in idx) - 1).bit_length()
        rows = arrays["inputs"].shape[0]
        arrays["score_at"] = np.zeros((rows, width), np.int32)
        arrays["targets"] = np.zeros((rows, width), np.int32)
        arrays["weights"] = np.zeros((rows, width), np.float32)
        for r, j in enumerate(idx):
            ids, k = seqs[rest[j]]
            m = len(ids) - 1
            arrays["score_at"][r, width - k :] = np.arange(m - k, m)
            arrays["targets"][r, width - k :] = ids[m - k + 1 : m + 1]
            arrays["weights"][r, width - k :] = 1.0
        batch = {k: place_batch(v, mesh) for k, v in arrays.items()}
        resume = _resume_for(shared_model, arrays, batch, cfg, sharder)
        lp, cnt, gr = to_host(_score_batch(plain, batch, resume, cfg=cfg, sharder=sharder))
        for r, j in enumerate(idx):
            i = rest[j]
            logprob[i] = float(lp[r])
            count[i] = int(round(float(cnt[r])))
            greedy[i] = bool(gr[r])
    return TokenScores(logprob, count, greedy, truncated)


def _score_last_tokens(
    params: Any,
    cfg: ModelConfig,
    contexts: Sequence[Sequence[int]],
    batch_size: int,
    mesh: Mesh,
    sharder: Sharder,
) -> list[np.ndarray]:
    """Returns, per context, the log-softmax (float32, vocabulary-sized) of the next token
    (`params` may be a `SharedPrefix`)."""
    plain, shared = shared_prefix.split(params)
    out: list[np.ndarray | None] = [None] * len(contexts)
    for idx, arrays in padded_batches(contexts, cfg, batch_size, mesh):
        arrays["last"] = np.zeros(arrays["inputs"].shape[0], np.int32)
        for r, i in enumerate(idx):
            arrays["last"][r] = len(contexts[i]) - 1
        batch = {k: place_batch(v, mesh) for k, v in arrays.items()}
        resume = _resume_for(shared, arrays, batch, cfg, sharder)
        lp = to_host(_last_logprobs(plain, batch, resume, cfg=cfg, sharder=sharder))
        for r, i in enumerate(idx):
            out[i] = np.asarray(lp[r])
    return out  # type: ignore[return-value]


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
    s = score_pairs(params, cfg, pairs, batch_size=batch_size, mesh=mesh)
    return s.logprob, s.count


def encode_pair(
    tokenizer: Tokenizer, context: str, continuation: str, bos: bool = True
) -> tuple[list[int], list[int]]:
    """Returns (prefix + context ids, continuation ids) split as the harness's
    ``_encode_pair`` does (module docstring); prefix = ``[bos]`` when `bos` (and the
    tokenizer has one). An empty context becomes the prefix, else ``[eos]``."""
    prefix = tokenizer.prefix() if bos else []
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if context == "":
        return (prefix or [tokenizer.eos_id]), tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return prefix + ctx, whole[len(ctx) :]


def continuation_logprobs(
    params: Any,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    contexts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 32,
    mesh: Mesh | None = None,
    *,
    bos: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (log p(continuation | context) summed over its tokens [N], continuation token
    counts [N]) for parallel lists of context and continuation strings (`bos`: whether the
    sequences start with the tokenizer's BOS)."""
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    pairs = [encode_pair(tokenizer, c, x, bos) for c, x in zip(contexts, continuations)]
    return token_logprobs(params, cfg, pairs, batch_size=batch_size, mesh=mesh)


@dataclasses.dataclass
class MCResult:
    """Multiple-choice scores: accuracy, length-normalised accuracy, and per item the chosen
    index (`pred`, `pred_norm`), the log-likelihood of every option (`logprobs`) and the
    probability of the right option among the scored ones (`p_true`: the softmax of the
    options' log-likelihoods at the right index; 1 / options for a model without a preference).
    `p_true` is the continuous reading of the same choice: it moves before the argmax flips,
    so over few items it separates models that accuracy cannot."""

    acc: float
    acc_norm: float
    pred: list[int]
    pred_norm: list[int]
    logprobs: list[list[float]]
    p_true: list[float] = dataclasses.field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Returns {"acc", "acc_norm", "p_true"} (`p_true`: the mean over items)."""
        p_true = float(np.mean(self.p_true)) if self.p_true else float("nan")
        return {"acc": self.acc, "acc_norm": self.acc_norm, "p_true": p_true}


def true_option_probability(logprobs: Sequence[float], answer: int) -> float:
    """Returns the probability of option `answer` among the options: the softmax of their
    log-likelihoods (`logprobs`, one per option) at that index."""
    lp = np.asarray(logprobs, np.float64)
    if not 0 <= answer < lp.size:
        raise ValueError(f"answer index {answer} outside the {lp.size} scored options")
    z = np.exp(lp - lp.max())
    return float(z[answer] / z.sum())


def mc_continuations(row: Mapping[str, Any], mode: str = "letters") -> list[str]:
    """Returns the scored continuations of an MC row: ``" A"`` .. ``" D"`` (letters; always
    four, as the fork's ``GeneralMC`` scores them) or ``" {choice}"`` per option (options)."""
    k = len(row["choices"])
    if mode == "letters":
        if k > len(MC_LETTERS):
            raise ValueError(
                f"an MC row has {k} choices; letters mode supports at most {len(MC_LETTERS)}"
            )
        return [f" {letter}" for letter in MC_LETTERS]  # the fork always scores A-D
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
    bos: bool = True,
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
    lp, _ = continuation_logprobs(
        params, cfg, tokenizer, contexts, conts, batch_size, mesh, bos=bos
    )
    if not rows:
        return MCResult(0.0, 0.0, [], [], [])
    pred, pred_norm, all_lp, p_true = [], [], [], []
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
        p_true.append(true_option_probability(scores, gold))
    n = len(rows)
    return MCResult(hits / n, hits_norm / n, pred, pred_norm, all_lp, p_true)
