"""Layer-delta ablation (mixing base and finetuned layers) and the PNG plots."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxknow.eval import ablation, plots
from jaxknow.model.config import preset
from jaxknow.model.layout import unstack
from jaxknow.model.lora import LoraConfig, lora_specs, merge_lora
from jaxknow.model.params import ParamSpec, flatten, param_specs, unflatten
from jaxknow.model.transformer import apply

CFG = preset("tiny", vocab_size=64, d_model=32, n_layers=3, n_heads=2, d_ff=64, max_seq_len=16)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 8)), jnp.int32)
PNG = b"\x89PNG\r\n\x1a\n"


def _params(specs, seed: int) -> dict:
    """Returns parameters for a ParamSpec tree, drawn with numpy (fast to create)."""
    rng = np.random.default_rng(seed)

    def make(spec: ParamSpec) -> jax.Array:
        std = spec.std if spec.init == "normal" else 0.02  # no zero/one leaves: deltas everywhere
        return jnp.asarray(rng.normal(0.0, std, spec.shape), jnp.float32)

    return jax.tree.map(make, specs, is_leaf=lambda x: isinstance(x, ParamSpec))


def _perturbed(theta: dict, seed: int, only_layers: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for path, v in flatten(theta).items():
        if only_layers and not path.startswith("layers/"):
            out[path] = v
        else:
            out[path] = v + jnp.asarray(rng.normal(0.0, 0.05, v.shape), v.dtype)
    return unflatten(out)


_logits = jax.jit(lambda p: apply(p, TOKENS, CFG))


def _recording_evaluate(log: list):
    def evaluate(params: dict) -> dict[str, float]:
        out = np.asarray(_logits(params))
        log.append(out)
        return {"logit_sum": float(out.sum()), "logit_00": float(out[0, 0, 0])}

    return evaluate


THETA0 = _params(param_specs(CFG), 0)
THETA1 = _perturbed(THETA0, 1)


def test_mix_layers_takes_each_layer_from_the_right_source():
    """Layer i of every stacked leaf comes from its side bit for bit; leaves taken whole are
    the original arrays (no copy)."""
    mixed = ablation.mix_layers(THETA0, THETA1, {0, 2})
    f0, f1, fm = flatten(THETA0), flatten(THETA1), flatten(mixed)
    assert set(fm) == set(f1)
    for path, v in fm.items():
        if not path.startswith("layers/"):
            assert v is f1[path], path  # non-layer params follow θ1
            continue
        assert v.shape == f1[path].shape
        for i in range(3):
            expect = f0[path][i] if i in (0, 2) else f1[path][i]
            np.testing.assert_array_equal(np.asarray(v[i]), np.asarray(expect), err_msg=path)
    # per layer, the mix is what mixing per-layer trees gives
    per_layer = flatten(unstack(mixed))
    assert per_layer["layers/1/mlp/up/kernel"].shape == f1["layers/mlp/up/kernel"].shape[1:]
    base_rest = flatten(ablation.mix_layers(THETA0, THETA1, {1}, non_layer="base"))
    adjacent = flatten(ablation.mix_layers(THETA0, THETA1, {0}, non_layer="adjacent"))
    for path in f0:
        if not path.startswith("layers/"):
            assert base_rest[path] is f0[path]
            assert adjacent[path] is (f0[path] if path.startswith("embed/") else f1[path])
    all_base = flatten(ablation.mix_layers(THETA0, THETA1, {0, 1, 2}, non_layer="base"))
    assert all(all_base[path] is v for path, v in f0.items())
    none_base = flatten(ablation.mix_layers(THETA0, THETA1, set()))
    assert all(none_base[path] is v for path, v in f1.items())
    with pytest.raises(ValueError, match="out of range"):
        ablation.mix_layers(THETA0, THETA1, {3})
    with pytest.raises(ValueError, match="stacked"):
        ablation.mix_layers(unstack(THETA0), unstack(THETA1), {0})


@pytest.mark.parametrize("non_layer", ["finetuned", "adjacent"])
def test_endpoints_are_the_finetuned_and_the_base_model(non_layer):
    # with non_layer="finetuned" the endpoint k = L is θ0 when finetuning changed only layers;
    # with "adjacent" it is θ0 whatever finetuning changed
    theta1 = _perturbed(THETA0, 2, only_layers=True) if non_layer == "finetuned" else THETA1
    log: list = []
    res = ablation.layer_delta_ablation(
        THETA0, theta1, 3, _recording_evaluate(log), non_layer=non_layer
    )
    assert len(log) == 2 * 3  # k = 0 and k = L are shared by both sides
    ref0, ref1 = np.asarray(_logits(THETA0)), np.asarray(_logits(theta1))
    evaluated = {}
    for side in ("first", "last"):
        assert sorted(res.results[side]) == [0, 1, 2, 3]
        for k in (0, 3):
            sel = ablation.ablated_layers(side, k, 3)
            mixed = flatten(ablation.mix_layers(THETA0, theta1, sel, non_layer=non_layer))
            want = flatten(theta1 if k == 0 else THETA0)
            for path, v in mixed.items():
                np.testing.assert_array_equal(np.asarray(v), np.asarray(want[path]), err_msg=path)
            evaluated[(side, k)] = res.results[side][k]
        assert res.results[side][0] == {
            "logit_sum": float(ref1.sum()),
            "logit_00": float(ref1[0, 0, 0]),
        }
        assert res.results[side][3] == {
            "logit_sum": float(ref0.sum()),
            "logit_00": float(ref0[0, 0, 0]),
        }
    assert any(np.array_equal(x, ref1) for x in log) and any(np.array_equal(x, ref0) for x in log)
    assert res.results["first"][1] != res.results["last"][1]
    json.dumps(res.to_dict())
    table = res.table()
    assert table.count("\n") == 3 + 2 and "logit_sum (first" in table


def test_window_ablation_reverts_only_the_window():
    # windows of 2 layers in a 3-layer model: starts 0 and 1 fit, 2 and 3 do not
    seen: list = []
    res = ablation.layer_delta_ablation(
        THETA0,
        THETA1,
        3,
        lambda p: seen.append(p) or {"x": float(len(seen))},
        sides=("window",),
        window=2,
    )
    assert sorted(res.results["window"]) == [0, 1]
    f0, f1 = flatten(THETA0), flatten(THETA1)
    for params, reverted in zip(seen, ({0, 1}, {1, 2}), strict=True):
        for path, v in flatten(params).items():
            if not path.startswith("layers/"):
                assert v is f1[path], path
                continue
            for i in range(3):
                expect = f0[path][i] if i in reverted else f1[path][i]
                np.testing.assert_array_equal(np.asarray(v[i]), np.asarray(expect), err_msg=path)
    assert "layers k..k+1 from base" in res.table()
    assert ablation.ablated_layers("window", 1, 3, window=1) == frozenset({1})
    with pytest.raises(ValueError, match="past the last layer"):
        ablation.ablated_layers("window", 2, 3, window=2)
    with pytest.raises(ValueError, match="window=0"):
        ablation.layer_delta_ablation(THETA0, THETA1, 3, lambda p: {}, sides=("window",))


def test_lora_finetuned_params_are_merged_first():
    cfg = CFG.replace(lora_scale=2.0)
    adapters = _params(lora_specs(cfg, LoraConfig(rank=2, embedding_rank=2)), 3)
    theta1 = unflatten({**flatten(THETA0), **flatten(adapters)})
    with pytest.raises(ValueError, match="merge"):
        ablation.mix_layers(THETA0, theta1, {0})
    with pytest.raises(ValueError, match="cfg"):
        ablation.layer_delta_ablation(THETA0, theta1, 3, lambda p: {}, sides=("first",))
    seen: list = []
    res = ablation.layer_delta_ablation(
        THETA0, theta1, 3, lambda p: seen.append(p) or {"x": 1.0}, sides=("last",), cfg=cfg
    )
    assert sorted(res.results["last"]) == [0, 1, 2, 3]
    merged = flatten(merge_lora(theta1, cfg))
    for path, v in flatten(seen[0]).items():  # k = 0: the merged finetuned model
        np.testing.assert_array_equal(np.asarray(v), np.asarray(merged[path]), err_msg=path)


def test_plots_write_png_files(tmp_path):
    res = ablation.AblationResult(
        3,
        {
            "first": {k: {"qa": 1 - k / 4} for k in range(4)},
            "last": {k: {"qa": 1 - k / 8} for k in range(4)},
        },
    )
    p1 = res.plot(tmp_path / "ablation.png")
    p2 = plots.plot_per_layer(
        {"birth_city": [0.1, 0.5, 0.9], "major": [0.0, 0.2, 0.4]},
        tmp_path / "sub" / "probe.png",
        "probe",
        "accuracy",
        reference={"birth_city": 0.05, "major": 0.02},
    )
    p3 = plots.plot_loss_curve(
        list(range(50)),
        [3.0 / (1 + i) for i in range(50)],
        tmp_path / "loss.png",
        markers=[10, 30],
        title="forgetting",
    )
    for p in (p1, p2, p3):
        data = p.read_bytes()
        assert data[:8] == PNG and len(data) > 1000, p
    with pytest.raises(ValueError):
        plots.plot_loss_curve([1, 2], [1.0], tmp_path / "bad.png")


def test_k_grid_evaluates_only_its_ks_and_always_ends_at_l():
    assert ablation.ablation_ks(30, 3) == list(range(0, 31, 3))
    assert ablation.ablation_ks(30, 4) == [*range(0, 29, 4), 30]
    assert ablation.ablation_ks(3) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="step=0"):
        ablation.ablation_ks(3, 0)
    log: list = []
    res = ablation.layer_delta_ablation(
        THETA0, THETA1, 3, _recording_evaluate(log), ks=ablation.ablation_ks(3, 2)
    )
    assert sorted(res.results["first"]) == sorted(res.results["last"]) == [0, 2, 3]
    assert len(log) == 4  # k = 0 and k = L shared by both sides, k = 2 once per side
    assert res.results["first"][2] != res.results["last"][2]


def test_shared_prefix_ablation_equals_evaluating_each_model_whole():
    """With `share_prefix` every model of a first / last / window ablation is evaluated from
    the residual stream of the reference it shares its first layers with: generated answers
    (free-form QA) and multiple-choice log-likelihoods are those of the model evaluated whole;
    each reference runs once per batch and kind of pass."""
    from jaxknow.data.tokenizer import train_bpe
    from jaxknow.eval import tasks

    texts = [f"Question: What is the capital of Land{i}? Answer: City{i}\n" for i in range(8)]
    # The letters frequent enough to be single tokens: MC scores them in one pass per prompt.
    tok = train_bpe(texts * 3 + ["Answer: A Answer: B Answer: C Answer: D"] * 20, vocab_size=300)
    cfg = CFG.replace(vocab_size=tok.vocab_size, max_seq_len=256, n_layers=4)
    # Weights well above their init scale, so that the random models' answers vary.
    theta0 = jax.tree.map(lambda v: 6.0 * v, _params(param_specs(cfg), 2))
    theta1 = _perturbed(_perturbed(theta0, 3), 4)
    qa = [{"question": f"What is the capital of Land{i}?", "answer": f"City{i}"} for i in range(8)]
    mc = [
        {
            "question": q["question"],
            "choices": [f"City{(i + j) % 8}" for j in range(4)],
            "answer": 0,
        }
        for i, q in enumerate(qa)
    ]
    # Multi-token options of one context: scored by branches from the context's cache.
    cloze = [
        {
            "context": f"The capital of Land{i} is",
            "choices": [f"City{i} of X", "Land two"],
            "answer": 0,
        }
        for i in range(4)
    ]
    seen: dict[bool, list] = {False: [], True: []}
    stores: list[dict] = []

    def evaluate(share: bool):
        def run(model) -> dict[str, float]:
            if share:
                stores.append(model.store)
            res = tasks.evaluate_subsets_detailed(
                (model, cfg, tok),
                {"qa": qa, "mc": mc, "cloze": cloze},
                kinds={"mc": "mc"},
                max_new_tokens=6,
                batch_size=8,
                bos="always",
            )
            seen[share].append(res.predictions)
            return {"em": res.metrics["qa"]["em"]}

        return run

    for share in (False, True):
        ablation.layer_delta_ablation(
            theta0,
            theta1,
            4,
            evaluate(share),
            sides=("first", "last", "window"),
            window=2,
            share_prefix=share,
        )
    assert len(seen[True]) == len(seen[False]) == 9  # k = 0..4 twice, shared ends, 3 windows
    answers = set()
    for whole, shared in zip(seen[False], seen[True]):
        assert [r["prediction"] for r in shared["qa"]] == [r["prediction"] for r in whole["qa"]]
        answers.add(tuple(r["prediction"] for r in whole["qa"]))
        for name in ("mc", "cloze"):
            np.testing.assert_allclose(
                [r["logprobs"] for r in shared[name]],
                [r["logprobs"] for r in whole[name]],
                rtol=1e-5,
                atol=1e-5,
                err_msg=name,
            )
    assert len(answers) > 3  # the models differ, so equality above says something
    # Two references x (a generation prefill, the options' context prefill, the letters'
    # scoring pass), each computed once.
    assert all(s is stores[0] for s in stores)
    assert sorted((ref, what) for ref, what, _ in stores[0]) == [
        (ref, what)
        for ref in ("base", "finetuned")
        for what in ("branch prefill max_new=8", "prefill max_new=6", "scoring")
    ]
