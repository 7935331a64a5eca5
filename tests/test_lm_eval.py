"""jaxknow inside lm-evaluation-harness: generated task files, the `jaxknow` model type, and
parity with jaxknow's own evaluation and with lm-eval's `hf` model on the exported checkpoint.

The world is the tiny country world (`configs/worlds/countries.py:tiny`); the model is a tiny
random GPT-2-style model (weights scaled up so that greedy choices are decisive) with the
world's tokenizer.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

import jax  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from jaxknow.data.jsonl import CorpusFormatError, read_jsonl  # noqa: E402
from jaxknow.eval import fewshot  # noqa: E402
from jaxknow.eval.lm_adapter import JaxknowLM, JaxknowLMError  # noqa: E402
from jaxknow.eval.lm_tasks import write_lm_tasks  # noqa: E402
from jaxknow.eval.tasks import evaluate_subsets_detailed  # noqa: E402
from jaxknow.io.checkpoint import save_params_checkpoint  # noqa: E402
from jaxknow.io.load import load_model  # noqa: E402
from jaxknow.model.config import preset  # noqa: E402
from tests.util import numpy_params  # noqa: E402

SUBSETS = ("qa", "multiple_choice")
MAX_NEW = 8
TOL = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    import jaxknow.studies  # noqa: F401  (registers the studies' world kinds)
    from configs.worlds.countries import get_config
    from jaxknow.data.build import materialize

    root = tmp_path_factory.mktemp("lm_eval")
    c = get_config("tiny")
    world = root / "world"
    materialize(c.world.to_dict(), world, c.seed)
    cfg = preset("tiny").replace(vocab_size=c.world.vocab_size, max_seq_len=256)
    params = jax.tree.map(lambda x: 4.0 * x if x.ndim >= 2 else x, numpy_params(cfg, seed=1))
    model = root / "model"
    save_params_checkpoint(model, params, {"model": cfg.to_dict()})
    for f in ("tokenizer.json", "special_tokens.json"):
        shutil.copy(world / f, model / f)
    tasks = root / "tasks"
    write_lm_tasks(world, tasks, SUBSETS, max_new_tokens=MAX_NEW)
    return {"root": root, "world": world, "model": model, "tasks": tasks}


class _Recorder(LM):
    """Records the requests lm-eval builds and answers them with nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple] = []

    def loglikelihood(self, requests):
        self.seen += [r.args for r in requests]
        return [(0.0, False)] * len(requests)

    def loglikelihood_rolling(self, requests):
        return [0.0] * len(requests)

    def generate_until(self, requests):
        self.seen += [r.args for r in requests]
        return [""] * len(requests)


def _run(setup, lm, **kw) -> dict:
    tm = TaskManager(include_path=str(setup["tasks"]), include_defaults=False)
    return lm_eval.simple_evaluate(
        model=lm, tasks=[f"jaxknow_{s}" for s in SUBSETS], task_manager=tm, log_samples=True, **kw
    )


def _by_doc(samples: list[dict]) -> dict[int, dict]:
    return {int(s["doc"]["doc_index"]): s for s in samples}


def test_written_tasks_give_the_forks_prompts(setup, tmp_path):
    """Every prompt lm-eval 0.4.13 builds from the written tasks, for every free-form and MC
    subset of the world's novel split (112 items), equals jaxknow's own 5-shot prompt, which
    is the fork's (tests/test_fewshot.py pins that on hand-made splits)."""
    novel = [
        p.stem[len("eval_") :]
        for p in sorted(setup["world"].glob("eval_*.jsonl"))
        # Likelihood probes and zero-shot cloze rows (resolution) are not harness formats.
        if not p.stem.startswith(("eval_base_", "eval_likelihood", "eval_resolution"))
    ]
    written = write_lm_tasks(setup["world"], tmp_path, novel, max_new_tokens=MAX_NEW)
    assert set(written) == {
        f"jaxknow_{n}"
        for n in (
            "qa",
            "reverse_qa",
            "indirect",
            "animal_commonsense",
            "two_hop",
            "multiple_choice",
            "two_hop_mc",
        )
    }
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)
    res = lm_eval.simple_evaluate(
        model=_Recorder(), tasks=["jaxknow"], task_manager=tm, log_samples=True
    )
    assert set(res["samples"]) == set(written)
    for task, kind in written.items():
        rows = read_jsonl(setup["world"] / f"eval_{task[len('jaxknow_') :]}.jsonl")
        want = fewshot.build_prompts(rows, kind)
        got = _by_doc(res["samples"][task])
        assert sorted(got) == list(range(len(rows)))
        for i, s in got.items():
            assert s["arguments"][0][0] == want[i], (task, i)
        if kind == "mc":  # " A" .. " D" scored after the prompt
            assert [a[1] for a in got[0]["arguments"]] == [" A", " B", " C", " D"]
        else:
            assert got[0]["arguments"][0][1]["until"] == ["\n"]
    yaml = (tmp_path / "jaxknow_qa.yaml").read_text()
    assert "sampler: !function utils.ForkSampler" in yaml


