"""Miniature studies end to end on CPU: every result file complete and consistent."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from configs.bios.tiny import get_config as bios_tiny
from configs.cooccurrence.tiny import get_config as cooc_tiny
from jaxknow.data.jsonl import read_jsonl
from jaxknow.io.metrics import read_metrics
from jaxknow.studies.bios.study import run_bios_study
from jaxknow.studies.bios.world import ATTRIBUTES
from jaxknow.studies.cooccurrence.study import run_cooccurrence_study


@pytest.fixture(scope="module")
def bios_study(tmp_path_factory):
    wd = tmp_path_factory.mktemp("bios")
    results = run_bios_study(bios_tiny(), wd, log=lambda *_: None)
    return wd, results


@pytest.mark.slow  # a whole study end to end: minutes on 2 cores
def test_bios_study_results_are_complete_and_consistent(bios_study):
    wd, results = bios_study
    on_disk = json.loads((wd / "results.json").read_text())
    assert on_disk["conditions"].keys() == results["conditions"].keys()
    expected = {
        f"{recipe} / {aug}"
        for aug in ("single", "multi2+permute+fullname")
        for recipe in ("pretrain+finetune (full)", "pretrain+finetune (lora)", "mixed")
    }
    assert set(results["conditions"]) == expected
    for name, r in on_disk["conditions"].items():
        for split in ("test", "train"):
            for a in ATTRIBUTES:
                v = r[split][f"em_{a}"]
                assert 0.0 <= v <= 1.0, (name, split, a)
            assert r[split]["n"] > 0
    chance = np.mean(list(on_disk["chance"].values()))
    # Training taught something: P_train QA beats always answering the majority value.
    for name, r in on_disk["conditions"].items():
        if "(full)" in name:
            assert r["train"]["em_attr_mean"] > chance, name
    for aug in ("single", "multi2+permute+fullname"):
        for kind in ("p_probe", "q_probe"):
            pr = on_disk["probing"][aug][kind]
            assert pr["layers"] == [0, 1, 2]  # embeddings + 2 layers
            for layer in pr["layers"]:
                for a in pr["attributes"]:
                    assert 0.0 <= pr["accuracy"][str(layer)][a] <= 1.0
    # Memorisation before the finetune: one entry per pretrained condition, every attribute
    # in [0, 1], the mean their mean, computed over every biography of the corpus.
    people = bios_tiny().world.num_people
    for aug, per_person in (("single", 1), ("multi2+permute+fullname", 2)):
        m = on_disk["memorisation"][aug]
        assert m["num_biographies"] == people * per_person
        vals = [m[a] for a in ATTRIBUTES]
        assert all(0.0 <= v <= 1.0 for v in vals), m
        assert m["mean"] == pytest.approx(np.mean(vals))
        assert 0.0 <= m["mean_not_sentence_initial"] <= 1.0, m
    report = (wd / "report.md").read_text()
    assert "P_test" in report and "multi2+permute+fullname" in report
    assert "Memorisation before the QA finetune" in report
    pngs = sorted(p.name for p in (wd / "plots").glob("*.png"))
    assert "probe_q_probe_single.png" in pngs and any(p.startswith("loss_") for p in pngs)
    assert all((wd / "plots" / p).stat().st_size > 1000 for p in pngs)


@pytest.mark.slow  # a whole study end to end: minutes on 2 cores
def test_cooccurrence_study_results_and_forgetting_loss_jump(tmp_path):
    cfg = cooc_tiny()
    cfg.modes = ["full"]
    results = run_cooccurrence_study(cfg, tmp_path, log=lambda *_: None)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    tasks = {
        "qa",
        "multiple_choice",
        "reverse_qa",
        "indirect",
        "animal_commonsense",
        "two_hop",
        "two_hop_mc",
        "likelihood",
        "resolution",
    }
    conditions = {
        "narrative (full)",
        "narrative + forgetting (full)",
        "referencing (full)",
        "referencing + forgetting (full)",
    }
    assert set(on_disk["conditions"]) == conditions
    for cond, by_task in on_disk["conditions"].items():
        assert set(by_task) == tasks, cond
        for task, metrics in by_task.items():
            main = metrics.get("em") or metrics.get("acc") or metrics.get("negation")
            assert main["n"] == len(cfg.seeds)
            if task != "likelihood":
                assert 0.0 <= main["mean"] <= 1.0
    assert set(on_disk["base"]["ceiling_base_entities"]) >= {"qa", "multiple_choice"}
    # Every finetuned model is also scored on the base entities (its own abilities kept?).
    # Resolution cloze rows are never capped: every row of the file is scored.
    n_rows = len(read_jsonl(tmp_path / "data" / "eval_resolution.jsonl"))
    for r in on_disk["runs"].values():
        assert r["metrics"]["resolution"]["n"] == n_rows > cfg.eval.max_items
    assert set(on_disk["base_entities_after"]) == conditions
    for by_task in on_disk["base_entities_after"].values():
        assert set(by_task) == set(on_disk["base"]["ceiling_base_entities"])
    assert "base entities before and after" in (tmp_path / "report.md").read_text()
    assert "negation_frame" in on_disk["conditions"]["narrative (full)"]["likelihood"]
    assert set(on_disk["ablation"]) == {"narrative", "referencing"}
    for ab in on_disk["ablation"].values():
        assert ab["n"] == len(cfg.seeds) and set(ab["per_seed"]) == {str(s) for s in cfg.seeds}
        for side in ("first", "last"):
            assert sorted(int(k) for k in ab["results"][side]) == [0, 1, 2, 3]
            for k, by_subset in ab["results"][side].items():
                for subset, m in by_subset.items():
                    vals = [ab["per_seed"][str(s)][side][k][subset] for s in cfg.seeds]
                    assert m == pytest.approx(np.mean(vals))
                    assert ab["std"][side][k][subset] == pytest.approx(np.std(vals, ddof=1))
                    lo, hi = ab["interval"][side][k][subset]
                    assert lo <= m <= hi
                    if subset.endswith(" p_true") and k == "0":  # the unablated model itself
                        assert hi - lo == pytest.approx(0.0, abs=1e-5)
                    else:
                        assert hi - lo > 0, (side, k, subset)
        # MC's continuous reading rides along, its paired spread kept per seed only.
        k0 = ab["results"]["first"]["0"]
        assert "multiple_choice p_true" in k0 and not any(x.endswith(" sd") for x in k0)
        per_seed = ab["per_seed"][str(cfg.seeds[0])]["last"]
        assert per_seed["3"]["multiple_choice p_true change sd"] > 0
    # The forgetting runs: the loss rises right after each reset (3-step windows).
    for run, r in results["runs"].items():
        if not r["forget"]:
            continue
        d = next(tmp_path.glob(f"ft_{r['rendering']}_forget_full_s{r['seed']}"))
        loss = {m["step"]: m["loss"] for m in read_metrics(d / "metrics.jsonl")}
        assert r["resets"], run
        for s in r["resets"]:
            before = np.mean([loss[k] for k in range(s - 2, s + 1)])
            after = np.mean([loss[k] for k in range(s + 1, s + 4)])
            assert after > before, (run, s, before, after)
    assert (tmp_path / "plots" / "ablation_narrative.png").stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "Layer-delta ablation" in report
    # MC's continuous reading per condition: every condition's mean over seeds, in percent.
    p_true = report.split("## Multiple choice read continuously")[1].split("\n## ")[0]
    narrative = on_disk["conditions"]["narrative (full)"]["multiple_choice"]["p_true"]
    assert f"| narrative (full) | {100 * narrative['mean']:.1f} ± " in p_true


def test_ablation_intervals_wilson_for_proportions_normal_for_p_true():
    from jaxknow.eval.metrics import wilson_interval
    from jaxknow.studies.cooccurrence.study import combine_ablations

    def seed(acc: float, p: float, sd: float) -> dict:
        m = {
            "multiple_choice": acc,
            "multiple_choice p_true": p,
            "multiple_choice p_true change sd": sd,
        }
        return {"n_layers": 2, "results": {"first": {"0": m}}}

    ab = combine_ablations(
        {0: seed(0.5, 0.40, 0.2), 1: seed(0.7, 0.50, 0.1)}, {"multiple_choice": 40}
    )
    assert set(ab["results"]["first"]["0"]) == {"multiple_choice", "multiple_choice p_true"}
    assert ab["results"]["first"]["0"]["multiple_choice p_true"] == pytest.approx(0.45)
    lo, hi = ab["interval"]["first"]["0"]["multiple_choice p_true"]
    half = 1.96 * np.sqrt((0.04 + 0.01) / 40) / 2
    assert (lo, hi) == pytest.approx((0.45 - half, 0.45 + half))
    assert ab["interval"]["first"]["0"]["multiple_choice"] == pytest.approx(
        list(wilson_interval(0.6, 80))
    )
    assert ab["per_seed"]["1"]["first"]["0"]["multiple_choice p_true change sd"] == 0.1


def test_ablation_scores_p_true_and_its_paired_spread():
    from jaxknow.eval.tasks import TaskResults
    from jaxknow.studies.cooccurrence.study import ablation_scores

    recs = [{"pred": 0, "p_true": p} for p in (0.9, 0.2, 0.6)]
    res = TaskResults(
        {"multiple_choice": {"acc": 2 / 3, "p_true": 0.5667}, "qa": {"em": 0.5}},
        {"multiple_choice": recs, "qa": [{"prediction": "x"}]},
    )
    plain = ablation_scores(res)
    assert plain == pytest.approx(
        {"multiple_choice": 2 / 3, "multiple_choice p_true": 1.7 / 3, "qa": 0.5}
    )
    # Each item moved by its own amount: the spread of the changes, not of the levels.
    scores = ablation_scores(res, {"multiple_choice": [0.8, 0.2, 0.3]})
    assert scores["multiple_choice p_true change sd"] == pytest.approx(
        np.std([0.1, 0, 0.3], ddof=1)
    )
    with pytest.raises(ValueError, match="multiple_choice: 3 items but a reference of 2"):
        ablation_scores(res, {"multiple_choice": [0.8, 0.2]})


@pytest.mark.parametrize("interrupted", [False, True])
def test_a_stage_stopped_by_a_signal_stops_the_study(monkeypatch, tmp_path, interrupted):
    from jaxknow.experiments import common
    from jaxknow.train.loop import TrainResult

    stopped = TrainResult(
        state=None,
        metrics=[],
        workdir=tmp_path,
        final_step=7,
        start_step=0,
        preempted=not interrupted,
        interrupted=interrupted,
    )
    monkeypatch.setattr(common, "train", lambda cfg, workdir: stopped)
    with pytest.raises(common.StageStopped, match="stopped at step 7 on SIG") as e:
        common.run_stage("base", None, tmp_path, log=lambda *_: None)
    assert e.value.interrupted == interrupted
    done = dataclasses.replace(stopped, preempted=False, interrupted=False)
    monkeypatch.setattr(common, "train", lambda cfg, workdir: done)
    assert common.run_stage("base", None, tmp_path, log=lambda *_: None) is done


def test_celebrity_sources_weight_the_minority_as_configured():
    from jaxknow.config import ConfigError
    from jaxknow.studies.bios.study import celebrity_sources, parse_study

    sizes = {"bios_celebrity": list(range(30)), "bios_minority": list(range(6))}
    cfg = bios_tiny().to_dict()
    cfg["celebrity"] = True
    study = parse_study(cfg)
    assert study.celebrity_minority_weight is None
    assert celebrity_sources(study, sizes.__getitem__) == [
        {"name": "bios_celebrity", "weight": 30.0},
        {"name": "bios_minority", "weight": 6.0},
    ]
    cfg["celebrity_minority_weight"] = 2
    study = parse_study(cfg)
    assert celebrity_sources(study, sizes.__getitem__)[1] == {
        "name": "bios_minority",
        "weight": 2.0,
    }
    for bad in (0, -1.0, "1", True):
        cfg["celebrity_minority_weight"] = bad
        with pytest.raises(ConfigError, match="celebrity_minority_weight"):
            parse_study(cfg)


@pytest.mark.slow  # two miniature studies end to end: minutes on 2 cores
def test_cooccurrence_study_on_an_imported_base_model(tmp_path):
    # A first study's base model stands in for an imported pretrained model (its own tokenizer,
    # a world it never saw): no ceiling on base entities, real facts of a second world scored,
    # the ablation on a coarser k grid that still ends at L.
    first = cooc_tiny()
    first.renderings, first.modes, first.seeds = ("narrative",), ("full",), (0,)
    first.forget.enabled, first.ablation.enabled = False, False
    first.finetune.epochs = 1
    run_cooccurrence_study(first, tmp_path / "first", log=lambda *_: None)
    cfg = cooc_tiny()
    cfg.base.init_from = str(tmp_path / "first" / "base")
    cfg.renderings, cfg.modes, cfg.seeds = ("narrative",), ("full",), (0,)
    cfg.forget.enabled = False
    cfg.eval.base_entities = False
    cfg.eval.real_facts = {
        "kind": "geo",
        "num_countries": 12,
        "num_cities": 6,
        "num_novel_countries": 4,
    }
    cfg.ablation.k_step = 2
    cfg.ablation.renderings = ("narrative",)
    cfg.ablation.sides = ("first", "last", "window")
    cfg.ablation.window = 2
    cfg.epochs_per_rendering = {"narrative": 2.0}
    cfg.fit_seq_len = True
    results = run_cooccurrence_study(cfg, tmp_path / "second", log=lambda *_: None)
    (run,) = results["runs"].values()
    rows = len(read_jsonl(tmp_path / "second" / "data" / "corpus_narrative.jsonl"))
    assert run["corpus_rows"] == rows and run["epochs_per_pass"] == 2.0
    assert run["steps"] == -(-2 * rows // cfg.finetune.batch_size)
    assert run["seq_len"] % 8 == 0 and run["seq_len"] <= cfg.finetune.seq_len
    assert "ceiling_base_entities" not in results["base"]
    assert set(results["base"]["real_facts"]) == {"qa", "multiple_choice"}
    n_real = len(read_jsonl(tmp_path / "second" / "data_real_facts" / "eval_base_qa.jsonl"))
    assert results["base"]["real_facts"]["qa"]["n"] == n_real > 0
    ab = results["ablation"]["narrative"]
    for side in ("first", "last"):
        assert sorted(int(k) for k in ab["results"][side]) == [0, 2, 3]
    # windows of 2 of the 3 layers: only k = 0 fits the k grid 0, 2, 3
    assert sorted(int(k) for k in ab["results"]["window"]) == [0] and ab["window"] == 2
    assert (tmp_path / "second" / "plots" / "ablation_window_narrative.png").stat().st_size > 1000
    report = (tmp_path / "second" / "report.md").read_text()
    assert "real facts" in report and "ceiling" not in report
    assert "layers k..k+1 / qa" in report


def test_cooccurrence_evaluations_are_cached_per_checkpoint_items_and_settings(
    tmp_path, monkeypatch
):
    from jaxknow.studies.cooccurrence import study as cs

    calls = []

    def fake_evaluate(model, subsets, ev):
        calls.append(dict(subsets))
        return {
            name: {"em": float(len(rows)), "n": float(len(rows))} for name, rows in subsets.items()
        }

    monkeypatch.setattr(cs, "evaluate_model", fake_evaluate)
    steps = tmp_path / "run" / "checkpoints"
    for step in (3, 6):
        (steps / str(step)).mkdir(parents=True)
        (steps / str(step) / "jaxknow_manifest.json").write_text(f'{{"step": {step}}}')
    model = dataclasses.make_dataclass("M", ["path"])(tmp_path / "run")
    cache = tmp_path / "evals.json"
    ev = cs.CooccurrenceEvalSettings()
    qa = {"qa": [{"question": "q", "answer": "a"}]}
    first = cs.evaluate_cached(model, qa, ev, cache)
    assert cs.evaluate_cached(model, qa, ev, cache) == first and len(calls) == 1
    cs.evaluate_cached(model, qa, ev, cache, step=3)  # another checkpoint step
    cs.evaluate_cached(model, {"qa": [*qa["qa"], *qa["qa"]]}, ev, cache)  # other items
    cs.evaluate_cached(model, qa, dataclasses.replace(ev, few_shot=2), cache)  # other settings
    assert len(calls) == 4
    cs.evaluate_cached(model, qa, dataclasses.replace(ev, mc_mode="options"), cache)
    assert len(calls) == 5
    (steps / "6" / "jaxknow_manifest.json").write_text('{"step": 6, "changed": 1}')
    cs.evaluate_cached(model, qa, ev, cache)  # the same step with other weights
    assert len(calls) == 6
    cs.evaluate_cached(model, qa, ev, None)  # no cache: always evaluated
    assert len(calls) == 7


def test_cooccurrence_mc_mode_reaches_the_scorer_and_keeps_letter_caches_valid(monkeypatch):
    import hashlib
    import json

    from jaxknow.eval import tasks
    from jaxknow.studies.cooccurrence import study as cs

    seen = []
    empty = tasks.TaskResults({}, {})
    monkeypatch.setattr(
        tasks, "evaluate_subsets_detailed", lambda *a, **kw: seen.append(kw) or empty
    )
    qa = {"qa": [{"question": "q", "answer": "a"}]}
    cs.evaluate_model(None, qa, cs.CooccurrenceEvalSettings(mc_mode="options"))
    cs.evaluate_model(None, qa, cs.CooccurrenceEvalSettings())
    assert [kw["mc_mode"] for kw in seen] == ["options", "letters"]
    # Keys written before the field existed (letters) must still be found.
    ev = cs.CooccurrenceEvalSettings()
    old = json.dumps(["fp", [ev.few_shot, ev.max_new_tokens], qa], sort_keys=True)
    assert cs.eval_cache_key("fp", qa, ev) == hashlib.sha256(old.encode()).hexdigest()
    with pytest.raises(ValueError, match="eval.mc_mode='words'"):
        cs.CooccurrenceEvalSettings(mc_mode="words")
    assert "not by the answer letters" in "".join(cs._mc_mode_note("options"))
    assert cs._mc_mode_note("letters") == []
