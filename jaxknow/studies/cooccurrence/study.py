"""The co-occurrence study (Zhang, Li & Wu, NeurIPS 2024): finetuning on narrative text
teaches co-occurrence; referencing text (implicit association) teaches facts; active
forgetting unblocks factual learning from narrative text.

Stages under WORKDIR, each a resumable training run:
  data/                                   the world (base text, novel corpora, subsets)
  base/                                   the base model (skipped with base.init_from)
  ft_<rendering>[_forget]_<mode>_s<seed>/ knowledge finetuning on the novel entities
Then few-shot evaluation of every subset of the novel split, likelihood ratios, layer-delta
ablation curves, and WORKDIR/results.json, report.md and plots/*.png.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jaxknow import config as C
from jaxknow.data import build, records
from jaxknow.data.jsonl import read_jsonl
from jaxknow.eval.tables import markdown_table
from jaxknow.eval.tasks import subset_kind
from jaxknow.experiments import common
from jaxknow.experiments.common import StageConfig
from jaxknow.io.load import checkpoint_model_config, load_model
from jaxknow.model.config import ModelConfig
from jaxknow.model.lora import LoraConfig
from jaxknow.train.forgetting import ForgetConfig, OptReset, ResetTo
from jaxknow.train.select import Selection
from jaxknow.train.setup import check_workdir

FINDINGS = (
    "narrative training teaches co-occurrence: good plain QA, poor reverse / indirect / "
    "two-hop reasoning, negation ratio near 0",
    "referencing training teaches factual association: better reverse / indirect / two-hop, "
    "clearly positive negation ratio",
    "active forgetting (reset upper layers after pass 1) improves narrative training on the "
    "reasoning tasks",
    "layer-delta ablation: after narrative training QA depends on middle layers and MC on "
    "lower layers; after referencing training the lower layers carry both",
)


@dataclasses.dataclass(frozen=True)
class ForgetSettings:
    """Active forgetting between the two passes (see jaxknow.train.forgetting)."""

    enabled: bool = True
    layer_fraction: float = 1 / 3
    layer_start: int | None = None
    patterns: tuple[str, ...] = ()
    to: ResetTo = "pretrained"
    reset_optimizer: OptReset = "all"
    renderings: tuple[str, ...] = ()  # renderings that get a forgetting condition; () = all

    def at(self, pass_steps: int) -> ForgetConfig:
        """Returns the forgetting of a run whose first pass is `pass_steps` steps."""
        if self.layer_start is not None:
            select = Selection(layer_start=self.layer_start, patterns=self.patterns)
        elif self.patterns:
            select = Selection(patterns=self.patterns)
        else:
            select = Selection(layer_fraction=self.layer_fraction)
        return ForgetConfig(
            at_steps=(pass_steps,),
            select=select,
            to=self.to,
            reset_optimizer=self.reset_optimizer,
        )


@dataclasses.dataclass(frozen=True)
class CooccurrenceEvalSettings:
    """Few-shot evaluation of the novel split (the study's `eval` section)."""

    few_shot: int = 5
    max_new_tokens: int = 50
    batch_size: int = 64
    subsets: tuple[str, ...] = ()  # default: every eval_*.jsonl of the novel split
    max_items: int | None = None  # per subset (base ceiling and novel), None: all
    eval_pass1: bool = True  # also evaluate forgetting runs at the end of pass 1
    base_entities: bool = True  # also evaluate every finetuned model on the base entities
    base_max_items: int | None = None  # per base-entity subset; None: as max_items
    # A second world whose base entities hold facts a pretrained model may know (e.g.
    # {"kind": "geo", "num_countries": 40}): its base-entity subsets `real_facts_subsets` are
    # evaluated on the base model before finetuning. {} = off.
    real_facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    real_facts_subsets: tuple[str, ...] = ("qa", "multiple_choice")
    # "letters": the log-likelihood of " A".." D" (the authors' harness); "options": of each
    # option's text after the same prompt (a reading a small model can give; label it so).
    mc_mode: str = "letters"

    def __post_init__(self) -> None:
        from jaxknow.eval.scoring import MC_MODES

        if self.mc_mode not in MC_MODES:
            raise ValueError(f"eval.mc_mode={self.mc_mode!r}: must be one of {MC_MODES}")
        if self.real_facts:
            from jaxknow.data.world_builders import WorldConfigError, check_world

            try:
                check_world({**self.real_facts, "tokenizer": "checked-at-build"})
            except WorldConfigError as e:
                raise ValueError(f"real_facts: {e}") from None


@dataclasses.dataclass(frozen=True)
class AblationSettings:
    """Layer-delta ablation of finetuned models against the base model."""

    enabled: bool = True
    subsets: tuple[str, ...] = ("qa", "multiple_choice")
    renderings: tuple[str, ...] = ("narrative", "referencing")
    mode: common.FinetuneMode = "full"
    # first / last: the first / last k layers reverted; window: only layers k .. k+window-1
    sides: tuple[Literal["first", "last", "window"], ...] = ("first", "last")
    all_seeds: bool = True  # ablate every seed's model (mean and std per k); else the first
    k_step: int = 1  # k = 0, k_step, 2·k_step, ..., L (1: every layer)
    window: int = 0  # the width of the "window" side's reverted block of layers

    def __post_init__(self) -> None:
        if self.k_step < 1:
            raise ValueError(f"k_step={self.k_step}: must be >= 1")
        if "window" in self.sides and self.window < 1:
            raise ValueError(f"window={self.window}: side 'window' needs a width >= 1")


@dataclasses.dataclass(frozen=True)
class ReplaySettings:
    """Replay of base-world text during knowledge finetuning: the finetuning data becomes a
    mixture of the novel corpus (weight 1) and `source` (weight `weight`, by documents), so
    the base model's formats and knowledge are kept while the novel facts are learned, and
    the base world's QA beside the novel text is Physics 3.1's mixed training."""

    weight: float = 0.0  # 0: no replay (the authors' recipe)
    source: str = "corpus_pretrain"

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ValueError(f"weight={self.weight!r}: must be >= 0")


@dataclasses.dataclass(frozen=True)
class BaseStage(StageConfig):
    """The base model's pretraining on the base world, or an imported model (`init_from`:
    a converted model or a training workdir; the stage is then not trained)."""

    init_from: str | None = None


@dataclasses.dataclass(frozen=True)
class CooccurrenceStudy:
    """A co-occurrence study config, typed (`parse_study`): every key of the config file is a
    field."""

    experiment: Literal["cooccurrence"] = "cooccurrence"
    seed: int = 0
    seeds: tuple[int, ...] = ()  # the finetuning seeds; () = (seed,)
    world: dict[str, Any] = dataclasses.field(default_factory=dict)  # kind required
    # The base model's (without base.init_from; with it, the imported model's is used).
    model: ModelConfig = ModelConfig()
    mesh: C.MeshConfig = C.MeshConfig()
    base: BaseStage = BaseStage()
    finetune: StageConfig = StageConfig()
    lora_finetune: StageConfig = StageConfig()
    lora: LoraConfig = LoraConfig(rank=64, alpha=16.0, rslora=True, targets="all-linear")
    renderings: tuple[str, ...] = ("narrative", "referencing")
    modes: tuple[common.FinetuneMode, ...] = ("full",)
    forget: ForgetSettings = ForgetSettings()
    eval: CooccurrenceEvalSettings = CooccurrenceEvalSettings()
    ablation: AblationSettings = AblationSettings()
    replay: ReplaySettings = ReplaySettings()
    # With "pad" packing (one example per row), cut each finetune's rows to its corpus's
    # longest document rounded up to 8 tokens (at most the stage's seq_len): the same
    # examples and loss, without computing padding.
    fit_seq_len: bool = False
    # Passes over each rendering's corpus where they differ from the finetune stage's `epochs`
    # (e.g. {"referencing": 1}: the referencing corpus once, as many steps as 5 narrative
    # passes); {} = the stage's epochs for every rendering.
    epochs_per_rendering: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.seeds:
            object.__setattr__(self, "seeds", (self.seed,))
        if "kind" not in self.world:
            raise ValueError("world.kind: required (countries, geo or mquake)")
        for field in ("renderings", "modes"):
            if not getattr(self, field):
                raise ValueError(f"{field}: list at least one")
        for r in self.ablation.renderings if self.ablation.enabled else ():
            if r not in self.renderings:
                raise ValueError(f"ablation.renderings: {r!r} is not among renderings")
        for r in self.forget.renderings:
            if r not in self.renderings:
                raise ValueError(f"forget.renderings: {r!r} is not among renderings")
        for r, e in self.epochs_per_rendering.items():  # a rendering not trained is ignored
            if not e > 0:
                raise ValueError(f"epochs_per_rendering.{r}={e!r}: must be positive")


def parse_study(config: Any) -> CooccurrenceStudy:
    """Returns the typed study of a config (a ConfigDict or a plain mapping); raises
    ConfigError naming the first bad field."""
    return C.parse(CooccurrenceStudy, C.to_plain(config))


def _subsets(
    data_dir: Path, names: Sequence[str] | None, prefix: str, max_items: int | None
) -> dict[str, list[dict[str, Any]]]:
    """Returns {name: rows} of the eval files with `prefix` (eval_ or eval_base_)."""
    if names:
        files = {n: data_dir / f"{prefix}{n}.jsonl" for n in names}
    else:
        files = {}
        for f in sorted(data_dir.glob(f"{prefix}*.jsonl")):
            name = f.stem[len(prefix) :]
            if prefix == "eval_" and name.startswith("base_"):
                continue
            files[name] = f
    out = {}
    for n, f in files.items():
        if not f.is_file():
            raise FileNotFoundError(f"evaluation subset {n!r} not found: {f}")
        rows = read_jsonl(f)
        # Cloze rows (reference resolution) are cheap to score: never capped.
        out[n] = rows if subset_kind(n, rows) == "cloze" else spread(rows, max_items)
    return out


def spread(rows: Sequence[Any], max_items: int | None) -> list[Any]:
    """Returns at most `max_items` of `rows`, evenly spaced over the list (so a cap keeps every
    part of a subset ordered by fact), or all rows when `max_items` is None."""
    if not max_items or len(rows) <= max_items:
        return list(rows)
    idx = np.linspace(0, len(rows) - 1, max_items).round().astype(int)
    return [rows[i] for i in idx]


def evaluate_model(
    model: Any, subsets: Mapping[str, list[dict]], ev: CooccurrenceEvalSettings
) -> dict[str, dict[str, float]]:
    """Returns subset -> metrics of a model, few-shot as the authors' harness."""
    return evaluate_model_records(model, subsets, ev).metrics


def evaluate_model_records(
    model: Any, subsets: Mapping[str, list[dict]], ev: CooccurrenceEvalSettings
) -> Any:
    """Returns the `TaskResults` (metrics and per-item records) of `evaluate_model`."""
    from jaxknow.eval.tasks import evaluate_subsets_detailed

    return evaluate_subsets_detailed(
        model,
        subsets,
        few_shot=ev.few_shot,
        max_new_tokens=ev.max_new_tokens,
        batch_size=ev.batch_size,
        mc_mode=ev.mc_mode,
    )


#: Evaluation results of the study's models, by model checkpoint, items and settings.
EVAL_CACHE = "evals.json"


def model_fingerprint(model: Any, step: int | None = None) -> str | None:
    """Returns the sha256 of the checksum manifest of the checkpoint step a loaded model came
    from (`step`, else the step in its path, else the latest; the manifest names every file's
    hash, so it changes with any weight), or None when there is none to read."""
    import hashlib

    from jaxknow.io.integrity import MANIFEST
    from jaxknow.io.load import resolve_model_dir

    path = getattr(model, "path", None)
    if path is None:
        return None
    directory, path_step = resolve_model_dir(path)
    step = step if step is not None else path_step
    if step is None:
        steps = [int(d.name) for d in directory.iterdir() if d.name.isdigit()]
        if not steps:
            return None
        step = max(steps)
    manifest = directory / str(step) / MANIFEST
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None


def eval_cache_key(
    fingerprint: str, subsets: Mapping[str, list[dict]], ev: CooccurrenceEvalSettings
) -> str:
    """Returns the key of one evaluation in the cache: the model's checkpoint fingerprint, the
    items and the settings that change the scores."""
    import hashlib
    import json

    settings: tuple[Any, ...] = (ev.few_shot, ev.max_new_tokens)
    if ev.mc_mode != "letters":  # letters' keys stay those written before the field existed
        settings += (ev.mc_mode,)
    blob = json.dumps([fingerprint, settings, subsets], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_result(cache: Path | None, key: str | None, compute: Any) -> Any:
    """Returns the JSON value stored under `key` in the `cache` file, else `compute()`, stored
    there (atomically) first; computes without storing when `cache` or `key` is None."""
    import json

    if cache is None or key is None:
        return compute()
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    if key in stored:
        return stored[key]
    value = compute()
    stored[key] = value
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp")
    tmp.write_text(json.dumps(stored, indent=1))
    tmp.replace(cache)
    return value


def evaluate_cached(
    model: Any,
    subsets: Mapping[str, list[dict]],
    ev: CooccurrenceEvalSettings,
    cache: Path | None,
    step: int | None = None,
) -> dict[str, dict[str, float]]:
    """`evaluate_model`, with the metrics kept in `cache` (a JSON file) under a key of the
    model's checkpoint manifest (`step` as in `model_fingerprint`), the items and the
    evaluation settings: a resumed study scores an unchanged model on unchanged items once."""
    fingerprint = model_fingerprint(model, step) if cache is not None else None
    key = eval_cache_key(fingerprint, subsets, ev) if fingerprint else None
    return cached_result(cache, key, lambda: evaluate_model(model, subsets, ev))


def headline(metrics: Mapping[str, float]) -> float:
    """Returns the main number of a subset's metrics (EM, MC accuracy or negation ratio)."""
    for k in ("em", "acc", "negation"):
        if k in metrics:
            return float(metrics[k])
    return float("nan")


#: Keys of the ablation's continuous MC reading: "{subset} p_true" is the mean probability of
#: the right option among the options, "{subset} p_true change sd" the standard deviation over
#: items of its change from the unablated model (the paired spread behind its interval).
P_TRUE, CHANGE_SD = " p_true", " change sd"


def p_true_items(res: Any, subset: str) -> list[float]:
    """Returns the per-item ``p_true`` of a subset's records in `TaskResults` (none for a
    subset that is not MC or cloze)."""
    return [float(r["p_true"]) for r in res.predictions.get(subset, []) if "p_true" in r]


def ablation_scores(
    res: Any, reference: Mapping[str, Sequence[float]] | None = None
) -> dict[str, float]:
    """Returns what the ablation keeps of one model's `TaskResults`: {subset: headline} and,
    for each subset whose records carry ``p_true`` (MC, cloze), ``"{subset} p_true"`` (its
    mean) and, when `reference` holds the unablated model's per-item ``p_true`` of that subset,
    ``"{subset} p_true change sd"``: the standard deviation over items of the change from it.
    Items differ far more from one another than one item does between two ablated models, so
    the change's spread, not the level's, says whether reverting layers moved the score."""
    from jaxknow.eval.metrics import mean, std

    out = {}
    for name, m in res.metrics.items():
        out[name] = headline(m)
        vals = p_true_items(res, name)
        if not vals:
            continue
        out[name + P_TRUE] = mean(vals)
        ref = (reference or {}).get(name)
        if ref is not None:
            if len(ref) != len(vals):
                raise ValueError(f"{name}: {len(vals)} items but a reference of {len(ref)}")
            out[name + P_TRUE + CHANGE_SD] = std([a - b for a, b in zip(vals, ref)])
    return out


def run_cooccurrence_study(config: Any, workdir: str | Path, log: Any = print) -> dict[str, Any]:
    """Runs (or resumes) the whole study in `workdir`; returns the results also written to
    results.json (with report.md and plots/)."""
    study = parse_study(config)
    workdir = check_workdir(workdir)
    t0 = time.perf_counter()
    data_dir = workdir / "data"
    world = dict(study.world)
    if study.base.init_from is not None:
        world.setdefault("tokenizer", str(study.base.init_from))
    if not (data_dir / "manifest.json").is_file():
        log(f"[data] materialising the {world['kind']} world in {data_dir}")
        build.materialize(world, data_dir, study.seed)

    # 1. The base model.
    if study.base.init_from is not None:
        base_dir = Path(study.base.init_from)
        model_cfg = checkpoint_model_config(base_dir)
    else:
        base_dir = workdir / "base"
        model_cfg = study.model
        build.check_vocab(data_dir, model_cfg.vocab_size)
        base_run = common.stage_spec(
            model_cfg,
            study.mesh,
            study.base,
            seed=study.seed,
            sources=[{"name": "corpus_pretrain"}],
            data_dir=data_dir,
        )
        common.run_stage("base", base_run, base_dir, log)
    ev = study.eval
    novel = _subsets(data_dir, ev.subsets or None, "eval_", ev.max_items)
    base_subsets = _subsets(data_dir, None, "eval_base_", ev.base_max_items or ev.max_items)
    base_model = load_model(base_dir)
    results: dict[str, Any] = {
        "experiment": "cooccurrence",
        "world": world,
        "seeds": list(study.seeds),
        "mc_mode": ev.mc_mode,
        "base": base_scores(study, base_model, novel, base_subsets, workdir, log),
        "runs": {},
        "conditions": {},
        "findings": list(FINDINGS),
    }
    if ev.real_facts:
        results["real_facts_world"] = dict(ev.real_facts)
    losses: dict[str, tuple[list[int], list[float], list[int]]] = {}
    evals = workdir / EVAL_CACHE

    # 2. Knowledge finetuning conditions.
    conditions = []
    for rendering in study.renderings:
        conditions.append((rendering, False))
        if study.forget.enabled and rendering in (study.forget.renderings or study.renderings):
            conditions.append((rendering, True))
    run_dirs: dict[tuple[str, bool, str, int], Path] = {}
    for mode in study.modes:
        mode_stage = study.finetune if mode == "full" else study.lora_finetune
        for rendering, forget in conditions:
            source = f"corpus_{rendering}"
            n_docs = records.read_index(data_dir, source)["num_docs"]
            stage = mode_stage
            if rendering in study.epochs_per_rendering:
                epochs = float(study.epochs_per_rendering[rendering])
                stage = dataclasses.replace(stage, epochs=epochs)
            pass_steps = common.steps_for_epochs(stage, n_docs)
            rows = {}
            if study.fit_seq_len and stage.packing == "pad" and study.replay.weight <= 0:
                longest = records.longest_document(data_dir, source)
                rows = {"seq_len": min(stage.seq_len, -(-longest // 8) * 8)}
            for seed in study.seeds:
                name = f"{rendering}{'+forget' if forget else ''} ({mode}) seed {seed}"
                d = workdir / f"ft_{rendering}{'_forget' if forget else ''}_{mode}_s{seed}"
                # A forgetting run saves at the end of pass 1 (its reset point); a plain run
                # at the stage's own interval (0: at the end and on preemption only).
                every = pass_steps if forget else stage.checkpoint_every
                stage_s = dataclasses.replace(stage, checkpoint_every=every, **rows)
                run_spec = common.stage_spec(
                    model_cfg,
                    study.mesh,
                    stage_s,
                    seed=seed,
                    sources=finetune_sources(source, study.replay),
                    data_dir=data_dir,
                    steps=2 * pass_steps if forget else pass_steps,
                    total_steps=pass_steps,
                    init_from=base_dir,
                    lora=study.lora if mode == "lora" else None,
                    trainable="lora" if mode == "lora" else "all",
                    forget=study.forget.at(pass_steps) if forget else None,
                    keep_checkpoints=2,
                )
                res = common.run_stage(name, run_spec, d, log)
                events = [e["step"] for e in common.read_events(d)]
                losses[name] = (
                    [m["step"] for m in res.metrics],
                    [m["loss"] for m in res.metrics],
                    events,
                )
                log(f"[eval] {name}")
                model = load_model(d)
                run = {
                    "rendering": rendering,
                    "forget": forget,
                    "mode": mode,
                    "seed": seed,
                    "steps": res.final_step,
                    "corpus_rows": n_docs,
                    "epochs_per_pass": stage.epochs,
                    "seq_len": stage_s.seq_len,
                    "resets": events,
                    "metrics": evaluate_cached(model, novel, ev, evals),
                }
                if forget and ev.eval_pass1:
                    run["metrics_pass1"] = evaluate_cached(
                        load_model(d, step=pass_steps), novel, ev, evals, step=pass_steps
                    )
                if ev.base_entities:
                    run["base_entities"] = evaluate_cached(model, base_subsets, ev, evals)
                results["runs"][name] = run
                run_dirs[(rendering, forget, mode, seed)] = d
    results["conditions"] = aggregate(results["runs"])
    if ev.base_entities:
        results["base_entities_after"] = aggregate(results["runs"], key="base_entities")

    # 3. Where the knowledge lives: layer-delta ablation.
    ab = study.ablation
    if ab.enabled and ab.mode in study.modes:
        results["ablation"] = {}
        subsets = {k: novel[k] for k in ab.subsets if k in novel}
        for rendering in ab.renderings:
            per_seed = {}
            for seed in study.seeds if ab.all_seeds else study.seeds[:1]:
                d = run_dirs[(rendering, False, ab.mode, seed)]
                log(f"[ablation] {rendering} ({ab.mode}) seed {seed}")
                ft_model = load_model(d)
                fps = (model_fingerprint(ft_model), model_fingerprint(base_model))
                key = None
                if all(fps):
                    # p_true with its paired spread since S18: older entries lack both.
                    tag = f"ablation {fps} sides={ab.sides} k_step={ab.k_step} p_true=paired"
                    if "window" in ab.sides:
                        tag += f" window={ab.window}"
                    key = eval_cache_key(tag, subsets, ev)
                per_seed[seed] = cached_result(
                    evals,
                    key,
                    lambda m=ft_model: ablate(
                        base_model, m, subsets, ev, ab.sides, k_step=ab.k_step, window=ab.window
                    ),
                )
            results["ablation"][rendering] = combine_ablations(
                per_seed, {k: len(v) for k, v in subsets.items()}
            )
            if "window" in ab.sides:
                results["ablation"][rendering]["window"] = ab.window
    results["wall_seconds"] = time.perf_counter() - t0
    _write_outputs(workdir, results, losses)
    return results


def base_scores(
    study: CooccurrenceStudy,
    base_model: Any,
    novel: Mapping[str, list[dict]],
    base_subsets: Mapping[str, list[dict]],
    workdir: Path,
    log: Any,
) -> dict[str, Any]:
    """Returns the base model's scores before finetuning: the novel entities (the floor), the
    base entities when the study pretrained the base model on them (the ceiling; a model
    imported with `base.init_from` never saw the base world, so none), and the real facts of
    `eval.real_facts` when set."""
    ev = study.eval
    evals = workdir / EVAL_CACHE
    out: dict[str, Any] = {}
    if study.base.init_from is None:
        log("[eval] base model: ceiling on base entities")
        out["ceiling_base_entities"] = evaluate_cached(base_model, base_subsets, ev, evals)
    log("[eval] base model: floor on novel entities")
    out["novel_before_finetuning"] = evaluate_cached(base_model, novel, ev, evals)
    if ev.real_facts:
        real_dir = workdir / "data_real_facts"
        if not (real_dir / "manifest.json").is_file():
            # The study world's tokenizer (the imported model's own, when there is one).
            world = {**ev.real_facts, "tokenizer": str(workdir / "data")}
            build.materialize(world, real_dir, study.seed)
        subsets = _subsets(real_dir, ev.real_facts_subsets, "eval_base_", ev.base_max_items)
        log(f"[eval] base model: real facts ({', '.join(subsets)})")
        out["real_facts"] = evaluate_cached(base_model, subsets, ev, evals)
    return out


def ablate(
    base_model: Any,
    ft_model: Any,
    subsets: Mapping[str, list[dict]],
    ev: CooccurrenceEvalSettings,
    sides: Sequence[str],
    k_step: int = 1,
    window: int = 0,
) -> dict[str, Any]:
    """Returns the layer-delta ablation {side: {k: {subset: headline}}} of a finetuned model
    against the base, for k = 0, k_step, ..., L (side "window": layers k .. k+window-1
    reverted, for the k whose window fits)."""
    from jaxknow.eval.ablation import ablation_ks, layer_delta_ablation
    from jaxknow.model.lora import merge_lora

    cfg = ft_model.cfg
    tok = ft_model.tokenizer
    theta1 = merge_lora(ft_model.params, cfg)
    # The unablated model's per-item p_true, for the paired spread of every ablated model's.
    scored = {n: r for n, r in subsets.items() if subset_kind(n, r) in ("mc", "cloze")}
    reference = {}
    if scored:
        unablated = evaluate_model_records((theta1, cfg, tok), scored, ev)
        reference = {n: p_true_items(unablated, n) for n in scored}

    def evaluate(params: Any) -> dict[str, float]:
        return ablation_scores(evaluate_model_records((params, cfg, tok), subsets, ev), reference)

    res = layer_delta_ablation(
        base_model.params,
        theta1,
        cfg.n_layers,
        evaluate,
        sides=tuple(sides),
        ks=ablation_ks(cfg.n_layers, k_step),
        window=window,
        share_prefix=True,
    )
    return {
        "n_layers": cfg.n_layers,
        "results": {
            side: {str(k): m for k, m in by_k.items()} for side, by_k in res.to_dict().items()
        },
    }


def finetune_sources(source: str, replay: ReplaySettings) -> list[dict[str, Any]]:
    """Returns the data sources of a knowledge finetune: the novel corpus, plus the replayed
    base-world source when `replay.weight` > 0."""
    if replay.weight <= 0:
        return [{"name": source}]
    return [{"name": source, "weight": 1.0}, {"name": replay.source, "weight": replay.weight}]


def combine_ablations(
    per_seed: Mapping[int, Mapping[str, Any]], items: Mapping[str, int]
) -> dict[str, Any]:
    """Returns one rendering's ablation over seeds: ``results`` (side -> k -> subset -> mean),
    ``std`` (sample std over seeds, 0 for one seed), ``interval`` (95 %: Wilson's interval of
    a proportion, its items pooled over seeds, `items` giving the subset sizes; for
    ``"{subset} p_true"`` the normal interval of its change from the unablated model, drawn
    around its level, from the paired spread ``"{subset} p_true change sd"`` — kept in
    ``per_seed`` only; zero wide at k = 0, and a band that leaves the unablated level marks
    layers that matter), ``n`` and ``per_seed``."""
    from jaxknow.eval.metrics import mean, mean_interval, std, wilson_interval

    seeds = list(per_seed)
    first = per_seed[seeds[0]]["results"]
    out: dict[str, Any] = {"results": {}, "std": {}, "interval": {}}
    for side, by_k in first.items():
        for part in out.values():
            part[side] = {}
        for k, by_subset in by_k.items():
            for part in out.values():
                part[side][k] = {}
            for subset in by_subset:
                if subset.endswith(CHANGE_SD):
                    continue
                vals = [float(per_seed[s]["results"][side][k][subset]) for s in seeds]
                m = mean(vals)
                out["results"][side][k][subset] = m
                out["std"][side][k][subset] = std(vals)
                if subset + CHANGE_SD in by_subset:
                    sds = [
                        float(per_seed[s]["results"][side][k][subset + CHANGE_SD]) for s in seeds
                    ]
                    n_items = items.get(subset.removesuffix(P_TRUE), 0)
                    interval = mean_interval(m, sds, n_items)
                else:
                    interval = wilson_interval(m, items.get(subset, 0) * len(seeds))
                out["interval"][side][k][subset] = list(interval)
    return {
        "n_layers": per_seed[seeds[0]]["n_layers"],
        "n": len(seeds),
        **out,
        "per_seed": {str(s): per_seed[s]["results"] for s in seeds},
    }


def aggregate(runs: Mapping[str, Mapping[str, Any]], key: str = "metrics") -> dict[str, Any]:
    """Returns condition -> subset -> metric -> {"mean", "std", "n"} over seeds (sample std)
    of each run's `key` entry (its novel-entity metrics by default)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in runs.values():
        name = f"{r['rendering']}{' + forgetting' if r['forget'] else ''} ({r['mode']})"
        groups.setdefault(name, []).append(r[key])
    out: dict[str, Any] = {}
    for name, metrics in groups.items():
        out[name] = {}
        for subset in metrics[0]:
            out[name][subset] = {}
            for m in metrics[0][subset]:
                vals = [float(x[subset][m]) for x in metrics]
                out[name][subset][m] = {
                    "mean": float(np.mean(vals)),
                    "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                    "n": len(vals),
                }
    return out


def report_markdown(results: Mapping[str, Any]) -> str:
    """Returns report.md: conditions x tasks (mean ± std over seeds), the base model's
    ceiling, likelihood ratios and the ablation tables."""
    conds = results["conditions"]
    subsets = [s for s in next(iter(conds.values())) if s != "likelihood"] if conds else []
    header = ["condition", *subsets]
    rows = []
    base_novel = results["base"]["novel_before_finetuning"]
    rows.append(
        [
            "base model (before finetuning)",
            *[_pct(headline(base_novel.get(s, {}))) for s in subsets],
        ]
    )
    for key, by_subset in conds.items():
        rows.append([key, *[_pm(by_subset[s], _main_metric(by_subset[s])) for s in subsets]])
    ceiling = results["base"].get("ceiling_base_entities") or {}
    extra_rows = []
    if ceiling:
        extra_rows.append(
            [
                "ceiling: base model on base entities",
                *[_pct(headline(ceiling[s])) if s in ceiling else "" for s in subsets],
            ]
        )
    trained = {}
    for r in results["runs"].values():
        key = f"{r['rendering']}{' + forgetting' if r['forget'] else ''} ({r['mode']})"
        trained.setdefault(
            key,
            [
                key,
                str(r.get("corpus_rows", "")),
                str(r.get("epochs_per_pass", "")),
                str(r["steps"]),
                str(r.get("seq_len", "")),
            ],
        )
    parts = [
        "# Co-occurrence is not factual association",
        "",
        f"World: {results['world'].get('kind')}; seeds {results['seeds']}; "
        f"wall time {results['wall_seconds'] / 60:.1f} min.",
        "",
        "## What each condition trained on",
        "",
        markdown_table(
            ["condition", "corpus rows", "epochs per pass", "steps", "row length"],
            list(trained.values()),
        ),
        "",
        "## Novel-entity tasks (EM % for free-form, accuracy % for multiple choice; "
        "mean ± std over seeds)",
        "",
        *_mc_mode_note(results.get("mc_mode", "letters")),
        markdown_table(header, [*rows, *extra_rows]),
    ]
    real = results["base"].get("real_facts")
    if real:
        parts += [
            "",
            "## The base model on real facts (before finetuning; "
            f"{results.get('real_facts_world', {}).get('kind', 'real')} world, base entities)",
            "",
            markdown_table(list(real), [[_pct(headline(m)) for m in real.values()]]),
        ]
    after = results.get("base_entities_after")
    if after and ceiling:
        bsubs = [s for s in ceiling if s != "likelihood"]
        brows = [["base model (before finetuning)", *[_pct(headline(ceiling[s])) for s in bsubs]]]
        brows += [
            [key, *[_pm(by[s], _main_metric(by[s])) if s in by else "" for s in bsubs]]
            for key, by in after.items()
        ]
        parts += [
            "",
            "## The base model's own abilities: base entities before and after finetuning",
            "",
            markdown_table(["model", *bsubs], brows),
        ]
    if any("likelihood" in v for v in conds.values()):
        metrics = ["negation", "negation_frame", "comparison"]
        lrows = []
        for key, by_subset in conds.items():
            lk = by_subset.get("likelihood")
            if lk:
                lrows.append(
                    [
                        key,
                        *[
                            f"{lk[m]['mean']:.2f} ± {lk[m]['std']:.2f}" if m in lk else ""
                            for m in metrics
                        ],
                    ]
                )
        parts += [
            "",
            "## Likelihood ratios (nats; mean ± std over seeds)",
            "",
            "Negation ratio log p(t | '... is') − log p(t | '... is not') in the "
            "relation's own frame (which the referencing corpus fills with references, "
            "never tails) and in the held-out frame 'According to the old records: ...' "
            "(base-world text only, no finetuning corpus); comparison ratio log p(t) − "
            "mean log p(t') over wrong tails.",
            "",
            markdown_table(
                ["condition", "negation", "negation (held-out frame)", "comparison"], lrows
            ),
        ]
    parts += _p_true_section(conds, base_novel)
    pass1 = {k: r for k, r in results["runs"].items() if "metrics_pass1" in r}
    if pass1:
        prow = []
        for k, r in pass1.items():
            for s in ("multiple_choice", "qa"):
                if s in r["metrics"]:
                    prow.append(
                        [
                            k,
                            s,
                            _pct(headline(r["metrics_pass1"][s])),
                            _pct(headline(r["metrics"][s])),
                        ]
                    )
        parts += [
            "",
            "## Active forgetting: end of pass 1 vs end of pass 2",
            "",
            markdown_table(["run", "task", "pass 1", "pass 2"], prow),
        ]
    if results.get("ablation"):
        parts += [
            "",
            "## Layer-delta ablation (first / last k layers, or a window of layers from layer k, "
            "reverted to base)",
            "",
        ]
        for rendering, ab in results["ablation"].items():
            ks = sorted({int(k) for side in ab["results"].values() for k in side})
            subs = sorted({s for side in ab["results"].values() for v in side.values() for s in v})
            hrow = ["side / task", *[f"k={k}" for k in ks]]
            arows = []
            std = ab.get("std") or {}
            for side, by_k in ab["results"].items():
                label = f"layers k..k+{ab['window'] - 1}" if side == "window" else f"{side} k"
                for s in subs:
                    arows.append(
                        [
                            f"{label} / {s}",
                            *[
                                _pct_sd(by_k[str(k)][s], std.get(side, {}).get(str(k), {}).get(s))
                                if str(k) in by_k
                                else ""
                                for k in ks
                            ],
                        ]
                    )
            parts += [
                f"### {rendering} (mean ± std over {ab.get('n', 1)} seed(s); the plot's "
                f"band is the 95 % interval over items: Wilson's for a share of items; for "
                f"p_true, the mean probability of the right option among the options, the "
                f"interval of its change from the unablated model, paired over items)",
                "",
                markdown_table(hrow, arows),
                "",
            ]
        parts.append("Plots: plots/ablation_*.png, plots/loss_*.png.")
    parts += ["", "## The paper's findings (to compare with the tables above)", ""]
    parts += [f"- {f}" for f in results["findings"]]
    return "\n".join(parts) + "\n"


def _mc_mode_note(mc_mode: str) -> list[str]:
    """Returns the report's warning lines when multiple choice was not scored as the authors'
    harness scores it (the letters " A".." D"), else none."""
    if mc_mode == "letters":
        return []
    return [
        f"Multiple choice here is scored by `{mc_mode}` (the log-likelihood of each option's "
        "text after the prompt), not by the answer letters of the authors' harness: compare "
        "it with letter-scored figures only with that said.",
        "",
    ]


def _main_metric(metrics: Mapping[str, Any]) -> str:
    for k in ("em", "acc", "negation"):
        if k in metrics:
            return k
    return next(iter(metrics))


def _p_true_section(
    conds: Mapping[str, Mapping[str, Any]], base_novel: Mapping[str, Mapping[str, float]]
) -> list[str]:
    """Returns the report's lines on the MC subsets' `p_true` (none when no condition has it:
    evaluations cached before it existed)."""
    subs = [
        s for s in next(iter(conds.values()), {}) if any("p_true" in c[s] for c in conds.values())
    ]
    if not subs:
        return []
    rows = [
        [
            "base model (before finetuning)",
            *[_pct(base_novel.get(s, {}).get("p_true", float("nan"))) for s in subs],
        ]
    ]
    rows += [
        [key, *[_pm(by[s], "p_true") if "p_true" in by[s] else "" for s in subs]]
        for key, by in conds.items()
    ]
    return [
        "",
        "## Multiple choice read continuously (p_true %: the probability of the right option "
        "among the options, mean over items ± std over seeds; chance 1 / options)",
        "",
        markdown_table(["condition", *subs], rows),
    ]


def _pct(v: float) -> str:
    return "" if v != v else f"{100 * v:.1f}"


def _pct_sd(v: float, sd: float | None) -> str:
    return _pct(v) if not sd else f"{_pct(v)} ± {100 * sd:.1f}"


def _pm(stats: Mapping[str, Mapping[str, float]], metric: str) -> str:
    s = stats[metric]
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def _write_outputs(
    workdir: Path,
    results: dict[str, Any],
    losses: Mapping[str, tuple[list[int], list[float], list[int]]],
) -> None:
    from jaxknow.eval.plots import plot_loss_curve, plot_per_layer

    # The numbers first: a failing plot must not lose a study's results.
    common.write_json(workdir / "results.json", results)
    common.write_text(workdir / "report.md", report_markdown(results))
    plots = workdir / "plots"
    plots.mkdir(exist_ok=True)
    for name, (steps, vals, resets) in losses.items():
        if steps:
            slug = name.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "_")
            plot_loss_curve(
                steps,
                vals,
                plots / f"loss_{slug}.png",
                markers=resets,
                title=f"finetuning loss: {name}",
            )
    mc_mode = results.get("mc_mode", "letters")
    mc_label = "" if mc_mode == "letters" else f" (MC scored by {mc_mode})"
    for rendering, ab in (results.get("ablation") or {}).items():
        interval = ab.get("interval") or {}
        # first / last k on one plot; the window ablation (x = the window's first layer) on its own
        for figure, sides, xlabel in (
            ("", ("first", "last"), "k layers reverted to base"),
            ("_window", ("window",), f"first of the {ab.get('window')} layers reverted to base"),
        ):
            series, bands = {}, {}
            ks: list[int] = []
            for side, by_k in ab["results"].items():
                if side not in sides:
                    continue
                ks = sorted(int(k) for k in by_k)
                for s in next(iter(by_k.values())):
                    name = f"{s} ({side} k reverted)" if side != "window" else s
                    series[name] = [by_k[str(k)][s] for k in ks]
                    if interval:
                        lo_hi = [interval[side][str(k)][s] for k in ks]
                        bands[name] = ([lo for lo, _ in lo_hi], [hi for _, hi in lo_hi])
            if not series:
                continue
            plot_per_layer(
                series,
                plots / f"ablation{figure}_{rendering}.png",
                f"layer-delta ablation after {rendering} training{mc_label}\n(mean of "
                f"{ab.get('n', 1)} seed(s); band: 95 % interval over items)",
                "score",
                xlabel=xlabel,
                x=ks,
                bands=bands or None,
            )
