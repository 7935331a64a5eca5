"""Loader for MQuAKE (-T / -CF) JSON files (Zhong et al. 2023; spec section 8).

A file is a JSON list of cases. Each case has ``case_id``, ``requested_rewrite`` (a list of
``{"prompt" (with "{}" for the subject), "subject", "target_new": {"str"}, "target_true": {"str"},
"question"}``), ``questions`` (multi-hop questions), ``answer`` / ``answer_alias``, ``new_answer`` /
``new_answer_alias``, ``single_hops`` / ``new_single_hops`` (lists of ``{"question", "cloze",
"answer", "answer_alias"}``) and ``orig`` (``triples``, ``triples_labeled``, ``new_triples``,
``new_triples_labeled``).

`build_mquake` turns the cases into a `FactWorld` holding:
- facts: the labelled new triples (split "novel"),
- corpora ``original`` (the dataset's own statements, ``prompt`` filled with the subject followed
  by the new target) and ``referencing`` (implicit association, wrong targets drawn from other
  cases),
- subsets ``single_hop`` (from ``new_single_hops``) and ``multi_hop`` (the case questions with
  the new answer), rows ``{"question", "answer", "aliases"}`` (multi-hop rows add ``case_id``).

A missing field or a wrong type raises `CorpusFormatError` naming the file, the case (index and
case_id) and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from jaxknow.errors import CorpusFormatError
from jaxknow.studies.cooccurrence.audit import names_overlap
from jaxknow.studies.cooccurrence.fact_types import Fact, FactWorld, rng_for
from jaxknow.studies.cooccurrence.referencing import MAX_CANDIDATES, render_referencing

__all__ = [
    "Hop",
    "MQuAKECase",
    "Rewrite",
    "build_mquake",
    "load_mquake",
    "mquake_files",
    "multi_hop_rows",
    "original_corpus",
    "parse_mquake",
    "referencing_passages",
    "single_hop_rows",
]


@dataclass(frozen=True)
class Rewrite:
    """One requested edit: ``prompt`` filled with ``subject`` states the fact, the new target
    completing it."""

    prompt: str
    subject: str
    target_new: str
    target_true: str
    question: str | None = None
    relation_id: str | None = None

    def statement(self) -> str:
        """Returns the dataset's own statement of the new fact ("X is a citizen of Croatia")."""
        return f"{self.prompt.replace('{}', self.subject)} {self.target_new}"

    def cloze(self) -> str:
        """Returns the statement without its target ("X is a citizen of")."""
        return self.prompt.replace("{}", self.subject)


@dataclass(frozen=True)
class Hop:
    """A single-hop question with its answer and aliases."""

    question: str
    answer: str
    aliases: tuple[str, ...] = ()
    cloze: str | None = None


@dataclass(frozen=True)
class MQuAKECase:
    """One validated MQuAKE case (`index` is its position in the file)."""

    index: int
    case_id: int | str
    rewrites: tuple[Rewrite, ...]
    questions: tuple[str, ...]
    answer: str | None
    answer_alias: tuple[str, ...]
    new_answer: str
    new_answer_alias: tuple[str, ...]
    single_hops: tuple[Hop, ...]
    new_single_hops: tuple[Hop, ...]
    triples_labeled: tuple[tuple[str, str, str], ...]
    new_triples_labeled: tuple[tuple[str, str, str], ...]


_MISSING = object()


