"""Every shipped config parses and names a valid model, stages and world — so a typo in a
paper-scale config fails here, not hours into a run."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from pathlib import Path

import pytest

from jaxknow import config as C
from jaxknow.config import ConfigError
from jaxknow.data import world_builders as wb
from jaxknow.data.build import MaterializeConfig
from jaxknow.eval.tasks import EvaluationConfig
from jaxknow.experiments import common
from jaxknow.model.lora import LoraConfig
from jaxknow.studies.bios import study as bios_study
from jaxknow.studies.cooccurrence import study as cooc_study
from jaxknow.train.setup import parse_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load(rel: str):
    """Returns get_config() of a config under configs/ ("bios/tiny"; "bios/mixed_scale:1000"
    passes its argument, as launch's --config=FILE.py:ARG does)."""
    rel, _, arg = rel.partition(":")
    get_config = importlib.import_module("configs." + rel.replace("/", ".")).get_config
    return get_config(arg) if arg else get_config()


def shipped_configs() -> list[str]:
    """Returns every config file under configs/ (all but packages and the preset helper)."""
    return sorted(
        p.relative_to(CONFIGS).with_suffix("").as_posix()
        for p in CONFIGS.rglob("*.py")
        if p.stem not in ("__init__", "presets")
    )


def parse_as_its_consumer_does(config) -> object:
    """Returns the typed config its entry point builds: a study (by `experiment`), an
    evaluation (`launch.evaluate`), a training run (`launch.train`) or a world
    (`launch.data`)."""
    values = C.to_plain(config)
    studies = {"bios": bios_study.parse_study, "cooccurrence": cooc_study.parse_study}
    if "experiment" in values:
        return studies[values["experiment"]](values)
    if "eval" in values:
        return C.parse(EvaluationConfig, values)
    if "model" in values:
        return parse_run_config(values)
    return C.parse(MaterializeConfig, values)


# The scale configs' FILE.py:N forms run scale_people on the parsed study.
SCALE_FORMS = [
    "bios/mixed_scale:1000",
    "bios/celebrity_scale:1000",
    "bios/probe_scale:1000",
    "bios/probe_scale:6000,2/3",
]


@pytest.mark.parametrize("name", shipped_configs() + SCALE_FORMS)
def test_every_shipped_config_parses_as_its_entry_point_parses_it(name):
    assert dataclasses.is_dataclass(parse_as_its_consumer_does(load(name)))


def test_the_config_walk_reaches_every_kind_of_config():
    kinds = {
        "smoke",
        "bios/tiny",
        "cooccurrence/tiny",
        "eval/bios_qa",
        "worlds/bios",
        "hf/finetune_lora",
    }
    assert kinds <= set(shipped_configs())


def experiment_configs(kind: str) -> list[str]:
    return sorted(f"{kind}/{p.stem}" for p in (CONFIGS / kind).glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", experiment_configs("bios"))
def test_bios_study_configs_parse(name):
    cfg = load(name)
    study = bios_study.parse_study(cfg)
    wb.check_world(bios_study.study_world(study))
    assert study.conditions and study.pretrain.steps > 0
    # The typed study is plain data again: parsing its plain form gives the same study.
    assert bios_study.parse_study(C.to_plain(study)) == study


@pytest.mark.parametrize("name", experiment_configs("cooccurrence"))
def test_cooccurrence_study_configs_parse(name):
    cfg = load(name)
    study = cooc_study.parse_study(cfg)
    wb.check_world(dict(cfg.world))
    assert study.seeds and study.renderings
    assert cooc_study.parse_study(C.to_plain(study)) == study


@pytest.mark.parametrize("name", ["smoke", "hf/finetune_full", "hf/finetune_lora"])
def test_training_configs_parse(name):
    spec = parse_run_config(load(name))
    assert spec.train.steps > 0
    # config.json records C.to_plain(spec): it parses back to the same run.
    assert parse_run_config(C.to_plain(spec)) == spec


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("lr", -1.0, r"^pretrain.lr=-1.0: must be positive$"),
        ("lr", "abc", r"^pretrain.lr: expected a float, got 'abc'$"),
        ("b2", 1.0, r"^pretrain.b2=1.0: must be in \[0, 1\)$"),
        ("eps", 0.0, r"^pretrain.eps=0.0: must be positive$"),
        ("schedule", "step", r"^pretrain.schedule: expected one of \('cosine', .*got 'step'$"),
        ("packing", "zip", r"^pretrain.packing: expected one of .*got 'zip'$"),
        ("steps", 0, r"^pretrain.steps=0: must be positive$"),
        ("steps", 2.5, r"^pretrain.steps: expected an integer, got 2.5$"),
        ("warmup_fraction", 1.5, r"^pretrain.warmup_fraction=1.5: must be in \[0, 1\]$"),
    ],
)
def test_a_bad_stage_field_in_a_shipped_config_is_named(field, value, match):
    cfg = load("bios/quickstart").to_dict()
    cfg["pretrain"][field] = value
    with pytest.raises(ConfigError, match=match):
        bios_study.parse_study(cfg)


