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
import functools
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jaxknow import config as C
from jaxknow.data import build
from jaxknow.data.jsonl import read_jsonl
from jaxknow.eval.probing import ProbeSettings
from jaxknow.eval.tables import markdown_table
from jaxknow.experiments import common
from jaxknow.experiments.common import StageConfig
from jaxknow.io.load import load_model
from jaxknow.model.config import ModelConfig
from jaxknow.model.lora import LoraConfig
from jaxknow.studies.bios import probing as bios_probing
from jaxknow.studies.bios.corpus import aug_source_name, bios_corpora, bios_world
from jaxknow.studies.bios.leakage import check_no_leak
from jaxknow.studies.bios.world import ATTRIBUTES, Augmentation
from jaxknow.train.setup import RunSpec, check_workdir

# The paper's figures (Allen-Zhu & Li 2023, bioS, GPT-2 small with rotary, N = 100,000).
# multi5+permute+fullname there is 5 renderings per person, no re-draws.
PAPER = {
    "mixed training (bioS single)": 0.866,
    "BIO pretrain + QA finetune, bioS single": "< 0.10",
    "BIO pretrain + QA finetune, multi5+permute+fullname": "> 0.90",
    "celebrity -> minority (P_test single biographies)": 0.868,
}

#: The source every QA finetune trains on, and the QA share of mixed training.
QA_SOURCE = "qa_train"


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
    # Probe the birth year (a full date has too many classes).
    birth_date: bios_probing.BirthDatePart = "year"


@dataclasses.dataclass(frozen=True)
class BiosEvalSettings:
    """How QA accuracy and memorisation are measured (the study's `eval` section)."""

    max_new_tokens: int = 24
    batch_size: int = 64
    max_people: int | None = None  # evaluate on at most this many people per split
    # Memorisation of the training biographies: first-token accuracy over at most this many
    # biographies, whole-value recall (greedy generation of each value) over at most that many.
    memorisation_bios: int = 2000
    whole_value_bios: int = 500
    # Evaluation during training (a stage's eval_every > 0): P_train and P_test QA exact match
    # (one question per person, attributes in turn) and memorisation of this many people's
    # biographies, the same people at every evaluation.
    during_training_people: int = 50


@dataclasses.dataclass(frozen=True)
class MixedStage(StageConfig):
    """Mixed training: biographies and P_train QA in one mixture, from scratch."""

    enabled: bool = False
    qa_weight: float = 1.0  # the QA source's weight against the biographies' 1.0


@dataclasses.dataclass(frozen=True)
class FinetuneRecipe(StageConfig):
    """One QA finetune of every pretrained model: its name (the stage directory and the
    results row), full or LoRA, its stage settings (the study's `finetune` section with the
    recipe's overrides) and, for LoRA, the study's `lora` section with the recipe's."""

    name: str = dataclasses.field(kw_only=True)
    mode: common.FinetuneMode = "full"
    lora: LoraConfig | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.name or "/" in self.name:
            raise ValueError(f"name={self.name!r}: a non-empty name without '/'")


