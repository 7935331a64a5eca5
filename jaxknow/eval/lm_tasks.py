"""lm-evaluation-harness (0.4.x) task files for jaxknow evaluation subsets, runnable offline.

`write_lm_tasks(data_dir, out_dir)` turns every ``eval_*.jsonl`` subset of a materialised world
(free form ``{question, answer}`` or multiple choice ``{question, choices, answer}``; likelihood
subsets are skipped) into a local lm-eval task: ``<task>.jsonl`` (the rows, each with its
``doc_index``), ``<task>.yaml`` and one shared ``utils.py``. Run them with
``lm_eval --include_path OUT --tasks jaxknow_qa,...`` (or the tag ``jaxknow``). They mirror
the authors' task file (``lm_eval/tasks/country_city_animals.py`` of their harness fork):

- free form: ``"Question: {q} Answer:"``, target ``" {answer}"``, greedy generation until a
  newline, at most 50 new tokens, SQuAD exact match and F1 per item as the fork reports them
  (``exact``, ``f1``: 0-100);
- multiple choice: the description line, stripped question, lettered choices, scored
  continuations ``" A"`` .. ``" D"``; ``acc`` (``acc_norm`` equals it: all letters have one
  character);
- 5-shot from the same split, demonstrations chosen exactly as the fork's evaluator chooses
  them (seed 42, documents shuffled before sampling, exclusion by value: `ForkSampler`), not
  by lm-eval 0.4.x's default sampler (seed 1234, no shuffle), so every item sees the prompt
  the paper's numbers came from, byte for byte (`jaxknow.eval.fewshot`).

Differences that remain with the fork, by design of lm-eval 0.4.x: ``--limit N`` keeps the
first N items in file order (the fork kept the first N of its shuffled order; each kept item
still gets the fork's demonstrations); the ``hf`` model of 0.4.x adds the tokenizer's BOS
when the tokenizer's post-processor does (the fork's ``hf-causal-experimental`` never did:
pass ``add_bos_token=False``); 0.4.x cuts generation prompts at ``max_length - max_gen_toks``
of the request (50), the fork at the model's ``max_gen_toks`` (256). Do not add
``--num_fewshot``: the shot count is in the task files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxknow.data.jsonl import read_jsonl, write_jsonl
from jaxknow.eval import fewshot
from jaxknow.eval.metrics import gold_answers, score_free_form
from jaxknow.eval.tasks import check_rows, subset_kind

INDEX_FIELD = "doc_index"
TAG = "jaxknow"
MAX_NEW_TOKENS = 50


# --------------------------------------------------------------------------------------------
# What the generated tasks call (through their utils.py).
# --------------------------------------------------------------------------------------------


def _row(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != INDEX_FIELD}


def free_text(doc: Mapping[str, Any]) -> str:
    """doc_to_text of a free-form task: ``"Question: {q} Answer:"``."""
    return fewshot.free_form_item(doc)


def free_target(doc: Mapping[str, Any]) -> str:
    """doc_to_target of a free-form task: the answer (lm-eval puts ``" "`` before it)."""
    return str(doc["answer"])


def mc_text(doc: Mapping[str, Any]) -> str:
    """doc_to_text of a multiple-choice task: stripped question, lettered choices, "Answer:"."""
    return fewshot.mc_item(doc)


def mc_target(doc: Mapping[str, Any]) -> int:
    """doc_to_target of a multiple-choice task: the gold index into A-D."""
    return int(doc["answer"])


def process_free(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, float]:
    """process_results of a free-form task: SQuAD exact match and F1 of the generation, in
    percent as the fork's ``squad`` metric reports them."""
    scores = score_free_form(results[0], gold_answers(_row(doc)))
    return {"exact": 100.0 * scores["em"], "f1": 100.0 * scores["f1"]}


def _sampler_base() -> type:
    from lm_eval.api.samplers import ContextSampler

    return ContextSampler