def test_a_bad_world_field_in_a_shipped_config_is_named():
    cfg = load("bios/quickstart")
    cfg.world.num_cities = 10**6
    with pytest.raises(wb.WorldConfigError, match="num_cities"):
        wb.check_world(dict(cfg.world))


@pytest.mark.parametrize(
    "world,match",
    [
        ({"kind": "countries", "num_base_countriez": 3}, "unknown key"),
        ({"kind": "geo", "num_countries": -1}, "num_countries"),
        ({"kind": "bios", "num_people": 10**9}, "num_people"),
        ({"kind": "mquake"}, "path"),
        ({"kind": "jsonl"}, "paths"),
        ({"kind": "nope"}, "unknown"),
    ],
)
def test_check_world_rejects_what_materialising_rejects(tmp_path, world, match):
    from jaxknow.data import build

    with pytest.raises(build.WorldConfigError, match=match):
        wb.check_world(world)
    with pytest.raises(build.WorldConfigError, match=match):
        build.materialize(world, tmp_path / "data", seed=0)


@pytest.mark.parametrize(
    "parse,name,field",
    [
        (bios_study.parse_study, "bios/tiny", "finetune_modes"),
        (cooc_study.parse_study, "cooccurrence/tiny", "modes"),
    ],
)
def test_study_unknown_key_and_bad_mode_are_named(parse, name, field):
    cfg = load(name).to_dict()
    with pytest.raises(ConfigError, match=r"^config: unknown key\(s\) \['pretrian'\]; known: "):
        parse({**cfg, "pretrian": {}})
    with pytest.raises(ConfigError, match=rf"^{field}\[1\]: expected one of .*, got 'qlora'$"):
        parse({**cfg, field: ["full", "qlora"]})


def test_bios_paper_config_is_the_papers_finetune_sweep():
    study = bios_study.parse_study(load("bios/paper"))
    full = [r for r in study.recipes if r.mode == "full"]
    assert sorted((r.lr, r.weight_decay) for r in full) == sorted(
        (lr, wd) for lr in (1e-3, 3e-4, 1e-4) for wd in (0.01, 0.001)
    )
    for r in study.recipes:
        assert (r.batch_size, r.steps, r.warmup_steps) == (48, 50_000, 0)
        assert r.schedule == "cosine" and r.end_lr_fraction == 0.1
    (lora,) = [r for r in study.recipes if r.mode == "lora"]
    assert (lora.lr, lora.weight_decay) == (3e-4, 0.01)
    assert lora.lora.targets == ("q", "v") and lora.lora.embedding_rank == 128
    assert all(r.lora is None for r in full)
    assert study.mixed.enabled and study.mixed.qa_weight == 4.0  # QA_r = 0.8 of the documents


