"""Every shipped config parses and names a valid model, stages and world — so a typo in a
paper-scale config fails here, not hours into a run."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from jaxknow.config import ConfigError
from jaxknow.data import world_builders as wb
from jaxknow.experiments import bios as bios_study
from jaxknow.experiments import cooccurrence as cooc_study
from jaxknow.train.setup import parse_run_config
from jaxknow.worlds import bios, countries, geo

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load(rel: str, *args: str):
    return importlib.import_module("configs." + rel.replace("/", ".")).get_config(*args)


def check_world(world: dict) -> None:
    """Builds the world's config dataclass (the validation the data stage runs first)."""
    world = dict(world)
    kind = world.pop("kind")
    if kind == "bios":
        wb.bios_world({**world, "num_people": 10}, seed=0)  # same checks, small population
        bios.BiosConfig(**{k: v for k, v in world.items()
                           if k in {f.name for f in dataclasses.fields(bios.BiosConfig)}})
        return
    cls = {"countries": countries.CountriesConfig, "geo": geo.GeoConfig}.get(kind)
    if cls is None:
        assert kind == "mquake" and world.get("path"), world
        return
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(world) - fields - set(wb.COMMON)
    assert not unknown, f"unknown world keys {unknown}"
    cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in world.items() if k in fields})


def experiment_configs(kind: str) -> list[str]:
    return sorted(f"{kind}/{p.stem}" for p in (CONFIGS / kind).glob("*.py")
                  if p.stem != "__init__")


@pytest.mark.parametrize("name", experiment_configs("bios"))
def test_bios_study_configs_parse(name):
    cfg = load(name)
    study = bios_study.parse_study(cfg)
    check_world(study.world)
    assert study.conditions and study.pretrain.steps > 0


@pytest.mark.parametrize("name", experiment_configs("cooccurrence"))
def test_cooccurrence_study_configs_parse(name):
    cfg = load(name)
    study = cooc_study.parse_study(cfg)
    check_world(dict(cfg.world))
    assert study.seeds and study.renderings


@pytest.mark.parametrize("name,args", [("smoke", ()), ("hf/finetune_full", ()),
                                       ("hf/finetune_lora", ())])
def test_training_configs_parse(name, args):
    spec = parse_run_config(load(name, *args))
    assert spec.train.steps > 0


def test_a_bad_field_in_a_shipped_config_is_named():
    cfg = load("bios/quickstart")
    cfg.pretrain.lr = -1.0
    with pytest.raises(ConfigError, match=r"pretrain: lr=-1.0"):
        bios_study.parse_study(cfg)
    cfg = load("bios/quickstart")
    cfg.world.num_cities = 10**6
    with pytest.raises(ValueError, match="num_cities"):
        check_world(dict(cfg.world))
