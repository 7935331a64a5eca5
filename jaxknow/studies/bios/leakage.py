"""The bioS leakage guard: no question about a P_test person may reach a training source.

The study's claim (knowledge becomes extractable for people whose QA was never trained) holds
only if nothing trained on asks about a P_test person. `check_no_leak` scans the rows a run
trains on (biographies of every augmentation and re-draw, the celebrity sources, the QA rows of
the finetune and of mixed training) and raises `LeakageError` naming the source, the row and
the person at the first leak:

- a QA row (a row with a "question") whose "person" is in P_test, or whose question names a
  P_test person;
- a question-formatted passage in any text that names a P_test person: the text after a
  "Question:" marker, or a sentence opening with any QA template's words before the name
  ("What is the birth city of ", "Where did ", ...), up to its "?" (or the line's end).

Biographies of P_test people are meant to be trained on (that is the study); only questions
about them are refused. Pure Python; the world builder and the bioS study both call it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from jaxknow.studies.bios.templates import QA_TEMPLATES

# Where a question-formatted passage starts: the "Question:" marker of QA items, or the words
# of any QA template before the name.
_OPENERS = sorted(
    {"Question:", *(t.split("{name}")[0] for t in QA_TEMPLATES.values())}, key=len, reverse=True
)
_OPEN_RE = re.compile("|".join(re.escape(o) for o in _OPENERS))
_WORD_RE = re.compile(r"[^\s?!.,:;\"()]+")
_END_RE = re.compile(r"\?|Answer:|\n")


class LeakageError(ValueError):
    """A training source holds a question about a P_test person."""


def _named(passage: str, names: Mapping[str, int], name_words: int) -> tuple[str, int] | None:
    """Returns (name, person) of the first P_test name in `passage` (word n-grams), or None."""
    words = _WORD_RE.findall(passage)
    for i in range(len(words) - name_words + 1):
        gram = " ".join(words[i : i + name_words])
        if gram in names:
            return gram, names[gram]
        if gram.endswith("'s") and gram[:-2] in names:  # possessive
            return gram[:-2], names[gram[:-2]]
    return None


def question_passages(text: str) -> list[str]:
    """Returns the question-formatted passages of `text`: from each "Question:" marker or QA
    template opening to the next "?", "Answer:" or newline (inclusive of the "?")."""
    out = []
    for m in _OPEN_RE.finditer(text):
        end = _END_RE.search(text, m.end())
        stop = len(text) if end is None else end.end()
        out.append(text[m.start() : stop])
    return out


def find_leak(
    rows: Iterable[Mapping[str, Any]], test_names: Mapping[str, int]
) -> tuple[int, int, str] | None:
    """Returns (row index, P_test person, what) of the first row of `rows` that asks about a
    P_test person (`test_names`: full name -> person index), or None."""
    test_ids = set(test_names.values())
    name_words = {len(n.split()) for n in test_names} or {3}
    for i, row in enumerate(rows):
        question = row.get("question")
        if question is not None:
            person = row.get("person")
            if person is not None and int(person) in test_ids:
                return i, int(person), f"QA row {question!r}"
            passages = [str(question)]
        else:
            passages = []
        passages += question_passages(str(row.get("text", "")))
        for p in passages:
            for k in name_words:
                hit = _named(p, test_names, k)
                if hit is not None:
                    return i, hit[1], f"question {p!r}"
    return None


def check_no_leak(
    sources: Mapping[str, Iterable[Mapping[str, Any]]], test_names: Mapping[str, int]
) -> None:
    """Raises LeakageError (one line naming the source, the row and the P_test person) if any
    training source in `sources` (name -> rows {"text"} or {"question", "person"}) holds a
    question about a P_test person (`test_names`: full name -> person index)."""
    for name, rows in sources.items():
        leak = find_leak(rows, test_names)
        if leak is not None:
            row, person, what = leak
            who = next((n for n, p in test_names.items() if p == person), "?")
            raise LeakageError(
                f"leakage: training source {name!r} row {row} holds a question about P_test "
                f"person {person} ({who}): {what[:160]}; refusing to train"
            )