class _ForkSamplerMixin:
    """Demonstrations exactly as the fork draws them (`fewshot.harness_schedule`): the eval
    document's ``doc_index`` picks its demonstrations out of the fork's schedule over the
    whole split (the lm-eval seed is ignored; the fork's is `SEED`)."""

    SEED = fewshot.FEW_SHOT_SEED
    df: list[dict[str, Any]]

    def set_rnd(self, rnd: int | None) -> Any:
        return self  # the fork's seed is fixed per task

    def sample(
        self, n: int, eval_doc: Mapping[str, Any] | None = None, df: Any = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        if n <= 0:
            return []
        if eval_doc is None or INDEX_FIELD not in eval_doc:
            raise ValueError(
                "jaxknow tasks draw demonstrations from the evaluated split: "
                f"fewshot_split must equal test_split and rows need {INDEX_FIELD}"
            )
        docs = list(self.df)
        cache = self.__dict__.setdefault("_schedule", {})
        if n not in cache:
            rows = [_row(d) for d in docs]
            kind = "mc" if "choices" in rows[0] else "free"
            by_index = {int(d[INDEX_FIELD]): i for i, d in enumerate(docs)}
            _, demos = fewshot.harness_schedule(rows, kind, n, self.SEED)
            cache[n] = (by_index, demos)
        by_index, demos = cache[n]
        return [docs[j] for j in demos[by_index[int(eval_doc[INDEX_FIELD])]]]


def fork_sampler(seed: int = fewshot.FEW_SHOT_SEED) -> type:
    """Returns an lm-eval ``ContextSampler`` subclass that draws the fork's demonstrations
    with `seed` (imports lm-eval)."""
    return type("ForkSampler", (_ForkSamplerMixin, _sampler_base()), {"SEED": seed})


# --------------------------------------------------------------------------------------------
# Writing the task files.
# --------------------------------------------------------------------------------------------

_UTILS = '''"""Generated by jaxknow (jaxknow.eval.lm_tasks.write_lm_tasks); helpers live there."""

import jaxknow.eval.lm_adapter  # noqa: F401  (registers `--model jaxknow` with lm-eval)
from jaxknow.eval.lm_tasks import (  # noqa: F401
    fork_sampler,
    free_target,
    free_text,
    mc_target,
    mc_text,
    process_free,
)

ForkSampler = fork_sampler({seed})
'''

MC_DESCRIPTION = "The following are multiple choice questions (with answers).\n\n"


def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def task_yaml(
    task: str,
    kind: str,
    data_file: Path,
    k: int,
    tags: Sequence[str],
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> str:
    """Returns the YAML text of one task reading `data_file` (absolute path)."""
    lines = [
        f"task: {task}",
        "tag:",
        *[f"  - {t}" for t in tags],
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {_yaml_str(str(data_file))}",
        "test_split: test",
        "fewshot_split: test",
        f"num_fewshot: {k}",
        "fewshot_config:",
        "  sampler: !function utils.ForkSampler",
        'fewshot_delimiter: "\\n\\n"',
        'target_delimiter: " "',
    ]
    if kind == "free":
        lines += [
            "output_type: generate_until",
            "doc_to_text: !function utils.free_text",
            "doc_to_target: !function utils.free_target",
            "generation_kwargs:",
            "  until:",
            '    - "\\n"',
            "  do_sample: false",
            f"  max_gen_toks: {max_new_tokens}",
            "process_results: !function utils.process_free",
            "metric_list:",
            "  - metric: exact",
            "    aggregation: mean",
            "    higher_is_better: true",
            "  - metric: f1",
            "    aggregation: mean",
            "    higher_is_better: true",
        ]
    else:
        lines += [
            "output_type: multiple_choice",
            f"description: {_yaml_str(MC_DESCRIPTION)}",
            "doc_to_text: !function utils.mc_text",
            'doc_to_choice: ["A", "B", "C", "D"]',
            "doc_to_target: !function utils.mc_target",
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
            "  - metric: acc_norm",
            "    aggregation: mean",
            "    higher_is_better: true",
        ]
    lines += ["metadata:", "  version: 1.0"]
    return "\n".join(lines) + "\n"


def find_subsets(data_dir: str | Path, pattern: str = "eval_*.jsonl") -> dict[str, Path]:
    """Returns subset name -> file of every ``eval_<name>.jsonl`` in `data_dir`, sorted."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    out = {}
    for p in sorted(data_dir.glob(pattern)):
        out[p.stem[len("eval_") :] if p.stem.startswith("eval_") else p.stem] = p
    return out


def write_lm_tasks(
    data_dir: str | Path,
    out_dir: str | Path,
    subsets: Sequence[str] | None = None,
    *,
    prefix: str = "jaxknow_",
    num_fewshot: int = fewshot.DEFAULT_SHOTS,
    seed: int = fewshot.FEW_SHOT_SEED,
    max_new_tokens: int = MAX_NEW_TOKENS,
    tag: str = TAG,
) -> dict[str, str]:
    """Writes lm-eval tasks for the free-form and multiple-choice subsets of `data_dir` into
    `out_dir` (module docstring); returns task name -> kind.

    `subsets` names the subsets (default: every ``eval_*.jsonl`` whose kind is free or mc).
    Raises FileNotFoundError for a missing subset, CorpusFormatError (file:line) for a line
    that does not parse, ValueError naming the subset and row for a row without its fields,
    and FewShotError for a subset smaller than ``num_fewshot + 1``.
    """
    found = find_subsets(data_dir)
    if subsets:
        missing = [s for s in subsets if s not in found]
        if missing:
            raise FileNotFoundError(
                f"subset(s) {missing} not in {data_dir} (found: {sorted(found)})"
            )
        found = {s: found[s] for s in subsets}
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for name, path in found.items():
        rows = read_jsonl(path)
        kind = subset_kind(name, rows)
        if kind not in fewshot.KINDS:
            if subsets:
                raise ValueError(
                    f"subset {name!r} ({path}) is a {kind!r} subset; only free-form "
                    "and multiple-choice subsets become lm-eval tasks"
                )
            continue
        try:
            check_rows(name, kind, rows)
            fewshot.harness_schedule(rows, kind, num_fewshot, seed)  # size / format checks
        except ValueError as e:
            raise type(e)(f"{path}: {e}") from None
        task = f"{prefix}{name}"
        data_file = out / f"{task}.jsonl"
        write_jsonl(data_file, [{**r, INDEX_FIELD: i} for i, r in enumerate(rows)])
        (out / f"{task}.yaml").write_text(
            task_yaml(task, kind, data_file, num_fewshot, [tag], max_new_tokens)
        )
        written[task] = kind
    if not written:
        raise ValueError(f"no free-form or multiple-choice eval_*.jsonl subsets in {data_dir}")
    (out / "utils.py").write_text(_UTILS.format(seed=int(seed)))
    return written
