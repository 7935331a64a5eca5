"""The bioS study (Allen-Zhu & Li, Physics of LMs 3.1): does knowledge in biographies become
extractable by question answering on people whose QA was never trained?

Stages, each a resumable training run under WORKDIR:
  data/                          the world (biographies per augmentation, QA, tokenizer)
  pretrain_<aug>/                biographies only, from scratch
  finetune_<aug>_<full|lora>/    QA of P_train, from the pretrained model
  mixed_<aug>/                   biographies + QA of P_train in one mixture, from scratch
  (celebrity)                    as pretrain/finetune on a corpus where P_train is augmented
Then greedy QA exact match on P_test (and P_train), P-/Q-probing of every pretrained model,
and WORKDIR/results.json, report.md and plots/*.png.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxknow import config as C
from jaxknow.data import build
from jaxknow.data.jsonl import read_jsonl
from jaxknow.data.world_builders import aug_source_name, bios_corpora, bios_world
from jaxknow.eval.tables import markdown_table
from jaxknow.experiments import common
from jaxknow.experiments.common import StageConfig
from jaxknow.io.load import load_model
from jaxknow.worlds.bios import ATTRIBUTES, Augmentation

# The paper's figures (Allen-Zhu & Li 2023, bioS, GPT-2 small with rotary, N = 100,000).
PAPER = {
    "mixed training (bioS single)": 0.868,
    "BIO pretrain + QA finetune, bioS single": "< 0.10",
    "BIO pretrain + QA finetune, multi5+permute+fullname": "> 0.90",
}


@dataclasses.dataclass(frozen=True)
class ProbingConfig:
    """Which probes run on the pretrained models."""

    enabled: bool = True
    p_probe: bool = True
    q_probe: bool = True
    steps: int = 300
    lr: float = 1e-2
    embedding_rank: int = 0
    max_people: int = 1000
    birth_date: str = "year"  # probe the birth year (a full date has too many classes)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How QA accuracy is measured."""

    max_new_tokens: int = 24
    batch_size: int = 64
    max_people: int | None = None  # evaluate on at most this many people per split


@dataclasses.dataclass(frozen=True)
class FinetuneRecipe:
    """One QA finetune of every pretrained model: its name (the stage directory and the
    results row), full or LoRA, and its stage settings (the study's `finetune` section with
    the recipe's overrides) and LoRA settings."""

    name: str
    mode: str
    stage: StageConfig
    lora: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class BiosStudy:
    """A parsed bioS study config."""

    seed: int
    world: dict[str, Any]
    model: dict[str, Any]
    mesh: dict[str, Any]
    conditions: tuple[str, ...]
    pretrain: StageConfig
    finetune: StageConfig
    recipes: tuple[FinetuneRecipe, ...]
    lora: dict[str, Any]
    mixed: StageConfig | None
    mixed_qa_weight: float
    celebrity: bool
    celebrity_minority_weight: float | None
    probing: ProbingConfig
    eval: EvalSettings


EXPERIMENT_KEYS = (
    "experiment",
    "seed",
    "world",
    "model",
    "mesh",
    "conditions",
    "pretrain",
    "finetune",
    "finetune_modes",
    "finetune_recipes",
    "lora",
    "mixed",
    "celebrity",
    "celebrity_minority_weight",
    "probing",
    "eval",
)


