"""Active forgetting: the reset mechanism, selection, optimizer handling, LoRA equivalence."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxknow.model import config as mc
from jaxknow.model import lora as lora_lib
from jaxknow.model.layout import is_per_layer, stack, unstack
from jaxknow.model.params import (
    flatten,
    init_param,
    param_specs,
    path_key,
    per_layer_specs,
    unflatten,
)
from jaxknow.train import optim
from jaxknow.train.forgetting import ForgetConfig, make_forget_event, reset_state, reset_targets
from jaxknow.train.select import Selection
from jaxknow.train.state import merge_params, new_state, split_params
from jaxknow.train.step import train_step

CFG = mc.preset("tiny", vocab_size=64, max_seq_len=32, n_layers=3)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, 64, (2, 17)), jnp.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "weights": jnp.ones((2, 16)),
        "segment_ids": jnp.ones((2, 16), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(16), (2, 16)),
    }


def _trained(params, frozen, steps=3, cfg=CFG):
    ocfg = optim.OptimConfig(lr=1e-2, schedule="constant", total_steps=10)
    tx, sched = optim.make_optimizer(ocfg), optim.make_schedule(ocfg)
    state = new_state(params, frozen, tx)
    step = jax.jit(functools.partial(train_step, cfg=cfg, tx=tx, schedule=sched))
    for i in range(steps):
        state, _ = step(state, _batch(i))
    return state, tx


@pytest.fixture(scope="module")
def base():
    from jaxknow.model.params import init_params

    return init_params(param_specs(CFG), jax.random.key(0), jnp.float32)


@pytest.fixture(scope="module")
def trained(base):
    return _trained(base, {})


def test_selection_by_layer_fraction_range_and_pattern(base):
    paths = list(flatten(unstack(base)))  # selections name layers one by one
    upper = Selection(layer_fraction=1 / 3).paths(paths, 3)
    assert upper and all(p.startswith(("layers/1/", "layers/2/")) for p in upper)
    assert not Selection(layer_fraction=1 / 3).matches("embed/tokens", 3)
    mlps = Selection(layer_start=0, layer_stop=2, patterns=(r"/mlp/",)).paths(paths, 3)
    assert mlps and all("/mlp/" in p and p.startswith(("layers/0/", "layers/1/")) for p in mlps)
    emb = Selection(patterns=(r"^embed/",)).paths(paths, 3)
    assert sorted(emb) == ["embed/positions", "embed/tokens"]
    with pytest.raises(ValueError, match="needs a layer range"):
        Selection()


@pytest.mark.parametrize("opt_mode", ["all", "selected", "none"])
def test_reset_to_pretrained_is_bit_exact_and_leaves_the_rest(base, trained, opt_mode):
    state, tx = trained
    state, base = unstack(state), unstack(base)  # the per-layer view the resets work in
    before = flatten(state.params)
    sel = Selection(layer_fraction=1 / 3)
    paths = sel.paths(list(before), CFG.n_layers)
    targets = reset_targets(base, paths, "pretrained", None, None)
    out = reset_state(state, targets, tx, opt_mode)
    after, ref = flatten(out.params), flatten(base)
    for p in before:
        if p in paths:
            np.testing.assert_array_equal(after[p], ref[p])
            assert not np.array_equal(before[p], ref[p]) or "norm" in p or "bias" in p
        else:
            np.testing.assert_array_equal(after[p], before[p])
    adam_old, adam_new = state.opt_state[1][0], out.opt_state[1][0]
    mu_old, mu_new = flatten(adam_old.mu), flatten(adam_new.mu)
    if opt_mode == "all":
        assert int(adam_new.count) == 0
        assert all(not np.any(mu_new[p]) for p in mu_new)
    elif opt_mode == "selected":
        assert int(adam_new.count) == int(adam_old.count) == 3
        for p in mu_new:
            if p in paths:
                assert not np.any(mu_new[p])
            else:
                np.testing.assert_array_equal(mu_new[p], mu_old[p])
    else:
        for p in mu_new:
            np.testing.assert_array_equal(mu_new[p], mu_old[p])


def test_reset_to_fresh_init_draws_from_the_specs(base, trained):
    state, tx = trained
    state, base = unstack(state), unstack(base)
    specs = flatten(per_layer_specs(param_specs(CFG)))
    paths = Selection(patterns=(r"layers/2/mlp/",)).paths(list(flatten(state.params)), 3)
    key = jax.random.key(7)
    out = reset_state(state, reset_targets(base, paths, "init", specs, key), tx, "none")
    for p in paths:
        expect = init_param(specs[p], path_key(key, p), jnp.float32)
        np.testing.assert_array_equal(flatten(out.params)[p], expect)


def test_lora_reset_equals_resetting_the_merged_weights(base):
    lcfg = lora_lib.LoraConfig(rank=4, alpha=8, targets=("q", "v", "up", "down"))
    cfg = CFG.replace(lora_scale=lcfg.scale)
    adapters = lora_lib.init_lora(cfg, lcfg, jax.random.key(1))
    full = merge_params(base, adapters)
    trainable, frozen = split_params(full, lora_lib.is_lora_path)
    state, tx = _trained(trainable, frozen, cfg=cfg)
    merged_before = flatten(unstack(lora_lib.merge_lora(state.model_params(), cfg)))
    fcfg = ForgetConfig(at_steps=(3,), select=Selection(layer_fraction=1 / 3))
    event = make_forget_event(fcfg, adapters, cfg.n_layers, tx, None, jax.random.key(0))
    out = event(3, state)
    merged = flatten(unstack(lora_lib.merge_lora(out.model_params(), cfg)))
    ref = flatten(unstack(base))
    for p, v in merged.items():
        layer = int(p.split("/")[1]) if p.startswith("layers/") else None
        if (
            layer in (1, 2)
            and p.endswith("kernel")
            and any(f"/{t}/" in p for t in ("q", "v", "up", "down"))
        ):
            np.testing.assert_allclose(v, ref[p], atol=0)  # merged == base, exactly
        elif layer == 0 and p.endswith(("q/kernel", "up/kernel")):
            assert not np.allclose(v, ref[p])  # lower layers keep what they learned
            np.testing.assert_array_equal(v, merged_before[p])
    assert event(2, out) is out  # not a reset step: untouched


def test_event_config_errors():
    from jaxknow.config import ConfigError, parse

    with pytest.raises(ConfigError, match=r"^forget.to: expected one of"):
        parse(ForgetConfig, {"to": "zero"}, "forget")
    with pytest.raises(ConfigError, match=r"^forget.reset_optimizer: expected one of"):
        parse(ForgetConfig, {"reset_optimizer": "maybe"}, "forget")
    with pytest.raises(ConfigError, match=r"^forget.select: unknown key\(s\) \['layer_frac'\]"):
        parse(ForgetConfig, {"select": {"layer_frac": 0.3}}, "forget")
    with pytest.raises(ConfigError, match=r"^forget.at_steps=\[0\]: steps must be positive"):
        parse(ForgetConfig, {"at_steps": [0]}, "forget")
    cfg = parse(
        ForgetConfig, {"at_steps": [5, 10], "select": {"patterns": ["mlp"]}, "to": "init"}, "forget"
    )
    assert cfg.at_steps == (5, 10) and cfg.select.patterns == ("mlp",)


def test_unflatten_roundtrip(base):
    assert jax.tree.structure(unflatten(flatten(base))) == jax.tree.structure(base)


@pytest.mark.parametrize("opt_mode", ["all", "selected"])
def test_reset_of_a_stacked_state_equals_the_per_layer_reset(base, trained, opt_mode):
    """A state holding its layers stacked is reset layer by layer, bit for bit as the same
    state held per layer (a run that treats its layers differently), and stays stacked."""
    state, tx = trained
    specs = flatten(per_layer_specs(param_specs(CFG)))
    for to in ("pretrained", "init"):
        fcfg = ForgetConfig(
            at_steps=(3,), select=Selection(layer_fraction=1 / 3), to=to, reset_optimizer=opt_mode
        )
        event = make_forget_event(fcfg, base, CFG.n_layers, tx, specs, jax.random.key(0))
        copy = functools.partial(jax.tree.map, jnp.copy)  # the event donates its state
        want = event(3, unstack(copy(state)))
        got = event(3, copy(state))
        assert is_per_layer(want) and not is_per_layer(got)
        jax.tree.map(np.testing.assert_array_equal, got, stack(want))
        # the upper layers changed, layer 0 did not
        up, before = got.params["layers"]["mlp"]["up"]["kernel"], state.params["layers"]["mlp"]
        assert not np.array_equal(up[2], before["up"]["kernel"][2])
        np.testing.assert_array_equal(up[0], before["up"]["kernel"][0])


def test_selections_refuse_stacked_paths():
    with pytest.raises(ValueError, match="per-layer paths"):
        Selection(layer_fraction=0.5).matches("layers/mlp/up/kernel", 4)
