"""Fact-world types: facts, relation metadata, tail attributes and the world container.

They import nothing from the rest of the co-occurrence study, so every module there (renderers, the
referencing rendering, the co-occurrence audit, the world generators) can build on them.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("base", "novel")
BASE_RENDERINGS = ("both", "split")  # FactWorld.base_renderings
SHARED = "shared"  # split of entities known to every split (animals, continents, currencies)


def rng_for(seed: int, *parts: object) -> random.Random:
    """Returns a `random.Random` seeded deterministically by `seed` and a purpose path.

    String seeds are hashed with SHA-512 by `random`, so streams do not depend on PYTHONHASHSEED.
    """
    return random.Random(":".join(str(p) for p in (seed, *parts)))


ROW_COUNT_FIELDS = (
    "narrative_rows_per_fact",
    "referencing_rows_per_fact",
    "base_referencing_rows_per_fact",
)


def check_world_config(
    config: Any, int_fields: tuple[str, ...], relations: tuple[str, ...]
) -> None:
    """Checks the fields every fact-world config shares, naming the config class and field:
    `int_fields` and the per-fact row counts (`ROW_COUNT_FIELDS`) are ints (not bools), the
    row counts are >= 1, and `relations` is a non-empty tuple of distinct names from
    `relations` (a list is stored back as a tuple).

    Raises ValueError on the first field that fails.
    """
    cls = type(config).__name__
    for name in (*int_fields, *ROW_COUNT_FIELDS):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{cls}.{name} must be an int, got {value!r}")
    for name in ROW_COUNT_FIELDS:
        if getattr(config, name) < 1:
            raise ValueError(f"{cls}.{name} must be >= 1, got {getattr(config, name)}")
    given = config.relations
    rels = tuple(given) if isinstance(given, (tuple, list)) else None
    if not rels or len(set(rels)) != len(rels) or not set(rels) <= set(relations):
        raise ValueError(
            f"{cls}.relations must be a non-empty tuple of distinct names from {relations}, "
            f"got {given!r}"
        )
    object.__setattr__(config, "relations", rels)


def capitalize_first(text: str) -> str:
    """Returns `text` with its first character upper-cased (the rest untouched)."""
    return text[:1].upper() + text[1:]


@dataclass(frozen=True, order=True)
class Fact:
    """One (head, relation, tail) fact; `split` is "base" or "novel"."""

    head: str
    relation: str
    tail: str
    split: str = "novel"

    def to_row(self) -> dict[str, str]:
        """Returns the JSONL row ``{"head", "relation", "tail", "split"}``."""
        return {
            "head": self.head,
            "relation": self.relation,
            "tail": self.tail,
            "split": self.split,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Fact:
        """Returns the Fact of a JSONL row (``split`` defaults to "novel")."""
        return cls(
            str(row["head"]), str(row["relation"]), str(row["tail"]), str(row.get("split", "novel"))
        )


@dataclass(frozen=True)
class RelationInfo:
    """Rendering metadata of one relation.

    Templates use ``{head}`` and ``{tail}`` (the tail phrase, i.e. with `tail_article`);
    reference templates use ``{head}`` and ``{ref}`` / ``{Ref}`` (a noun phrase that points at the
    tail, lower / capitalised); indirect templates are (scenario, question) pairs with ``{head}``
    and ``{person}``; descriptions describe the head through the tail (``{tail}``, only for
    one-to-one relations) or the tail through the head (``{head}``).
    """

    name: str
    keywords: tuple[str, ...]
    narrative_templates: tuple[str, ...]
    question_templates: tuple[str, ...]
    reference_templates: tuple[str, ...]
    statement_prefix: str
    negated_prefix: str
    tail_kind: str = "option"
    tail_kind_plural: str = "options"
    tail_article: str = ""
    tail_adjectives: tuple[str, ...] = ("",)
    reverse_templates: tuple[str, ...] = ()
    head_description: str | None = None
    tail_description: str | None = None
    indirect_templates: tuple[tuple[str, str], ...] = ()

    @property
    def reversible(self) -> bool:
        """Returns whether the relation is one-to-one (reverse questions and head descriptions)."""
        return bool(self.reverse_templates) and self.head_description is not None

    def tail_phrase(self, tail: str) -> str:
        """Returns the tail as it appears in running text (with its article, if any)."""
        return f"{self.tail_article} {tail}" if self.tail_article else tail

    def narrative(self, template: str, head: str, tail: str) -> str:
        """Returns one narrative sentence stating the fact with `template`; `head` and `tail` are
        the phrases as they appear in running text (see `FactWorld.phrase`)."""
        return capitalize_first(template.format(head=head, tail=tail))

    def template_text(self) -> str:
        """Returns all template text of the relation joined (for vocabulary checks)."""
        parts = [
            *self.keywords,
            *self.narrative_templates,
            *self.question_templates,
            *self.reference_templates,
            self.statement_prefix,
            self.negated_prefix,
            self.tail_kind,
            self.tail_kind_plural,
            *self.tail_adjectives,
            *self.reverse_templates,
            self.head_description or "",
            self.tail_description or "",
        ]
        for scenario, question in self.indirect_templates:
            parts += [scenario, question]
        return "\n".join(parts)


@dataclass(frozen=True)
class TailAttributes:
    """Prior-knowledge attributes of the tails of one relation (e.g. animal commonsense).

    `questions` maps an attribute to a question template over ``{subject}`` (either the plain
    tail phrase, "the wolf", or a description, "the national animal of Andoria"); `values` maps a
    tail to its attribute values; `sentences` maps an attribute to statement templates over
    ``{subject}`` and ``{value}`` used for the base-world prior-knowledge text.
    """

    subset: str
    questions: Mapping[str, str]
    values: Mapping[str, Mapping[str, str]]
    sentences: Mapping[str, tuple[str, ...]]


@dataclass
class FactWorld:
    """A fact world: facts, relation metadata, entity lists, and the corpora / evaluation subsets.

    `entities` maps an entity kind ("country", "city", "animal", ...) to its names;
    `entity_split` maps a name to the split it belongs to ("base", "novel" or "shared");
    `wrong_tails` fixes, per fact, the wrong tails the referencing rendering and the likelihood
    probes use; `tail_pools` adds, per relation and split ("*" for all splits), values that may
    serve as distractors besides the tails of facts; `tail_attributes` holds prior knowledge about
    tails (animal commonsense); `prior_knowledge` is extra base-world text. `corpora` and `subsets`
    hold rendered corpora (name -> documents) and evaluation subsets (name -> rows).
    """

    name: str
    all_facts: tuple[Fact, ...]
    relations: dict[str, RelationInfo]
    entities: dict[str, list[str]]
    entity_split: dict[str, str]
    wrong_tails: dict[Fact, tuple[str, ...]]
    seed: int = 0
    num_wrong_tails: int = 2
    narrative_rows_per_fact: int = 9
    referencing_rows_per_fact: int = 48
    base_referencing_rows_per_fact: int = 12
    # Worked resolution passages per base fact: a referencing passage that also states the fact
    # plainly, so the base model can learn to resolve references (0: none).
    base_worked_rows_per_fact: int = 0
    # "both": every base fact in narrative and referencing text; "split": the base heads
    # alternate, each head's facts in one rendering only, so the base model must learn facts
    # from either kind of text (the QA of every base entity beside them: mixed training).
    base_renderings: str = "both"
    tail_pools: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    tail_attributes: dict[str, TailAttributes] = field(default_factory=dict)
    prior_knowledge: list[str] = field(default_factory=list)
    display: dict[str, str] = field(default_factory=dict)
    corpora: dict[str, list[str]] = field(default_factory=dict)
    subsets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def phrase(self, name: str, relation: str | None = None) -> str:
        """Returns how `name` appears in running text: its display form ("the Philippines") if
        it has one, else, as a tail of `relation`, with the relation's article ("the wolf")."""
        if name in self.display:
            return self.display[name]
        if relation is not None and relation in self.relations:
            return self.relations[relation].tail_phrase(name)
        return name

    def facts(self, split: str | None = None, relation: str | None = None) -> list[Fact]:
        """Returns the facts of a split (all splits if None), optionally of one relation."""
        return [
            f
            for f in self.all_facts
            if (split is None or f.split == split) and (relation is None or f.relation == relation)
        ]

    def entities_of(self, split: str) -> list[str]:
        """Returns the names of the entities that belong to `split` only (not shared ones)."""
        return sorted(n for n, s in self.entity_split.items() if s == split)

    def all_entity_names(self) -> list[str]:
        """Returns every entity name of the world, all kinds together."""
        return [n for names in self.entities.values() for n in names]

    def relation_keywords(self) -> dict[str, tuple[str, ...]]:
        """Returns relation -> audit keywords for the relations of this world."""
        return {name: info.keywords for name, info in self.relations.items()}

    def candidate_tails(self, relation: str, split: str, pools: bool = True) -> list[str]:
        """Returns the distinct values that may stand as tails of `relation` within `split`.

        These are the tails of the split's facts of that relation, then (if `pools`) the
        relation's pool for that split (or for every split, key "*"), in a deterministic order.
        """
        seen: dict[str, None] = {}
        for f in self.all_facts:
            if f.relation == relation and f.split == split:
                seen.setdefault(f.tail)
        if pools:
            relation_pools = self.tail_pools.get(relation, {})
            for key in (split, "*"):
                for value in relation_pools.get(key, ()):
                    seen.setdefault(value)
        return list(seen)

    def audit_candidates(self) -> dict[str, list[str]]:
        """Returns relation -> every value that could be a tail (facts, pools, wrong tails)."""
        out: dict[str, dict[str, None]] = defaultdict(dict)
        for f in self.all_facts:
            out[f.relation].setdefault(f.tail)
        for relation, pools in self.tail_pools.items():
            for values in pools.values():
                for v in values:
                    out[relation].setdefault(v)
        for f, wrong in self.wrong_tails.items():
            for v in wrong:
                out[f.relation].setdefault(v)
        return {r: list(v) for r, v in out.items()}

    def stored_files(self) -> dict[str, list[dict[str, Any]]]:
        """Returns the stored facts, corpora and subsets as file name -> JSONL rows."""
        files: dict[str, list[dict[str, Any]]] = {
            "facts.jsonl": [f.to_row() for f in self.all_facts]
        }
        for name, docs in self.corpora.items():
            files[f"corpus_{name}.jsonl"] = [{"text": d} for d in docs]
        for name, rows in self.subsets.items():
            files[f"eval_{name}.jsonl"] = list(rows)
        return files