class _Checker:
    """Typed field access for one case; errors name the file, the case and the field."""

    def __init__(self, source: str, index: int, case_id: object = None):
        self.source, self.index, self.case_id = source, index, case_id

    def fail(self, field: str, problem: str) -> NoReturn:
        """Raises CorpusFormatError for `field`."""
        where = f"case {self.index}"
        if self.case_id is not None:
            where += f" (case_id={self.case_id!r})"
        raise CorpusFormatError(f"{self.source}: {where}: field {field!r} {problem}")

    def get(
        self,
        obj: Mapping[str, Any],
        key: str,
        types: type | tuple[type, ...],
        field: str,
        required: bool = True,
    ) -> Any:
        """Returns ``obj[key]`` checked against `types`; None if optional and absent."""
        value = obj.get(key, _MISSING)
        if value is _MISSING or (value is None and not required):
            if required:
                self.fail(field, "is missing")
            return None
        if not isinstance(value, types) or isinstance(value, bool):
            names = (
                types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
            )
            self.fail(field, f"must be {names}, got {type(value).__name__}")
        return value

    def strings(
        self, obj: Mapping[str, Any], key: str, field: str, required: bool = True
    ) -> tuple[str, ...]:
        """Returns ``obj[key]`` checked to be a list of strings (empty if optional and absent)."""
        value = self.get(obj, key, list, field, required)
        if value is None:
            return ()
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{field}[{i}]", f"must be str, got {type(item).__name__}")
        return tuple(value)

    def dicts(
        self, obj: Mapping[str, Any], key: str, field: str, required: bool = True
    ) -> list[dict[str, Any]]:
        """Returns ``obj[key]`` checked to be a list of objects (empty if optional and absent)."""
        value = self.get(obj, key, list, field, required)
        if value is None:
            return []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                self.fail(f"{field}[{i}]", f"must be an object, got {type(item).__name__}")
        return value

    def triples(
        self, obj: Mapping[str, Any], key: str, field: str, required: bool = True
    ) -> tuple[tuple[str, str, str], ...]:
        """Returns ``obj[key]`` checked to be a list of [subject, relation, object] strings."""
        value = self.get(obj, key, list, field, required)
        if value is None:
            return ()
        out = []
        for i, item in enumerate(value):
            if (
                not isinstance(item, list)
                or len(item) != 3
                or not all(isinstance(x, str) for x in item)
            ):
                self.fail(f"{field}[{i}]", "must be a list of 3 strings")
            out.append((item[0], item[1], item[2]))
        return tuple(out)

    def hops(
        self, obj: Mapping[str, Any], key: str, field: str, required: bool = True
    ) -> tuple[Hop, ...]:
        """Returns ``obj[key]`` parsed as single-hop questions."""
        out = []
        for i, hop in enumerate(self.dicts(obj, key, field, required)):
            f = f"{field}[{i}]"
            out.append(
                Hop(
                    question=self.get(hop, "question", str, f"{f}.question"),
                    answer=self.get(hop, "answer", str, f"{f}.answer"),
                    aliases=self.strings(hop, "answer_alias", f"{f}.answer_alias", required=False),
                    cloze=self.get(hop, "cloze", str, f"{f}.cloze", required=False),
                )
            )
        return tuple(out)


def _parse_case(raw: object, index: int, source: str) -> MQuAKECase:
    """Returns one validated case (see the module docstring for the fields)."""
    check = _Checker(source, index)
    if not isinstance(raw, dict):
        check.fail("<case>", f"must be an object, got {type(raw).__name__}")
    case_id = check.get(raw, "case_id", (int, str), "case_id")
    check.case_id = case_id
    rewrites = []
    raw_rewrites = check.dicts(raw, "requested_rewrite", "requested_rewrite")
    if not raw_rewrites:
        check.fail("requested_rewrite", "must not be empty")
    for i, rw in enumerate(raw_rewrites):
        f = f"requested_rewrite[{i}]"
        prompt = check.get(rw, "prompt", str, f"{f}.prompt")
        if "{}" not in prompt:
            check.fail(f"{f}.prompt", f"must contain '{{}}' for the subject, got {prompt!r}")
        target_new = check.get(rw, "target_new", dict, f"{f}.target_new")
        target_true = check.get(rw, "target_true", dict, f"{f}.target_true")
        relation_id = check.get(rw, "relation_id", str, f"{f}.relation_id", required=False)
        rewrites.append(
            Rewrite(
                prompt=prompt,
                subject=check.get(rw, "subject", str, f"{f}.subject"),
                target_new=check.get(target_new, "str", str, f"{f}.target_new.str"),
                target_true=check.get(target_true, "str", str, f"{f}.target_true.str"),
                question=check.get(rw, "question", str, f"{f}.question", required=False),
                relation_id=relation_id,
            )
        )
    orig = check.get(raw, "orig", dict, "orig")
    return MQuAKECase(
        index=index,
        case_id=case_id,
        rewrites=tuple(rewrites),
        questions=check.strings(raw, "questions", "questions"),
        answer=check.get(raw, "answer", str, "answer", required=False),
        answer_alias=check.strings(raw, "answer_alias", "answer_alias", required=False),
        new_answer=check.get(raw, "new_answer", str, "new_answer"),
        new_answer_alias=check.strings(raw, "new_answer_alias", "new_answer_alias", required=False),
        single_hops=check.hops(raw, "single_hops", "single_hops", required=False),
        new_single_hops=check.hops(raw, "new_single_hops", "new_single_hops"),
        triples_labeled=check.triples(
            orig, "triples_labeled", "orig.triples_labeled", required=False
        ),
        new_triples_labeled=check.triples(orig, "new_triples_labeled", "orig.new_triples_labeled"),
    )


