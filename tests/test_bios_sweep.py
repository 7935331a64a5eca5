"""The bioS curves' machinery (studies/bios/sweep.py): the study each point runs, resuming,
collecting and plotting; the probe-size curve (studies/bios/probing.probe_size_curve)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs.bios.tiny import get_config as bios_tiny
from jaxknow.config import ConfigError
from jaxknow.studies.bios import study as B
from jaxknow.studies.bios import sweep as S
from jaxknow.studies.bios.corpus import bios_corpora, bios_world


@pytest.mark.parametrize(
    "renderings,condition,redraws,label",
    [
        (1, "single", 1, "single"),
        (5, "multi5+permute+fullname", 1, "multi5+permute+fullname"),
        (50, "multi5x10+permute+fullname", 10, "multi5x10+permute+fullname"),
        (100, "multi5x20+permute+fullname", 20, "multi5x20+permute+fullname"),
    ],
)
def test_diversity_point_builds_the_right_world_and_condition(
    renderings, condition, redraws, label
):
    (p,) = S.diversity_points([renderings], [3])
    assert p.overrides["conditions"] == [condition]
    cfg = S.apply_overrides(bios_tiny(), p.overrides)
    study = B.parse_study(cfg)
    world = B.study_world(study)
    assert study.seed == 3 and world["redraws"] == redraws
    (pre,) = B.pretrainings(study, world)
    assert pre.label == label
    assert pre.renderings[pre.sources[0]] == renderings
    assert not study.mixed.enabled and not study.probing.enabled
    # the world built for it holds R renderings per person
    w, opts = bios_world(dict(world, num_people=6), study.seed)
    corpus = bios_corpora(w, opts, study.seed)[pre.sources[0]]
    assert len(corpus) == 6 * renderings


@pytest.mark.parametrize("bad", [0, 7, 12])
def test_diversity_condition_refuses_counts_it_cannot_build(bad):
    with pytest.raises(ValueError):
        S.diversity_condition(bad)


def test_scale_people_keeps_exposures_per_biography():
    cfg = bios_tiny()  # 40 people, pretrain 20 steps, finetune 150, mixed 20
    over = S.scale_people(cfg, 400)
    assert over["world.num_people"] == 400
    assert over["pretrain.steps"] == 200 and over["mixed.steps"] == 200
    assert over["finetune.steps"] == 1500  # the same epochs over P_train's QA
    half = S.scale_people(cfg, 400, exposure=0.5, stages=["pretrain"])
    assert half == {"world.num_people": 400, "pretrain.steps": 100}


def _fake_results(x: float, seed: int) -> dict:
    em = 0.1 * x + 0.01 * seed
    return {
        "world": {"num_people": 40},
        "chance": {"birth_city": 0.05, "major": 0.15},
        "wall_seconds": 1.0,
        "conditions": {
            "pretrain+finetune (lora) / c": {
                "recipe": "pretrain+finetune",
                "augmentation": "c",
                "renderings_per_person": int(x),
                "exposures_per_rendering": 100 / x,
                "test": {"em": em, "em_attr_mean": em, "em_major": em},
                "train": {"em": 1.0, "em_attr_mean": 1.0},
            },
            "mixed / c": {
                "recipe": "mixed",
                "augmentation": "c",
                "test": {"em": 0.5, "em_attr_mean": 0.5},
                "train": {"em": 1.0, "em_attr_mean": 1.0},
            },
        },
        "memorisation": {
            "c": {"mean": 0.9, "whole_mean": 0.8 - 0.01 * x},
            "mixed / c": {"mean": 0.7, "whole_mean": 0.6},
        },
    }


def test_sweep_resumes_without_redoing_a_finished_point(tmp_path):
    points = S.diversity_points([1, 5], [0])
    calls = []

    def run(cfg, workdir, log):
        calls.append(workdir.name)
        if workdir.name == "R5_s0" and len(calls) == 2:
            raise RuntimeError("stopped")  # the second point stops before its results
        (workdir / "results.json").write_text(json.dumps(_fake_results(1, 0)))
        return {}

    with pytest.raises(RuntimeError):
        S.run_sweep(bios_tiny(), points, tmp_path, log=lambda *_: None, run=run)
    assert calls == ["R1_s0", "R5_s0"]
    out = S.run_sweep(bios_tiny(), points, tmp_path, log=lambda *_: None, run=run)
    assert calls == ["R1_s0", "R5_s0", "R5_s0"]  # R1 not redone, R5 finished
    assert set(out) == {"R1_s0", "R5_s0"}
    S.run_sweep(bios_tiny(), points, tmp_path, log=lambda *_: None, run=run)
    assert len(calls) == 3
    # a directory made for other settings is refused, not reused
    other = S.diversity_points([1], [0])[0]
    changed = S.SweepPoint(other.name, other.x, other.seed, {**other.overrides, "seed": 9})
    with pytest.raises(ConfigError, match="was run for"):
        S.run_sweep(bios_tiny(), [changed], tmp_path, log=lambda *_: None, run=run)


def test_collector_and_plot_from_hand_made_results(tmp_path):
    points = S.diversity_points([1, 5, 10], [0, 1])
    results = {p.name: _fake_results(p.x, p.seed) for p in points}
    rows = S.curve_rows(points, results, "pretrain+finetune")
    fig = tmp_path / "figs" / "div.png"
    out = S.write_curve(tmp_path / "curve", "diversity", rows, xlabel="R", title="t", figure=fig)
    assert (tmp_path / "curve" / "diversity.png").stat().st_size > 0 and fig.is_file()
    saved = json.loads((tmp_path / "curve" / "results.json").read_text())
    assert saved == json.loads(json.dumps(out))
    summary = {e["x"]: e for e in saved["summary"]}
    assert sorted(summary) == [1.0, 5.0, 10.0]
    e = summary[5.0]
    assert e["seeds"] == [0, 1]
    assert e["p_test_em"]["min"] == pytest.approx(0.5)
    assert e["p_test_em"]["max"] == pytest.approx(0.51)
    assert e["p_test_em"]["mean"] == pytest.approx(0.505)
    assert e["memorisation_whole_value"]["mean"] == pytest.approx(0.75)
    assert e["chance"]["mean"] == pytest.approx(0.1)
    row = next(r for r in saved["points"] if r["point"] == "R10_s1")
    assert row["renderings_per_person"] == 10 and row["exposures_per_rendering"] == 10
    mixed = S.point_row(results["R1_s0"], "mixed")
    assert mixed["p_test_em"] == 0.5 and mixed["memorisation_whole_value"] == 0.6


def test_comparison_reads_each_named_condition_row(tmp_path):
    points = S.people_points(bios_tiny(), [40, 80], [0])
    results = {}
    for p in points:
        r = _fake_results(p.x / 40, p.seed)
        cel = dict(r["conditions"]["pretrain+finetune (lora) / c"])
        cel["augmentation"] = "celebrity (P_train multi5, P_test single)"
        cel["test"] = {"em": 0.3, "em_attr_mean": 0.3}
        r["conditions"]["pretrain+finetune (lora) / celebrity"] = cel
        results[p.name] = r
    by = {c: S.curve_rows(points, results, "pretrain+finetune", c) for c in ("c", "celebrity")}
    assert [r["p_test_em"] for r in by["celebrity"]] == [0.3, 0.3]
    assert [r["p_test_em"] for r in by["c"]] == pytest.approx([0.1, 0.2])
    out = S.write_comparison(tmp_path / "cmp", "cel", by, xlabel="N", title="t")
    assert (tmp_path / "cmp" / "cel.png").stat().st_size > 0
    assert set(out["conditions"]) == {"c", "celebrity"}
    assert out["conditions"]["celebrity"]["summary"][1]["p_test_em"]["mean"] == 0.3
    # a prefix must end at a word: "celeb" names no row
    with pytest.raises(ValueError, match="no 'pretrain\\+finetune / celeb'"):
        S.point_row(results[points[0].name], "pretrain+finetune", "celeb")


def test_pretrain_finetune_off_needs_mixed_training():
    cfg = bios_tiny()
    cfg.pretrain_finetune = False
    study = B.parse_study(cfg)
    assert set(B.training_sources(study, B.study_world(study))) == {
        "mixed single",
        "mixed multi2+permute+fullname",
    }
    cfg.mixed.enabled = False
    with pytest.raises(ConfigError, match="mixed.enabled"):
        B.parse_study(cfg)


def test_probe_size_curve_trains_on_the_first_n_and_tests_on_the_same_people(monkeypatch):
    from jaxknow.data.tokenizer import train_bpe
    from jaxknow.eval.probing import ProbeSettings
    from jaxknow.model.config import preset
    from jaxknow.studies.bios import probing as bios_probing
    from jaxknow.studies.bios import world as bios
    from tests.util import numpy_params

    world = bios.generate_world(bios.BiosConfig(num_people=60, seed=0))
    bs = bios.render_biographies(world, bios.Augmentation(), 0)
    tok = train_bpe([b.text for b in bs], vocab_size=400)
    cfg = preset("tiny", vocab_size=512, max_seq_len=256, n_layers=1)
    params = numpy_params(cfg, seed=0)
    order = np.random.default_rng(0).permutation(60)
    pool, test = [int(p) for p in order[:40]], [int(p) for p in order[40:]]
    reads, fits = [], []
    real_read, real_fit = bios_probing.hidden_features, bios_probing.train_linear_probe

    def read(*a, **k):
        reads.append(len(a[2]))
        return real_read(*a, **k)

    def fit(feats, labels, train_idx, test_idx, *a, **k):
        fits.append((feats.shape, labels.copy(), np.asarray(train_idx), np.asarray(test_idx)))
        return real_fit(feats, labels, train_idx, test_idx, *a, **k)

    monkeypatch.setattr(bios_probing, "hidden_features", read)
    monkeypatch.setattr(bios_probing, "train_linear_probe", fit)
    s = ProbeSettings(steps=5)
    curve = bios_probing.probe_size_curve(params, cfg, tok, world, "Q", pool, test, [5, 40], s)
    assert reads == [60]  # the hidden states are read once for every size
    assert sorted(curve) == [5, 40] and curve[5].num_train == 5 and curve[40].num_test == 20
    assert curve[5].layers == [0, 1] and set(curve[40].accuracy[1]) == set(bios.ATTRIBUTES)
    sizes = [len(tr) for _, _, tr, _ in fits]
    assert sizes == [5] * 6 + [40] * 6
    # the training rows are the pool's first n people, the test rows always the same people,
    # and each row's label is its own person's value
    for (shape, labels, train_idx, test_idx), a in zip(fits, list(bios.ATTRIBUTES) * 2):
        assert shape[:2] == (2, 60)
        assert list(test_idx) == list(range(40, 60))
        raw = bios_probing.probe_labels(world, a, pool + test)
        _, want = np.unique(raw, return_inverse=True)
        assert list(labels) == list(want)
        assert list(train_idx) == list(range(len(train_idx)))
    p = bios_probing.probe_size_curve(
        params, cfg, tok, world, "P", pool, test, [10], s, biographies=bs
    )
    assert all(0.0 <= v <= 1.0 for v in p[10].accuracy[1].values())
    with pytest.raises(ValueError, match="overlap"):
        bios_probing.probe_size_curve(params, cfg, tok, world, "Q", pool, [pool[0]], [5], s)
    with pytest.raises(ValueError, match="1..40"):
        bios_probing.probe_size_curve(params, cfg, tok, world, "Q", pool, test, [41], s)


def test_run_curve_runs_every_point_then_writes_the_curve_and_a_dry_run_runs_none(tmp_path, capsys):
    points = S.diversity_points([1, 5], [0, 1])
    ran = []

    def run(cfg, workdir, log):
        ran.append(workdir.name)
        seed = int(workdir.name.split("_s")[1])
        (workdir / "results.json").write_text(json.dumps(_fake_results(1, seed)))
        return {}

    common = dict(
        describe=lambda p: p.overrides["conditions"][0],
        recipe="pretrain+finetune",
        name="diversity",
        xlabel="R",
        title="t",
        command="cmd",
        figure=None,
        run=run,
    )
    assert S.run_curve(bios_tiny(), points, tmp_path / "dry", dry_run=True, **common) is None
    out = capsys.readouterr().out
    assert ran == [] and "R5_s1: multi5+permute+fullname" in out and "for 4 points" in out
    summary = S.run_curve(bios_tiny(), points, tmp_path / "c", **common)
    assert ran == ["R1_s0", "R1_s1", "R5_s0", "R5_s1"]
    assert [e["x"] for e in summary] == [1.0, 5.0] and summary[0]["seeds"] == [0, 1]
    saved = json.loads((tmp_path / "c" / "results.json").read_text())
    assert saved["command"] == "cmd" and len(saved["points"]) == 4
    assert (tmp_path / "c" / "diversity.png").stat().st_size > 0