@dataclasses.dataclass(frozen=True)
class BiosStudy:
    """A bioS study config, typed (`parse_study`): every key of the config file is a field.

    Derived on construction: `augmentations` and `redraws` (from the condition names, checked
    against `world.redraws`) and `recipes` (the QA finetunes)."""

    experiment: Literal["bios"] = "bios"
    seed: int = 0
    world: dict[str, Any] = dataclasses.field(default_factory=dict)  # kind "bios"
    model: ModelConfig = ModelConfig()
    mesh: C.MeshConfig = C.MeshConfig()
    # The pretraining corpora: augmentation names, optionally with draws ("multi5x10+...").
    conditions: tuple[str, ...] = ()
    pretrain: StageConfig = StageConfig()
    finetune: StageConfig = StageConfig()
    finetune_modes: tuple[common.FinetuneMode, ...] = ("full",)
    # The QA finetunes (default: one per finetune mode, named after it): each {"name",
    # "mode", `finetune` overrides..., "lora": `lora` overrides}.
    finetune_recipes: tuple[dict[str, Any], ...] = ()
    lora: LoraConfig = LoraConfig(rank=8, alpha=16.0, targets=("q", "v"), embedding_rank=8)
    mixed: MixedStage = MixedStage()
    # False: no plain pretraining, memorisation or QA finetune of the conditions, only their
    # mixed training (the mixed-training scale curve's points).
    pretrain_finetune: bool = True
    celebrity: bool = False
    celebrity_minority_weight: float | None = None
    probing: ProbingConfig = ProbingConfig()
    eval: BiosEvalSettings = BiosEvalSettings()
    # Derived (not config keys).
    augmentations: tuple[str, ...] = dataclasses.field(init=False)
    redraws: int | None = dataclasses.field(init=False)  # named by a condition, else None
    recipes: tuple[FinetuneRecipe, ...] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        settle = functools.partial(object.__setattr__, self)
        if not self.conditions:
            raise ValueError("conditions: list at least one augmentation, e.g. 'single'")
        if not self.finetune_modes:
            raise ValueError("finetune_modes: list at least one of 'full', 'lora'")
        if self.world.get("kind", "bios") != "bios":
            raise ValueError(f"world.kind={self.world.get('kind')!r}: the bioS study needs 'bios'")
        parsed = []
        for c in self.conditions:
            try:
                parsed.append(parse_condition(c))
            except ValueError as e:
                raise ValueError(f"conditions: {e}") from None
        world_draws, named = self.world.get("redraws"), None
        for (aug, draws), name in zip(parsed, self.conditions):
            if aug.name == "single":
                continue
            have = 1 if world_draws is None else world_draws
            if draws is None and have != 1:
                raise ValueError(
                    f"conditions: {name!r} names no draws but world.redraws={have}: write "
                    f"{condition_name(aug, have)!r} (or set world.redraws=1 for the paper's "
                    f"{aug.name!r})"
                )
            if draws is not None and world_draws is not None and draws != world_draws:
                raise ValueError(
                    f"conditions: {name!r} needs world.redraws={draws}, not {world_draws}; one "
                    f"world has one number of draws: run the others as another study"
                )
            if draws is not None:
                world_draws = named = draws
        w = self.celebrity_minority_weight
        if w is not None and not w > 0:
            raise ValueError(f"celebrity_minority_weight={w!r}: must be a positive number or None")
        if not self.pretrain_finetune and not self.mixed.enabled:
            raise ValueError(
                "pretrain_finetune=False leaves only mixed training: set mixed.enabled=True"
            )
        if not self.pretrain_finetune and self.celebrity:
            raise ValueError("celebrity=True needs pretrain_finetune=True (it is a pretraining)")
        settle("augmentations", tuple(a.name for a, _ in parsed))
        settle("redraws", named)
        settle("recipes", self._recipes())

    def _recipes(self) -> tuple[FinetuneRecipe, ...]:
        """Returns the QA finetunes: `finetune_recipes` parsed from the `finetune` section
        and the `lora` section, or one per finetune mode."""
        stage = C.field_values(self.finetune)
        if not self.finetune_recipes:
            return tuple(
                FinetuneRecipe(**stage, name=m, mode=m, lora=self.lora if m == "lora" else None)
                for m in self.finetune_modes
            )
        out: list[FinetuneRecipe] = []
        for i, raw in enumerate(self.finetune_recipes):
            where = f"finetune_recipes[{i}]"
            rec = C.parse(FinetuneRecipe, raw, where, defaults={**stage, "lora": self.lora})
            if rec.name in {r.name for r in out}:
                raise C.ConfigError(f"{where}.name={rec.name!r}: repeated")
            out.append(dataclasses.replace(rec, lora=rec.lora if rec.mode == "lora" else None))
        return tuple(out)


def parse_study(config: Any) -> BiosStudy:
    """Returns the typed study of a config (a ConfigDict or a plain mapping); raises
    ConfigError naming the first bad field."""
    return C.parse(BiosStudy, C.to_plain(config))


def _qa_rows(data_dir: Path, split: str, max_people: int | None) -> list[dict[str, Any]]:
    rows = read_jsonl(data_dir / f"qa_{split}.jsonl", required=("question", "answer"))
    if max_people is not None:
        keep = sorted({r["person"] for r in rows})[:max_people]
        keep_set = set(keep)
        rows = [r for r in rows if r["person"] in keep_set]
    return rows


