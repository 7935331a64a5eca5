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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxknow import config as C
from jaxknow.data import build
from jaxknow.data.jsonl import read_jsonl
from jaxknow.data.world_builders import aug_source_name, bios_corpora, bios_world
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
class BiosStudy:
    """A parsed bioS study config."""

    seed: int
    world: dict[str, Any]
    model: dict[str, Any]
    mesh: dict[str, Any]
    conditions: tuple[str, ...]
    pretrain: StageConfig
    finetune: StageConfig
    finetune_modes: tuple[str, ...]
    lora: dict[str, Any]
    mixed: StageConfig | None
    mixed_qa_weight: float
    celebrity: bool
    probing: ProbingConfig
    eval: EvalSettings


EXPERIMENT_KEYS = ("experiment", "seed", "world", "model", "mesh", "conditions", "pretrain",
                   "finetune", "finetune_modes", "lora", "mixed", "celebrity", "probing", "eval")


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
    mixed_cfg = dict(cfg.get("mixed") or {})
    mixed_on = mixed_cfg.pop("enabled", False)
    qa_weight = float(mixed_cfg.pop("qa_weight", 1.0))
    world = dict(cfg.get("world") or {})
    if world.get("kind", "bios") != "bios":
        raise C.ConfigError(f"world.kind={world.get('kind')!r}: the bioS study needs 'bios'")
    world["kind"] = "bios"
    C.model_config(cfg.get("model") or {})  # validate early
    return BiosStudy(
        seed=int(cfg.get("seed", 0)),
        world=world,
        model=dict(cfg.get("model") or {}),
        mesh=dict(cfg.get("mesh") or {}),
        conditions=conditions,
        pretrain=C.section(StageConfig, cfg.get("pretrain"), "pretrain"),
        finetune=C.section(StageConfig, cfg.get("finetune"), "finetune"),
        finetune_modes=modes,
        lora=dict(cfg.get("lora") or {"rank": 8, "alpha": 16.0, "targets": ["q", "v"],
                                       "embedding_rank": 8}),
        mixed=C.section(StageConfig, mixed_cfg, "mixed") if mixed_on else None,
        mixed_qa_weight=qa_weight,
        celebrity=bool(cfg.get("celebrity", False)),
        probing=C.section(ProbingConfig, cfg.get("probing"), "probing"),
        eval=C.section(EvalSettings, cfg.get("eval"), "eval"),
    )


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
    subsets = {"test": _qa_rows(data_dir, "test", ev.max_people),
               "train": _qa_rows(data_dir, "train", ev.max_people)}
    return evaluate_subsets(model, subsets, kinds={"test": "free", "train": "free"},
                            few_shot=0, max_new_tokens=ev.max_new_tokens,
                            batch_size=ev.batch_size)


