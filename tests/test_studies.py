"""The study registries: world kinds (`jaxknow.data.world_builders`) and experiments
(`jaxknow.experiments.registry`), filled by the study packages under `jaxknow.studies`."""

from __future__ import annotations

import pytest

import jaxknow.studies
from jaxknow.config import ConfigError
from jaxknow.data import world_builders as wb
from jaxknow.experiments import registry
from launch.common import one_line


def test_the_built_in_studies_register_their_kinds_and_experiments():
    assert {"bios", "countries", "geo", "mquake"} <= set(wb.WORLD_KINDS)
    assert {"synthetic", "jsonl", "text", "parquet", "mix"} <= set(wb.WORLD_KINDS)
    assert registry.known_experiments() == ["bios", "cooccurrence"]
    assert [m.__name__ for m in jaxknow.studies.BUILT_IN] == [
        "jaxknow.studies.bios",
        "jaxknow.studies.cooccurrence",
    ]


@pytest.mark.parametrize("name", ["bios", "cooccurrence"])
def test_every_registered_runner_resolves(name):
    runner = registry.experiment_runner(name)
    assert callable(runner) and runner.__module__ == f"jaxknow.studies.{name}.study"


def test_an_unknown_world_kind_is_one_line_listing_the_known_kinds():
    with pytest.raises(wb.WorldConfigError) as e:
        wb.check_world({"kind": "nope"})
    msg = one_line(e.value)
    assert msg == str(e.value)
    assert "data.world.kind='nope': unknown; known: [" in msg
    assert "'bios'" in msg and "'countries'" in msg and "'jsonl'" in msg


def test_an_unknown_experiment_is_one_line_listing_the_known_ones():
    with pytest.raises(ConfigError, match=r"experiment='nope': must be one of \['bios', 'coo"):
        registry.experiment_runner("nope")


def test_a_study_can_register_a_world_kind_and_an_experiment(tmp_path, monkeypatch):
    monkeypatch.setattr(wb, "WORLD_KINDS", dict(wb.WORLD_KINDS))
    monkeypatch.setattr(registry, "EXPERIMENTS", dict(registry.EXPERIMENTS))

    def check(world, seed):
        wb.world_options(world, "toy", {"n": 3})

    def build(world, out, seed):
        check(world, seed)
        return {"sources": {}, "files": [], "vocab_size": 7}

    wb.register_world_kind("toy", build=build, check=check)
    wb.register_world_kind("toy", build=build, check=check)  # the same again: a no-op
    wb.check_world({"kind": "toy", "n": 5})
    with pytest.raises(wb.WorldConfigError, match=r"unknown key\(s\) \['m'\] for kind 'toy'"):
        wb.check_world({"kind": "toy", "m": 5})
    with pytest.raises(ValueError, match="'bios' is already registered"):
        wb.register_world_kind("bios", build=build, check=check)

    registry.register_experiment("toy", "json:dumps")
    assert registry.experiment_runner("toy")({"a": 1}) == '{"a": 1}'
    with pytest.raises(ValueError, match="'bios' is already registered"):
        registry.register_experiment("bios", "json:dumps")
    with pytest.raises(ValueError, match="not 'module:function'"):
        registry.register_experiment("other", "json.dumps")