def evaluate_qa(workdir: Path, data_dir: Path, ev: BiosEvalSettings) -> dict[str, dict[str, float]]:
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


def _tokenize_bios(
    tok: Any, bios: Sequence[Any]
) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Returns each biography's token ids (after the tokenizer's prefix) and the [first, end)
    token span of each of its attribute values (sentence order)."""
    from jaxknow.eval.memorisation import value_token_span

    pre = tok.prefix()
    seqs, spans = [], []
    for b in bios:
        enc = tok.tok.encode(b.text, add_special_tokens=False)
        seqs.append(pre + list(enc.ids))
        spans.append(
            [
                tuple(
                    len(pre) + t for t in value_token_span(enc.offsets, s.value_start, s.value_end)
                )
                for s in b.sentences
            ]
        )
    return seqs, spans


def value_extensions(tok: Any, values: Sequence[str]) -> dict[tuple[int, ...], frozenset[int]]:
    """Returns `memorisation.extension_table` of every attribute value, tokenized as inside a
    sentence (" " + value) and as opening one."""
    from jaxknow.eval.memorisation import extension_table

    texts = [t for v in values for t in (" " + v, v)]
    encs = tok.tok.encode_batch(texts, add_special_tokens=False)
    return extension_table([e.ids for e in encs])


def _spaced(items: Sequence[Any], n: int) -> list[Any]:
    """Returns at most `n` evenly spaced items of `items`."""
    step = max(1, -(-len(items) // max(1, n)))
    return list(items)[::step]


def memorisation_scores(
    params: Any,
    cfg: Any,
    tok: Any,
    bios: Sequence[Any],
    *,
    first_bios: int,
    whole_bios: int,
    extensions: Mapping[tuple[int, ...], frozenset[int]] | None,
    batch_size: int = 64,
) -> dict[str, float]:
    """Returns first-token accuracy (per attribute, "mean", "mean_not_sentence_initial": see
    `memorisation_summary`) over at most `first_bios` biographies and whole-value recall
    ("whole_<attribute>", "whole_mean": greedy generation after the biography's own text up to
    the value reproduces the whole value, `memorisation.whole_value_hits`) over at most
    `whole_bios`, both evenly spaced over `bios`, with the seconds each took."""
    from jaxknow.eval.generate import make_stop_table, newline_stop_table
    from jaxknow.eval.memorisation import next_token_hits, whole_value_hits

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    chosen = _spaced(bios, first_bios)
    seqs, spans = _tokenize_bios(tok, chosen)
    hits = next_token_hits(
        params, cfg, seqs, [[j for j, _ in sp] for sp in spans], batch_size=batch_size
    )
    out.update(memorisation_summary([h.tolist() for h in hits], [b.sentences for b in chosen]))
    out["num_biographies"] = len(chosen)
    out["seconds_first_token"] = time.perf_counter() - t0
    if whole_bios > 0:
        t0 = time.perf_counter()
        chosen = _spaced(bios, whole_bios)
        seqs, spans = _tokenize_bios(tok, chosen)
        stops = make_stop_table(
            cfg.vocab_size, (tok.eos_id,), newline_stop_table(tok, cfg.vocab_size)
        )
        whole = whole_value_hits(
            params,
            cfg,
            seqs,
            spans,
            extensions=dict(extensions or {}),
            stop_table=stops,
            batch_size=batch_size,
        )
        summary = memorisation_summary([h.tolist() for h in whole], [b.sentences for b in chosen])
        out.update({f"whole_{k}": v for k, v in summary.items() if k in (*ATTRIBUTES, "mean")})
        out["whole_num_biographies"] = len(chosen)
        out["seconds_whole_value"] = time.perf_counter() - t0
    return out


def memorisation(
    workdir: Path,
    bios: Sequence[Any],
    ev: BiosEvalSettings = BiosEvalSettings(),
    values: Sequence[str] = (),
) -> dict[str, float]:
    """Returns the pretrained model's memorisation of its training biographies
    (`memorisation_scores`: first-token accuracy of every attribute value and whole-value
    recall); `values` (every attribute value of the world) says which values extend others."""
    model = load_model(workdir)
    return memorisation_scores(
        model.params,
        model.cfg,
        model.tokenizer,
        bios,
        first_bios=ev.memorisation_bios,
        whole_bios=ev.whole_value_bios,
        extensions=value_extensions(model.tokenizer, values) if values else None,
        batch_size=ev.batch_size,
    )


def probe(
    workdir: Path, study: BiosStudy, world_options: Mapping[str, Any], bios: Sequence[Any]
) -> dict[str, Any]:
    """Returns P- and Q-probing results (per layer and attribute) of a pretrained model;
    P-probing reads the model's own training biographies `bios` (the first of each person)."""
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