def parse_study(config: Any) -> BiosStudy:
    """Returns the parsed study; raises ConfigError naming the first bad field."""
    cfg = C.to_plain(config)
    C.check_top_level(cfg, known=EXPERIMENT_KEYS)
    conditions = tuple(cfg.get("conditions") or ())
    if not conditions:
        raise C.ConfigError("conditions: list at least one augmentation, e.g. 'single'")
    for c in conditions:
        try:
            Augmentation.parse(c)
        except ValueError as e:
            raise C.ConfigError(f"conditions: {e}") from None
    modes = common.parse_modes(cfg.get("finetune_modes"), "finetune_modes")
    finetune = common.parse_stage(cfg.get("finetune"), "finetune")
    lora = dict(
        cfg.get("lora") or {"rank": 8, "alpha": 16.0, "targets": ["q", "v"], "embedding_rank": 8}
    )
    mixed_cfg = dict(cfg.get("mixed") or {})
    mixed_on = mixed_cfg.pop("enabled", False)
    qa_weight = float(mixed_cfg.pop("qa_weight", 1.0))
    world = dict(cfg.get("world") or {})
    if world.get("kind", "bios") != "bios":
        raise C.ConfigError(f"world.kind={world.get('kind')!r}: the bioS study needs 'bios'")
    world["kind"] = "bios"
    C.model_config(cfg.get("model") or {})  # validate early
    minority_weight = cfg.get("celebrity_minority_weight")
    if minority_weight is not None and not (
        isinstance(minority_weight, (int, float))
        and not isinstance(minority_weight, bool)
        and minority_weight > 0
    ):
        raise C.ConfigError(
            f"celebrity_minority_weight={minority_weight!r}: must be a positive number or None"
        )
    return BiosStudy(
        seed=int(cfg.get("seed", 0)),
        world=world,
        model=dict(cfg.get("model") or {}),
        mesh=dict(cfg.get("mesh") or {}),
        conditions=conditions,
        pretrain=common.parse_stage(cfg.get("pretrain"), "pretrain"),
        finetune=finetune,
        recipes=parse_recipes(cfg.get("finetune_recipes"), modes, finetune, lora),
        lora=lora,
        mixed=common.parse_stage(mixed_cfg, "mixed") if mixed_on else None,
        mixed_qa_weight=qa_weight,
        celebrity=bool(cfg.get("celebrity", False)),
        celebrity_minority_weight=None if minority_weight is None else float(minority_weight),
        probing=C.section(ProbingConfig, cfg.get("probing"), "probing"),
        eval=C.section(EvalSettings, cfg.get("eval"), "eval"),
    )


def parse_recipes(
    values: Any, modes: Sequence[str], finetune: StageConfig, lora: Mapping[str, Any]
) -> tuple[FinetuneRecipe, ...]:
    """Returns the QA finetunes of a study: `finetune_recipes` (a list of {"name", "mode",
    stage overrides..., "lora": {...}}) or, without it, one recipe per finetune mode named
    after it. Raises ConfigError naming the bad recipe."""
    if not values:
        return tuple(
            FinetuneRecipe(m, m, finetune, dict(lora) if m == "lora" else None) for m in modes
        )
    out: list[FinetuneRecipe] = []
    for i, raw in enumerate(values):
        where = f"finetune_recipes[{i}]"
        r = dict(raw)
        name, mode = r.pop("name", None), r.pop("mode", "full")
        if not isinstance(name, str) or not name or "/" in name:
            raise C.ConfigError(f"{where}.name={name!r}: a non-empty name without '/'")
        if name in {x.name for x in out}:
            raise C.ConfigError(f"{where}.name={name!r}: repeated")
        common.parse_modes([mode], f"{where}.mode")
        lora_over = dict(r.pop("lora", None) or {})
        stage = common.parse_stage(r, where, base=finetune)
        out.append(
            FinetuneRecipe(name, mode, stage, {**lora, **lora_over} if mode == "lora" else None)
        )
    return tuple(out)


def _qa_rows(data_dir: Path, split: str, max_people: int | None) -> list[dict[str, Any]]:
    rows = read_jsonl(data_dir / f"qa_{split}.jsonl", required=("question", "answer"))
    if max_people is not None:
        keep = sorted({r["person"] for r in rows})[:max_people]
        keep_set = set(keep)
        rows = [r for r in rows if r["person"] in keep_set]
    return rows


def evaluate_qa(workdir: Path, data_dir: Path, ev: EvalSettings) -> dict[str, dict[str, float]]:
    """Returns {"test": metrics, "train": metrics}: zero-shot greedy QA exact match of the
    model in `workdir` on P_test and P_train, overall and per attribute."""
    from jaxknow.eval.tasks import evaluate_subsets

    model = load_model(workdir)
    subsets = {
        "test": _qa_rows(data_dir, "test", ev.max_people),
        "train": _qa_rows(data_dir, "train", ev.max_people),
    }
    return evaluate_subsets(
        model,
        subsets,
        kinds={"test": "free", "train": "free"},
        few_shot=0,
        max_new_tokens=ev.max_new_tokens,
        batch_size=ev.batch_size,
    )


