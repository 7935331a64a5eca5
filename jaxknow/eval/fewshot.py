"""Few-shot prompts in the exact format of the co-occurrence paper's harness.

Formats (byte for byte, see ``jaxknow.worlds.facts`` for the item renderers shared with the
worked examples of the pretraining corpus):

- free-form item ``"Question: {q} Answer:"``, gold continuation ``" {answer}"``; a
  demonstration is the item followed by its gold continuation;
- multiple choice: the description line
  ``"The following are multiple choice questions (with answers).\\n\\n"`` once at the top, each
  item ``"{question}\\nA. {c1}\\nB. {c2}\\nC. {c3}\\nD. {c4}\\nAnswer:"``, demonstrations
  followed by ``" {gold letter}"``;
- demonstrations and the query are joined with a blank line (``"\\n\\n"``).

Choice of demonstrations (the authors' rule, reproduced exactly): one
``rng = random.Random(42)`` per task evaluation (per subset); for each query index ``i`` in
order, ``sample = rng.sample(range(n), 6)`` and the demonstrations are
``[j for j in sample if j != i][:5]``, in sample order. So the five demonstrations come from
the same split and never include the query. Generalised to ``k`` shots as
``rng.sample(range(n), min(n, k + 1))`` (identical for k = 5 and n >= 6); a split smaller than
``k + 1`` items gives fewer demonstrations. With ``k = 0`` the prompt is the bare item, e.g.
the bioS zero-shot QA prompt ``QA_PROMPT.format(question=q)`` = ``"Question: {q} Answer:"``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from jaxknow.worlds.facts import MC_HEADER, MC_LETTERS, format_free_form, format_mc_item

FEW_SHOT_SEED = 42
DEFAULT_SHOTS = 5
SEPARATOR = "\n\n"

Row = Mapping[str, Any]


def demo_indices(n: int, k: int = DEFAULT_SHOTS, seed: int = FEW_SHOT_SEED) -> list[list[int]]:
    """Returns, for each query index 0..n-1, the indices of its k demonstrations (see the module
    docstring for the rule); one shared rng drives all queries in order."""
    if k <= 0:
        return [[] for _ in range(n)]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sample = rng.sample(range(n), min(n, k + 1))
        out.append([j for j in sample if j != i][:k])
    return out


def free_form_item(row: Row, with_answer: bool = False) -> str:
    """Returns ``"Question: {q} Answer:"`` (plus ``" {answer}"`` when `with_answer`)."""
    return format_free_form(row, with_answer=with_answer)


def free_form_target(row: Row) -> str:
    """Returns the gold continuation of a free-form row, ``" {answer}"``."""
    return f" {row['answer']}"


def free_form_prompt(query: Row, demos: Sequence[Row] = ()) -> str:
    """Returns the few-shot free-form prompt: answered demonstrations, then the query item
    ending in "Answer:", joined by blank lines."""
    parts = [format_free_form(d, with_answer=True) for d in demos]
    parts.append(format_free_form(query, with_answer=False))
    return SEPARATOR.join(parts)


def mc_letter(row: Row) -> str:
    """Returns the gold letter ("A".."D") of a multiple-choice row."""
    return MC_LETTERS[int(row["answer"])]


def mc_prompt(query: Row, demos: Sequence[Row] = ()) -> str:
    """Returns the few-shot multiple-choice prompt: the description line, answered
    demonstrations, then the query item ending in "Answer:", joined by blank lines."""
    if len(query["choices"]) > len(MC_LETTERS):
        raise ValueError(f"multiple-choice row has {len(query['choices'])} choices; at most "
                         f"{len(MC_LETTERS)} are supported: {query['question']!r}")
    parts = [format_mc_item(d, with_answer=True) for d in demos]
    parts.append(format_mc_item(query, with_answer=False))
    return MC_HEADER + SEPARATOR.join(parts)


def zero_shot_qa_prompt(question: str) -> str:
    """Returns the bioS zero-shot QA prompt ``"Question: {q} Answer:"`` (QA_PROMPT filled in)."""
    from jaxknow.worlds.bios import QA_PROMPT

    return QA_PROMPT.format(question=question)


def build_prompts(rows: Sequence[Row], kind: str, k: int = DEFAULT_SHOTS,
                  seed: int = FEW_SHOT_SEED) -> list[str]:
    """Returns one prompt per row of a subset: `kind` "free" or "mc", `k` demonstrations per
    query drawn from the same rows by the harness rule (a fresh rng seeded with `seed`)."""
    if kind not in ("free", "mc"):
        raise ValueError(f"prompt kind must be 'free' or 'mc', got {kind!r}")
    render = free_form_prompt if kind == "free" else mc_prompt
    return [render(rows[i], [rows[j] for j in demos])
            for i, demos in enumerate(demo_indices(len(rows), k, seed))]