def parse_condition(text: str) -> tuple[Augmentation, int | None]:
    """Returns (augmentation, draws) of a condition name: an augmentation name, optionally
    with the number of independent draws after the biographies per person
    ("multi5x10+permute+fullname" -> multi5+permute+fullname, 10; "multi5+permute" -> None
    draws named). Raises ValueError on a bad name."""
    m = re.match(r"^\s*multi(\d+)x(\d+)(?=\+|\s*$)", text) if isinstance(text, str) else None
    if m is None:
        return Augmentation.parse(text), None
    draws = int(m.group(2))
    if draws < 1:
        raise ValueError(f"draws must be >= 1 in {text!r}")
    return Augmentation.parse(f"multi{m.group(1)}" + text[m.end() :]), draws


def condition_name(aug: Augmentation, redraws: int = 1) -> str:
    """Returns the exact name of a pretraining corpus: the augmentation's name, with the
    number of independent draws after the biographies per person when the corpus is re-drawn
    ("multi5x10+permute+fullname": 5 biographies x 10 draws = 50 renderings per person).
    "single" is never re-drawn; "multi5+permute+fullname" is the paper's (5 renderings)."""
    if aug.name == "single" or redraws <= 1:
        return aug.name
    parts = [f"multi{aug.multi}x{redraws}"]
    parts += [p for p in ("permute", "fullname") if getattr(aug, p)]
    return "+".join(parts)


def renderings_per_person(aug: Augmentation, redraws: int = 1) -> int:
    """Returns how many different biographies of each person a corpus holds."""
    return aug.multi * (1 if aug.name == "single" else redraws)


@dataclasses.dataclass(frozen=True)
class Pretraining:
    """One pretraining of the study: `key` names its stage directories (stable across
    versions), `label` is the exact name readers see (`condition_name`), `sources` the
    corpora it trains on with the renderings per person of each."""

    key: str
    label: str
    sources: tuple[str, ...]
    renderings: Mapping[str, int]


def pretrainings(study: BiosStudy, world: Mapping[str, Any]) -> list[Pretraining]:
    """Returns the study's pretrainings: one per condition, then the celebrity one."""
    redraws = int(world.get("redraws", 1))
    out = []
    for c in study.augmentations:
        aug = Augmentation.parse(c)
        src = aug_source_name(aug.name)
        out.append(
            Pretraining(
                aug.name,
                condition_name(aug, redraws),
                (src,),
                {src: renderings_per_person(aug, redraws)},
            )
        )
    if study.celebrity:
        caug = Augmentation.parse(
            str(world.get("celebrity_augmentation", "multi5+permute+fullname"))
        )
        out.append(
            Pretraining(
                "celebrity",
                f"celebrity (P_train {condition_name(caug, redraws)}, P_test single)",
                ("bios_celebrity", "bios_minority"),
                {"bios_celebrity": renderings_per_person(caug, redraws), "bios_minority": 1},
            )
        )
    return out


def training_sources(study: BiosStudy, world: Mapping[str, Any]) -> dict[str, list[str]]:
    """Returns stage -> the sources it trains on, for every stage the study runs (the stages
    are built from the same `pretrainings` and `QA_SOURCE`, so the leakage guard checks what
    is trained on)."""
    out: dict[str, list[str]] = {}
    for p in pretrainings(study, world):
        if study.pretrain_finetune:
            out[f"pretrain {p.label}"] = list(p.sources)
            for rec in study.recipes:
                out[f"finetune {p.label} ({rec.name})"] = [QA_SOURCE]
        if study.mixed.enabled and p.key != "celebrity":
            out[f"mixed {p.label}"] = [p.sources[0], QA_SOURCE]
    return out


