r"""Co-occurrence audit of a corpus against a fact table.

    python -m launch.audit --corpus=corpus_narrative.jsonl --facts=facts.jsonl [--split=novel]

Reads corpus rows ``{"text"}`` and fact rows ``{"head", "relation", "tail"[, "split"]}``, counts
for every fact (of `--split`, if given) the passages that mention the head, the relation and each
candidate tail (all tails of that relation in the fact file), and prints the per-fact table and
the summary line "true tail favoured in k of n facts". Relation keywords come from the registry
in `jaxknow.studies.cooccurrence.facts`; relations it does not know use their name (underscores
as spaces), and
`--keywords=relation=kw1|kw2,...` adds or overrides keywords.
"""

from __future__ import annotations

from collections import defaultdict

from absl import app, flags

from jaxknow.data.jsonl import CorpusFormatError, read_jsonl
from jaxknow.studies.cooccurrence.audit import audit, format_audit
from jaxknow.studies.cooccurrence.fact_types import Fact
from jaxknow.studies.cooccurrence.facts import default_relation_keywords
from launch.common import run_app, run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("corpus", None, "Corpus JSONL file (rows with a text field).")
flags.DEFINE_string("facts", None, "Fact JSONL file (rows head, relation, tail[, split]).")
flags.DEFINE_string("split", None, "Audit only the facts of this split (e.g. novel).")
flags.DEFINE_string("text_field", "text", "Field of the corpus rows holding the passage.")
flags.DEFINE_list("keywords", [], "Relation keywords: relation=kw1|kw2, comma separated.")
flags.mark_flag_as_required("corpus")
flags.mark_flag_as_required("facts")


def parse_keywords(specs: list[str]) -> dict[str, tuple[str, ...]]:
    """Returns relation -> keywords parsed from ``relation=kw1|kw2`` strings."""
    out: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        relation, sep, words = spec.partition("=")
        keywords = tuple(w.strip() for w in words.split("|") if w.strip())
        if not sep or not relation.strip() or not keywords:
            raise app.UsageError(f"--keywords entry {spec!r} is not relation=kw1|kw2")
        out[relation.strip()] = keywords
    return out


def audit_files(
    corpus_path: str, facts_path: str, split: str | None, text_field: str, keyword_specs: list[str]
) -> str:
    """Returns the audit table of a corpus file against a fact file (errors name file:line)."""
    fact_rows = read_jsonl(facts_path, required=("head", "relation", "tail"))
    all_facts = []
    for i, r in enumerate(fact_rows, start=1):
        try:
            all_facts.append(Fact.from_row(r))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CorpusFormatError(f"{facts_path}: fact row {i} is malformed ({e})") from None
    facts = [f for f in all_facts if split is None or f.split == split]
    if not facts:
        raise app.UsageError(f"no facts of split {split!r} in {facts_path}")
    corpus = read_jsonl(corpus_path, required=(text_field,))
    keywords = default_relation_keywords()
    for f in facts:
        keywords.setdefault(f.relation, (f.relation.replace("_", " "),))
    keywords.update(parse_keywords(keyword_specs))
    candidates: dict[str, list[str]] = defaultdict(list)
    for f in all_facts:
        candidates[f.relation].append(f.tail)
    rows = audit((str(r[text_field]) for r in corpus), facts, keywords, candidates)
    return format_audit(rows)


def main(argv: list[str]) -> None:
    """Runs the audit and prints the table and summary line (returns nothing)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run_main(
        lambda: print(
            audit_files(FLAGS.corpus, FLAGS.facts, FLAGS.split, FLAGS.text_field, FLAGS.keywords)
        )
    )


if __name__ == "__main__":
    run_app(main)