def probe(workdir: Path, study: BiosStudy, world_options: Mapping[str, Any],
          source: str) -> dict[str, Any]:
    """Returns P- and Q-probing results (per layer and attribute) of a pretrained model;
    P-probing reads the model's own training biographies of `source`."""
    from jaxknow.eval import probing

    pc = study.probing
    model = load_model(workdir)
    world, opts = bios_world(world_options, study.seed)
    people = np.arange(min(world.num_people, pc.max_people))
    rng = np.random.default_rng(study.seed)
    rng.shuffle(people)
    half = len(people) // 2
    train_p, test_p = np.sort(people[:half]), np.sort(people[half:])
    out: dict[str, Any] = {}
    kw = dict(steps=pc.steps, lr=pc.lr, embedding_rank=pc.embedding_rank, seed=study.seed,
              birth_date=pc.birth_date)
    if pc.p_probe:
        bios = bios_corpora(world, opts, study.seed)[source]
        first: dict[int, Any] = {}
        for b in bios:  # one biography per probed person (the first rendering)
            first.setdefault(b.person, b)
        chosen = [first[int(p)] for p in people]
        out["p_probe"] = probing.p_probe(model.params, model.cfg, model.tokenizer, world, chosen,
                                         train_p, test_p, **kw)
    if pc.q_probe:
        out["q_probe"] = probing.q_probe(model.params, model.cfg, model.tokenizer, world,
                                         train_p, test_p, **kw)
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
    losses: dict[str, list[tuple[int, float]]] = {}
    probes: dict[str, Any] = {}
    conditions = [(a.name, aug_source_name(a.name)) for a in augs]
    if study.celebrity:
        conditions.append(("celebrity", "bios_celebrity"))
    for name, source in conditions:
        pre_dir = workdir / f"pretrain_{_slug(name)}"
        res = common.run_stage(f"pretrain {name}", common.stage_config(
            exp, study.pretrain, sources=[{"name": source}], data_dir=data_dir), pre_dir, log)
        losses[f"pretrain {name}"] = [(m["step"], m["loss"]) for m in res.metrics]
        for mode in study.finetune_modes:
            ft_dir = workdir / f"finetune_{_slug(name)}_{mode}"
            lora = study.lora if mode == "lora" else None
            res = common.run_stage(f"finetune {name} ({mode})", common.stage_config(
                exp, study.finetune, sources=[{"name": "qa_train"}], data_dir=data_dir,
                init_from=pre_dir, lora=lora, trainable="lora" if lora else "all"), ft_dir, log)
            losses[f"finetune {name} ({mode})"] = [(m["step"], m["loss"]) for m in res.metrics]
            log(f"[eval] QA of {name} pretrain + {mode} finetune")
            runs[f"pretrain+finetune ({mode}) / {name}"] = {
                "recipe": "pretrain+finetune", "mode": mode, "augmentation": name,
                **evaluate_qa(ft_dir, data_dir, study.eval)}
        if study.probing.enabled and name != "celebrity":
            log(f"[probe] P/Q-probing of the {name} pretrained model")
            probes[name] = probe(pre_dir, study, world, source)
        if study.mixed is not None and name != "celebrity":
            mix_dir = workdir / f"mixed_{_slug(name)}"
            res = common.run_stage(f"mixed {name}", common.stage_config(
                exp, study.mixed, sources=[{"name": source, "weight": 1.0},
                                           {"name": "qa_train",
                                            "weight": study.mixed_qa_weight}],
                data_dir=data_dir), mix_dir, log)
            losses[f"mixed {name}"] = [(m["step"], m["loss"]) for m in res.metrics]
            log(f"[eval] QA of {name} mixed training")
            runs[f"mixed / {name}"] = {"recipe": "mixed", "mode": "full", "augmentation": name,
                                       **evaluate_qa(mix_dir, data_dir, study.eval)}

    results = {
        "experiment": "bios",
        "seed": study.seed,
        "world": {k: v for k, v in world.items()},
        "conditions": runs,
        "probing": {k: {p: r.to_dict() for p, r in v.items()} for k, v in probes.items()},
        "paper": PAPER,
        "chance": _chance(data_dir),
        "wall_seconds": time.perf_counter() - t0,
    }
    _write_outputs(workdir, results, probes, losses)
    return results


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
        rows.append([name, *[test.get(f"em_{a}", float("nan")) for a in ATTRIBUTES],
                     test.get("em_attr_mean", test["em"]),
                     train.get("em_attr_mean", train["em"])])
    chance = results["chance"]
    rows.append(["majority answer (chance)", *[chance[a] for a in ATTRIBUTES],
                 float(np.mean(list(chance.values()))), ""])
    parts = [
        "# bioS: knowledge storage and extraction",
        "",
        f"World: {results['world'].get('num_people')} people; "
        f"wall time {results['wall_seconds'] / 60:.1f} min.",
        "",
        "## QA exact match (%) on P_test (people whose QA was never trained)",
        "",
        common.markdown_table(header, rows),
        "",
        "Paper (N = 100,000, GPT-2 small with rotary): mixed training about 86.8 %; BIO "
        "pretrain + QA finetune under 10 % for bioS single, above 90 % for "
        "multi5+permute+fullname.",
    ]
    if results["probing"]:
        parts += ["", "## Probing accuracy (%) at the last layer", ""]
        prow = []
        for cond, by_kind in results["probing"].items():
            for kind, r in by_kind.items():
                last = str(r["layers"][-1])
                prow.append([f"{kind} / {cond}", *[r["accuracy"][last][a]
                                                  for a in r["attributes"]]])
        attrs = next(iter(next(iter(results["probing"].values())).values()))["attributes"]
        parts.append(common.markdown_table(["probe / pretraining", *attrs], prow))
        parts += ["", "Per-layer curves: plots/probe_*.png."]
    return "\n".join(parts) + "\n"


def _write_outputs(workdir: Path, results: dict[str, Any], probes: Mapping[str, Any],
                   losses: Mapping[str, list[tuple[int, float]]]) -> None:
    from jaxknow.eval.plots import plot_loss_curve

    plots = workdir / "plots"
    plots.mkdir(exist_ok=True)
    for cond, by_kind in probes.items():
        for kind, r in by_kind.items():
            r.plot(plots / f"probe_{kind}_{_slug(cond)}.png",
                   f"{r.kind}-probing, pretrained on {cond}")
    for name, curve in losses.items():
        if curve:
            s, v = zip(*curve)
            plot_loss_curve(list(s), list(v), plots / f"loss_{name.replace(' ', '_')}.png"
                            .replace("(", "").replace(")", "").replace("+", "_"),
                            title=f"training loss: {name}")
    common.write_json(workdir / "results.json", results)
    common.write_text(workdir / "report.md", report_markdown(results))
