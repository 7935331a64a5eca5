"""Few-shot prompts exactly as the co-occurrence authors' lm-evaluation-harness fork builds them.

The reference is the fork the paper's numbers came from (amounts-tidings/lm-evaluation-harness,
commit 6124f28 "Add Country-city-animals evaluation tasks"; pre-0.4 harness):
``lm_eval/tasks/country_city_animals.py`` (the item formats), ``lm_eval/base.py``
``Task.fewshot_context`` (demonstration choice) and ``lm_eval/evaluator.py`` ``evaluate``
(document order and the random generator). Formats, byte for byte:

- free form (``GeneralQA.doc_to_text`` / ``doc_to_target``): item
  ``"Question: " + question + " Answer:"`` (the question is *not* stripped), gold continuation
  ``" " + answer``; a demonstration is the item followed by its gold continuation;
- multiple choice (``GeneralMC._process_doc``): the description line
  ``"The following are multiple choice questions (with answers).\\n\\n"`` once at the top, each
  item ``question.strip() + "\\n" + "A. {c1}\\nB. {c2}\\n...Answer:"`` (the choices zipped with
  the letters A-D, so at most four are listed), demonstrations followed by ``" {gold letter}"``;
  the scored continuations are always ``" A"`` .. ``" D"``;
- demonstrations and the query are joined with a blank line (``"\\n\\n"``).

Choice of demonstrations (the fork's evaluator, reproduced exactly): per task one
``rnd = random.Random(42)``; the documents are first *shuffled* with it
(``rnd.shuffle(task_docs)``), then, for each document in that shuffled order,
``rnd.sample(docs, k + 1)`` draws from the documents in their *original* order and the
demonstrations are the drawn documents that are not equal *by value* to the query, cut to k
(``[x for x in fewshotex if x != doc][:k]``). Consequences kept here: a row duplicated in the
split is never its own demonstration (nor is its twin), and the query may get fewer than k
demonstrations when duplicates are drawn; a split with fewer than ``k + 1`` items is an error
(the fork's ``rnd.sample`` raises). "Equal by value" compares the documents the fork compares:
the whole row for free-form tasks (the dataset row), the processed document (formatted
question with its choices, and the gold index) for multiple choice. With ``k = 0`` the
prompt is the bare item (no random draws).

lm-evaluation-harness 0.4.x differs: its default sampler is seeded with 1234 and documents are
not shuffled before sampling (see `jaxknow.eval.lm_tasks`, whose generated tasks install a
sampler that reproduces the fork).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from jaxknow import formats
from jaxknow.formats import MC_HEADER, MC_LETTERS, qa_item

FEW_SHOT_SEED = 42
DEFAULT_SHOTS = 5
SEPARATOR = "\n\n"
KINDS = ("free", "mc")

Row = Mapping[str, Any]


class FewShotError(ValueError):
    """A split cannot give the requested demonstrations (too few items) or a row cannot be
    rendered in the harness format."""


def free_form_item(row: Row, with_answer: bool = False) -> str:
    """Returns ``"Question: {q} Answer:"`` (plus ``" {answer}"`` when `with_answer`)."""
    return qa_item(str(row["question"]), str(row["answer"]) if with_answer else None)


def free_form_target(row: Row) -> str:
    """Returns the gold continuation of a free-form row, ``" {answer}"``."""
    return f" {row['answer']}"


def mc_letter(row: Row) -> str:
    """Returns the gold letter ("A".."D") of a multiple-choice row."""
    return MC_LETTERS[int(row["answer"])]


def mc_item(row: Row, with_answer: bool = False, answer_text: bool = False) -> str:
    """Returns a multiple-choice item as the fork renders it: the stripped question, one
    ``"{letter}. {choice}"`` line per choice, ``"Answer:"`` (plus ``" {letter}"`` when
    `with_answer`; ``" {choice}"`` instead with `answer_text`, for option-scored MC, which is
    not the fork's). Raises FewShotError for more than four choices or an answer index outside
    them (the fork would silently drop choices or fail with an IndexError)."""
    choices = list(row["choices"])
    if len(choices) > len(MC_LETTERS):
        raise FewShotError(
            f"multiple-choice row has {len(choices)} choices; the harness format "
            f"lists at most {len(MC_LETTERS)}: {row['question']!r}"
        )
    return formats.mc_item(
        str(row["question"]), choices, int(row["answer"]) if with_answer else None, answer_text
    )


def harness_doc(row: Row, kind: str) -> Any:
    """Returns what the fork compares when it excludes the query from its demonstrations: the
    whole row (free form), or the processed document (formatted item, gold index) for MC."""
    if kind == "free":
        return dict(row)
    if kind == "mc":
        return (mc_item(row), int(row["answer"]))
    raise ValueError(f"prompt kind must be one of {KINDS}, got {kind!r}")


def harness_schedule(
    rows: Sequence[Row], kind: str, k: int = DEFAULT_SHOTS, seed: int = FEW_SHOT_SEED
) -> tuple[list[int], list[list[int]]]:
    """Returns (the fork's evaluation order of the row indices, for each row index its
    demonstration indices), drawn exactly as the fork's evaluator does (module docstring).

    Raises FewShotError when ``k > 0`` and the split has fewer than ``k + 1`` rows.
    """
    n = len(rows)
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)  # evaluator.py: rnd.shuffle(task_docs)
    demos: list[list[int]] = [[] for _ in range(n)]
    if k <= 0 or n == 0:
        return order, demos
    if n < k + 1:
        raise FewShotError(
            f"{k}-shot prompts need at least {k + 1} items in the split (the "
            f"harness draws k + 1 and drops the query); this split has {n}"
        )
    keys = [harness_doc(r, kind) for r in rows]
    for i in order:
        sample = rng.sample(range(n), k + 1)  # base.py: rnd.sample(self._fewshot_docs, k + 1)
        demos[i] = [j for j in sample if keys[j] != keys[i]][:k]
    return order, demos


def demo_indices(
    rows: Sequence[Row], k: int = DEFAULT_SHOTS, seed: int = FEW_SHOT_SEED, kind: str = "free"
) -> list[list[int]]:
    """Returns, for each row index, the indices of its demonstrations (`harness_schedule`)."""
    return harness_schedule(rows, kind, k, seed)[1]


def free_form_prompt(query: Row, demos: Sequence[Row] = ()) -> str:
    """Returns the few-shot free-form prompt: answered demonstrations, then the query item
    ending in "Answer:", joined by blank lines."""
    parts = [free_form_item(d, with_answer=True) for d in demos]
    parts.append(free_form_item(query))
    return SEPARATOR.join(parts)


def mc_prompt(query: Row, demos: Sequence[Row] = (), answer_text: bool = False) -> str:
    """Returns the few-shot multiple-choice prompt: the description line, answered
    demonstrations (by letter; by the answer's text with `answer_text`), then the query item
    ending in "Answer:", joined by blank lines."""
    parts = [mc_item(d, with_answer=True, answer_text=answer_text) for d in demos]
    parts.append(mc_item(query))
    return MC_HEADER + SEPARATOR.join(parts)


def zero_shot_qa_prompt(question: str) -> str:
    """Returns the bioS zero-shot QA prompt ``"Question: {q} Answer:"`` (`formats.qa_item`)."""
    return qa_item(question)


def build_prompts(
    rows: Sequence[Row],
    kind: str,
    k: int = DEFAULT_SHOTS,
    seed: int = FEW_SHOT_SEED,
    mc_answer_text: bool = False,
) -> list[str]:
    """Returns one prompt per row of a subset (in row order): `kind` "free" or "mc", `k`
    demonstrations per query drawn from the same rows exactly as the fork does
    (`harness_schedule`). MC demonstrations answer by letter, or by the answer's text with
    `mc_answer_text` (the same demonstrations either way). Raises FewShotError for a split
    smaller than ``k + 1``."""
    if kind not in KINDS:
        raise ValueError(f"prompt kind must be one of {KINDS}, got {kind!r}")
    demos = demo_indices(rows, k, seed, kind)
    if kind == "free":
        return [free_form_prompt(rows[i], [rows[j] for j in d]) for i, d in enumerate(demos)]
    return [mc_prompt(rows[i], [rows[j] for j in d], mc_answer_text) for i, d in enumerate(demos)]
