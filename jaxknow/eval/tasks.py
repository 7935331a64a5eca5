"""Evaluate a model on named subsets: free-form QA (generation), multiple choice and likelihood
probes, each subset turned into metrics.

Kinds and metrics:

- ``free``: few-shot prompts (`jaxknow.eval.fewshot`), greedy generation of at most
  `max_new_tokens` tokens stopped at newline or EOS, scored by SQuAD exact match and token F1
  (max over ``answer`` and any ``aliases``): ``em``, ``f1``; rows with an ``attribute`` (bioS
  QA) also give ``em_{attribute}`` per attribute and their mean ``em_attr_mean``.
- ``mc``: few-shot MC prompts, options scored by log-likelihood (`jaxknow.eval.scoring`):
  ``acc``, ``acc_norm``, ``p_true`` (the mean probability of the right option among the
  options: `scoring.MCResult`).
- ``likelihood``: comparison and negation ratios (`jaxknow.eval.likelihood`): ``comparison``,
  ``comparison_max``, ``negation``, ``true_preferred``.
- ``cloze``: zero-shot; each row's ``choices`` scored as continuations of its ``context``
  (e.g. reference resolution: which ordinal names the true tail): ``acc``, ``acc_norm``,
  ``p_true``.

Every subset also reports ``n``, its number of items. The generic subset names ``qa``,
``multiple_choice`` and ``likelihood`` have fixed kinds (`SUBSET_KINDS`); other names are
inferred from their rows.

This module also holds the evaluation config (`EvalConfig`, an ``eval`` section of an
ml_collections config) and the reading of subset files that `launch.evaluate` uses.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jax.sharding import Mesh

from jaxknow.config import MeshConfig
from jaxknow.data.jsonl import read_jsonl
from jaxknow.eval import fewshot
from jaxknow.eval.generate import ModelLike, generate_text, mesh_of, unpack_model
from jaxknow.eval.likelihood import likelihood_ratios
from jaxknow.eval.metrics import gold_answers, mean, score_free_form
from jaxknow.eval.scoring import MC_MODES, BosMode, McMode, score_multiple_choice, use_bos
from jaxknow.model.config import Dtype

KINDS = ("free", "mc", "likelihood", "cloze")

# The kinds of the generic subset names; a study's own names (e.g. "two_hop_mc") are inferred
# from their rows.
SUBSET_KINDS: dict[str, str] = {
    "qa": "free",
    "multiple_choice": "mc",
    "likelihood": "likelihood",
}

REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "free": ("question", "answer"),
    "mc": ("question", "choices", "answer"),
    "likelihood": ("prompt", "negated_prompt", "true", "wrong"),
    "cloze": ("context", "choices", "answer"),
}

Row = Mapping[str, Any]


def subset_kind(name: str, rows: Sequence[Row] = ()) -> str:
    """Returns the kind of a subset: from `SUBSET_KINDS`, else inferred from its first row
    ("context" -> cloze, "choices" -> mc, "negated_prompt" -> likelihood, otherwise free)."""
    if name in SUBSET_KINDS:
        return SUBSET_KINDS[name]
    if rows and "context" in rows[0]:
        return "cloze"
    if rows and "choices" in rows[0]:
        return "mc"
    if rows and "negated_prompt" in rows[0]:
        return "likelihood"
    return "free"


def check_rows(
    name: str, kind: str, rows: Sequence[Row], lines: Sequence[int] | None = None
) -> None:
    """Raises ValueError naming the subset and row when a row lacks a field of its kind or an
    MC answer index is out of range. With `lines` (the file line of every row) the message
    names the line instead of the 0-based row index."""
    if kind not in KINDS:
        raise ValueError(f"subset {name!r}: kind must be one of {KINDS}, got {kind!r}")
    for n, row in enumerate(rows):
        i: Any = n if lines is None else f"at line {lines[n]}"
        missing = [f for f in REQUIRED_FIELDS[kind] if f not in row]
        if missing:
            raise ValueError(
                f"subset {name!r} row {i}: missing field(s) {missing} "
                f"(a {kind!r} row needs {list(REQUIRED_FIELDS[kind])})"
            )
        if kind in ("mc", "cloze"):
            ans = row["answer"]
            if (
                isinstance(ans, bool)
                or not isinstance(ans, int)
                or not (0 <= ans < len(row["choices"]))
            ):
                raise ValueError(
                    f"subset {name!r} row {i}: answer={ans!r} is not an index "
                    f"into its {len(row['choices'])} choices"
                )


@dataclasses.dataclass
class TaskResults:
    """What an evaluation returns: subset -> metric -> value, and subset -> per-item records."""

    metrics: dict[str, dict[str, float]]
    predictions: dict[str, list[dict[str, Any]]]


def _free_metrics(
    rows: Sequence[Row], predictions: Sequence[str]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    records = []
    by_attr: dict[str, list[float]] = defaultdict(list)
    for row, pred in zip(rows, predictions):
        scores = score_free_form(pred, gold_answers(row))
        rec = {"question": row["question"], "answer": row["answer"], "prediction": pred, **scores}
        if "attribute" in row:
            rec["attribute"] = row["attribute"]
            by_attr[str(row["attribute"])].append(scores["em"])
        records.append(rec)
    metrics = {"em": mean([r["em"] for r in records]), "f1": mean([r["f1"] for r in records])}
    if by_attr:
        for attr in sorted(by_attr):
            metrics[f"em_{attr}"] = mean(by_attr[attr])
        metrics["em_attr_mean"] = mean([mean(v) for v in by_attr.values()])
    return metrics, records


def _prompts(
    name: str, rows: Sequence[Row], kind: str, shots: int, seed: int, mc_mode: str
) -> list[str]:
    try:
        return fewshot.build_prompts(rows, kind, shots, seed, mc_answer_text=mc_mode == "options")
    except fewshot.FewShotError as e:
        raise fewshot.FewShotError(f"subset {name!r}: {e}") from None


def evaluate_subsets_detailed(
    model: ModelLike | tuple[Any, Any, Any],
    subsets: Mapping[str, Sequence[Row]],
    kinds: Mapping[str, str] | None = None,
    few_shot: int | Mapping[str, int] = fewshot.DEFAULT_SHOTS,
    seed: int = fewshot.FEW_SHOT_SEED,
    max_new_tokens: int = 50,
    batch_size: int = 32,
    *,
    mc_mode: str = "letters",
    mesh: Mesh | None = None,
    bos: str = "auto",
) -> TaskResults:
    """Returns the TaskResults (metrics and per-item records) of every subset, in order.

    `kinds` overrides the kind per subset (default: `subset_kind`); `few_shot` is the number
    of demonstrations (one int, or per subset; subsets not named get the default 5); `seed`
    seeds the demonstration choice, one fresh rng per subset, drawn as the authors' harness
    does (`jaxknow.eval.fewshot`; a subset smaller than k + 1 raises FewShotError naming it).
    `bos` ("auto", "always", "never"; `scoring.use_bos`) says whether prompts start with BOS:
    "auto" leaves it out for models converted from Hugging Face, like the harness.
    """
    if mc_mode not in MC_MODES:
        raise ValueError(f"mc_mode must be one of {MC_MODES}, got {mc_mode!r}")
    with_bos = use_bos(bos, getattr(model, "meta", None))
    params, cfg, tok = unpack_model(model)
    mesh = mesh if mesh is not None else mesh_of(params)
    kinds = dict(kinds or {})
    metrics: dict[str, dict[str, float]] = {}
    predictions: dict[str, list[dict[str, Any]]] = {}
    for name, rows in subsets.items():
        rows = list(rows)
        kind = kinds.get(name) or subset_kind(name, rows)
        check_rows(name, kind, rows)
        if isinstance(few_shot, Mapping):
            shots = int(few_shot.get(name, fewshot.DEFAULT_SHOTS))
        else:
            shots = few_shot
        if not rows:
            metrics[name], predictions[name] = {"n": 0.0}, []
            continue
        if kind == "cloze":
            prompts = [str(r["context"]) for r in rows]
        elif kind != "likelihood":
            prompts = _prompts(name, rows, kind, shots, seed, mc_mode)
        if kind == "free":
            texts = generate_text(
                (params, cfg, tok),
                prompts,
                max_new_tokens,
                stop_at_newline=True,
                batch_size=batch_size,
                mesh=mesh,
                bos=with_bos,
            )
            m, recs = _free_metrics(rows, [t.strip() for t in texts])
        elif kind in ("mc", "cloze"):
            res = score_multiple_choice(
                params,
                cfg,
                tok,
                prompts,
                rows,
                mode=mc_mode if kind == "mc" else "options",
                batch_size=batch_size,
                mesh=mesh,
                bos=with_bos,
            )
            m = res.metrics()
            text = "question" if kind == "mc" else "context"
            recs = [
                {
                    text: r[text],
                    "answer": int(r["answer"]),
                    "pred": p,
                    "pred_norm": pn,
                    "logprobs": lp,
                    "p_true": pt,
                }
                for r, p, pn, lp, pt in zip(rows, res.pred, res.pred_norm, res.logprobs, res.p_true)
            ]
        else:
            m, recs = likelihood_ratios(
                params, cfg, tok, rows, batch_size=batch_size, mesh=mesh, bos=with_bos
            )
        metrics[name] = {**m, "n": float(len(rows))}
        predictions[name] = recs
    return TaskResults(metrics, predictions)


def evaluate_subsets(
    model: ModelLike | tuple[Any, Any, Any],
    subsets: Mapping[str, Sequence[Row]],
    kinds: Mapping[str, str] | None = None,
    few_shot: int | Mapping[str, int] = fewshot.DEFAULT_SHOTS,
    seed: int = fewshot.FEW_SHOT_SEED,
    max_new_tokens: int = 50,
    batch_size: int = 32,
    *,
    mc_mode: str = "letters",
    mesh: Mesh | None = None,
    bos: str = "auto",
) -> dict[str, dict[str, float]]:
    """Returns subset -> metric -> value (see `evaluate_subsets_detailed`)."""
    return evaluate_subsets_detailed(
        model,
        subsets,
        kinds,
        few_shot,
        seed,
        max_new_tokens,
        batch_size,
        mc_mode=mc_mode,
        mesh=mesh,
        bos=bos,
    ).metrics


# --------------------------------------------------------------------------------------------
# The evaluation config and subset files.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The ``eval`` section of an evaluation config.

    Subset `name` is read from ``files[name]`` when given (absolute, or relative to the data
    directory), else from ``data_dir / file_pattern.format(name=name)``; `data_dir` defaults
    to ``WORKDIR/data``.
    """

    subsets: tuple[str, ...] = ()
    data_dir: str | None = None
    file_pattern: str = "eval_{name}.jsonl"
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)
    few_shot: int = fewshot.DEFAULT_SHOTS
    few_shot_per_subset: dict[str, int] = dataclasses.field(default_factory=dict)
    seed: int = fewshot.FEW_SHOT_SEED
    max_new_tokens: int = 50
    batch_size: int = 32
    mc_mode: McMode = "letters"
    bos: BosMode = "auto"
    save_predictions: bool = False
    dtype: Dtype | None = None  # compute dtype override (e.g. "bfloat16"); None: the model's

    def __post_init__(self) -> None:
        if not self.subsets:
            raise ValueError("subsets: name at least one subset")
        if "{name}" not in self.file_pattern:
            raise ValueError(f"file_pattern={self.file_pattern!r}: must contain {{name}}")
        for name, kind in self.kinds.items():
            if kind not in KINDS:
                raise ValueError(f"kinds.{name}={kind!r}: must be one of {KINDS}")
        if self.few_shot < 0:
            raise ValueError(f"few_shot={self.few_shot}: must be >= 0")
        for name, k in self.few_shot_per_subset.items():
            if k < 0:
                raise ValueError(f"few_shot_per_subset.{name}={k!r}: must be >= 0")
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be positive")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size={self.batch_size}: must be positive")

    def shots(self) -> dict[str, int]:
        """Returns subset -> number of demonstrations."""
        return {n: int(self.few_shot_per_subset.get(n, self.few_shot)) for n in self.subsets}


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """A whole evaluation config (`launch.evaluate`): what to evaluate and on which mesh."""

    eval: EvalConfig
    mesh: MeshConfig = MeshConfig()


