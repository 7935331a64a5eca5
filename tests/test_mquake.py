"""Tests of the MQuAKE loader (jaxknow.studies.cooccurrence.mquake) on small files in the MQuAKE
format."""

from __future__ import annotations

import copy
import json

import pytest

from jaxknow.data.jsonl import CorpusFormatError
from jaxknow.studies.cooccurrence.audit import contains_name
from jaxknow.studies.cooccurrence.fact_types import Fact
from jaxknow.studies.cooccurrence.mquake import build_mquake, load_mquake, mquake_files


def _case(case_id, subject, prompt, new, old, question, relation, relation_id="P27"):
    hop = {
        "question": question,
        "cloze": prompt.format(subject),
        "answer": new,
        "answer_alias": [f"{new} (alias)"],
    }
    return {
        "case_id": case_id,
        "requested_rewrite": [
            {
                "prompt": prompt,
                "relation_id": relation_id,
                "subject": subject,
                "target_new": {"str": new, "id": "Q1"},
                "target_true": {"str": old, "id": "Q2"},
                "question": question,
            }
        ],
        "questions": [
            f"Who is the head of state of the {relation} of {subject}?",
            f"Who leads the {relation} of {subject}?",
        ],
        "answer": f"Leader of {old}",
        "answer_alias": [f"{old} leader"],
        "new_answer": f"Leader of {new}",
        "new_answer_alias": [f"{new} leader"],
        "single_hops": [{**hop, "answer": old, "answer_alias": []}],
        "new_single_hops": [
            hop,
            {
                "question": f"Who is the head of state of {new}?",
                "cloze": f"The head of state of {new} is",
                "answer": f"Leader of {new}",
                "answer_alias": [],
            },
        ],
        "orig": {
            "triples": [["Q0", relation_id, "Q2"]],
            "triples_labeled": [[subject, relation, old]],
            "new_triples": [["Q0", relation_id, "Q1"]],
            "new_triples_labeled": [
                [subject, relation, new],
                [new, "head of state", f"Leader of {new}"],
            ],
        },
    }


CASES = [
    _case(
        11,
        "Ellie Kemper",
        "{} is a citizen of",
        "Croatia",
        "United States of America",
        "What is the country of citizenship of Ellie Kemper?",
        "country of citizenship",
    ),
    _case(
        12,
        "Lionel Messi",
        "{} is a citizen of",
        "Japan",
        "Argentina",
        "What is the country of citizenship of Lionel Messi?",
        "country of citizenship",
    ),
    _case(
        13,
        "Marie Curie",
        "{} is a citizen of",
        "Peru",
        "Poland",
        "What is the country of citizenship of Marie Curie?",
        "country of citizenship",
    ),
    _case(
        14,
        "Apple",
        "{} was founded by",
        "Bill Gates",
        "Steve Jobs",
        "Who founded Apple?",
        "founded by",
        "P112",
    ),
]


def _write(tmp_path, cases, name="mquake.json"):
    path = tmp_path / name
    path.write_text(json.dumps(cases), encoding="utf-8")
    return path


def test_load_and_build(tmp_path):
    cases = load_mquake(_write(tmp_path, CASES))
    assert [c.case_id for c in cases] == [11, 12, 13, 14]
    assert cases[0].rewrites[0].target_new == "Croatia"
    assert cases[0].new_answer_alias == ("Croatia leader",)
    world = build_mquake(cases, seed=0, num_wrong_tails=2, referencing_rows_per_fact=5)
    assert Fact("Ellie Kemper", "country of citizenship", "Croatia") in world.all_facts
    assert Fact("Croatia", "head of state", "Leader of Croatia") in world.all_facts
    assert len(world.all_facts) == 8
    assert world.corpora["original"] == [
        "Ellie Kemper is a citizen of Croatia",
        "Lionel Messi is a citizen of Japan",
        "Marie Curie is a citizen of Peru",
        "Apple was founded by Bill Gates",
    ]


