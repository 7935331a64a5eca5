"""SQuAD metrics, aggregation over seeds, and `launch.evaluate` end to end."""

from __future__ import annotations

import json
import math
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxknow.config import ConfigError, parse
from jaxknow.data.jsonl import write_jsonl
from jaxknow.data.tokenizer import train_bpe
from jaxknow.eval import metrics as M
from jaxknow.eval import tasks
from jaxknow.io.checkpoint import save_params_checkpoint
from jaxknow.model.config import preset
from jaxknow.model.params import ParamSpec, param_specs
from tests.util import run_module


def test_normalizer_follows_squad():
    assert M.normalize_answer("The Cat!") == "cat"
    assert M.normalize_answer("  An  apple,\ta day. ") == "apple day"
    assert M.normalize_answer("the-theory of THE  thesis") == "thetheory of thesis"
    assert M.normalize_answer("Hello, World's end") == "hello worlds end"
    assert M.normalize_answer("a") == ""


def test_exact_match_and_f1():
    assert M.exact_match("The Cat!", "cat") == 1.0
    assert M.exact_match("cats", "cat") == 0.0
    assert M.f1_score("x b c", "b c d") == pytest.approx(2 / 3)
    # SQuAD drops the article "a" before counting: "b c" vs "b c d", P = 1, R = 2/3.
    assert M.f1_score("a b c", "b c d") == pytest.approx(0.8)
    assert M.f1_score("the big red dog", "big dog") == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    assert M.f1_score("dog dog", "dog") == pytest.approx(2 * 0.5 / 1.5)
    assert M.f1_score("", "") == 0.0 and M.exact_match("", "the") == 1.0  # as SQuAD v1.1
    row = {"question": "q", "answer": "Quessel City", "aliases": ["Quessel", "QC"]}
    assert M.gold_answers(row) == ["Quessel City", "Quessel", "QC"]
    assert M.score_free_form("quessel.", M.gold_answers(row)) == {"em": 1.0, "f1": 1.0}
    assert M.score_free_form("quessel town", ["Quessel City"])["f1"] == pytest.approx(0.5)


def test_mean_std_over_seeds():
    assert M.std([1.0, 2.0, 3.0]) == pytest.approx(1.0)  # sample std (ddof=1)
    assert M.std([1.0, 2.0, 3.0], ddof=0) == pytest.approx(math.sqrt(2 / 3))
    assert M.std([5.0]) == 0.0 and math.isnan(M.mean([]))
    runs = [{"qa": {"em": 0.5, "f1": 0.6}}, {"qa": {"em": 0.7, "f1": 0.8}}, {"qa": {"em": 0.6}}]
    agg = M.aggregate_runs(runs)
    assert agg["qa"]["em"]["mean"] == pytest.approx(0.6)
    assert agg["qa"]["em"]["std"] == pytest.approx(0.1)
    assert agg["qa"]["f1"]["n"] == 2
    assert M.format_mean_std(agg["qa"]["em"]) == "0.600 (0.100)"


def _write_workdir(root, with_checkpoint: bool = True):
    rng = random.Random(0)
    names = ["Andoria", "Brelund", "Corvania", "Dostria", "Estavia", "Fennmark"]
    cities = ["Valtoria", "Quessel", "Brenmoor", "Elmshire", "Farrow", "Glimmer"]
    animals = ["wolf", "owl", "lynx", "heron"]
    qa = [{"question": f"What is the capital of {n}?", "answer": c} for n, c in zip(names, cities)]
    mc = []
    for n in names:
        choices = animals[:]
        rng.shuffle(choices)
        mc.append(
            {
                "question": f"What is the national animal of {n}?",
                "choices": choices,
                "answer": rng.randrange(4),
            }
        )
    lik = [
        {
            "head": n,
            "relation": "capital",
            "prompt": f"The capital of {n} is",
            "negated_prompt": f"The capital of {n} is not",
            "true": c,
            "wrong": cities[:2],
        }
        for n, c in zip(names[2:4], cities[2:4])
    ]
    data = root / "data"
    write_jsonl(data / "eval_qa.jsonl", qa)
    write_jsonl(data / "eval_multiple_choice.jsonl", mc)
    write_jsonl(data / "eval_likelihood.jsonl", lik)
    if with_checkpoint:
        texts = [
            f"The capital of {n} is {c}. Its animal is the {a}.\n"
            for n, c, a in zip(names, cities, animals * 2)
        ]
        tok = train_bpe(texts * 4, vocab_size=300)
        cfg = preset("tiny", vocab_size=tok.vocab_size, n_layers=1)
        nrng = np.random.default_rng(0)
        params = jax.tree.map(
            lambda s: jnp.asarray(
                np.full(s.shape, float(s.init == "ones"), np.float32)
                if s.init != "normal"
                else nrng.normal(0, s.std, s.shape).astype(np.float32)
            ),
            param_specs(cfg),
            is_leaf=lambda x: isinstance(x, ParamSpec),
        )
        save_params_checkpoint(root, params, {"model": cfg.to_dict()}, step=7)
        tok.save(root)
    return root


