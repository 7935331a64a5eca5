"""Curves over bioS studies: one study per point (renderings per person, number of people; and
seeds), each in its own directory, run or resumed by `run_sweep`, then collected into one
results file and one plot (`write_curve`).

* The diversity curve (`diversity_points`): at a fixed token budget, R renderings per person
  for R in a list: R = 1 is bioS single, 2 <= R <= 5 is multiR+permute+fullname (the paper's
  condition at R = 5, no re-draws), R = 5 D is multi5xD+permute+fullname (D independent draws).
* The people curve (`people_points`, `scale_people`): the same study at N people, the training
  steps scaled with N so that every biography is seen as often as at the base N (and every QA
  finetune runs as many epochs).

A point is finished when its directory holds results.json and the point.json written before it
ran; a point whose point.json differs from the one asked for is refused (its results would
answer another question). Scripts: scripts/bios_diversity.py, scripts/bios_people_scale.py.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.util
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from jaxknow import config as C
from jaxknow.experiments import common
from jaxknow.studies.bios.study import parse_study

#: Training tokens per second of the quickstart's model (d128 x 4, fp32) on the 2-core CPU
#: workspace: 2,000 steps x 4 x 256 in 4.6 min (lab notebook E20). Used only for estimates.
CPU_TOKENS_PER_SECOND = 7400.0
#: Minutes per point beside training: world, memorisation, QA evaluation (quickstart: ~1).
POINT_OVERHEAD_MINUTES = 1.0


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One point of a curve: its directory name, abscissa, seed and the config overrides
    (dotted keys, e.g. "world.redraws") applied to the base study config."""

    name: str
    x: float
    seed: int
    overrides: Mapping[str, Any]

    def spec(self) -> dict[str, Any]:
        """Returns the JSON form written to the point's point.json."""
        return {
            "name": self.name,
            "x": self.x,
            "seed": self.seed,
            "overrides": dict(self.overrides),
        }


def comma_ints(text: str) -> list[int]:
    """Returns the comma-separated integers of `text` (the curve scripts' list flags)."""
    return [int(t) for t in text.split(",") if t.strip()]


def diversity_condition(renderings: int) -> tuple[str, int]:
    """Returns (condition name, world.redraws) for R renderings per person: 1 -> ("single",
    1); 2..5 -> ("multiR+permute+fullname", 1); 5 D -> ("multi5xD+permute+fullname", D).
    Raises ValueError for R < 1 or R > 5 not a multiple of 5."""
    r = renderings
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"renderings per person must be an int >= 1, got {r!r}")
    if r == 1:
        return "single", 1
    if r <= 5:
        return f"multi{r}+permute+fullname", 1
    if r % 5:
        raise ValueError(f"renderings per person above 5 must be a multiple of 5, got {r}")
    return f"multi5x{r // 5}+permute+fullname", r // 5


def diversity_points(renderings: Sequence[int], seeds: Sequence[int]) -> list[SweepPoint]:
    """Returns one point per (R, seed): the study with the one condition of R renderings per
    person (`diversity_condition`), its world drawn that many times, no mixed training and no
    probing; every other setting (the token budget included) is the base config's."""
    out = []
    for r in renderings:
        cond, draws = diversity_condition(int(r))
        for s in seeds:
            out.append(
                SweepPoint(
                    f"R{r}_s{s}",
                    float(r),
                    int(s),
                    {
                        "seed": int(s),
                        "conditions": [cond],
                        "world.redraws": draws,
                        "mixed.enabled": False,
                        "probing.enabled": False,
                    },
                )
            )
    return out


def scale_people(
    config: Any, people: int, exposure: float = 1.0, stages: Sequence[str] | None = None
) -> dict[str, Any]:
    """Returns the overrides that move a study config to `people` people: world.num_people and
    the steps of its stages scaled by people / the config's num_people, so that every
    biography is seen as often (times `exposure` for the pretraining and mixed stages) and
    every QA finetune runs as many epochs. `stages` (default: the stages the study runs:
    pretrain and finetune unless pretrain_finetune is False, mixed when enabled) names the
    stages scaled."""
    study = parse_study(config)
    base = int(study.world["num_people"])
    if people < 2:
        raise ValueError(f"people={people}: a study needs at least 2 (P_train and P_test)")
    if stages is None:
        stages = ["pretrain", "finetune"] if study.pretrain_finetune else []
        if study.mixed.enabled:
            stages.append("mixed")
    out: dict[str, Any] = {"world.num_people": int(people)}
    for st in stages:
        factor = people / base * (exposure if st != "finetune" else 1.0)
        out[f"{st}.steps"] = max(1, round(getattr(study, st).steps * factor))
    return out


