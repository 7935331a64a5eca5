"""Co-occurrence audit (Zhang, Li & Wu 2024, section 3).

The paper's criterion: a corpus carries statistical co-occurrence for a fact (h, r, t) if, for
every other candidate t', p(t, r, h) > p(t', r, h), with p the probability that the words appear
together in a passage. The audit counts, for each fact, the passages that mention the head
(whole word, case-insensitive) and the relation (any of its keywords), and among those the
passages that mention each candidate tail. A narrative corpus favours the true tail for every fact;
a referencing corpus, where every passage names the true and the same wrong tails, for none.

Matching is whole-word and case-insensitive: a name matches where it is not preceded or followed by
a word character, so "Andoria" matches in "Andoria's" but not in "Andorian". Passages are scanned
once and tokenised once; one-word names are matched against its word tokens, longer names are
looked up by their first word and only then checked with a precompiled regex.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from jaxknow.studies.cooccurrence.fact_types import Fact

_WORD = re.compile(r"\w+")


def name_pattern(name: str) -> re.Pattern[str]:
    """Returns a compiled, case-insensitive whole-word pattern for `name`."""
    return re.compile(r"(?<!\w)" + re.escape(name.lower()) + r"(?!\w)", re.IGNORECASE)


def contains_name(text: str, name: str) -> bool:
    """Returns whether `text` mentions `name` as a whole word (case-insensitive)."""
    return name_pattern(name).search(text) is not None


def names_overlap(a: str, b: str) -> bool:
    """Returns whether one name equals or contains the other as whole words (case-insensitive)."""
    return contains_name(a, b) or contains_name(b, a)


class NameMatcher:
    """Finds which of a fixed set of names a text mentions (whole word, case-insensitive).

    A one-word name is mentioned exactly when it is one of the text's word tokens (maximal runs
    of word characters), so only names of several words need a regex check.
    """

    def __init__(self, names: Iterable[str]):
        self._single: set[str] = set()
        self._multi: dict[str, list[tuple[str, re.Pattern[str]]]] = defaultdict(list)
        for name in names:
            key = name.lower()
            tokens = _WORD.findall(key)
            if not tokens:
                continue
            if len(tokens) == 1 and tokens[0] == key:
                self._single.add(key)
            elif all(key != k for k, _ in self._multi[tokens[0]]):
                self._multi[tokens[0]].append((key, name_pattern(name)))

    def find(self, text: str, tokens: set[str] | None = None) -> set[str]:
        """Returns the lower-cased names that `text` mentions (`tokens`: its lower-cased word
        tokens, if already computed)."""
        lower = text.lower()
        if tokens is None:
            tokens = set(_WORD.findall(lower))
        found = self._single & tokens
        for token in tokens.intersection(self._multi):
            for key, pattern in self._multi[token]:
                if key not in found and pattern.search(lower):
                    found.add(key)
        return found


def word_tokens(text: str) -> set[str]:
    """Returns the lower-cased word tokens of `text`."""
    return set(_WORD.findall(text.lower()))


@dataclass(frozen=True)
class AuditRow:
    """Audit verdict for one fact.

    `counts` maps each candidate tail (the true one included) to the number of passages that
    mention the head, the relation and that candidate; `passages` is the number of passages that
    mention the head and the relation; `co_occurring` is True when the true tail's count is
    positive and strictly greater than every other candidate's.
    """

    fact: Fact
    counts: dict[str, int]
    co_occurring: bool
    passages: int = 0

    def strongest_rival(self) -> tuple[str | None, int]:
        """Returns the other candidate with the highest count and that count (None, 0 if none)."""
        rivals = [(c, n) for c, n in self.counts.items() if c.lower() != self.fact.tail.lower()]
        if not rivals:
            return None, 0
        return max(rivals, key=lambda cn: (cn[1], cn[0]))


def audit(
    passages: Iterable[str],
    facts: Sequence[Fact],
    relation_keywords: Mapping[str, Sequence[str]],
    candidates: Mapping[str, Sequence[str]] | None = None,
) -> list[AuditRow]:
    """Returns one AuditRow per fact (in `facts` order): co-occurrence counts in `passages`.

    `relation_keywords` maps every relation of `facts` to its keywords (a passage mentions the
    relation when it mentions any keyword as a whole word); `candidates` maps a relation to extra
    candidate tails (e.g. the wrong tails of a referencing corpus). The candidates of a fact are
    all tails of its relation in `facts` plus those extras. Raises ValueError when a relation has
    no keywords.
    """
    facts = list(facts)
    missing = sorted(
        {
            f.relation
            for f in facts
            if not [k for k in relation_keywords.get(f.relation, ()) if k.strip()]
        }
    )
    if missing:
        raise ValueError(f"relation_keywords has no keywords for relation(s) {missing}")
    cand: dict[str, dict[str, None]] = defaultdict(dict)
    for f in facts:
        cand[f.relation].setdefault(f.tail)
    for relation, values in (candidates or {}).items():
        if relation in cand:
            for v in values:
                cand[relation].setdefault(v)
    # candidate names per relation keyed by lower case (first spelling wins).
    cand_keys: dict[str, dict[str, str]] = {}
    for relation, values in cand.items():
        keys: dict[str, str] = {}
        for v in values:
            keys.setdefault(v.lower(), v)
        cand_keys[relation] = keys

    relations = {f.relation for f in facts}
    keyword_to_relations: dict[str, set[str]] = defaultdict(set)
    for relation in relations:
        for k in relation_keywords[relation]:
            if k.strip():
                keyword_to_relations[k.lower()].add(relation)
    head_matcher = NameMatcher(f.head for f in facts)
    keyword_matcher = NameMatcher(keyword_to_relations)
    cand_matcher = NameMatcher(v for values in cand.values() for v in values)
    wanted = {(f.head.lower(), f.relation) for f in facts}

    passage_counts: Counter[tuple[str, str]] = Counter()
    tail_counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for text in passages:
        tokens = word_tokens(text)
        heads = head_matcher.find(text, tokens)
        if not heads:
            continue
        rels = {r for k in keyword_matcher.find(text, tokens) for r in keyword_to_relations[k]}
        keys = [(h, r) for h in heads for r in rels if (h, r) in wanted]
        if not keys:
            continue
        found = cand_matcher.find(text, tokens)
        for key in keys:
            passage_counts[key] += 1
            tail_counts[key].update(c for c in found if c in cand_keys[key[1]])

    rows = []
    for f in facts:
        key = (f.head.lower(), f.relation)
        counts = {name: tail_counts[key][low] for low, name in cand_keys[f.relation].items()}
        true = tail_counts[key][f.tail.lower()]
        others = [n for low, n in tail_counts[key].items() if low != f.tail.lower()]
        co = true > 0 and all(true > n for n in others)
        rows.append(AuditRow(fact=f, counts=counts, co_occurring=co, passages=passage_counts[key]))
    return rows


def summary_line(rows: Sequence[AuditRow]) -> str:
    """Returns ``"true tail favoured in k of n facts"``."""
    k = sum(r.co_occurring for r in rows)
    return f"true tail favoured in {k} of {len(rows)} facts"


def format_audit(rows: Sequence[AuditRow]) -> str:
    """Returns a fixed-width table (one line per fact) followed by the summary line."""
    header = ("head", "relation", "tail", "passages", "true", "top rival", "rival", "co-occurs")
    table = [header]
    for r in rows:
        rival, n = r.strongest_rival()
        table.append(
            (
                r.fact.head,
                r.fact.relation,
                r.fact.tail,
                str(r.passages),
                str(r.counts.get(r.fact.tail, 0)),
                rival or "-",
                str(n),
                "yes" if r.co_occurring else "no",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(summary_line(rows))
    return "\n".join(lines)