CONFIG = """
from configs.eval.cooccurrence import get_config as base


def get_config():
    c = base()
    c.eval.subsets = ["qa", "multiple_choice", "likelihood"]
    c.eval.max_new_tokens = 4
    c.eval.batch_size = 8
    return c
"""


def test_launch_evaluate_end_to_end(tmp_path):
    work = _write_workdir(tmp_path / "work")
    cfg_file = tmp_path / "eval_cfg.py"
    cfg_file.write_text(CONFIG)
    proc = run_module("launch.evaluate", f"--config={cfg_file}", f"--workdir={work}", devices=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = work / "eval" / "results_step7.json"
    result = json.loads(out.read_text())
    assert result["step"] == 7
    res = result["results"]
    assert set(res) == {"qa", "multiple_choice", "likelihood"}
    assert res["qa"]["n"] == 6 and 0.0 <= res["qa"]["em"] <= res["qa"]["f1"] <= 1.0
    assert 0.0 <= res["multiple_choice"]["acc"] <= 1.0 and "acc_norm" in res["multiple_choice"]
    assert {"comparison", "comparison_max", "negation"} <= set(res["likelihood"])
    assert len(result["predictions"]["qa"]) == 6  # the cooccurrence config saves predictions
    assert "multiple_choice" in proc.stdout and "acc_norm" in proc.stdout
    assert str(out) in proc.stdout


def test_launch_evaluate_errors(tmp_path):
    work = _write_workdir(tmp_path / "work", with_checkpoint=False)
    proc = run_module(
        "launch.evaluate", "--config=configs/eval/cooccurrence.py", f"--workdir={work}", devices=1
    )
    assert proc.returncode == 2
    # The first missing subset file is reported before any checkpoint is looked for.
    assert "error:" in proc.stderr and "eval_reverse_qa.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr

    cfg = parse(tasks.EvalConfig, {"subsets": ["qa", "two_hop"]}, "eval")
    with pytest.raises(FileNotFoundError, match="two_hop"):
        tasks.load_subsets(tasks.subset_paths(cfg, work))
    rows = tasks.load_subsets(
        tasks.subset_paths(parse(tasks.EvalConfig, {"subsets": ["qa"]}, "eval"), work)
    )
    assert len(rows["qa"]) == 6
    with pytest.raises(ConfigError, match="eval.mc_mode"):
        parse(tasks.EvalConfig, {"subsets": ["qa"], "mc_mode": "x"}, "eval")
    with pytest.raises(ConfigError, match=r"^eval: unknown key\(s\) \['nope'\]"):
        parse(tasks.EvalConfig, {"subsets": ["qa"], "nope": 1}, "eval")


def test_launch_evaluate_missing_checkpoint(tmp_path):
    work = _write_workdir(tmp_path / "work", with_checkpoint=False)
    cfg_file = tmp_path / "eval_cfg.py"
    cfg_file.write_text(CONFIG)
    proc = run_module("launch.evaluate", f"--config={cfg_file}", f"--workdir={work}", devices=1)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_mean_interval():
    from jaxknow.eval.metrics import mean_interval

    lo, hi = mean_interval(0.5, [0.2], 100)
    assert (lo, hi) == pytest.approx((0.5 - 1.96 * 0.02, 0.5 + 1.96 * 0.02))
    # Two runs: the mean of two means, each with its own spread.
    lo, hi = mean_interval(0.5, [0.2, 0.4], 100)
    assert hi - 0.5 == pytest.approx(1.96 * math.sqrt((0.04 + 0.16) / 100) / 2)
    assert mean_interval(0.99, [0.3], 10)[1] == 1.0  # clipped to the score's range
    assert all(math.isnan(x) for x in mean_interval(0.5, [0.2], 0))
    assert all(math.isnan(x) for x in mean_interval(float("nan"), [0.2], 10))


def test_wilson_interval():
    from jaxknow.eval.metrics import wilson_interval

    lo, hi = wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = wilson_interval(0.0, 102)  # never below 0, still a real width at the floor
    assert lo == 0.0 and 0.03 < hi < 0.04
    assert wilson_interval(1.0, 10)[1] == 1.0
    narrow, wide = wilson_interval(0.3, 1000), wilson_interval(0.3, 50)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert all(math.isnan(x) for x in wilson_interval(0.5, 0))