def people_points(
    config: Any, people: Sequence[int], seeds: Sequence[int], exposure: float = 1.0
) -> list[SweepPoint]:
    """Returns one point per (N, seed): the base study at N people (`scale_people`)."""
    return [
        SweepPoint(
            f"N{n}_s{s}", float(n), int(s), {"seed": int(s), **scale_people(config, n, exposure)}
        )
        for n in people
        for s in seeds
    ]


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> ConfigDict:
    """Returns a copy of `config` with each dotted key of `overrides` set (sections created
    when missing)."""
    out = ConfigDict(copy.deepcopy(C.to_plain(config)))
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            if part not in node or node[part] is None:
                node[part] = ConfigDict()
            node = node[part]
        node[last] = value
    return out


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """Returns {dotted key: value} of KEY=VALUE strings (values as Python literals, else
    strings): the scripts' --set overrides."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: write KEY=VALUE, e.g. pretrain.steps=20")
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw
    return out


def load_config_file(spec: str) -> ConfigDict:
    """Returns get_config() of a config file ("configs/bios/quickstart.py", optionally with
    ":ARG", passed to get_config as launch's --config does)."""
    path, _, arg = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if mod_spec is None or mod_spec.loader is None:
        raise C.ConfigError(f"config {path!r}: not a Python file")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def estimate_minutes(config: Any, points: Sequence[SweepPoint]) -> dict[str, float]:
    """Returns the estimated CPU minutes of each point (training tokens of every stage it runs
    at CPU_TOKENS_PER_SECOND, plus POINT_OVERHEAD_MINUTES) on the 2-core workspace."""
    out = {}
    for p in points:
        study = parse_study(apply_overrides(config, p.overrides))

        def tokens(st: common.StageConfig) -> int:
            return st.steps * st.batch_size * st.seq_len

        n_pre = len(study.conditions) + int(study.celebrity)
        total = 0
        if study.pretrain_finetune:
            total += n_pre * (tokens(study.pretrain) + sum(tokens(r) for r in study.recipes))
        if study.mixed.enabled:
            total += len(study.conditions) * tokens(study.mixed)
        out[p.name] = total / CPU_TOKENS_PER_SECOND / 60 + POINT_OVERHEAD_MINUTES
    return out


StudyRunner = Callable[[Any, Path, Any], Mapping[str, Any]]


def _run_study(config: Any, workdir: Path, log: Any) -> Mapping[str, Any]:
    from jaxknow.studies.bios.study import run_bios_study

    return run_bios_study(config, workdir, log=log)


def point_finished(workdir: Path, point: SweepPoint) -> bool:
    """Returns whether the point's directory holds its results; raises ConfigError when it
    was made for other settings (point.json differs)."""
    d = Path(workdir) / point.name
    spec_file = d / "point.json"
    if spec_file.is_file():
        have = json.loads(spec_file.read_text())
        if have != json.loads(json.dumps(point.spec())):
            raise C.ConfigError(
                f"{d} was run for {have}, not {point.spec()}: use another --workdir "
                f"(or remove that directory)"
            )
    return spec_file.is_file() and (d / "results.json").is_file()


def run_sweep(
    config: Any,
    points: Sequence[SweepPoint],
    workdir: str | Path,
    log: Any = print,
    run: StudyRunner = _run_study,
) -> dict[str, Mapping[str, Any]]:
    """Runs (or resumes) the study of every unfinished point in WORKDIR/<point.name>, finished
    points skipped; returns {point name: its results.json}."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Mapping[str, Any]] = {}
    for p in points:
        d = workdir / p.name
        if point_finished(workdir, p):
            log(f"[sweep] {p.name}: finished, skipped")
        else:
            d.mkdir(parents=True, exist_ok=True)
            common.write_json(d / "point.json", p.spec())
            log(f"[sweep] {p.name}: {dict(p.overrides)}")
            t = time.perf_counter()
            run(apply_overrides(config, p.overrides), d, log)
            log(f"[sweep] {p.name}: {(time.perf_counter() - t) / 60:.1f} min")
        out[p.name] = json.loads((d / "results.json").read_text())
    return out


def condition_matches(augmentation: str, condition: str) -> bool:
    """Returns whether a condition row's augmentation label is `condition` or starts with it
    followed by a space ("celebrity" matches "celebrity (P_train ..., P_test single)")."""
    return augmentation == condition or augmentation.startswith(condition + " ")


def point_row(
    results: Mapping[str, Any], recipe: str = "pretrain+finetune", condition: str | None = None
) -> dict[str, Any]:
    """Returns one point's figures from its study results: P_test / P_train QA exact match of
    the first condition row made by `recipe` ("pretrain+finetune" or "mixed") whose
    augmentation is `condition` (`condition_matches`; default: any), the memorisation of the
    biographies that model (or its pretraining) was trained on (whole value and first token),
    renderings per person, exposures per rendering and chance."""
    rows = [
        (k, r)
        for k, r in results["conditions"].items()
        if r["recipe"] == recipe
        and (condition is None or condition_matches(r["augmentation"], condition))
    ]
    if not rows:
        which = recipe if condition is None else f"{recipe} / {condition}"
        raise ValueError(f"no {which!r} condition in the results ({sorted(results['conditions'])})")
    name, r = rows[0]
    label = r["augmentation"]
    memo = results.get("memorisation", {}).get(
        f"mixed / {label}" if recipe == "mixed" else label, {}
    )
    nan = float("nan")
    return {
        "condition": name,
        "p_test_em": r["test"].get("em_attr_mean", r["test"]["em"]),
        "p_train_em": r["train"].get("em_attr_mean", r["train"]["em"]),
        "p_test_em_per_attribute": {
            k.removeprefix("em_"): v
            for k, v in r["test"].items()
            if k.startswith("em_") and k != "em_attr_mean"
        },
        "memorisation_whole_value": memo.get("whole_mean", nan),
        "memorisation_first_token": memo.get("mean", nan),
        "renderings_per_person": r.get("renderings_per_person"),
        "exposures_per_rendering": r.get("exposures_per_rendering"),
        "num_people": results.get("world", {}).get("num_people"),
        "chance": float(np.mean(list(results["chance"].values()))),
        "wall_seconds": results.get("wall_seconds"),
    }


METRICS = {
    "p_test_em": "P_test QA exact match",
    "memorisation_whole_value": "memorisation (whole value)",
    "memorisation_first_token": "memorisation (first token)",
}


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Returns one entry per abscissa (ascending): the number of seeds and, per metric of
    METRICS (and P_train exact match), the mean, min and max over seeds."""
    by_x: dict[float, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_x.setdefault(float(r["x"]), []).append(r)
    out = []
    for x in sorted(by_x):
        group = by_x[x]
        entry: dict[str, Any] = {"x": x, "seeds": sorted(int(r["seed"]) for r in group)}
        for m in (*METRICS, "p_train_em", "chance"):
            vals = [float(r[m]) for r in group]
            entry[m] = {"mean": float(np.mean(vals)), "min": min(vals), "max": max(vals)}
        out.append(entry)
    return out


def _plot_summary(
    out_dir: Path,
    name: str,
    series: Mapping[str, tuple[Sequence[Mapping[str, Any]], str]],
    *,
    xlabel: str,
    title: str,
    figure: str | Path | None,
    log_x: bool,
) -> None:
    """Writes OUT_DIR/<name>.png: per label, one metric's mean over seeds (`series`: label ->
    (summary entries, metric key)) vs the abscissa with the seeds' min to max shaded, chance
    dashed; copies it to `figure` when given."""
    import shutil

    from jaxknow.eval.plots import plot_per_layer

    entries = {label: summary for label, (summary, _) in series.items()}
    first = next(iter(entries.values()), [])
    xs = [e["x"] for e in first]
    for label, summary in entries.items():
        if [e["x"] for e in summary] != xs:
            raise ValueError(f"{label!r} has points at {[e['x'] for e in summary]}, not {xs}")
    means = {label: [e[m]["mean"] for e in summary] for label, (summary, m) in series.items()}
    bands = {
        label: ([e[m]["min"] for e in summary], [e[m]["max"] for e in summary])
        for label, (summary, m) in series.items()
    }
    chance = float(np.mean([e["chance"]["mean"] for e in first])) if first else math.nan
    seeds = max((len(e["seeds"]) for e in first), default=0)
    png = plot_per_layer(
        means,
        out_dir / f"{name}.png",
        f"{title} ({seeds} seed{'s' if seeds != 1 else ''}: mean, min-max shaded)",
        "accuracy",
        xlabel=xlabel,
        x=xs,
        reference={"chance (majority answer)": chance},
        ylim=(0.0, 1.0),
        bands=bands,
        log_x=log_x,
    )
    if figure:
        Path(figure).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, figure)


def write_curve(
    out_dir: str | Path,
    name: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    xlabel: str,
    title: str,
    command: str = "",
    figure: str | Path | None = None,
    log_x: bool = True,
) -> dict[str, Any]:
    """Writes OUT_DIR/results.json (every point's row, the per-abscissa summary, the command)
    and OUT_DIR/<name>.png (P_test extraction and memorisation vs the abscissa, the seeds' min
    to max shaded, chance dashed); copies the plot to `figure` when given. Returns the
    results dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    results = {"curve": name, "command": command, "points": list(rows), "summary": summary}
    common.write_json(out_dir / "results.json", results)
    series = {label: (summary, m) for m, label in METRICS.items()}
    _plot_summary(out_dir, name, series, xlabel=xlabel, title=title, figure=figure, log_x=log_x)
    return results


def write_comparison(
    out_dir: str | Path,
    name: str,
    rows_by_condition: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    xlabel: str,
    title: str,
    command: str = "",
    figure: str | Path | None = None,
    log_x: bool = True,
) -> dict[str, Any]:
    """Writes OUT_DIR/results.json (per condition: every point's row and the per-abscissa
    summary; the command) and OUT_DIR/<name>.png (P_test extraction of each condition vs the
    abscissa, the seeds' min to max shaded, chance dashed); copies the plot to `figure` when
    given. Returns the results dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = {c: summarise(rows) for c, rows in rows_by_condition.items()}
    results = {
        "curve": name,
        "command": command,
        "conditions": {
            c: {"points": list(rows), "summary": summaries[c]}
            for c, rows in rows_by_condition.items()
        },
    }
    common.write_json(out_dir / "results.json", results)
    label = METRICS["p_test_em"]
    series = {f"{label}: {c}": (summary, "p_test_em") for c, summary in summaries.items()}
    _plot_summary(out_dir, name, series, xlabel=xlabel, title=title, figure=figure, log_x=log_x)
    return results


def curve_rows(
    points: Sequence[SweepPoint],
    results: Mapping[str, Mapping[str, Any]],
    recipe: str,
    condition: str | None = None,
) -> list[dict[str, Any]]:
    """Returns `point_row` of every point (its `condition` row) with its name, abscissa and
    seed."""
    return [
        {
            "point": p.name,
            "x": p.x,
            "seed": p.seed,
            **point_row(results[p.name], recipe, condition),
        }
        for p in points
    ]


def add_curve_arguments(ap: Any, seeds: Sequence[int]) -> None:
    """Adds the arguments every curve script takes to an argparse parser: the study config,
    --seeds, --workdir, --figure, --set KEY=VALUE (repeatable) and --dry_run."""
    ap.add_argument("config", help="bioS study config file (optionally FILE.py:ARG)")
    ap.add_argument("--seeds", type=comma_ints, default=list(seeds))
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--figure", default="", help="copy the plot here (e.g. docs/figures/...)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--dry_run", action="store_true")


def config_from_arguments(args: Any) -> ConfigDict:
    """Returns the study config named by `add_curve_arguments`' arguments, overridden by
    their --set assignments."""
    return apply_overrides(load_config_file(args.config), parse_assignments(args.set))


def run_curve(
    config: Any,
    points: Sequence[SweepPoint],
    workdir: str | Path,
    *,
    describe: Callable[[SweepPoint], str],
    recipe: str,
    name: str,
    xlabel: str,
    title: str,
    command: str,
    figure: str | None,
    dry_run: bool = False,
    run: StudyRunner = _run_study,
    conditions: Sequence[str] = (),
) -> list[dict[str, Any]] | None:
    """Prints each point (`describe(point)`) with its CPU estimate and the total; unless
    `dry_run`, runs or resumes every point (`run_sweep`), writes the curve (`write_curve`) and
    returns its per-abscissa summary (`summarise`). With `conditions`, the curve compares those
    condition rows of every point (`write_comparison`) and the summary returned is the first
    condition's. Returns None for a dry run. `run` runs one point's study (see `run_sweep`)."""
    est = estimate_minutes(config, points)
    for p in points:
        print(f"{p.name}: {describe(p)}, ~{est[p.name]:.1f} CPU min", flush=True)
    print(
        f"estimated {sum(est.values()):.0f} min on the 2-core CPU for {len(points)} points "
        f"(finished points are skipped)",
        flush=True,
    )
    if dry_run:
        return None
    results = run_sweep(config, points, workdir, run=run)
    if conditions:
        by_condition = {c: curve_rows(points, results, recipe, c) for c in conditions}
        write_comparison(
            workdir,
            name,
            by_condition,
            xlabel=xlabel,
            title=title,
            command=command,
            figure=figure or None,
        )
        return summarise(by_condition[conditions[0]])
    rows = curve_rows(points, results, recipe)
    write_curve(
        workdir, name, rows, xlabel=xlabel, title=title, command=command, figure=figure or None
    )
    return summarise(rows)