def parse_mquake(data: object, source: str = "<data>") -> list[MQuAKECase]:
    """Returns the validated cases of already-decoded MQuAKE JSON; `source` names it in errors."""
    if not isinstance(data, list):
        raise CorpusFormatError(
            f"{source}: expected a JSON list of cases, got {type(data).__name__}"
        )
    return [_parse_case(raw, i, source) for i, raw in enumerate(data)]


def load_mquake(path: str | os.PathLike) -> list[MQuAKECase]:
    """Returns the validated cases of an MQuAKE JSON file.

    Raises FileNotFoundError if the file is absent and CorpusFormatError (naming the file, the case
    index and case_id, and the field) if it is not valid MQuAKE.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MQuAKE file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CorpusFormatError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
    return parse_mquake(data, str(path))


def _unique_rewrites(cases: Sequence[MQuAKECase]) -> list[tuple[MQuAKECase, Rewrite]]:
    """Returns (first case, rewrite) for each distinct rewrite, in file order."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for case in cases:
        for rw in case.rewrites:
            key = (rw.prompt, rw.subject, rw.target_new)
            if key not in seen:
                seen.add(key)
                out.append((case, rw))
    return out


def original_corpus(cases: Sequence[MQuAKECase]) -> list[str]:
    """Returns the "original" finetuning corpus: one statement per distinct rewrite,
    ``prompt.format(subject) + " " + target_new``."""
    return [rw.statement() for _, rw in _unique_rewrites(cases)]


def _relation_label(case: MQuAKECase, rw: Rewrite) -> str:
    """Returns the relation label of a rewrite, from the case's labelled new triples if they
    hold (subject, ?, target_new), else its relation id, else its prompt."""
    for s, r, o in case.new_triples_labeled:
        if s == rw.subject and o == rw.target_new:
            return r
    return rw.relation_id or rw.prompt.replace("{}", "").strip()


def _wrong_targets(
    cases: Sequence[MQuAKECase], case: MQuAKECase, rw: Rewrite, n: int, seed: int
) -> tuple[str, ...]:
    """Returns up to `n` wrong targets for a rewrite, drawn from the targets (new and true) of
    other cases, preferring rewrites of the same relation. Raises ValueError if none exists."""
    same: set[str] = set()
    other: set[str] = set()
    for c in cases:
        if c.index == case.index:
            continue
        for r in c.rewrites:
            related = r.relation_id == rw.relation_id if rw.relation_id else r.prompt == rw.prompt
            for t in (r.target_new, r.target_true):
                (same if related else other).add(t)
    bad = (rw.target_new, rw.target_true)
    same = {t for t in same if not any(names_overlap(t, b) for b in bad)}
    other = {t for t in other - same if not any(names_overlap(t, b) for b in bad)}
    rng = rng_for(seed, "mquake-wrong", case.index, rw.subject, rw.target_new)
    picked = rng.sample(sorted(same), min(n, len(same)))
    if len(picked) < n:
        picked += rng.sample(sorted(other), min(n - len(picked), len(other)))
    # Wrong targets must not overlap each other either.
    distinct: list[str] = []
    for t in picked:
        if not any(names_overlap(t, d) for d in distinct):
            distinct.append(t)
    if not distinct:
        raise ValueError(
            f"case {case.case_id!r}: no wrong target available for "
            f"{rw.subject!r} -> {rw.target_new!r} (need other cases)"
        )
    return tuple(distinct)


