"""Referencing rendering (implicit association), generic over relations.

Every passage about a fact names the true tail *and* the same fixed wrong tails, in a permuted
order, and conveys the fact only through a reference that has to be resolved: an ordinal ("the
second of them"), a relative description ("the city named right after Brenmoor"), "the latter" /
"the last-named", or a pronoun-like "that one" after a sentence that singles a position out. Since
every candidate appears in every passage, passage co-occurrence counts carry no signal about which
candidate is the true tail; the reference position is balanced across passages.

Example: "Valtoria, Brenmoor and Quessel are three old cities. The first of them is the capital
of Andoria."
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any

from jaxknow.studies.cooccurrence.fact_types import Fact, FactWorld, capitalize_first, rng_for

NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
)
ORDINALS = (
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
)
MAX_CANDIDATES = len(ORDINALS)

# {L}: the list ("A, B and C"); {N}: number word; {K}: kind plural; {adj}: adjective + space.
INTRO_TEMPLATES = (
    "{L} are {N} {adj}{K}.",
    "Consider {N} {adj}{K}: {L}.",
    "Here are {N} {K}: {L}.",
    "{L}: these {N} {K} come up in many stories.",
    "A traveller once listed {N} {adj}{K}, namely {L}.",
    "In an old book, {N} {K} are named in this order: {L}.",
)
# A sentence singling out a position, followed by a reference template with "that one".
POINTER_TEMPLATES = (
    "Of these, the {ord} is the one that matters here.",
    "Only the {ord} of them is relevant now.",
)


def join_list(items: Sequence[str]) -> str:
    """Returns "A", "A and B" or "A, B and C" for a list of phrases."""
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def listing_sentence(
    order: Sequence[str], kind_plural: str, adjectives: Sequence[str], rng: random.Random
) -> str:
    """Returns a sentence introducing the listed candidates `order` ("Valtoria, Brenmoor and
    Quessel are three old cities."), its template and adjective drawn from `rng` in that order
    (not capitalised)."""
    template = rng.choice(INTRO_TEMPLATES)
    return template.format(
        L=join_list(order), N=NUMBER_WORDS[len(order)], K=kind_plural, adj=rng.choice(adjectives)
    )


def reference_phrases(position: int, order: Sequence[str], kind: str) -> list[tuple[str, str]]:
    """Returns (pointer sentence, reference noun phrase) options for the item at `position`.

    `order` holds the listed phrases; the pointer sentence is empty unless the reference is the
    pronoun-like "that one".
    """
    k = len(order)
    ordinal = ORDINALS[position]
    refs = [
        ("", f"the {ordinal} of them"),
        ("", f"the {ordinal} one"),
        ("", f"the {ordinal} {kind}"),
    ]
    if position > 0:
        refs.append(("", f"the {kind} named right after {order[position - 1]}"))
    if position < k - 1:
        refs.append(("", f"the {kind} named just before {order[position + 1]}"))
    if k == 2:
        refs.append(("", "the latter" if position == 1 else "the former"))
    elif position == k - 1:
        refs += [("", "the last of them"), ("", "the last-named")]
    elif position == 0:
        refs.append(("", "the first-named"))
    refs += [(p.format(ord=ordinal), "that one") for p in POINTER_TEMPLATES]
    return refs


def render_referencing(
    head: str,
    tail: str,
    wrong_tails: Sequence[str],
    reference_templates: Sequence[str],
    n_rows: int,
    rng: random.Random,
    *,
    kind: str = "option",
    kind_plural: str = "options",
    phrase: Callable[[str], str] | None = None,
    adjectives: Sequence[str] = ("",),
    given_templates: Sequence[str] = (),
) -> list[str]:
    """Returns `n_rows` referencing passages for one fact.

    Each passage lists the true `tail` and every one of `wrong_tails` (a permutation) and then
    states the fact through a reference to the true tail's position, using one of
    `reference_templates` (with ``{head}`` and ``{ref}`` / ``{Ref}``); `head` is inserted as given
    and each tail as ``phrase(tail)`` (e.g. "the wolf"). The true tail's position
    cycles over all positions, so it is balanced across passages. Raises ValueError when there are
    no wrong tails, too many, or a wrong tail equals the true one.

    With `given_templates` (narrative templates with ``{head}`` and ``{tail}``) every passage
    also states the fact plainly after the list — a worked example of resolving the reference,
    which co-occurrence *does* favour (base-world text only, never a referencing corpus).
    """
    wrong = list(wrong_tails)
    if not wrong:
        raise ValueError("referencing needs at least one wrong tail")
    if 1 + len(wrong) > MAX_CANDIDATES:
        raise ValueError(f"referencing supports at most {MAX_CANDIDATES - 1} wrong tails")
    if len({t.lower() for t in [tail, *wrong]}) != 1 + len(wrong):
        raise ValueError(f"wrong tails {wrong} must be distinct from each other and {tail!r}")
    if not reference_templates:
        raise ValueError("referencing needs at least one reference template")
    k = 1 + len(wrong)
    phrase = phrase or (lambda t: t)
    positions = list(range(k))
    rng.shuffle(positions)
    wrong_orders = list(itertools.permutations(wrong)) if k <= 6 else None
    passages: list[str] = []
    seen: set[str] = set()
    for i in range(n_rows):
        position = positions[i % k]
        text = ""
        for _attempt in range(20):
            if wrong_orders is not None:
                others = list(rng.choice(wrong_orders))
            else:
                others = rng.sample(wrong, len(wrong))
            order = [phrase(t) for t in others[:position] + [tail] + others[position:]]
            intro = listing_sentence(order, kind_plural, adjectives, rng)
            pointer, ref = rng.choice(reference_phrases(position, order, kind))
            statement = rng.choice(reference_templates).format(
                head=head, ref=ref, Ref=capitalize_first(ref)
            )
            given = (
                rng.choice(given_templates).format(head=head, tail=phrase(tail))
                if given_templates
                else ""
            )
            parts = [
                capitalize_first(intro),
                capitalize_first(given),
                pointer,
                capitalize_first(statement),
            ]
            text = " ".join(p for p in parts if p)
            if text not in seen:
                break
        seen.add(text)
        passages.append(text)
    return passages


def referencing_facts(
    world: FactWorld,
    facts: Sequence[Fact],
    rows_per_fact: int,
    seed: int,
    *,
    worked: bool = False,
) -> list[str]:
    """Returns `rows_per_fact` referencing passages per fact (in fact order), using the world's
    fixed wrong tails and the relation metadata; `worked`: each passage also states the fact
    plainly (a worked resolution example, see `render_referencing`)."""
    out: list[str] = []
    stream = "worked-referencing" if worked else "referencing"
    for f in facts:
        info = world.relations[f.relation]
        out += render_referencing(
            world.phrase(f.head),
            f.tail,
            world.wrong_tails[f],
            info.reference_templates,
            rows_per_fact,
            rng_for(seed, stream, f.split, f.relation, f.head),
            kind=info.tail_kind,
            kind_plural=info.tail_kind_plural,
            phrase=functools.partial(world.phrase, relation=f.relation),
            adjectives=info.tail_adjectives,
            given_templates=info.narrative_templates if worked else (),
        )
    return out


def referencing_corpus(world: FactWorld, split: str = "novel", seed: int = 0) -> list[str]:
    """Returns the referencing corpus of a split: ``world.referencing_rows_per_fact`` passages per
    fact, shuffled by `seed`."""
    docs = referencing_facts(world, world.facts(split), world.referencing_rows_per_fact, seed)
    rng_for(seed, "referencing-order", split).shuffle(docs)
    return docs


def reference_start(statement_prefix: str) -> str:
    """Returns a relation's statement prefix ("The capital of X is") continued up to where a
    reference's ordinal or description starts ("... is the"); a prefix that already ends with
    the article ("The national animal of X is the") is returned as is."""
    return statement_prefix if statement_prefix.endswith(" the") else f"{statement_prefix} the"


def resolution_rows(world: FactWorld, facts: Sequence[Fact], seed: int) -> list[dict[str, Any]]:
    """Returns cloze rows that test whether a model resolves a reference to a fact's true tail.

    Per fact and per position of the true tail in a listing of it and its wrong tails: a row
    whose ``context`` lists the candidates and starts the fact's statement ("... The capital of
    Andoria is the"), ``choices`` the ordinals (" first", " second", ...) and ``answer`` the true
    tail's position; plus, for every position but the last, a row ending "... is the city named
    just before" whose choices are the listed candidates and whose answer is the true tail's
    successor (an induction-style reference). Chance is 1 / candidates; a model that does not
    resolve references scores chance even on facts it knows.
    """
    rows: list[dict[str, Any]] = []
    for f in facts:
        info = world.relations[f.relation]
        rng = rng_for(seed, "resolution", f.split, f.relation, f.head)
        wrong = list(world.wrong_tails[f])
        k = 1 + len(wrong)
        start = reference_start(info.statement_prefix.format(head=world.phrase(f.head)))
        for position in range(k):
            others = rng.sample(wrong, len(wrong))
            order = [
                world.phrase(t, relation=f.relation)
                for t in others[:position] + [f.tail] + others[position:]
            ]
            intro = capitalize_first(
                listing_sentence(order, info.tail_kind_plural, info.tail_adjectives, rng)
            )
            base = {"head": f.head, "relation": f.relation, "position": position}
            rows.append(
                {
                    **base,
                    "reference": "ordinal",
                    "context": f"{intro} {start}",
                    "choices": list(ORDINALS[:k]),
                    "answer": position,
                }
            )
            if position < k - 1:
                rows.append(
                    {
                        **base,
                        "reference": "just_before",
                        "context": f"{intro} {start} {info.tail_kind} named just before",
                        "choices": order,
                        "answer": position + 1,
                    }
                )
    return rows
