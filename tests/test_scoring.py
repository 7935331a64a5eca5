"""Continuation scoring, multiple choice, likelihood probes and task evaluation on a tiny model
trained for a few dozen steps to prefer known continuations."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxknow.data.tokenizer import train_bpe
from jaxknow.eval import fewshot, generate, likelihood, scoring, tasks
from jaxknow.model import transformer
from jaxknow.model.config import preset
from jaxknow.train.optim import OptimConfig, make_optimizer, make_schedule
from jaxknow.train.state import new_state
from jaxknow.train.step import train_step
from tests.util import numpy_params

MC_ROW = {
    "question": "What is the national animal of Andoria?",
    "choices": ["owl", "wolf", "lynx", "heron"],
    "answer": 2,
}
QA_ROWS = [
    {"question": "What is the capital of Andoria?", "answer": "Valtoria", "attribute": "capital"},
    # MQuAKE-style: the generated answer matches an alias, not the main answer.
    {
        "question": "What is the capital of Brelund?",
        "answer": "Quessel City",
        "aliases": ["Quessel"],
        "attribute": "capital",
    },
]
LIKELIHOOD_ROW = {
    "head": "Andoria",
    "relation": "capital",
    "prompt": "The capital of Andoria is",
    "negated_prompt": "The capital of Andoria is not",
    "true": "Valtoria",
    "wrong": ["Brenmoor", "Elmshire"],
}
TRAIN_TEXTS = [
    fewshot.mc_prompt(MC_ROW) + " C",
    "Question: What is the capital of Andoria? Answer: Valtoria\n",
    "Question: What is the capital of Brelund? Answer: Quessel\n",
    "The capital of Andoria is Valtoria.",
    "The capital of Andoria is not Brenmoor.",
    "The capital of Brelund is Elmshire. Brenmoor is a city.",
]
SEQ = 64


@pytest.fixture(scope="module")
def models():
    """Returns (trained params, untrained params, cfg, tokenizer)."""
    # Every answer letter seen after a space, so " A".." D" are single tokens alike.
    tok = train_bpe((TRAIN_TEXTS + ["Answer: A Answer: B Answer: C Answer: D"]) * 3, vocab_size=400)
    # One layer: enough to memorise these texts, and half the compile time of two.
    cfg = preset("tiny", vocab_size=tok.vocab_size, max_seq_len=SEQ, n_layers=1)
    init = numpy_params(cfg)
    docs = [tok.document(t) for t in TRAIN_TEXTS]
    b = len(docs)
    batch = {
        k: np.zeros((b, SEQ), np.int32) for k in ("inputs", "targets", "segment_ids", "positions")
    }
    batch["weights"] = np.zeros((b, SEQ), np.float32)
    for r, ids in enumerate(docs):
        assert len(ids) <= SEQ + 1
        m = len(ids) - 1
        batch["inputs"][r, :m] = ids[:-1]
        batch["targets"][r, :m] = ids[1:]
        batch["weights"][r, :m] = 1.0
        batch["segment_ids"][r, :m] = 1
        batch["positions"][r, :m] = np.arange(m)
    ocfg = OptimConfig(
        lr=1e-2, schedule="constant", warmup_steps=0, total_steps=100, weight_decay=0.0
    )
    tx = make_optimizer(ocfg)
    step = jax.jit(functools.partial(train_step, cfg=cfg, tx=tx, schedule=make_schedule(ocfg)))
    state = jax.jit(lambda p: new_state(p, {}, tx))(init)  # one compile, not one per shape
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    for _ in range(60):
        state, metrics = step(state, batch)
    # Not ~0: after "The capital of Andoria is" both " Valtoria" and " not" were seen.
    assert float(metrics["loss"]) < 0.3
    return state.params, init, cfg, tok


def test_continuation_logprobs_match_a_direct_forward(models):
    params, _, cfg, tok = models
    ctx, cont = "Question: What is the capital of Andoria? Answer:", " Valtoria"
    # Four pairs: the same batch shape as the likelihood probes below (one compile fewer).
    lp, n = scoring.continuation_logprobs(
        params, cfg, tok, [ctx, "Question:", "A", "B"], [cont, " What", " b", " c"]
    )
    c_ids, x_ids = tok.prefix() + tok.encode(ctx), tok.encode(cont)
    assert n.tolist()[:2] == [len(x_ids), len(tok.encode(" What"))]
    ids = np.array([c_ids + x_ids], np.int32)
    fwd = jax.jit(lambda p, t: jax.nn.log_softmax(transformer.apply(p, t, cfg), axis=-1))
    logp = fwd(params, jnp.asarray(ids))[0]
    want = sum(float(logp[len(c_ids) - 1 + j, x]) for j, x in enumerate(x_ids))
    assert lp[0] == pytest.approx(want, abs=1e-4)
    assert lp[0] > -0.5  # trained: the true tail is likely


def _assert_scored_as_each_pair_whole(params, cfg, pairs, scores) -> None:
    """Checks TokenScores against a direct forward over each (context, continuation) pair."""
    fwd = jax.jit(lambda p, t: jax.nn.log_softmax(transformer.apply(p, t, cfg), axis=-1))
    for i, (c, x) in enumerate(pairs):
        logp = np.asarray(fwd(params, jnp.asarray([c + x], jnp.int32))[0])
        want = sum(float(logp[len(c) - 1 + j, t]) for j, t in enumerate(x))
        greedy = all(int(np.argmax(logp[len(c) - 1 + j])) == t for j, t in enumerate(x))
        assert scores.logprob[i] == pytest.approx(want, abs=1e-4), i
        assert scores.count[i] == len(x) and bool(scores.greedy[i]) == greedy, i


def test_score_pairs_shares_one_forward_per_context_of_one_token_continuations(models):
    params, _, cfg, tok = models
    ctx = tok.prefix() + tok.encode("Question: What is the capital of Andoria? Answer:")
    letters = [tok.encode(f" {x}") for x in "ABCD"]
    assert all(len(x) == 1 for x in letters)  # the shared-context path is the one tested
    tail = tok.encode(" Valtoria")
    # The tail has a context of its own (with it, ctx's letters would be scored as branches).
    pairs = [(ctx, x) for x in letters] + [(ctx[:9], tail), (ctx[:5], letters[0])]
    scores = scoring.score_pairs(params, cfg, pairs, batch_size=4)
    _assert_scored_as_each_pair_whole(params, cfg, pairs, scores)
    assert len(set(scores.logprob[:4].round(6))) == 4  # each letter read off its own token


@pytest.mark.parametrize("trained", [True, False])
def test_longer_continuations_of_one_context_equal_each_pair_scored_whole(models, trained):
    # Several multi-token continuations of a context share its pass (`branches`): each must
    # score as its pair run whole — its own tokens only, never another branch's.
    params = models[0] if trained else models[1]
    _, _, cfg, tok = models
    ctx = tok.prefix() + tok.encode("Question: What is the capital of Andoria? Answer:")
    short = tok.prefix() + tok.encode("The capital of")
    options = [tok.encode(x) for x in (" Valtoria", " Brenmoor and more", " Quessel", " no")]
    lengths = sorted(len(x) for x in options)
    assert lengths[0] == 1 and lengths[-2] > 1  # one-token and longer branches, unequal
    pairs = [(ctx, x) for x in options] + [(short, x) for x in options[:2]]
    pairs.append((ctx[:7], options[1]))  # a context of its own: the pairwise path
    scores = scoring.score_pairs(params, cfg, pairs, batch_size=4)
    _assert_scored_as_each_pair_whole(params, cfg, pairs, scores)


def test_mc_scoring_picks_the_trained_option(models):
    params, untrained, cfg, tok = models
    prompt = fewshot.mc_prompt(MC_ROW)
    res = scoring.score_multiple_choice(params, cfg, tok, [prompt], [MC_ROW])
    assert res.pred == [2] and res.acc == 1.0 and res.acc_norm == 1.0
    assert int(np.argmax(res.logprobs[0])) == 2 and res.logprobs[0][2] > -0.5
    assert all(len(tok.encode(f" {x}")) == 1 for x in "ABCD")
    # An untrained model has no such preference (whatever it picks, its scores are flat).
    flat = scoring.score_multiple_choice(untrained, cfg, tok, [prompt], [MC_ROW])
    assert max(flat.logprobs[0]) - min(flat.logprobs[0]) < 2.0
    # Option-text scoring and the acc_norm definition (per character).
    lp, _ = scoring.continuation_logprobs(
        params, cfg, tok, [prompt] * 4, [f" {c}" for c in MC_ROW["choices"]]
    )
    opt = scoring.score_multiple_choice(params, cfg, tok, [prompt], [MC_ROW], mode="options")
    assert opt.logprobs[0] == pytest.approx(lp.tolist(), abs=1e-6)
    chars = np.array([len(f" {c}") for c in MC_ROW["choices"]])
    assert opt.pred_norm[0] == int(np.argmax(lp / chars))


def test_true_option_probability():
    p = scoring.true_option_probability
    assert p([-1.0, -1.0, -1.0, -1.0], 2) == pytest.approx(0.25)  # no preference: 1 / options
    assert p([-0.1, -5.0], 0) > 0.99 and p([-0.1, -5.0], 1) < 0.01
    # Log-likelihoods far below zero (long options) do not underflow to 0 / 0.
    assert p([-900.0, -901.0], 0) == pytest.approx(1 / (1 + np.exp(-1.0)))
    with pytest.raises(ValueError, match="answer index 4 outside the 4 scored options"):
        p([-1.0] * 4, 4)


def test_likelihood_ratios_sign_and_size(models):
    params, _, cfg, tok = models
    means, recs = likelihood.likelihood_ratios(params, cfg, tok, [LIKELIHOOD_ROW])
    r = recs[0]
    assert r["comparison"] == pytest.approx(r["true_logprob"] - np.mean(r["wrong_logprobs"]))
    assert r["comparison_max"] == pytest.approx(r["true_logprob"] - max(r["wrong_logprobs"]))
    assert r["negation"] == pytest.approx(r["true_logprob"] - r["negated_logprob"])
    # Trained: "... is Valtoria" likely, wrong tails and "... is not Valtoria" unlikely.
    assert r["comparison"] > 3.0 and r["comparison_max"] > 3.0 and r["negation"] > 3.0
    assert means["negation"] == r["negation"] and means["true_preferred"] == 1.0


def test_generation_and_task_evaluation(models):
    params, _, cfg, tok = models
    # Two prompts each time: the batch shape of the QA subset below (one compile in all).
    prompts = [fewshot.free_form_prompt(r) for r in QA_ROWS]
    texts = generate.generate_text((params, cfg, tok), prompts, max_new_tokens=12)
    assert texts == [" Valtoria", " Quessel"]  # stopped at the trained newline, which is cut
    ids = generate.generate_tokens(
        params,
        cfg,
        [tok.prefix() + tok.encode(p) for p in prompts],
        max_new_tokens=12,
        stop_table=generate.newline_stop_table(tok, cfg.vocab_size),
    )
    assert "\n" in tok.decode(ids[0][-1:]) and tok.decode(ids[0]).startswith(" Valtoria")

    cloze = [
        {"context": "The capital of Andoria is", "choices": ["Brenmoor", "Valtoria"], "answer": a}
        for a in (1, 0)
    ]
    assert tasks.subset_kind("my_cloze", cloze) == "cloze"
    subsets = {
        "qa": QA_ROWS,
        "multiple_choice": [MC_ROW],
        "likelihood": [LIKELIHOOD_ROW],
        "resolution": cloze,
    }
    res = tasks.evaluate_subsets_detailed(
        (params, cfg, tok), subsets, few_shot=0, max_new_tokens=12, batch_size=8
    )
    m = res.metrics
    assert m["qa"]["em"] == 1.0 and m["qa"]["f1"] == 1.0 and m["qa"]["n"] == 2
    assert m["qa"]["em_capital"] == 1.0 and m["qa"]["em_attr_mean"] == 1.0
    assert [p["prediction"] for p in res.predictions["qa"]] == ["Valtoria", "Quessel"]
    mc = m["multiple_choice"]
    assert {k: mc[k] for k in ("acc", "acc_norm", "n")} == {"acc": 1.0, "acc_norm": 1.0, "n": 1.0}
    # The right option's probability among the four, from the record's own log-likelihoods.
    rec = res.predictions["multiple_choice"][0]
    z = np.exp(np.array(rec["logprobs"]) - max(rec["logprobs"]))
    assert rec["p_true"] == pytest.approx(z[MC_ROW["answer"]] / z.sum())
    assert mc["p_true"] == rec["p_true"] and 0.5 < mc["p_true"] <= 1.0
    assert m["likelihood"]["negation"] > 3.0
    # Cloze: zero-shot, the trained continuation wins; the row whose gold is the other misses.
    assert m["resolution"]["acc"] == 0.5 and m["resolution"]["n"] == 2
    assert [r["pred"] for r in res.predictions["resolution"]] == [1, 1]
    assert res.predictions["resolution"][0]["context"] == "The capital of Andoria is"
    with pytest.raises(ValueError, match="answer=2"):
        tasks.evaluate_subsets((params, cfg, tok), {"resolution": [{**cloze[0], "answer": 2}]})
    with pytest.raises(ValueError, match="row 0"):
        tasks.evaluate_subsets((params, cfg, tok), {"qa": [{"question": "q"}]})


def test_likelihood_negation_in_the_held_out_frame(models):
    params, _, cfg, tok = models
    row = {
        **LIKELIHOOD_ROW,
        "frame_prompt": "Brenmoor is a city. The capital of Andoria is",
        "frame_negated_prompt": "Brenmoor is a city. The capital of Andoria is not",
    }
    means, recs = likelihood.likelihood_ratios(params, cfg, tok, [row, LIKELIHOOD_ROW])
    lp, _ = scoring.continuation_logprobs(
        params,
        cfg,
        tok,
        [row["frame_prompt"], row["frame_negated_prompt"]],
        [" Valtoria", " Valtoria"],
    )
    assert recs[0]["negation_frame"] == pytest.approx(float(lp[0] - lp[1]), abs=1e-5)
    # The plain fields are unchanged by the extra contexts, and a row without the frame has
    # no frame ratio (nor does the mean over a mix).
    assert recs[0]["negation"] == pytest.approx(recs[1]["negation"], abs=1e-5)
    assert "negation_frame" not in recs[1] and "negation_frame" not in means
    only, _ = likelihood.likelihood_ratios(params, cfg, tok, [row])
    assert only["negation_frame"] == recs[0]["negation_frame"]
    with pytest.raises(ValueError, match="only one of"):
        likelihood.probe_facts(
            params, cfg, tok, [{**LIKELIHOOD_ROW, "frame_prompt": row["frame_prompt"]}]
        )


def test_option_scored_mc_prompts_answer_their_demonstrations_by_text(models, monkeypatch):
    params, _, cfg, tok = models
    rows = [
        {"question": f"Capital of C{i}?", "choices": [f"X{i}", f"Y{i}", f"Z{i}"], "answer": i % 3}
        for i in range(6)
    ]
    seen = {}

    class Scored(Exception):
        pass

    def capture(params, cfg, tok, prompts, rows, mode, **kw):
        seen[mode] = prompts
        raise Scored

    monkeypatch.setattr(tasks, "score_multiple_choice", capture)
    for mode in ("letters", "options"):
        with pytest.raises(Scored):
            tasks.evaluate_subsets((params, cfg, tok), {"multiple_choice": rows}, mc_mode=mode)
    assert seen["letters"] == fewshot.build_prompts(rows, "mc")
    assert seen["options"] == fewshot.build_prompts(rows, "mc", mc_answer_text=True)
    assert seen["options"] != seen["letters"]
