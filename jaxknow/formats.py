"""The text formats of the evaluation items, one home for every layer: worlds render their
worked examples with them, eval builds its prompts with them (the authors' harness fork,
co-occurrence spec section 4; the bioS QA prompt is the same free-form item). Imports nothing
from jaxknow."""

from __future__ import annotations

from collections.abc import Sequence

MC_HEADER = "The following are multiple choice questions (with answers).\n\n"
MC_LETTERS = ("A", "B", "C", "D")


def qa_item(question: str, answer: str | None = None) -> str:
    """Returns ``"Question: {question} Answer:"`` (the question as given, not stripped), plus
    ``" {answer}"`` when an answer is given."""
    text = "Question: " + question + " Answer:"
    return text if answer is None else f"{text} {answer}"


def mc_item(
    question: str, choices: Sequence[str], answer: int | None = None, answer_text: bool = False
) -> str:
    """Returns a multiple-choice item: the stripped question, one ``"{letter}. {choice}"`` line
    per choice (at most four, not checked here), ``"Answer:"``, plus ``" {letter}"`` of the
    answer index when one is given (``" {choice}"``, the answer's text, with `answer_text`)."""
    text = (
        question.strip()
        + "\n"
        + "".join(f"{k}. {c}\n" for k, c in zip(MC_LETTERS, choices))
        + "Answer:"
    )
    if answer is None:
        return text
    return f"{text} {choices[answer] if answer_text else MC_LETTERS[answer]}"