def test_referencing_corpus(tmp_path):
    world = build_mquake(load_mquake(_write(tmp_path, CASES)), referencing_rows_per_fact=5)
    docs = world.corpora["referencing"]
    assert len(docs) == 4 * 5
    others = {
        "Ellie Kemper": {"Japan", "Argentina", "Peru", "Poland"},
        "Lionel Messi": {"Croatia", "United States of America", "Peru", "Poland"},
    }
    for fact, wrong in world.wrong_tails.items():
        assert len(wrong) == 2 and fact.tail not in wrong
        if fact.head in others:
            assert set(wrong) <= others[fact.head]  # same relation, other cases
        passages = [d for d in docs if contains_name(d, fact.head)]
        assert len(passages) == 5
        for p in passages:
            assert all(contains_name(p, t) for t in (fact.tail, *wrong)), p


def test_eval_rows(tmp_path):
    world = build_mquake(load_mquake(_write(tmp_path, CASES)), referencing_rows_per_fact=2)
    single = world.subsets["single_hop"]
    assert single[0] == {
        "question": "What is the country of citizenship of Ellie Kemper?",
        "answer": "Croatia",
        "aliases": ["Croatia (alias)"],
    }
    assert len(single) == 8
    multi = world.subsets["multi_hop"]
    assert len(multi) == 8
    assert multi[0]["answer"] == "Leader of Croatia" and multi[0]["aliases"] == ["Croatia leader"]
    assert {r["case_id"] for r in multi} == {11, 12, 13, 14}
    files = mquake_files(world)
    assert set(files) == {
        "facts.jsonl",
        "corpus_original.jsonl",
        "corpus_referencing.jsonl",
        "eval_single_hop.jsonl",
        "eval_multi_hop.jsonl",
    }
    assert files["corpus_original.jsonl"][0] == {"text": "Ellie Kemper is a citizen of Croatia"}


def test_deterministic(tmp_path):
    cases = load_mquake(_write(tmp_path, CASES))
    a = build_mquake(cases, seed=5, referencing_rows_per_fact=4)
    b = build_mquake(cases, seed=5, referencing_rows_per_fact=4)
    assert mquake_files(a) == mquake_files(b)
    c = build_mquake(cases, seed=6, referencing_rows_per_fact=4)
    assert c.corpora["referencing"] != a.corpora["referencing"]


def _broken(mutate):
    cases = copy.deepcopy(CASES)
    mutate(cases[1])
    return cases


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda c: c.pop("new_answer"), "new_answer"),
        (lambda c: c["requested_rewrite"][0].pop("subject"), "requested_rewrite[0].subject"),
        (
            lambda c: c["requested_rewrite"][0]["target_new"].pop("str"),
            "requested_rewrite[0].target_new.str",
        ),
        (lambda c: c["orig"].pop("new_triples_labeled"), "orig.new_triples_labeled"),
        (lambda c: c.update(questions="not a list"), "questions"),
        (lambda c: c.update(questions=["ok", 3]), "questions[1]"),
        (lambda c: c["new_single_hops"][1].pop("answer"), "new_single_hops[1].answer"),
        (
            lambda c: c["requested_rewrite"][0].update(prompt="no placeholder"),
            "requested_rewrite[0].prompt",
        ),
        (
            lambda c: c["orig"].update(new_triples_labeled=[["a", "b"]]),
            "orig.new_triples_labeled[0]",
        ),
    ],
)
def test_malformed_case_names_file_case_and_field(tmp_path, mutate, field):
    path = _write(tmp_path, _broken(mutate), "broken.json")
    with pytest.raises(CorpusFormatError) as err:
        load_mquake(path)
    message = str(err.value)
    assert str(path) in message and "case 1" in message and "case_id=12" in message
    assert repr(field) in message


def test_malformed_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="bad.json"):
        load_mquake(bad)
    bad.write_text('{"case_id": 1}', encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="list of cases"):
        load_mquake(bad)
    bad.write_text('[{"requested_rewrite": []}]', encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="case 0.*'case_id' is missing"):
        load_mquake(bad)
    with pytest.raises(FileNotFoundError):
        load_mquake(tmp_path / "absent.json")
    with pytest.raises(ValueError):
        build_mquake([])
