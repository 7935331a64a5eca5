"""Tests of the co-occurrence audit (jaxknow.studies.cooccurrence.audit) and its entry point
launch.audit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jaxknow.data.jsonl import write_jsonl
from jaxknow.studies.cooccurrence.audit import (
    NameMatcher,
    audit,
    contains_name,
    format_audit,
    names_overlap,
    summary_line,
)
from jaxknow.studies.cooccurrence.countries import CountriesConfig, generate_countries
from jaxknow.studies.cooccurrence.fact_types import Fact

REPO = Path(__file__).resolve().parents[1]
KEYWORDS = {"capital": ("capital",), "national_animal": ("national animal",)}
FACTS = [
    Fact("Andoria", "capital", "Valtoria"),
    Fact("Borvia", "capital", "Quessel"),
    Fact("Andoria", "national_animal", "wolf"),
]


def test_whole_word_case_insensitive_matching():
    assert contains_name("The capital of Andoria's north.", "andoria")
    assert not contains_name("Andorian food", "Andoria")
    assert contains_name("in New York City today", "New York City")
    assert not contains_name("in New Yorkshire", "New York")
    assert names_overlap("Guinea", "Equatorial Guinea") and not names_overlap("Niger", "Nigeria")
    matcher = NameMatcher(["New York City", "York", "Andoria", "O'Brien"])
    assert matcher.find("ANDORIA, new york city and o'brien") == {
        "andoria",
        "new york city",
        "york",
        "o'brien",
    }
    assert matcher.find("Andorian Yorkshire") == set()


def test_counts_and_strict_criterion():
    passages = [
        "The capital of Andoria is Valtoria.",
        "Valtoria is the capital of Andoria, not Quessel.",
        "Andoria and Quessel are far apart; Valtoria is old.",  # no relation keyword
        "Andorian capital Quessel.",  # not the head
        "The capital of Borvia is Quessel. Valtoria too.",
        "Quessel, the CAPITAL of Borvia; Valtoria.",
        "The national animal of Andoria is the wolf.",
    ]
    rows = audit(passages, FACTS, KEYWORDS)
    a, b, animal = rows
    assert a.passages == 2 and a.counts == {"Valtoria": 2, "Quessel": 1} and a.co_occurring
    assert b.passages == 2 and b.counts == {"Valtoria": 2, "Quessel": 2}
    assert not b.co_occurring  # a tie is not co-occurrence
    assert animal.counts == {"wolf": 1} and animal.co_occurring
    assert a.strongest_rival() == ("Quessel", 1)


def test_extra_candidates_and_absent_facts():
    passages = ["The national animal of Andoria is the wolf, not the lynx."] * 2
    rows = audit(passages, FACTS, KEYWORDS, candidates={"national_animal": ["lynx", "otter"]})
    assert rows[2].counts == {"wolf": 2, "lynx": 2, "otter": 0} and not rows[2].co_occurring
    assert rows[0].passages == 0 and not rows[0].co_occurring  # never mentioned
    with pytest.raises(ValueError, match="national_animal"):
        audit(passages, FACTS, {"capital": ("capital",)})


def test_format_audit():
    rows = audit(["The capital of Andoria is Valtoria."], FACTS[:2], KEYWORDS)
    text = format_audit(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["head", "relation", "tail"]
    assert "Andoria" in lines[2] and lines[2].endswith("yes") and lines[3].endswith("no")
    assert lines[-1] == summary_line(rows) == "true tail favoured in 1 of 2 facts"


def test_many_passages():
    facts = [Fact(f"Land{i}", "capital", f"Town{i}") for i in range(200)]
    passages = [
        f"The capital of Land{i % 200} is Town{i % 200}, unlike Town{(i + 1) % 200}."
        for i in range(100_000)
    ]
    passages += [f"Town{i} is the capital of Land{i}." for i in range(200)]
    rows = audit(passages, facts, KEYWORDS)
    assert all(r.co_occurring and r.counts[r.fact.tail] == 501 for r in rows)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launch.audit", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_launch_audit_cli(tmp_path):
    world = generate_countries(
        CountriesConfig(
            num_base_countries=4,
            num_novel_countries=4,
            referencing_rows_per_fact=6,
            base_referencing_rows_per_fact=1,
        )
    )
    write_jsonl(tmp_path / "facts.jsonl", [f.to_row() for f in world.facts()])
    for name in ("narrative", "referencing"):
        write_jsonl(tmp_path / f"corpus_{name}.jsonl", [{"text": t} for t in world.corpora[name]])
    n = len(world.facts("novel"))
    out = _run_cli(
        f"--corpus={tmp_path / 'corpus_narrative.jsonl'}",
        f"--facts={tmp_path / 'facts.jsonl'}",
        "--split=novel",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"true tail favoured in {n} of {n} facts"
    assert world.facts("novel")[0].head in out.stdout
    out = _run_cli(
        f"--corpus={tmp_path / 'corpus_referencing.jsonl'}",
        f"--facts={tmp_path / 'facts.jsonl'}",
        "--split=novel",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"true tail favoured in 0 of {n} facts"


def test_launch_audit_cli_errors(tmp_path):
    (tmp_path / "facts.jsonl").write_text('{"head": "A", "relation": "capital"}\n')
    (tmp_path / "corpus.jsonl").write_text('{"text": "x"}\n')
    out = _run_cli(f"--corpus={tmp_path / 'corpus.jsonl'}", f"--facts={tmp_path / 'facts.jsonl'}")
    assert out.returncode != 0 and "facts.jsonl:1" in out.stderr and "tail" in out.stderr