def subset_paths(cfg: EvalConfig, workdir: str | Path | None = None) -> dict[str, Path]:
    """Returns subset name -> the JSONL file it is read from (see `EvalConfig`)."""
    if cfg.data_dir is not None:
        data_dir = Path(cfg.data_dir)
    elif workdir is not None:
        data_dir = Path(workdir) / "data"
    else:
        raise ValueError("eval.data_dir is unset and there is no workdir to default to")
    out = {}
    for name in cfg.subsets:
        f = cfg.files.get(name)
        out[name] = data_dir / f if f is not None else data_dir / cfg.file_pattern.format(name=name)
    return out


def load_subsets(
    paths: Mapping[str, str | Path], kinds: Mapping[str, str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Returns subset name -> rows read from JSONL files, checked for the fields of their kind.

    Raises FileNotFoundError naming the subset and file when one is missing (all are checked
    before any is read), CorpusFormatError naming file:line for a malformed line.
    """
    kinds = dict(kinds or {})
    missing = [f"{name} ({p})" for name, p in paths.items() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"evaluation subset file(s) not found: {', '.join(missing)}")
    out = {}
    for name, p in paths.items():
        rows = read_jsonl(p)
        kind = kinds.get(name) or subset_kind(name, rows)
        lines = [
            i for i, raw in enumerate(Path(p).read_bytes().split(b"\n"), start=1) if raw.strip()
        ]
        try:
            check_rows(name, kind, rows, lines)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None
        out[name] = rows
    return out