def test_adapter_matches_own_evaluation(setup):
    """lm-eval through JaxknowLM and jaxknow's own evaluation: identical greedy predictions,
    log-likelihoods within 1e-4, identical scores."""
    model = load_model(setup["model"])
    rows = {n: read_jsonl(setup["world"] / f"eval_{n}.jsonl") for n in SUBSETS}
    own = evaluate_subsets_detailed(model, rows, max_new_tokens=MAX_NEW)
    lm = JaxknowLM(model=model)
    assert lm.add_bos  # a jaxknow-trained model keeps its BOS (bos=auto)
    res = _run(setup, lm)
    free = _by_doc(res["samples"]["jaxknow_qa"])
    for i, rec in enumerate(own.predictions["qa"]):
        assert free[i]["filtered_resps"][0].strip() == rec["prediction"]
        assert free[i]["exact"] == 100.0 * rec["em"] and free[i]["f1"] == 100.0 * rec["f1"]
    mc = _by_doc(res["samples"]["jaxknow_multiple_choice"])
    for i, rec in enumerate(own.predictions["multiple_choice"]):
        got = [r[0] for r in mc[i]["filtered_resps"]]
        np.testing.assert_allclose(got, rec["logprobs"], atol=TOL, rtol=0)
        assert int(np.argmax(got)) == rec["pred"]
    m = res["results"]["jaxknow_multiple_choice"]
    assert m["acc,none"] == pytest.approx(own.metrics["multiple_choice"]["acc"])
    assert res["results"]["jaxknow_qa"]["f1,none"] == pytest.approx(100.0 * own.metrics["qa"]["f1"])


@pytest.mark.hf
@pytest.mark.slow  # 20-30 s on the 2-core machine (transformers import, model load, export)
def test_adapter_matches_lm_eval_hf_model(setup):
    """The exported checkpoint under lm-eval's own `hf` model (transformers) gives the same
    generations and log-likelihoods as JaxknowLM (no BOS on either side: the exported
    tokenizer adds none, like the fork's hf-causal-experimental)."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from jaxknow.io.hf import jaxknow_to_hf

    hf_dir = jaxknow_to_hf(setup["model"], setup["root"] / "hf")
    jk = _run(setup, JaxknowLM(path=str(setup["model"]), bos="never"), limit=2)
    hf = _run(
        setup,
        "hf",
        limit=2,
        batch_size=2,
        device="cpu",
        model_args=f"pretrained={hf_dir},dtype=float32",
    )
    for name in SUBSETS:
        a, b = (_by_doc(r["samples"][f"jaxknow_{name}"]) for r in (jk, hf))
        assert sorted(a) == sorted(b) == [0, 1]
        for i in a:
            if name == "qa":
                assert a[i]["filtered_resps"] == b[i]["filtered_resps"]
            else:
                np.testing.assert_allclose(
                    [r[0] for r in a[i]["filtered_resps"]],
                    [r[0] for r in b[i]["filtered_resps"]],
                    atol=TOL,
                    rtol=0,
                )


def test_adapter_requests_and_errors(setup, tmp_path, caplog):
    model = load_model(setup["model"])
    lm = JaxknowLM(model=model, bos="never", batch_size=4)
    assert not lm.add_bos and lm.prefix_token_id == model.tokenizer.eos_id
    tok = model.tokenizer
    # Rolling log-likelihood of a short text = the sum of its token log-likelihoods after EOS.
    text = "The capital of Lehaia is Rejosburg."
    (rolled,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = tok.encode(text)
    (pair,) = lm._loglikelihood_tokens([(None, [tok.eos_id], ids)])
    assert rolled == pytest.approx(pair[0], abs=TOL)
    # A request longer than the context: the leading context tokens are dropped, one line.
    long_ctx = " ".join(["Rejosburg"] * 400)
    with caplog.at_level(logging.WARNING, logger="jaxknow.lm_eval"):
        out = lm.loglikelihood([Instance("loglikelihood", {}, (long_ctx, " otter"), 0)])
    assert np.isfinite(out[0][0])
    assert any(
        "longer than the context of 256 tokens" in r.getMessage() and "dropped" in r.getMessage()
        for r in caplog.records
    )
    with pytest.raises(JaxknowLMError, match="greedily only"):
        lm.generate_until([Instance("generate_until", {}, ("Q", {"do_sample": True}), 0)])
    # A checkpoint without a tokenizer.
    bare = tmp_path / "bare"
    shutil.copytree(setup["model"] / "checkpoints", bare / "checkpoints")
    with pytest.raises(JaxknowLMError, match="no tokenizer.json"):
        JaxknowLM(path=str(bare))
    with pytest.raises(JaxknowLMError, match="unknown argument"):
        JaxknowLM(model=model, temperature=1)


def test_task_writer_errors(setup, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = read_jsonl(setup["world"] / "eval_reverse_qa.jsonl")  # 8 rows
    (data / "eval_reverse_qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(fewshot.FewShotError, match="eval_reverse_qa.jsonl.*at least 9"):
        write_lm_tasks(data, tmp_path / "t", num_fewshot=8)
    (data / "eval_broken.jsonl").write_text('{"question": "q", "answer": "a"}\n{oops\n')
    with pytest.raises(CorpusFormatError, match="eval_broken.jsonl:2"):
        write_lm_tasks(data, tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="nope"):
        write_lm_tasks(data, tmp_path / "t", ["nope"])