def check_leakage(study: BiosStudy, world: Mapping[str, Any], data_dir: Path) -> None:
    """Refuses the study (LeakageError naming the source, row and person) if any source a
    stage trains on holds a question about a P_test person (`leakage.check_no_leak`)."""
    people = read_jsonl(data_dir / "people.jsonl")
    test_names = {r["name"]: int(r["person"]) for r in people if r["split"] == "test"}
    names = sorted({s for srcs in training_sources(study, world).values() for s in srcs})
    check_no_leak({n: read_jsonl(data_dir / f"{n}.jsonl") for n in names}, test_names)


def exposures(
    data_dir: Path, stage: StageConfig, sources: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, float]]:
    """Returns, per source of a stage, its corpus tokens, the training tokens it gets (the
    stage's steps x batch x sequence length, shared by document weight x mean document
    length) and their ratio: how many times each document (rendering) is seen."""
    index = {s["name"]: json.loads((data_dir / f"{s['name']}.json").read_text()) for s in sources}
    total = stage.steps * stage.batch_size * stage.seq_len
    share = {
        s["name"]: float(s.get("weight", 1.0))
        * index[s["name"]]["num_tokens"]
        / max(1, index[s["name"]]["num_docs"])
        for s in sources
    }
    norm = sum(share.values()) or 1.0
    out = {}
    for name, sh in share.items():
        tokens = index[name]["num_tokens"]
        trained = total * sh / norm
        out[name] = {
            "corpus_tokens": tokens,
            "training_tokens": trained,
            "exposures_per_rendering": trained / max(1, tokens),
        }
    return out


def training_evaluator(
    data_dir: Path,
    study: BiosStudy,
    bios: Sequence[Any] | None,
    qa: bool,
    extensions: Mapping[tuple[int, ...], frozenset[int]] | None,
) -> Callable[[int, Any, Any], dict[str, float]]:
    """Returns the evaluation run during a stage (`train.eval_every`): memorisation of
    `bios` (first token and whole value, `during_training_people` biographies, when given)
    and, with `qa`, P_train and P_test QA exact match on one question per person for
    `during_training_people` people of each split. The samples are fixed."""
    from jaxknow.data.tokenizer import load_tokenizer
    from jaxknow.eval.tasks import evaluate_subsets

    ev = study.eval
    n = ev.during_training_people
    tok = load_tokenizer(data_dir / "tokenizer.json")
    subsets: dict[str, list[dict[str, Any]]] = {}
    if qa:
        for split in ("train", "test"):
            rows = _qa_rows(data_dir, split, n)
            people = sorted({r["person"] for r in rows})
            turn = {p: ATTRIBUTES[k % len(ATTRIBUTES)] for k, p in enumerate(people)}
            subsets[f"qa_{split}"] = [r for r in rows if r["attribute"] == turn[r["person"]]]
    sample = _spaced(list({b.person: b for b in bios}.values()), n) if bios else []

    def evaluate(step: int, params: Any, cfg: Any) -> dict[str, float]:
        del step
        out: dict[str, float] = {}
        if subsets:
            res = evaluate_subsets(
                (params, cfg, tok),
                subsets,
                kinds=dict.fromkeys(subsets, "free"),
                few_shot=0,
                max_new_tokens=ev.max_new_tokens,
                batch_size=ev.batch_size,
            )
            out.update({f"{k}_em": v["em"] for k, v in res.items()})
        if sample:
            m = memorisation_scores(
                params,
                cfg,
                tok,
                sample,
                first_bios=len(sample),
                whole_bios=len(sample),
                extensions=extensions,
                batch_size=ev.batch_size,
            )
            out["memorisation_first_token"] = m["mean"]
            out["memorisation_whole_value"] = m["whole_mean"]
        return out

    return evaluate


def study_world(study: BiosStudy) -> dict[str, Any]:
    """Returns the bioS world description the study materialises (its conditions as the
    augmentations; the celebrity split when the study has one)."""
    world = dict(study.world)
    if study.redraws is not None:
        world["redraws"] = study.redraws
    world["kind"] = "bios"
    world["augmentations"] = list(study.augmentations)
    if study.celebrity:
        world["celebrity_fraction"] = float(world.get("train_fraction", 0.5))
    return world