def memorisation_summary(
    hits: Sequence[Sequence[bool]], sentences: Sequence[Sequence[Any]]
) -> dict[str, float]:
    """Returns first-token accuracy per attribute, its mean over attributes ("mean") and the
    same mean over only the values that do not open their sentence
    ("mean_not_sentence_initial"): a value that opens a sentence ("Dallas, TX is where ...")
    comes before anything that says which attribute it is, so in a permuted biography its first
    token is a guess between the attributes still to come, however well the person is known.
    `hits[i][j]` is the hit of biography i's sentence j (`sentences[i][j]`, a `SentenceSpan`)."""
    per: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    inner: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    for h, spans in zip(hits, sentences):
        for ok, s in zip(h, spans):
            per[s.attribute].append(ok)
            if s.value_start > s.start:
                inner[s.attribute].append(ok)
    out = {a: float(np.mean(v)) for a, v in per.items() if v}
    out["mean"] = float(np.mean(list(out.values())))
    inner_means = [float(np.mean(v)) for v in inner.values() if v]
    out["mean_not_sentence_initial"] = float(np.mean(inner_means)) if inner_means else float("nan")
    return out


def memorisation(
    workdir: Path, bios: Sequence[Any], max_bios: int = 2000, batch_size: int = 64
) -> dict[str, float]:
    """Returns the pretrained model's first-token accuracy of every attribute value in its
    training biographies (greedy prediction of the value's first token from the text before
    it), per attribute, as "mean" and as "mean_not_sentence_initial" (`memorisation_summary`),
    over at most `max_bios` biographies (evenly spaced)."""
    from jaxknow.eval.memorisation import next_token_hits, value_token_index

    model = load_model(workdir)
    tok = model.tokenizer
    step = max(1, -(-len(bios) // max_bios))
    chosen = list(bios)[::step]
    seqs, positions = [], []
    for b in chosen:
        enc = tok.tok.encode(b.text, add_special_tokens=False)
        pre = tok.prefix()
        seqs.append(pre + list(enc.ids))
        positions.append(
            [len(pre) + value_token_index(enc.offsets, s.value_start) for s in b.sentences]
        )
    hits = next_token_hits(model.params, model.cfg, seqs, positions, batch_size=batch_size)
    out = memorisation_summary([h.tolist() for h in hits], [b.sentences for b in chosen])
    out["num_biographies"] = len(chosen)
    return out


def probe(
    workdir: Path, study: BiosStudy, world_options: Mapping[str, Any], bios: Sequence[Any]
) -> dict[str, Any]:
    """Returns P- and Q-probing results (per layer and attribute) of a pretrained model;
    P-probing reads the model's own training biographies `bios` (the first of each person)."""
    from jaxknow.eval import bios_probing
    from jaxknow.eval.probing import ProbeSettings

    pc = study.probing
    model = load_model(workdir)
    world, _ = bios_world(world_options, study.seed)
    people = np.arange(min(world.num_people, pc.max_people))
    rng = np.random.default_rng(study.seed)
    rng.shuffle(people)
    half = len(people) // 2
    train_p, test_p = np.sort(people[:half]), np.sort(people[half:])
    out: dict[str, Any] = {}
    settings = ProbeSettings(
        steps=pc.steps, lr=pc.lr, embedding_rank=pc.embedding_rank, seed=study.seed
    )
    if pc.p_probe:
        first: dict[int, Any] = {}
        for b in bios:  # one biography per probed person (the first rendering)
            first.setdefault(b.person, b)
        chosen = [first[int(p)] for p in people]
        out["p_probe"] = bios_probing.p_probe(
            model.params,
            model.cfg,
            model.tokenizer,
            world,
            chosen,
            train_p,
            test_p,
            settings,
            birth_date=pc.birth_date,
        )
    if pc.q_probe:
        out["q_probe"] = bios_probing.q_probe(
            model.params,
            model.cfg,
            model.tokenizer,
            world,
            train_p,
            test_p,
            settings,
            birth_date=pc.birth_date,
        )
    return out


def run_bios_study(config: Any, workdir: str | Path, log: Any = print) -> dict[str, Any]:
    """Runs (or resumes) the whole study in `workdir`; returns the results dict that is also
    written to results.json (with report.md and plots/)."""
    study = parse_study(config)
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise C.ConfigError(f"--workdir={workdir} exists and is not a directory")
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    exp = {"seed": study.seed, "model": study.model, "mesh": study.mesh}
    data_dir = workdir / "data"
    augs = [Augmentation.parse(c) for c in study.conditions]
    world = dict(study.world, augmentations=[a.name for a in augs])
    if study.celebrity:
        world["celebrity_fraction"] = float(world.get("train_fraction", 0.5))
    if not (data_dir / "manifest.json").is_file():
        log(f"[data] materialising the bioS world in {data_dir}")
        build.materialize(world, data_dir, study.seed)
    build.check_vocab(data_dir, C.model_config(study.model).vocab_size)

    runs: dict[str, dict[str, Any]] = {}
    memo: dict[str, dict[str, float]] = {}
    rendered: dict[str, Any] = {}

    def corpora_of(source: str) -> list[Any]:
        if not rendered:
            w, opts = bios_world(world, study.seed)
            rendered.update(bios_corpora(w, opts, study.seed))
        return rendered[source]

    losses: dict[str, list[tuple[int, float]]] = {}
    probes: dict[str, Any] = {}
    conditions = [(a.name, [{"name": aug_source_name(a.name)}]) for a in augs]
    if study.celebrity:
        conditions.append(("celebrity", celebrity_sources(study, corpora_of)))
    for name, sources in conditions:
        pre_dir = workdir / f"pretrain_{_slug(name)}"
        res = common.run_stage(
            f"pretrain {name}",
            common.stage_config(exp, study.pretrain, sources=sources, data_dir=data_dir),
            pre_dir,
            log,
        )
        losses[f"pretrain {name}"] = [(m["step"], m["loss"]) for m in res.metrics]
        for src in sources:
            label = name if len(sources) == 1 else f"{name}: {src['name']}"
            log(f"[memorisation] first-token accuracy of the {label} training biographies")
            memo[label] = memorisation(pre_dir, corpora_of(src["name"]))
        for rec in study.recipes:
            ft_dir = workdir / f"finetune_{_slug(name)}_{rec.name}"
            res = common.run_stage(
                f"finetune {name} ({rec.name})",
                common.stage_config(
                    exp,
                    rec.stage,
                    sources=[{"name": "qa_train"}],
                    data_dir=data_dir,
                    init_from=pre_dir,
                    lora=rec.lora,
                    trainable="lora" if rec.lora else "all",
                ),
                ft_dir,
                log,
            )
            losses[f"finetune {name} ({rec.name})"] = [(m["step"], m["loss"]) for m in res.metrics]
            log(f"[eval] QA of {name} pretrain + {rec.name} finetune")
            runs[f"pretrain+finetune ({rec.name}) / {name}"] = {
                "recipe": "pretrain+finetune",
                "mode": rec.mode,
                "finetune": rec.name,
                "augmentation": name,
                **evaluate_qa(ft_dir, data_dir, study.eval),
            }
        if study.probing.enabled and name != "celebrity":
            log(f"[probe] P/Q-probing of the {name} pretrained model")
            probes[name] = probe(pre_dir, study, world, corpora_of(sources[0]["name"]))
        if study.mixed is not None and name != "celebrity":
            mix_dir = workdir / f"mixed_{_slug(name)}"
            res = common.run_stage(
                f"mixed {name}",
                common.stage_config(
                    exp,
                    study.mixed,
                    sources=[
                        {"name": sources[0]["name"], "weight": 1.0},
                        {"name": "qa_train", "weight": study.mixed_qa_weight},
                    ],
                    data_dir=data_dir,
                ),
                mix_dir,
                log,
            )
            losses[f"mixed {name}"] = [(m["step"], m["loss"]) for m in res.metrics]
            log(f"[eval] QA of {name} mixed training")
            runs[f"mixed / {name}"] = {
                "recipe": "mixed",
                "mode": "full",
                "augmentation": name,
                **evaluate_qa(mix_dir, data_dir, study.eval),
            }

    results = {
        "experiment": "bios",
        "seed": study.seed,
        "world": {k: v for k, v in world.items()},
        "conditions": runs,
        "memorisation": memo,
        "probing": {k: {p: r.to_dict() for p, r in v.items()} for k, v in probes.items()},
        "paper": PAPER,
        "chance": _chance(data_dir),
        "wall_seconds": time.perf_counter() - t0,
    }
    _write_outputs(workdir, results, probes, losses)
    return results


def celebrity_sources(
    study: BiosStudy, corpora_of: Callable[[str], Sequence[Any]]
) -> list[dict[str, Any]]:
    """Returns the celebrity pretraining's sources: the celebrities' augmented biographies and
    the minority's single ones. Weights draw documents; without `celebrity_minority_weight`
    they are the two corpora's sizes (every biography equally likely, as one corpus), with it
    the minority gets that weight against the celebrities' 1.0 (1.0: half of the biographies
    drawn are the minority's)."""
    weight = study.celebrity_minority_weight
    if weight is None:
        return [
            {"name": n, "weight": float(len(corpora_of(n)))}
            for n in ("bios_celebrity", "bios_minority")
        ]
    return [{"name": "bios_celebrity", "weight": 1.0}, {"name": "bios_minority", "weight": weight}]


def _slug(name: str) -> str:
    return name.replace("+", "_")


def _chance(data_dir: Path) -> dict[str, float]:
    """Returns per-attribute accuracy of always answering the most frequent P_train value."""
    rows = read_jsonl(data_dir / "qa_train.jsonl")
    test = read_jsonl(data_dir / "qa_test.jsonl")
    out = {}
    for a in ATTRIBUTES:
        values = [r["answer"] for r in rows if r["attribute"] == a]
        top = max(set(values), key=values.count)
        t = [r["answer"] for r in test if r["attribute"] == a]
        out[a] = sum(v == top for v in t) / max(1, len(t))
    return out


def report_markdown(results: Mapping[str, Any]) -> str:
    """Returns report.md: QA exact match on P_test per attribute (and P_train), probing at
    the last layer, and the paper's figures."""
    header = ["condition", *ATTRIBUTES, "mean", "P_train mean"]
    rows = []
    for name, r in results["conditions"].items():
        test, train = r["test"], r["train"]
        rows.append(
            [
                name,
                *[test.get(f"em_{a}", float("nan")) for a in ATTRIBUTES],
                test.get("em_attr_mean", test["em"]),
                train.get("em_attr_mean", train["em"]),
            ]
        )
    chance = results["chance"]
    rows.append(
        [
            "majority answer (chance)",
            *[chance[a] for a in ATTRIBUTES],
            float(np.mean(list(chance.values()))),
            "",
        ]
    )
    parts = [
        "# bioS: knowledge storage and extraction",
        "",
        f"World: {results['world'].get('num_people')} people; "
        f"wall time {results['wall_seconds'] / 60:.1f} min.",
        "",
        "## QA exact match (%) on P_test (people whose QA was never trained)",
        "",
        markdown_table(header, rows),
        "",
        "Paper (N = 100,000, GPT-2 small with rotary): mixed training about 86.8 %; BIO "
        "pretrain + QA finetune under 10 % for bioS single, above 90 % for "
        "multi5+permute+fullname.",
    ]
    if results.get("memorisation"):
        parts += [
            "",
            "## Memorisation before the QA finetune: first-token accuracy (%) of "
            "each attribute value in the training biographies",
            "",
        ]
        mrows = [
            [
                cond,
                *[m.get(a, float("nan")) for a in ATTRIBUTES],
                m["mean"],
                m.get("mean_not_sentence_initial", float("nan")),
                m["num_biographies"],
            ]
            for cond, m in results["memorisation"].items()
        ]
        header = ["pretraining", *ATTRIBUTES, "mean", "mean, values inside a sentence"]
        parts.append(markdown_table([*header, "biographies"], mrows))
        parts += [
            "",
            "A value that opens its sentence comes before the words saying which attribute "
            "it is; in a permuted biography its first token is a guess between the attributes "
            "still to come, so the last mean leaves those values out.",
        ]
    if results["probing"]:
        parts += ["", "## Probing accuracy (%) at the last layer", ""]
        prow = []
        for cond, by_kind in results["probing"].items():
            for kind, r in by_kind.items():
                last = str(r["layers"][-1])
                prow.append(
                    [f"{kind} / {cond}", *[r["accuracy"][last][a] for a in r["attributes"]]]
                )
        attrs = next(iter(next(iter(results["probing"].values())).values()))["attributes"]
        parts.append(markdown_table(["probe / pretraining", *attrs], prow))
        parts += ["", "Per-layer curves: plots/probe_*.png."]
    return "\n".join(parts) + "\n"


def _write_outputs(
    workdir: Path,
    results: dict[str, Any],
    probes: Mapping[str, Any],
    losses: Mapping[str, list[tuple[int, float]]],
) -> None:
    from jaxknow.eval.plots import plot_loss_curve

    # The numbers first: a failing plot must not lose a study's results.
    common.write_json(workdir / "results.json", results)
    common.write_text(workdir / "report.md", report_markdown(results))
    plots = workdir / "plots"
    plots.mkdir(exist_ok=True)
    for cond, by_kind in probes.items():
        for kind, r in by_kind.items():
            r.plot(
                plots / f"probe_{kind}_{_slug(cond)}.png", f"{r.kind}-probing, pretrained on {cond}"
            )
    for name, curve in losses.items():
        if curve:
            s, v = zip(*curve)
            plot_loss_curve(
                list(s),
                list(v),
                plots
                / f"loss_{name.replace(' ', '_')}.png".replace("(", "")
                .replace(")", "")
                .replace("+", "_"),
                title=f"training loss: {name}",
            )
