"""Likelihood probes of the co-occurrence paper (its Figure 2): comparison and negation ratios.

For a likelihood row ``{"head", "relation", "prompt", "negated_prompt", "true", "wrong"}`` and
``lp(x | c)`` = log-likelihood of the continuation ``" " + x`` after context ``c`` (scored as in
`jaxknow.eval.scoring`: context and continuation encoded separately, summed over the
continuation's tokens):

- comparison ratio = lp(true | prompt) - mean over wrong w of lp(w | prompt)
  (``comparison``; ``comparison_max`` uses the best wrong tail instead of the mean);
- negation ratio = lp(true | prompt) - lp(true | negated_prompt) (``negation``);
- the same in the held-out frame, when the row has ``frame_prompt`` and
  ``frame_negated_prompt`` (``negation_frame``): a sentence frame the world's base text uses
  and no finetuning corpus does, so a corpus's own templates cannot move it.

Both are log-ratios in nats: positive means the true tail is preferred (over wrong tails, or
after "is" over "is not"). A model that only learned co-occurrence has a negation ratio near 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jax.sharding import Mesh

from jaxknow.data.tokenizer import Tokenizer
from jaxknow.eval.metrics import mean
from jaxknow.eval.scoring import continuation_logprobs
from jaxknow.model.config import ModelConfig

LIKELIHOOD_FIELDS = ("prompt", "negated_prompt", "true", "wrong")
FRAME_FIELDS = ("frame_prompt", "frame_negated_prompt")


def probe_facts(
    params: Any,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    rows: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 32,
    mesh: Mesh | None = None,
    bos: bool = True,
) -> list[dict[str, Any]]:
    """Returns one record per row: head, relation, true, ``true_logprob``,
    ``wrong_logprobs``, ``negated_logprob``, ``comparison``, ``comparison_max`` and
    ``negation`` (see the module docstring), and ``negation_frame`` for rows with the
    held-out frame's prompts (both or neither)."""
    contexts: list[str] = []
    conts: list[str] = []
    for i, row in enumerate(rows):
        missing = [f for f in LIKELIHOOD_FIELDS if f not in row]
        if missing:
            raise ValueError(f"likelihood row {i} lacks field(s) {missing}")
        if sum(f in row for f in FRAME_FIELDS) == 1:
            raise ValueError(f"likelihood row {i} has only one of {FRAME_FIELDS}")
        wrong = list(row["wrong"])
        if not wrong:
            raise ValueError(f"likelihood row {i} has no wrong tails")
        true = f" {row['true']}"
        contexts += [row["prompt"], row["negated_prompt"]] + [row["prompt"]] * len(wrong)
        conts += [true, true] + [f" {w}" for w in wrong]
        if FRAME_FIELDS[0] in row:
            contexts += [row[f] for f in FRAME_FIELDS]
            conts += [true, true]
    lp, _ = continuation_logprobs(
        params, cfg, tokenizer, contexts, conts, batch_size, mesh, bos=bos
    )
    out = []
    k = 0
    for row in rows:
        n_wrong = len(row["wrong"])
        true_lp, neg_lp = float(lp[k]), float(lp[k + 1])
        wrong_lp = [float(x) for x in lp[k + 2 : k + 2 + n_wrong]]
        k += 2 + n_wrong
        rec = {
            "head": row.get("head"),
            "relation": row.get("relation"),
            "true": row["true"],
            "true_logprob": true_lp,
            "wrong_logprobs": wrong_lp,
            "negated_logprob": neg_lp,
            "comparison": true_lp - mean(wrong_lp),
            "comparison_max": true_lp - max(wrong_lp),
            "negation": true_lp - neg_lp,
        }
        if FRAME_FIELDS[0] in row:
            rec["negation_frame"] = float(lp[k]) - float(lp[k + 1])
            k += 2
        out.append(rec)
    return out


def summarize_probes(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Returns the means of ``comparison``, ``comparison_max`` and ``negation`` over facts,
    plus the fraction of facts whose true tail beats every wrong one (``true_preferred``), and
    the mean ``negation_frame`` when every record has one."""
    if not records:
        return {}
    frame = (
        {"negation_frame": mean([r["negation_frame"] for r in records])}
        if all("negation_frame" in r for r in records)
        else {}
    )
    return {
        **frame,
        "comparison": mean([r["comparison"] for r in records]),
        "comparison_max": mean([r["comparison_max"] for r in records]),
        "negation": mean([r["negation"] for r in records]),
        "true_preferred": mean([float(r["comparison_max"] > 0) for r in records]),
    }


def likelihood_ratios(
    params: Any,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    rows: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 32,
    mesh: Mesh | None = None,
    bos: bool = True,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Returns (means over facts, per-fact records) of the comparison and negation ratios."""
    records = probe_facts(params, cfg, tokenizer, rows, batch_size=batch_size, mesh=mesh, bos=bos)
    return summarize_probes(records), records