def run_bios_study(config: Any, workdir: str | Path, log: Any = print) -> dict[str, Any]:
    """Runs (or resumes) the whole study in `workdir`; returns the results dict that is also
    written to results.json (with report.md and plots/). Refuses to train (LeakageError) if a
    question about a P_test person reaches any training source."""
    study = parse_study(config)
    workdir = check_workdir(workdir)
    t0 = time.perf_counter()
    data_dir = workdir / "data"
    world = study_world(study)
    if not (data_dir / "manifest.json").is_file():
        log(f"[data] materialising the bioS world in {data_dir}")
        build.materialize(world, data_dir, study.seed)
    build.check_vocab(data_dir, study.model.vocab_size)
    log("[data] leakage guard: no question about a P_test person in any training source")
    check_leakage(study, world, data_dir)

    runs: dict[str, dict[str, Any]] = {}
    memo: dict[str, dict[str, float]] = {}
    rendered: dict[str, Any] = {}
    cache: dict[str, Any] = {}

    def corpora_of(source: str) -> list[Any]:
        if not rendered:
            w, opts = bios_world(world, study.seed)
            rendered.update(bios_corpora(w, opts, study.seed))
            cache["values"] = [v for vals in w.attribute_values.values() for v in vals]
        return rendered[source]

    def values() -> list[str]:
        corpora_of(plan[0].sources[0])  # renders the world once
        return cache["values"]

    def extensions() -> Mapping[tuple[int, ...], frozenset[int]]:
        if "ext" not in cache:
            from jaxknow.data.tokenizer import load_tokenizer

            tok = load_tokenizer(data_dir / "tokenizer.json")
            cache["ext"] = value_extensions(tok, values())
        return cache["ext"]

    def evaluator(stage: StageConfig, bios_source: str | None, qa: bool) -> Any:
        if stage.eval_every <= 0:
            return None
        bios = corpora_of(bios_source) if bios_source else None
        return training_evaluator(data_dir, study, bios, qa, extensions())

    losses: dict[str, list[tuple[int, float]]] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    eval_share: dict[str, dict[str, float]] = {}
    probes: dict[str, Any] = {}
    pre_info: dict[str, dict[str, Any]] = {}

    def run(stage: StageConfig, sources: Sequence[Mapping[str, Any]], **kw: Any) -> RunSpec:
        return common.stage_spec(
            study.model,
            study.mesh,
            stage,
            seed=study.seed,
            sources=sources,
            data_dir=data_dir,
            **kw,
        )

    def stage(name: str, spec: RunSpec, directory: Path, evaluate: Any) -> Any:
        t = time.perf_counter()
        res = common.run_stage(name, spec, directory, log, evaluate=evaluate)
        losses[name] = [(m["step"], m["loss"]) for m in res.metrics]
        if res.eval_metrics:
            curves[name] = res.eval_metrics
        if res.eval_seconds:
            wall = time.perf_counter() - t
            eval_share[name] = {
                "eval_seconds": res.eval_seconds,
                "stage_seconds": wall,
                "share": res.eval_seconds / wall,
            }
        return res

    plan = pretrainings(study, world)
    for p in plan:
        if study.pretrain_finetune:
            if p.key == "celebrity":
                sources = celebrity_sources(study, corpora_of)
            else:
                sources = [{"name": p.sources[0]}]
            expo = exposures(data_dir, study.pretrain, sources)
            pre_info[p.label] = {
                "augmentation": p.key,
                "sources": {
                    s: {"renderings_per_person": p.renderings[s], **expo[s]} for s in p.sources
                },
                "renderings_per_person": p.renderings[p.sources[0]],
                "exposures_per_rendering": expo[p.sources[0]]["exposures_per_rendering"],
            }
            pre_dir = workdir / f"pretrain_{_slug(p.key)}"
            stage(
                f"pretrain {p.label}",
                run(study.pretrain, sources),
                pre_dir,
                evaluator(study.pretrain, p.sources[0], qa=False),
            )
            for src in p.sources:
                label = p.label if len(p.sources) == 1 else f"{p.label}: {src}"
                log(f"[memorisation] first-token and whole-value recall of the {label} biographies")
                memo[label] = memorisation(pre_dir, corpora_of(src), study.eval, values())
            size = {
                "renderings_per_person": pre_info[p.label]["renderings_per_person"],
                "exposures_per_rendering": pre_info[p.label]["exposures_per_rendering"],
            }
            for rec in study.recipes:
                ft_dir = workdir / f"finetune_{_slug(p.key)}_{rec.name}"
                stage(
                    f"finetune {p.label} ({rec.name})",
                    run(
                        rec,
                        [{"name": QA_SOURCE}],
                        init_from=pre_dir,
                        lora=rec.lora,
                        trainable="lora" if rec.lora else "all",
                    ),
                    ft_dir,
                    evaluator(rec, None, qa=True),
                )
                log(f"[eval] QA of {p.label} pretrain + {rec.name} finetune")
                runs[f"pretrain+finetune ({rec.name}) / {p.label}"] = {
                    "recipe": "pretrain+finetune",
                    "mode": rec.mode,
                    "finetune": rec.name,
                    "augmentation": p.label,
                    **size,
                    **evaluate_qa(ft_dir, data_dir, study.eval),
                }
            if study.probing.enabled and p.key != "celebrity":
                log(f"[probe] P/Q-probing of the {p.label} pretrained model")
                probes[p.label] = probe(pre_dir, study, world, corpora_of(p.sources[0]))
        if study.mixed.enabled and p.key != "celebrity":
            mix_dir = workdir / f"mixed_{_slug(p.key)}"
            mix_sources = [
                {"name": p.sources[0], "weight": 1.0},
                {"name": QA_SOURCE, "weight": study.mixed.qa_weight},
            ]
            mexpo = exposures(data_dir, study.mixed, mix_sources)[p.sources[0]]
            stage(
                f"mixed {p.label}",
                run(study.mixed, mix_sources),
                mix_dir,
                evaluator(study.mixed, p.sources[0], qa=True),
            )
            log(f"[eval] QA of {p.label} mixed training")
            runs[f"mixed / {p.label}"] = {
                "recipe": "mixed",
                "mode": "full",
                "augmentation": p.label,
                "renderings_per_person": p.renderings[p.sources[0]],
                "exposures_per_rendering": mexpo["exposures_per_rendering"],
                **evaluate_qa(mix_dir, data_dir, study.eval),
            }
            log(f"[memorisation] whole-value recall of the {p.label} biographies, mixed")
            memo[f"mixed / {p.label}"] = memorisation(
                mix_dir, corpora_of(p.sources[0]), study.eval, values()
            )

    results = {
        "experiment": "bios",
        "seed": study.seed,
        "world": {k: v for k, v in world.items()},
        "pretraining": pre_info,
        "conditions": runs,
        "memorisation": memo,
        "probing": {k: {p: r.to_dict() for p, r in v.items()} for k, v in probes.items()},
        "learning_curves": curves,
        "eval_during_training": eval_share,
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


def _file_slug(name: str) -> str:
    """Returns a file-name part for a condition or stage label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _count(x: float | None) -> str:
    """Returns an exposure count as text ("" when unknown)."""
    return "" if x is None else f"{x:.1f}"


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
    header = [
        "condition",
        "renderings / person",
        "exposures / rendering",
        *ATTRIBUTES,
        "mean",
        "P_train mean",
    ]
    rows = []
    for name, r in results["conditions"].items():
        test, train = r["test"], r["train"]
        rows.append(
            [
                name,
                str(r.get("renderings_per_person", "")),
                _count(r.get("exposures_per_rendering")),
                *[test.get(f"em_{a}", float("nan")) for a in ATTRIBUTES],
                test.get("em_attr_mean", test["em"]),
                train.get("em_attr_mean", train["em"]),
            ]
        )
    chance = results["chance"]
    rows.append(
        [
            "majority answer (chance)",
            "",
            "",
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
        "Paper (N = 100,000, GPT-2 small with rotary): mixed training on bioS single "
        "86.6 %; BIO pretrain + QA finetune under 10 % for bioS single, above 90 % for "
        "multi5+permute+fullname (5 renderings per person, no re-draws); celebrity -> "
        "minority 86.8 %. A name `multiMxR` is M biographies per person drawn R times "
        "independently (M x R renderings per person); exposures per rendering = the "
        "training tokens a corpus gets / its tokens.",
    ]
    if results.get("pretraining"):
        parts += ["", "## Pretraining corpora", ""]
        prow = [
            [
                f"{label}: {src}" if len(info["sources"]) > 1 else label,
                str(s["renderings_per_person"]),
                f"{s['corpus_tokens']:,}",
                f"{s['training_tokens']:,.0f}",
                _count(s["exposures_per_rendering"]),
            ]
            for label, info in results["pretraining"].items()
            for src, s in info["sources"].items()
        ]
        parts.append(
            markdown_table(
                [
                    "pretraining",
                    "renderings / person",
                    "corpus tokens",
                    "training tokens",
                    "exposures / rendering",
                ],
                prow,
                cell=str,
            )
        )
    if results.get("memorisation") and any(
        "whole_mean" in m for m in results["memorisation"].values()
    ):
        parts += [
            "",
            "## Memorisation before the QA finetune: whole-value recall (%) of each attribute "
            "value in the training biographies",
            "",
            "Greedy generation after the biography's own text up to the value must reproduce "
            "the whole value (and not run on into a longer one); the first-token mean is "
            "beside it.",
            "",
        ]
        wrows = [
            [
                cond,
                *[m.get(f"whole_{a}", float("nan")) for a in ATTRIBUTES],
                m.get("whole_mean", float("nan")),
                m["mean"],
                str(m.get("whole_num_biographies", "")),
                f"{m.get('seconds_whole_value', float('nan')):.1f}",
            ]
            for cond, m in results["memorisation"].items()
        ]
        parts.append(
            markdown_table(
                [
                    "pretraining",
                    *ATTRIBUTES,
                    "whole-value mean",
                    "first-token mean",
                    "biographies",
                    "seconds",
                ],
                wrows,
            )
        )
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
    if results.get("learning_curves"):
        parts += [
            "",
            "## Learning curves (evaluation during training)",
            "",
            "Every `eval_every` steps: QA exact match on fixed samples of P_train and P_test "
            "(one question per person) and memorisation (first token, whole value) of a "
            "fixed sample of training biographies; plots/curve_*.png.",
            "",
        ]
        lrow = []
        for name, rows in results["learning_curves"].items():
            share = results.get("eval_during_training", {}).get(name, {})
            last = rows[-1]
            scalars = ", ".join(
                f"{k.removeprefix('eval/')} {100 * v:.1f}"
                for k, v in last.items()
                if k.startswith("eval/") and k != "eval/seconds"
            )
            lrow.append(
                [
                    name,
                    str(len(rows)),
                    scalars,
                    f"{100 * share.get('share', float('nan')):.1f} %",
                ]
            )
        parts.append(
            markdown_table(
                ["stage", "evaluations", "last (%)", "eval's share of the stage's time"],
                lrow,
                cell=str,
            )
        )
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
    from jaxknow.eval.plots import plot_loss_curve, plot_per_layer

    # The numbers first: a failing plot must not lose a study's results.
    common.write_json(workdir / "results.json", results)
    common.write_text(workdir / "report.md", report_markdown(results))
    plots = workdir / "plots"
    plots.mkdir(exist_ok=True)
    for cond, by_kind in probes.items():
        for kind, r in by_kind.items():
            r.plot(
                plots / f"probe_{kind}_{_file_slug(cond)}.png",
                f"{r.kind}-probing, pretrained on {cond}",
            )
    for name, rows in results.get("learning_curves", {}).items():
        keys = sorted({k for r in rows for k in r if k.startswith("eval/")} - {"eval/seconds"})
        series = {k.removeprefix("eval/"): [r.get(k, float("nan")) for r in rows] for k in keys}
        if series:
            plot_per_layer(
                series,
                plots / f"curve_{_file_slug(name)}.png",
                title=f"during training: {name}",
                xlabel="step",
                x=[r["step"] for r in rows],
                ylim=(0.0, 1.0),
            )
    for name, curve in losses.items():
        if curve:
            s, v = zip(*curve)
            plot_loss_curve(
                list(s),
                list(v),
                plots / f"loss_{_file_slug(name)}.png",
                title=f"training loss: {name}",
            )
