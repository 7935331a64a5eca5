"""Every shipped config parses and names a valid model, stages and world — so a typo in a
paper-scale config fails here, not hours into a run."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from jaxknow.config import ConfigError
from jaxknow.data import world_builders as wb
from jaxknow.experiments import common
from jaxknow.studies.bios import study as bios_study
from jaxknow.studies.cooccurrence import study as cooc_study
from jaxknow.train.setup import parse_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load(rel: str):
    return importlib.import_module("configs." + rel.replace("/", ".")).get_config()


def experiment_configs(kind: str) -> list[str]:
    return sorted(f"{kind}/{p.stem}" for p in (CONFIGS / kind).glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", experiment_configs("bios"))
def test_bios_study_configs_parse(name):
    cfg = load(name)
    study = bios_study.parse_study(cfg)
    wb.check_world(study.world)
    assert study.conditions and study.pretrain.steps > 0


@pytest.mark.parametrize("name", experiment_configs("cooccurrence"))
def test_cooccurrence_study_configs_parse(name):
    cfg = load(name)
    study = cooc_study.parse_study(cfg)
    wb.check_world(dict(cfg.world))
    assert study.seeds and study.renderings


@pytest.mark.parametrize("name", ["smoke", "hf/finetune_full", "hf/finetune_lora"])
def test_training_configs_parse(name):
    spec = parse_run_config(load(name))
    assert spec.train.steps > 0


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("lr", -1.0, r"pretrain: lr=-1.0: must be positive"),
        ("b2", 1.0, r"pretrain: b2=1.0: must be in \[0, 1\)"),
        ("eps", 0.0, r"pretrain: eps=0.0: must be positive"),
        ("schedule", "step", r"pretrain: schedule='step'"),
        ("packing", "zip", r"pretrain: packing='zip'"),
        ("steps", 0, r"pretrain: steps=0: must be positive"),
        ("warmup_fraction", 1.5, r"pretrain: warmup_fraction=1.5"),
    ],
)
def test_a_bad_stage_field_in_a_shipped_config_is_named(field, value, match):
    cfg = load("bios/quickstart")
    cfg.pretrain[field] = value
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
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['pretrian'\]"):
        parse({**cfg, "pretrian": {}})
    with pytest.raises(ConfigError, match=rf"{field}=\['full', 'qlora'\]"):
        parse({**cfg, field: ["full", "qlora"]})


def test_bios_paper_config_is_the_papers_finetune_sweep():
    study = bios_study.parse_study(load("bios/paper"))
    full = [r for r in study.recipes if r.mode == "full"]
    assert sorted((r.stage.lr, r.stage.weight_decay) for r in full) == sorted(
        (lr, wd) for lr in (1e-3, 3e-4, 1e-4) for wd in (0.01, 0.001)
    )
    for r in study.recipes:
        assert (r.stage.batch_size, r.stage.steps, r.stage.warmup_steps) == (48, 50_000, 0)
        assert r.stage.schedule == "cosine" and r.stage.end_lr_fraction == 0.1
    (lora,) = [r for r in study.recipes if r.mode == "lora"]
    assert (lora.stage.lr, lora.stage.weight_decay) == (3e-4, 0.01)
    assert lora.lora["targets"] == ["q", "v"] and lora.lora["embedding_rank"] == 128
    assert study.mixed_qa_weight == 4.0  # QA_r = 0.8 of the documents


def test_bios_finetune_recipe_errors_name_the_recipe():
    cfg = load("bios/tiny").to_dict()
    bad = [dict(name="a", mode="full", lr=-1.0)]
    with pytest.raises(ConfigError, match=r"finetune_recipes\[0\].*lr"):
        bios_study.parse_study({**cfg, "finetune_recipes": bad})
    with pytest.raises(ConfigError, match=r"finetune_recipes\[1\].name='a': repeated"):
        bios_study.parse_study({**cfg, "finetune_recipes": [dict(name="a"), dict(name="a")]})
    with pytest.raises(ConfigError, match=r"finetune_recipes\[0\]: .*unexpected keyword"):
        bios_study.parse_study({**cfg, "finetune_recipes": [dict(name="a", lrr=1.0)]})
    study = bios_study.parse_study(cfg)
    assert [r.name for r in study.recipes] == ["full", "lora"]


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
    with pytest.raises(ConfigError, match=r"lora.targets='everything'"):
        parse_run_config(cfg)
    # The studies' stage configs (ConfigDicts with a list-typed field) resolve it too.
    stage = common.stage_config(
        {"model": cfg["model"]},
        common.StageConfig(),
        sources=[{"name": "x"}],
        data_dir="/tmp",
        lora={"rank": 4, "targets": "all-linear"},
    )
    assert list(stage.lora.targets) == expected


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
        from absl import flags
        from ml_collections import config_flags

        argv = ["train", f"--config={CONFIGS / 'smoke.py'}", *overrides]
        fv = flags.FlagValues()
        config_flags.DEFINE_config_file(
            "config", None, "", flag_values=fv, lock_config=True, sys_argv=argv
        )
        fv(argv)
        return parse_run_config(fv.config)

    spec = parsed("--config.lora.rank=4", f"--config.lora.targets={flag}")
    assert list(spec.lora.targets) == expected and spec.lora.rank == 4
    # Other list defaults are overridable the same way.
    assert list(parsed("--config.optim.no_decay=('norm/',)").optim.no_decay) == ["norm/"]


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
    with pytest.raises(ConfigError, match=r"replay: weight=-1.0: must be >= 0"):
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
    stage = common.parse_stage(
        {"lr": 1, "batch_size": 4, "steps": 7, "loss_chunk": 2, "no_decay": ["x"], "epochs": 2},
        "pretrain",
    )
    assert (stage.optim.lr, stage.data.batch_size, stage.train.steps) == (1.0, 4, 7)
    assert stage.lr == stage.optim.lr and stage.epochs == 2
    cfg = common.stage_config({}, stage, sources=[{"name": "x"}], data_dir="/d")
    assert (cfg.train.loss_chunk, list(cfg.optim.no_decay), cfg.data.seq_len) == (2, ["x"], 256)
    # A recipe's overrides keep the rest of its base stage.
    recipe = common.parse_stage({"lr": 3e-4}, "finetune_recipes[0]", base=stage)
    assert (recipe.lr, recipe.batch_size, recipe.loss_chunk) == (3e-4, 4, 2)
    for key in ("total_steps", "sources", "lrr"):
        with pytest.raises(ConfigError, match=rf"pretrain: unexpected keyword\(s\) \['{key}'\]"):
            common.parse_stage({key: 1}, "pretrain")
    with pytest.raises(ConfigError, match=r"pretrain: loss_chunk=-1: must be >= 0"):
        common.parse_stage({"loss_chunk": -1}, "pretrain")
    with pytest.raises(AttributeError, match="nope"):
        _ = stage.nope


def test_literal_fields_are_checked_by_their_dataclass_naming_the_allowed_values():
    from jaxknow.config import DataConfig, TrainConfig, section
    from jaxknow.model.config import ModelConfig, ModelConfigError

    with pytest.raises(ModelConfigError, match=r"model.dtype='int8': must be one of \("):
        ModelConfig(dtype="int8")
    with pytest.raises(ModelConfigError, match=r"'xla', 'cudnn', None\)"):
        ModelConfig(attention_impl="flash")
    assert ModelConfig(attention_impl=None).attention_impl is None
    with pytest.raises(ConfigError, match=r"train.nonfinite='x': .*\('stop', 'skip'\)"):
        section(TrainConfig, {"nonfinite": "x"}, "train")
    with pytest.raises(ConfigError, match=r"data.packing='zip'"):
        DataConfig(packing="zip", sources=({"name": "a"},))