def test_bios_finetune_recipe_errors_name_the_recipe():
    cfg = load("bios/tiny").to_dict()
    bad = [dict(name="a", mode="full", lr=-1.0)]
    with pytest.raises(ConfigError, match=r"^finetune_recipes\[0\].lr=-1.0: must be positive$"):
        bios_study.parse_study({**cfg, "finetune_recipes": bad})
    with pytest.raises(ConfigError, match=r"finetune_recipes\[1\].name='a': repeated"):
        bios_study.parse_study({**cfg, "finetune_recipes": [dict(name="a"), dict(name="a")]})
    with pytest.raises(ConfigError, match=r"^finetune_recipes\[0\]: unknown key\(s\) \['lrr'\]"):
        bios_study.parse_study({**cfg, "finetune_recipes": [dict(name="a", lrr=1.0)]})
    with pytest.raises(ConfigError, match=r"^finetune_recipes\[0\].name: required$"):
        bios_study.parse_study({**cfg, "finetune_recipes": [dict(lr=1.0)]})
    bad = [dict(name="a", mode="lora", lora=dict(rank="8"))]
    with pytest.raises(ConfigError, match=r"^finetune_recipes\[0\].lora.rank: expected an integer"):
        bios_study.parse_study({**cfg, "finetune_recipes": bad})
    study = bios_study.parse_study(cfg)
    assert [r.name for r in study.recipes] == ["full", "lora"]
    # A recipe starts from the study's finetune stage and, for LoRA, its lora section.
    recipes = [dict(name="a", mode="lora", lr=1e-4, lora=dict(rank=2)), dict(name="b")]
    a, b = bios_study.parse_study({**cfg, "finetune_recipes": recipes}).recipes
    assert (a.lr, a.steps, a.packing) == (1e-4, study.finetune.steps, "pad")
    assert a.lora == dataclasses.replace(study.lora, rank=2) and b.lora is None
    assert b == dataclasses.replace(study.recipes[0], name="b")


@pytest.mark.parametrize(
    "mlp,expected",
    [
        ("gelu", ["q", "k", "v", "o", "up", "down"]),
        ("swiglu", ["q", "k", "v", "o", "gate", "up", "down"]),
    ],
)
def test_all_linear_lora_targets_follow_the_models_mlp(mlp, expected):
    cfg = load("smoke").to_dict()
    cfg["model"]["mlp"] = mlp
    cfg["lora"].update(rank=4, targets="all-linear")
    assert list(parse_run_config(cfg).lora.targets) == expected
    cfg["lora"]["targets"] = "everything"
    with pytest.raises(ConfigError, match=r"^lora.targets: expected a list or .*got 'everything'"):
        parse_run_config(cfg)
    # A study's stages (typed, not parsed again) resolve it too.
    spec = common.stage_spec(
        C.model_config(cfg["model"]),
        C.MeshConfig(),
        common.StageConfig(seq_len=64),
        seed=0,
        sources=[{"name": "x"}],
        data_dir="/tmp",
        lora=LoraConfig(rank=4, targets="all-linear"),
    )
    assert list(spec.lora.targets) == expected