def referencing_passages(
    cases: Sequence[MQuAKECase], *, seed: int = 0, num_wrong_tails: int = 2, rows_per_fact: int = 8
) -> tuple[list[str], dict[Fact, tuple[str, ...]]]:
    """Returns the referencing corpus (shuffled) and fact -> wrong targets used.

    Each distinct rewrite gets `rows_per_fact` passages naming its new target and the same wrong
    targets (from other cases), stating the fact through the dataset's prompt (and question, if
    any) with a reference ("... is a citizen of the second of them.").
    """
    if not 1 <= num_wrong_tails <= MAX_CANDIDATES - 1:
        raise ValueError(
            f"num_wrong_tails must be in [1, {MAX_CANDIDATES - 1}], got {num_wrong_tails}"
        )
    docs: list[str] = []
    wrong_of: dict[Fact, tuple[str, ...]] = {}
    for case, rw in _unique_rewrites(cases):
        wrong = _wrong_targets(cases, case, rw, num_wrong_tails, seed)
        fact = Fact(rw.subject, _relation_label(case, rw), rw.target_new, "novel")
        wrong_of[fact] = wrong
        templates = [rw.cloze().replace("{", "{{").replace("}", "}}") + " {ref}."]
        if rw.question:
            templates.append(
                rw.question.replace("{", "{{").replace("}", "}}") + " The answer is {ref}."
            )
        docs += render_referencing(
            rw.subject,
            rw.target_new,
            wrong,
            templates,
            rows_per_fact,
            rng_for(seed, "mquake-ref", case.index, rw.subject),
        )
    rng_for(seed, "mquake-ref-order").shuffle(docs)
    return docs, wrong_of


def single_hop_rows(cases: Sequence[MQuAKECase]) -> list[dict[str, Any]]:
    """Returns single-hop evaluation rows ``{"question", "answer", "aliases"}`` from the
    ``new_single_hops`` of every case (distinct questions, file order)."""
    seen: set[str] = set()
    rows = []
    for case in cases:
        for hop in case.new_single_hops:
            if hop.question not in seen:
                seen.add(hop.question)
                rows.append(
                    {"question": hop.question, "answer": hop.answer, "aliases": list(hop.aliases)}
                )
    return rows


def multi_hop_rows(cases: Sequence[MQuAKECase]) -> list[dict[str, Any]]:
    """Returns multi-hop evaluation rows ``{"question", "answer", "aliases", "case_id"}``: every
    question of every case with the case's new answer and aliases."""
    return [
        {
            "question": q,
            "answer": case.new_answer,
            "aliases": list(case.new_answer_alias),
            "case_id": case.case_id,
        }
        for case in cases
        for q in case.questions
    ]


def build_mquake(
    cases: Sequence[MQuAKECase],
    *,
    seed: int = 0,
    num_wrong_tails: int = 2,
    referencing_rows_per_fact: int = 8,
) -> FactWorld:
    """Returns a FactWorld of the cases: facts (labelled new triples, split "novel"), corpora
    ``original`` and ``referencing``, subsets ``single_hop`` and ``multi_hop``.

    Raises ValueError when there are no cases.
    """
    if not cases:
        raise ValueError("build_mquake needs at least one case")
    facts: dict[Fact, None] = {}
    for case in cases:
        for s, r, o in case.new_triples_labeled:
            facts.setdefault(Fact(s, r, o, "novel"))
    referencing, wrong_of = referencing_passages(
        cases, seed=seed, num_wrong_tails=num_wrong_tails, rows_per_fact=referencing_rows_per_fact
    )
    subjects = sorted({rw.subject for c in cases for rw in c.rewrites})
    targets = sorted({rw.target_new for c in cases for rw in c.rewrites})
    return FactWorld(
        name="mquake",
        all_facts=tuple(facts),
        relations={},
        entities={"subject": subjects, "target": targets},
        entity_split={},
        wrong_tails=wrong_of,
        seed=seed,
        num_wrong_tails=num_wrong_tails,
        referencing_rows_per_fact=referencing_rows_per_fact,
        corpora={"original": original_corpus(cases), "referencing": referencing},
        subsets={"single_hop": single_hop_rows(cases), "multi_hop": multi_hop_rows(cases)},
    )


def mquake_files(world: FactWorld) -> dict[str, list[dict[str, Any]]]:
    """Returns file name -> JSONL rows: ``facts.jsonl``, ``corpus_original.jsonl``,
    ``corpus_referencing.jsonl``, ``eval_single_hop.jsonl``, ``eval_multi_hop.jsonl``."""
    return world.stored_files()
