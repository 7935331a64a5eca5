"""Answer metrics (SQuAD v1.1 exact match and token F1) and aggregation over seeds.

The normaliser is the official SQuAD v1.1 evaluation script's ``normalize_answer``: lower-case,
remove every ASCII punctuation character (``string.punctuation``), drop the articles a / an /
the as whole words, and collapse whitespace. Token F1 follows the same script: the F1 of the
multiset overlap of whitespace tokens of the normalised strings, 0 when there is no overlap
(so two empty answers score EM 1 but F1 0, exactly as v1.1 does).

Spread over seeds is the *sample* standard deviation (``ddof=1``, Bessel's correction), the
usual convention for "mean (std) over N seeds"; a single value has std 0.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Returns `s` normalised as by the SQuAD v1.1 script (lower-case, no punctuation, no
    articles, single spaces)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    """Returns 1.0 if the normalised prediction equals the normalised gold answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Returns the SQuAD token F1 between prediction and gold (after normalisation)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(gold).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(ref)
    return 2 * precision * recall / (precision + recall)


def max_over_golds(metric: Any, prediction: str, golds: Iterable[str]) -> float:
    """Returns the best `metric(prediction, gold)` over the gold answers (0.0 if none)."""
    return max((metric(prediction, g) for g in golds), default=0.0)


def gold_answers(row: Mapping[str, Any]) -> list[str]:
    """Returns the accepted answers of a free-form row: `answer` plus any `aliases`
    (MQuAKE's ``answer_alias``), de-duplicated in order."""
    golds = [str(row["answer"])]
    for a in row.get("aliases") or ():
        if str(a) not in golds:
            golds.append(str(a))
    return golds


def score_free_form(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    """Returns {"em", "f1"} of one prediction: the maximum over the gold answers."""
    return {
        "em": max_over_golds(exact_match, prediction, golds),
        "f1": max_over_golds(f1_score, prediction, golds),
    }


def mean(values: Sequence[float]) -> float:
    """Returns the arithmetic mean (nan for no values)."""
    return math.fsum(values) / len(values) if values else float("nan")


def std(values: Sequence[float], ddof: int = 1) -> float:
    """Returns the standard deviation with `ddof` (default 1: sample std over seeds); 0.0 for
    fewer than ddof + 1 values, nan for none."""
    if not values:
        return float("nan")
    if len(values) <= ddof:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - ddof))


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Returns the Wilson score interval (default 95 %) of a proportion `p` measured on `n`
    items; (nan, nan) for n = 0 or a non-finite `p`."""
    if n <= 0 or not math.isfinite(p):
        return float("nan"), float("nan")
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(
    m: float, sds: Sequence[float], n: int, z: float = 1.96, bounds: tuple[float, float] = (0, 1)
) -> tuple[float, float]:
    """Returns the normal interval (default 95 %) of `m`, the mean over runs of per-run item
    means, each over `n` items with item standard deviation `sds[i]`: m ± z · √(Σ sd²/n) /
    runs, clipped to `bounds`; (nan, nan) for no items, no runs or a non-finite value."""
    if n <= 0 or not sds or not all(math.isfinite(v) for v in (m, *sds)):
        return float("nan"), float("nan")
    half = z * math.sqrt(math.fsum(sd * sd for sd in sds) / n) / len(sds)
    return max(bounds[0], m - half), min(bounds[1], m + half)


def mean_std(values: Sequence[float], ddof: int = 1) -> dict[str, float]:
    """Returns {"mean", "std", "n"} of `values` (std with `ddof`, see `std`)."""
    return {"mean": mean(values), "std": std(values, ddof), "n": float(len(values))}


def aggregate_runs(
    runs: Sequence[Mapping[str, Mapping[str, float]]], ddof: int = 1
) -> dict[str, dict[str, dict[str, float]]]:
    """Returns task -> metric -> {"mean", "std", "n"} over runs (e.g. seeds), each run being
    task -> metric -> value; a metric missing from some runs is aggregated over the others."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    tasks: list[str] = []
    for run in runs:
        tasks += [t for t in run if t not in tasks]
    for task in tasks:
        metrics: list[str] = []
        for run in runs:
            metrics += [m for m in run.get(task, {}) if m not in metrics]
        out[task] = {
            m: mean_std([float(r[task][m]) for r in runs if task in r and m in r[task]], ddof)
            for m in metrics
        }
    return out


def format_mean_std(stats: Mapping[str, float], digits: int = 3) -> str:
    """Returns "mean (std)" as text, e.g. "0.512 (0.031)"."""
    return f"{stats['mean']:.{digits}f} ({stats['std']:.{digits}f})"