def flag_config(name: str, *overrides: str):
    """Returns configs/NAME as the entry points read it: an ml_collections config file flag,
    locked, with `--config.KEY=VALUE` overrides."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["entry", f"--config={CONFIGS / name}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=fv, lock_config=True, sys_argv=argv
    )
    fv(argv)
    return fv.config


@pytest.mark.parametrize(
    "flag,expected",
    [
        ("all-linear", ["q", "k", "v", "o", "up", "down"]),  # smoke: a gelu MLP
        ('("q","v","o")', ["q", "v", "o"]),
        ('["k","up"]', ["k", "up"]),
    ],
)
def test_lora_targets_flag_takes_a_preset_or_a_tuple(flag, expected):
    """``launch.train --config.lora.targets=...``: the flag parsing launch.train does (an
    ml_collections config file flag, locked) accepts a preset name and a tuple or list."""

    def parsed(*overrides: str):
        return parse_run_config(flag_config("smoke.py", *overrides))

    spec = parsed("--config.lora.rank=4", f"--config.lora.targets={flag}")
    assert list(spec.lora.targets) == expected and spec.lora.rank == 4
    # Other list defaults are overridable the same way.
    assert list(parsed("--config.optim.no_decay=('norm/',)").optim.no_decay) == ["norm/"]


def test_pretrained_cooccurrence_config_cuts_to_one_quick_stage_from_the_command_line():
    """The SmolLM2 study configs take `eval.subsets` / `eval.max_items` as command-line keys
    (a narrative finetune scored on 8 QA items: the benchmarks' model), and leave every subset
    and item on when they are not given."""

    def parsed(*overrides: str) -> cooc_study.CooccurrenceStudy:
        return cooc_study.parse_study(
            flag_config("cooccurrence/smollm2_narrative_cpu.py", *overrides)
        )

    quick = parsed(
        "--config.eval.subsets=('qa',)",
        "--config.eval.max_items=8",
        "--config.forget.enabled=False",
        "--config.ablation.enabled=False",
    )
    assert quick.eval.subsets == ("qa",) and quick.eval.max_items == 8
    assert not quick.forget.enabled and not quick.ablation.enabled
    whole = parsed()
    assert whole.eval.subsets == () and whole.eval.max_items is None


def test_cooccurrence_replay_and_forgetting_renderings_are_checked():
    cfg = load("cooccurrence/quick")
    study = cooc_study.parse_study(cfg)
    assert study.replay.weight > 0 and study.forget.renderings == ("narrative",)
    assert cooc_study.finetune_sources("corpus_narrative", study.replay) == [
        {"name": "corpus_narrative", "weight": 1.0},
        {"name": "corpus_pretrain", "weight": study.replay.weight},
    ]
    assert cooc_study.finetune_sources("corpus_narrative", cooc_study.ReplaySettings()) == [
        {"name": "corpus_narrative"}
    ]
    cfg.replay.weight = -1.0
    with pytest.raises(ConfigError, match=r"^replay.weight=-1.0: must be >= 0$"):
        cooc_study.parse_study(cfg)
    cfg.replay.weight = 1.0
    cfg.forget.renderings = ["narative"]
    with pytest.raises(ConfigError, match=r"forget.renderings: 'narative'"):
        cooc_study.parse_study(cfg)


def test_evaluation_caps_spread_over_the_subset():
    rows = list(range(306))
    picked = cooc_study.spread(rows, 102)
    assert len(picked) == 102 == len(set(picked)) and picked[0] == 0 and picked[-1] == 305
    assert cooc_study.spread(rows[:5], 102) == rows[:5] and cooc_study.spread(rows, None) == rows


def test_flat_stage_keys_go_to_the_section_that_declares_them():
    stage = C.parse(
        common.StageConfig,
        {"lr": 1, "batch_size": 4, "steps": 7, "loss_chunk": 2, "no_decay": ["x"], "epochs": 2},
        "pretrain",
    )
    assert (stage.lr, stage.batch_size, stage.steps, stage.epochs) == (1.0, 4, 7, 2.0)
    spec = common.stage_spec(
        C.model_config({"preset": "tiny", "max_seq_len": 256}),
        C.MeshConfig(),
        stage,
        seed=0,
        sources=[{"name": "x"}],
        data_dir="/d",
    )
    assert (spec.train.loss_chunk, spec.optim.no_decay, spec.data.seq_len) == (2, ("x",), 256)
    assert spec.optim.total_steps == spec.train.steps == 7
    # A stage's keys are the fields of the sections that declare them, plus its own two.
    sections = (C.OptimSettings, C.LoopConfig, C.BatchConfig)
    declared = {f.name for s in sections for f in dataclasses.fields(s)}
    stage_keys = {f.name for f in dataclasses.fields(common.StageConfig)}
    assert stage_keys == declared | {"epochs", "warmup_fraction"}
    for key in ("total_steps", "sources", "lrr"):
        with pytest.raises(ConfigError, match=rf"^pretrain: unknown key\(s\) \['{key}'\]"):
            C.parse(common.StageConfig, {key: 1}, "pretrain")
    with pytest.raises(ConfigError, match=r"^pretrain.loss_chunk=-1: must be >= 0$"):
        C.parse(common.StageConfig, {"loss_chunk": -1}, "pretrain")


def test_literal_fields_are_checked_naming_the_allowed_values():
    from jaxknow.model.config import ModelConfig, ModelConfigError

    with pytest.raises(ModelConfigError, match=r"model.dtype='int8': must be one of \("):
        ModelConfig(dtype="int8")
    with pytest.raises(ModelConfigError, match=r"'xla', 'cudnn', None\)"):
        ModelConfig(attention_impl="flash")
    assert ModelConfig(attention_impl=None).attention_impl is None
    with pytest.raises(ConfigError, match=r"^train.nonfinite: expected one of \('stop', 'skip'\)"):
        C.parse(C.TrainConfig, {"nonfinite": "x"}, "train")
    with pytest.raises(ConfigError, match=r"^model.attention_impl: expected one of .* or None"):
        C.model_config({"attention_impl": "flash"})
    with pytest.raises(ConfigError, match=r"^data.packing: expected one of .*got 'zip'$"):
        C.parse(C.DataConfig, {"packing": "zip", "sources": [{"name": "a"}]}, "data")


# The mechanism (`config.parse`) on toy dataclasses: every check names the dotted path.


@dataclasses.dataclass(frozen=True)
class _Deep:
    n: int = 1
    mode: typing.Literal["a", "b"] = "a"

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n={self.n}: must be >= 0")


@dataclasses.dataclass(frozen=True)
class _Inner:
    lr: float = 0.1
    names: tuple[str, ...] = ()
    cap: int | None = None
    deep: _Deep = _Deep()
    extra: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Toy:
    inner: _Inner = _Inner()
    steps: int = dataclasses.field(default=5, kw_only=True)
    label: str = dataclasses.field(kw_only=True)


@pytest.mark.parametrize(
    "values,message",
    [
        ({"inner": {"lr": "abc"}}, "inner.lr: expected a float, got 'abc'"),
        ({"inner": {"lr": True}}, "inner.lr: expected a float, got True"),
        ({"inner": {"deep": {"n": "3"}}}, "inner.deep.n: expected an integer, got '3'"),
        ({"inner": {"deep": {"n": -1}}}, "inner.deep.n=-1: must be >= 0"),
        (
            {"inner": {"deep": {"mode": "c"}}},
            "inner.deep.mode: expected one of ('a', 'b'), got 'c'",
        ),
        ({"inner": {"names": ["x", 3]}}, "inner.names[1]: expected a string, got 3"),
        ({"inner": {"names": "x"}}, "inner.names: expected a list, got 'x'"),
        ({"inner": {"cap": 1.5}}, "inner.cap: expected an integer or None, got 1.5"),
        ({"inner": {"extra": {"a": "b"}}}, "inner.extra.a: expected a float, got 'b'"),
        ({"inner": {"deep": 3}}, "inner.deep: expected a mapping, got 3"),
        ({"inner": {"lrr": 1}}, "inner: unknown key(s) ['lrr']; known: "),
        ({"inner": {"deep": {"nn": 1}}}, "inner.deep: unknown key(s) ['nn']; known: ['mode', 'n']"),
        ({"inner": {}, "labell": "x"}, "config: unknown key(s) ['labell']; known: "),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_its_dotted_path(values, message):
    with pytest.raises(ConfigError) as e:
        C.parse(_Toy, {"label": "t", **values})
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_parse_fills_defaults_converts_types_and_starts_from_given_defaults():
    toy = C.parse(_Toy, {"label": "t", "inner": {"lr": 1, "names": ["a"], "extra": {"x": 2}}})
    assert toy == _Toy(inner=_Inner(lr=1.0, names=("a",), extra={"x": 2.0}), label="t")
    assert isinstance(toy.inner.lr, float)
    # `defaults`: a left-out field takes the given value; a nested section given as a mapping
    # starts from the given instance (a bioS finetune recipe starts from the finetune stage).
    start = {"label": "s", "inner": _Inner(lr=0.5, deep=_Deep(n=7))}
    toy = C.parse(_Toy, {"inner": {"deep": {"mode": "b"}}}, defaults=start)
    assert toy == _Toy(inner=_Inner(lr=0.5, deep=_Deep(n=7, mode="b")), label="s")
    assert C.to_plain(toy)["inner"]["names"] == [] and C.parse(_Toy, C.to_plain(toy)) == toy
    with pytest.raises(ConfigError, match=r"^label: required$"):
        C.parse(_Toy, {"steps": 3})


@pytest.mark.parametrize(
    "study,name",
    [(bios_study.BiosStudy, "bios/tiny"), (cooc_study.CooccurrenceStudy, "cooccurrence/tiny")],
)
def test_a_new_study_field_needs_no_other_list(study, name):
    """A setting added to a study's dataclass is a config key at once: the parser, the
    unknown-key check and `to_plain` read the dataclass's fields, nothing else lists them."""
    extended = dataclasses.make_dataclass(
        "Extended", [("new_knob", int, dataclasses.field(default=3))], bases=(study,), frozen=True
    )
    cfg = load(name).to_dict()
    assert C.parse(extended, cfg).new_knob == 3
    parsed = C.parse(extended, {**cfg, "new_knob": 7})
    assert parsed.new_knob == 7 and C.to_plain(parsed)["new_knob"] == 7
    with pytest.raises(ConfigError, match=r"^new_knob: expected an integer, got 'x'$"):
        C.parse(extended, {**cfg, "new_knob": "x"})
    with pytest.raises(ConfigError, match=r"^config: unknown key\(s\) \['new_knobb'\]"):
        C.parse(extended, {**cfg, "new_knobb": 7})


def test_a_new_stage_field_is_a_flat_stage_key_and_reaches_the_run():
    """A field added to a stage's section (here a subclass of StageConfig standing in for a
    new LoopConfig / OptimSettings field) is a study's flat stage key (``pretrain.KEY``) with
    no list to update; a mistyped one is refused naming its dotted path."""
    stage = dataclasses.make_dataclass(
        "Stage",
        [("new_knob", float, dataclasses.field(default=0.5))],
        bases=(common.StageConfig,),
        frozen=True,
    )
    study = dataclasses.make_dataclass(
        "Study",
        [("pretrain", stage, dataclasses.field(default=stage()))],
        bases=(bios_study.BiosStudy,),
        frozen=True,
    )
    cfg = load("bios/tiny").to_dict()
    parsed = C.parse(study, {**cfg, "pretrain": {**cfg["pretrain"], "new_knob": 2}})
    assert parsed.pretrain.new_knob == 2.0 and parsed.pretrain.steps == cfg["pretrain"]["steps"]
    with pytest.raises(ConfigError, match=r"^pretrain.new_knob: expected a float, got 'x'$"):
        C.parse(study, {**cfg, "pretrain": {"new_knob": "x"}})
    with pytest.raises(ConfigError, match=r"^pretrain: unknown key\(s\) \['new_knobb'\]"):
        C.parse(study, {**cfg, "pretrain": {"new_knobb": 1}})


def test_a_shipped_study_names_the_nested_field_and_the_run_fields_fixed_on_resume():
    cfg = load("bios/tiny").to_dict()
    cfg["finetune"]["lr"] = "abc"
    with pytest.raises(ConfigError, match=r"^finetune.lr: expected a float, got 'abc'$"):
        bios_study.parse_study(cfg)
    cfg = load("cooccurrence/tiny").to_dict()
    cfg["eval"]["max_itemz"] = 3
    with pytest.raises(ConfigError, match=r"^eval: unknown key\(s\) \['max_itemz'\]; known: "):
        cooc_study.parse_study(cfg)
    from jaxknow.train.setup import RunSpec

    assert set(C.fixed_on_resume(RunSpec)) == {
        "seed",
        "lora",
        "data.world",
        "data.sources",
        "data.seq_len",
        "data.batch_size",
        "data.packing",
        "data.seed",
        "data.dir",
        "train.trainable",
        "train.init_from",
    }


def test_probe_scale_argument_sets_people_and_exposure():
    at_default = load("bios/probe_scale")
    stopped = load("bios/probe_scale:6000,2/3")
    assert at_default.world.num_people == 2000 and at_default.pretrain.steps == 20000
    # 6,000 people at 2/3 of the quickstart's exposures per person: E24a's 40,000 steps, so the
    # same command resumes that run.
    assert stopped.world.num_people == 6000 and stopped.pretrain.steps == 40000
