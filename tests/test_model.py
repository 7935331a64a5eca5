"""Model presets: parameter counts match the published models, every preset traces forward and
backward at full size (abstractly), and the small ones really run forward and backward."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxknow.model import transformer
from jaxknow.model.config import PRESETS, preset
from jaxknow.model.params import count_params, init_params, param_specs

# Parameter counts of the released checkpoints these presets mirror (Hugging Face configs).
PUBLISHED = {
    "gpt2-small": 124_439_808,  # openai-community/gpt2
    "llama-1b": 1_235_814_400,  # meta-llama/Llama-3.2-1B
    "llama-8b": 8_030_261_248,  # meta-llama/Llama-3.1-8B
    "llama-70b": 70_553_706_496,  # meta-llama/Llama-3.1-70B
    "gemma-7b": 8_537_680_896,  # google/gemma-7b
    "smollm2-135m": 134_515_008,  # HuggingFaceTB/SmolLM2-135M
    "gemma3-270m": 268_098_176,  # google/gemma-3-270m
}


# Gemma 3's switches on the tiny Llama shape: query/key norms, sandwich norms, layers 0 and 2
# local (window 5 < 17 tokens) with their own rotary base, layer 1 global with linear scaling;
# plus Gemma 2's soft-capping.
GEMMA3_SWITCHES = dict(
    qk_norm=True,
    post_norms=True,
    norm_scale_offset=1.0,
    mlp="geglu",
    embed_scale=True,
    tie_embeddings=True,
    sliding_window=5,
    sliding_window_pattern=2,
    rope_local_theta=100.0,
    rope_scaling={"factor": 2.0},
    attn_scale=0.3,
    attn_logit_softcap=3.0,
    final_logit_softcap=5.0,
)


def loss_fn(params, tokens, cfg):
    out = transformer.forward(params, tokens[:, :-1], cfg)
    logits = transformer.logits(params, out.hidden, cfg).astype(jnp.float32)
    lp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(lp, tokens[:, 1:, None], axis=-1))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts_match_the_published_models(name):
    assert count_params(param_specs(preset(name))) == PUBLISHED[name]


def test_gpt2_small_with_rotary_drops_only_the_position_table():
    cfg = preset("gpt2-small")
    diff = PUBLISHED["gpt2-small"] - count_params(param_specs(preset("gpt2-small-rope")))
    assert diff == cfg.max_seq_len * cfg.d_model


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_traces_forward_and_backward_at_full_size(name):
    cfg = preset(name)
    specs = param_specs(cfg)
    params = jax.eval_shape(lambda k: init_params(specs, k, cfg.storage_dtype), jax.random.key(0))
    tokens = jax.ShapeDtypeStruct((2, 17), jnp.int32)
    loss, grads = jax.eval_shape(
        jax.value_and_grad(functools.partial(loss_fn, cfg=cfg)), params, tokens
    )
    assert loss.shape == ()
    assert jax.tree.map(lambda g: g.shape, grads) == jax.tree.map(lambda p: p.shape, params)


@pytest.mark.parametrize("name", ["tiny", "tiny-llama", "gpt2-small"])
def test_small_presets_run_forward_and_backward(name):
    cfg = preset(name)
    params = init_params(param_specs(cfg), jax.random.key(0), cfg.storage_dtype)
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, cfg.vocab_size)
    loss, grads = jax.jit(jax.value_and_grad(loss_fn), static_argnums=2)(params, tokens, cfg)
    # A fresh model is close to uniform over the vocabulary.
    assert abs(float(loss) - np.log(cfg.vocab_size)) < 1.0
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) > 0.9 * len(norms)


@pytest.mark.parametrize(
    "name,remat,switches",
    [("tiny", "none", {}), ("tiny-llama", "full", {}), ("tiny-llama", "dots", GEMMA3_SWITCHES)],
)
def test_scan_layers_matches_the_layer_loop(name, remat, switches):
    """Scanning over stacked layers gives the loop's loss, gradients (same per-layer paths)
    and per-layer hidden states to fp32 round-off (also with local and global layers mixed)."""
    base = preset(name, n_layers=3, remat=remat, dtype="float32", **switches)
    params = init_params(param_specs(base), jax.random.key(0), jnp.float32)
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, base.vocab_size)
    results = {}
    for scan in (False, True):
        cfg = base.replace(scan_layers=scan)
        assert cfg.use_scan is scan
        loss, grads = jax.jit(jax.value_and_grad(functools.partial(loss_fn, cfg=cfg)))(
            params, tokens
        )
        hiddens = transformer.forward(params, tokens, cfg, collect_hidden=True).hiddens
        results[scan] = (loss, grads, hiddens)
    (l0, g0, h0), (l1, g1, h1) = results[False], results[True]
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    assert jax.tree.structure(g1) == jax.tree.structure(g0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g0)
    assert h1.shape == h0.shape == (4, 2, 17, base.d_model)
    # Gemma's post-norms rescale small outputs, and their round-off with them.
    np.testing.assert_allclose(h1, h0, rtol=1e-5, atol=1e-5 if switches else 1e-6)


def _adapted_params(cfg, n_layers=3):
    """Tiny model params plus LoRA adapters on q and up (every layer), layers stacked."""
    from jaxknow.model import lora as lora_lib

    lcfg = lora_lib.LoraConfig(rank=2, targets=("q", "up"))
    specs = lora_lib.full_specs(cfg, lcfg)
    return init_params(specs, jax.random.key(0), jnp.float32)


def test_params_are_stacked_and_each_layer_draws_from_its_per_layer_path():
    """One stacked leaf per parameter kind ([L, ...], unsharded layer axis); layer i's initial
    values are those of its per-layer path ``layers/{i}/...`` (as when every layer had its own
    leaf), so the values do not depend on the layout."""
    from jaxknow.model import lora as lora_lib
    from jaxknow.model.params import flatten, init_param, path_key

    cfg = preset("tiny", n_layers=3, vocab_size=64, max_seq_len=32)
    specs = flatten(lora_lib.full_specs(cfg, lora_lib.LoraConfig(rank=2, targets=("q", "up"))))
    assert specs["layers/attn/q/kernel"].shape[0] == 3
    assert specs["layers/attn/q/kernel"].axes[0] is None
    assert not any(p.startswith("layers/0/") for p in specs)
    key = jax.random.key(0)
    flat = flatten(_adapted_params(cfg))
    for path in ("layers/attn/q/kernel", "layers/mlp/up/lora_a", "layers/attn_norm/scale"):
        spec = specs[path]
        one = type(spec)(spec.shape[1:], spec.axes[1:], spec.init, spec.std)
        kind = path.split("/", 1)[1]
        for i in range(3):
            want = init_param(one, path_key(key, f"layers/{i}/{kind}"), jnp.float32)
            np.testing.assert_array_equal(flat[path][i], want)
    assert not np.array_equal(flat["layers/mlp/up/lora_a"][0], flat["layers/mlp/up/lora_a"][1])


def test_layout_stack_and_unstack_round_trip_params_optimizer_state_and_shardings():
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxknow.model.layout import is_per_layer, stack, unstack
    from jaxknow.model.params import flatten
    from jaxknow.parallel.mesh import make_mesh
    from jaxknow.train import optim

    cfg = preset("tiny", n_layers=3, vocab_size=64, max_seq_len=32)
    stacked = _adapted_params(cfg)
    params = unstack(stacked)  # the per-layer view
    flat = flatten(stacked)
    assert is_per_layer(params) and not is_per_layer(stacked)
    assert flat["layers/attn/q/kernel"].shape == (
        3,
        *params["layers"]["0"]["attn"]["q"]["kernel"].shape,
    )
    assert "layers/2/mlp/up/lora_a" in flatten(params)
    np.testing.assert_array_equal(
        flat["layers/mlp/up/kernel"][2], params["layers"]["2"]["mlp"]["up"]["kernel"]
    )
    assert params["embed"]["tokens"] is stacked["embed"]["tokens"]
    back = stack(params)
    assert jax.tree.structure(back) == jax.tree.structure(stacked)
    jax.tree.map(np.testing.assert_array_equal, back, stacked)
    # no-ops on the other layout: the very same leaves come back
    for tree, fn in ((stacked, stack), (params, unstack)):
        assert all(a is b for a, b in zip(jax.tree.leaves(fn(tree)), jax.tree.leaves(tree)))

    # Optax states: the stacked state of the per-layer state is the state of stacked params.
    tx = optim.make_optimizer(optim.OptimConfig(lr=1e-3, grad_clip=1.0, total_steps=10))
    opt = tx.init(params)
    opt = jax.tree.map(lambda x: x + 1, opt)  # non-zero moments
    s_opt = stack(opt)
    assert is_per_layer(opt) and not is_per_layer(s_opt)
    assert jax.tree.structure(s_opt) == jax.tree.structure(tx.init(stacked))
    assert s_opt[1][0].mu["layers"]["attn"]["q"]["kernel"].shape[0] == 3
    jax.tree.map(np.testing.assert_array_equal, unstack(s_opt), opt)

    # Shardings (with a combine): an unsharded leading layer axis; and back (with a take).
    mesh = make_mesh(2, 2, 2)
    sh = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec("fsdp")), params)
    is_sh = lambda x: isinstance(x, NamedSharding)  # noqa: E731
    s_sh = stack(
        sh, combine=lambda xs: NamedSharding(mesh, PartitionSpec(None, *xs[0].spec)), is_leaf=is_sh
    )
    assert s_sh["layers"]["attn"]["q"]["kernel"].spec == PartitionSpec(None, "fsdp")
    assert s_sh["embed"]["tokens"].spec == PartitionSpec("fsdp")
    p_sh = unstack(
        s_sh, 3, take=lambda x, _: NamedSharding(mesh, PartitionSpec(*x.spec[1:])), is_leaf=is_sh
    )
    assert p_sh == sh

    # Layers that differ or are missing cannot be stacked.
    partial = {"layers": {k: v for k, v in params["layers"].items() if k != "1"}}
    uneven = {"layers": {**params["layers"], "2": params["layers"]["2"]["attn"]}}
    for bad in (partial, uneven):
        with pytest.raises(ValueError, match="cannot stack layers"):
            stack(bad)


def test_layout_paths():
    from jaxknow.model.layout import layer_paths, split_layer_path

    assert layer_paths("layers/mlp/up/kernel", 2) == [
        "layers/0/mlp/up/kernel",
        "layers/1/mlp/up/kernel",
    ]
    assert layer_paths("embed/tokens", 2) == ["embed/tokens"]
    assert layer_paths("layers/3/attn/q", 2) == ["layers/3/attn/q"]
    assert split_layer_path("layers/12/mlp/up/kernel") == ("layers/mlp/up/kernel", 12)
    assert split_layer_path("layers/mlp/up/kernel") == ("layers/mlp/up/kernel", None)
    assert split_layer_path("embed/tokens") == ("embed/tokens", None)
    for p in layer_paths("layers/attn/o/bias", 4):
        assert split_layer_path(p)[0] == "layers/attn/o/bias"


@pytest.mark.parametrize(
    "name,remat,switches",
    [("tiny", "none", {}), ("tiny-llama", "full", {}), ("tiny-llama", "none", GEMMA3_SWITCHES)],
)
def test_scan_and_layer_loop_agree_with_adapters_and_cached_decoding(name, remat, switches):
    """With LoRA adapters on every layer, the scan over the stacked layers and the loop over
    their slices give the same loss, gradients (stacked like the params) and hidden states;
    cached decoding (always the loop, also on the per-layer view) matches prefill; outside
    cached decoding a per-layer tree is refused."""
    from jaxknow.model.layout import unstack

    base = preset(name, n_layers=3, remat=remat, dtype="float32", **switches)
    params = _adapted_params(base)
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, base.vocab_size)
    out = {}
    for scan in (False, True):
        cfg = base.replace(scan_layers=scan)
        grad = jax.jit(jax.value_and_grad(functools.partial(loss_fn, cfg=cfg)))
        h = transformer.forward(params, tokens, cfg, collect_hidden=True).hiddens
        out[scan] = (*grad(params, tokens), h)
    (l0, g0, h0), (l1, g1, h1) = out[False], out[True]
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    assert jax.tree.structure(g1) == jax.tree.structure(params) == jax.tree.structure(g0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g0)
    np.testing.assert_allclose(h1, h0, rtol=1e-5, atol=1e-5 if switches else 1e-6)
    cfg = base.replace(scan_layers=True)
    cache = transformer.init_cache(cfg, 2, 17)
    kw = dict(cache=cache, cache_index=jnp.int32(0), kv_valid=jnp.ones((2, 17), bool))
    c = transformer.apply(params, tokens, cfg, **kw)
    # Prefill into the cache computes what the uncached forward pass computes.
    np.testing.assert_allclose(c, transformer.apply(params, tokens, cfg), rtol=1e-5, atol=1e-5)
    # Cached decoding also takes the per-layer view (what generation slices once per call).
    np.testing.assert_allclose(
        transformer.apply(unstack(params), tokens, cfg, **kw), c, rtol=1e-6, atol=1e-7
    )
    with pytest.raises(ValueError, match="stacked"):
        transformer.apply(unstack(params), tokens, cfg)


def test_scan_layers_is_automatic_from_depth():
    from jaxknow.model.config import SCAN_LAYERS_FROM

    assert not preset("tiny", n_layers=SCAN_LAYERS_FROM - 1).use_scan
    assert preset("tiny", n_layers=SCAN_LAYERS_FROM).use_scan
    assert not preset("tiny", n_layers=SCAN_LAYERS_FROM, scan_layers=False).use_scan


def test_configs_are_hashable_static_jit_arguments():
    import copy
    import json
    import pickle

    from jaxknow.model.config import ModelConfig
    from jaxknow.parallel.rules import Sharder

    cfg = preset("llama-1b")  # holds rope_scaling
    same = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert same == cfg and hash(same) == hash(cfg)
    assert hash(cfg.replace(rope_theta=1.0)) != hash(cfg)
    assert cfg.rope_scaling == dict(cfg.rope_scaling)  # still equal to the plain dict
    assert type(cfg.to_dict()["rope_scaling"]) is dict
    assert pickle.loads(pickle.dumps(cfg)) == cfg and copy.deepcopy(cfg) == cfg
    with pytest.raises(TypeError, match="immutable"):
        cfg.rope_scaling["factor"] = 1.0
    assert Sharder(None) == Sharder(None) and hash(Sharder(None)) == hash(Sharder(None))

    traces = []

    @functools.partial(jax.jit, static_argnames=("cfg", "sharder"))
    def f(x, *, cfg, sharder):
        traces.append(cfg)
        return x * cfg.rope_scaling["factor"]

    assert float(f(jnp.ones(()), cfg=cfg, sharder=Sharder(None))) == 32.0
    f(jnp.ones(()), cfg=same, sharder=Sharder(None))
    assert len(traces) == 1  # equal configs and sharders share the compiled function


def test_softcapped_attention_matches_plain_attention_when_the_cap_is_far():
    """The written-out soft-capped attention (GQA, sliding window, packed segments) computes
    what `jax.nn.dot_product_attention` does when the cap is far above the logits."""
    cfg = preset("tiny-llama", sliding_window=4, sliding_window_pattern=2, dtype="float32")
    params = init_params(param_specs(cfg), jax.random.key(0), jnp.float32)
    tokens = jax.random.randint(jax.random.key(1), (2, 13), 0, cfg.vocab_size)
    segments = jnp.asarray([[1] * 6 + [2] * 7, [1] * 13])
    positions = jnp.asarray([list(range(6)) + list(range(7)), list(range(13))])
    kw = dict(segment_ids=segments, positions=positions)
    plain = transformer.apply(params, tokens, cfg, **kw)
    far = transformer.apply(params, tokens, cfg.replace(attn_logit_softcap=1e6), **kw)
    near = transformer.apply(params, tokens, cfg.replace(attn_logit_softcap=0.01), **kw)
    np.testing.assert_allclose(far, plain, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(near) - np.asarray(plain)).max() > 1e-3


@pytest.mark.parametrize("scan", [False, True])
def test_forward_resumed_mid_stack_equals_the_whole_pass(scan):
    """`hidden_in` = the residual stream entering layer j and `start_layer` = j give what the
    whole pass gives, for every j (one compile: j is traced), uncached and into a cache whose
    layers below j hold the whole pass's entries; a lone `hidden_in` is refused."""
    cfg = preset("tiny-llama", n_layers=3, dtype="float32", scan_layers=scan, **GEMMA3_SWITCHES)
    params = init_params(param_specs(cfg), jax.random.key(0), jnp.float32)
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, cfg.vocab_size)
    whole = transformer.forward(params, tokens, cfg, collect_hidden=True)
    run = jax.jit(
        lambda h, j: transformer.forward(params, tokens, cfg, hidden_in=h, start_layer=j).hidden
    )
    for j in range(cfg.n_layers + 1):
        out = run(whole.hiddens[j], jnp.int32(j))
        np.testing.assert_allclose(out, whole.hidden, rtol=1e-5, atol=1e-5, err_msg=f"j={j}")
    # Resuming from a wrong stream changes the result (the skipped layers really are skipped).
    wrong = run(whole.hiddens[0], jnp.int32(2))
    assert np.abs(np.asarray(wrong) - np.asarray(whole.hidden)).max() > 1e-2
    kw = dict(cache_index=jnp.int32(0), kv_valid=jnp.ones((2, 17), bool))
    full = transformer.forward(
        params, tokens, cfg, cache=transformer.init_cache(cfg, 2, 17), collect_hidden=True, **kw
    )
    part = transformer.forward(
        params,
        tokens,
        cfg,
        cache=full.cache,
        hidden_in=full.hiddens[2],
        start_layer=jnp.int32(2),
        **kw,
    )
    np.testing.assert_allclose(part.hidden, full.hidden, rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), part.cache, full.cache
    )
    with pytest.raises(ValueError, match="together"):
        transformer.forward(params, tokens, cfg, hidden_in=whole.hiddens[1])


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize(
    "switches", [{}, dict(GEMMA3_SWITCHES, n_layers=3)], ids=["llama", "gemma3-local-last"]
)
def test_forward_read_at_equals_the_whole_pass_at_those_positions(scan, switches):
    """`read_at` (the last layer's queries, attention output and MLP at the positions read
    only) gives the whole pass's hidden states there: packed segments, a sliding-window last
    layer, resumed at every layer j (j = L: the stream only read), and a left-padded prefill
    whose cache (keys and values of every position) equals the whole pass's."""
    cfg = preset("tiny-llama", **{"n_layers": 2, "dtype": "float32", **switches})
    cfg = cfg.replace(scan_layers=scan)
    params = init_params(param_specs(cfg), jax.random.key(0), jnp.float32)
    tokens = jax.random.randint(jax.random.key(1), (2, 13), 0, cfg.vocab_size)
    segments = jnp.asarray([[1] * 6 + [2] * 7, [1] * 13])
    positions = jnp.asarray([list(range(6)) + list(range(7)), list(range(13))])
    at = jnp.asarray([[5, 12, 0], [3, 3, 12]])
    kw = dict(segment_ids=segments, positions=positions)
    whole = transformer.forward(params, tokens, cfg, collect_hidden=True, **kw)
    want = transformer.rows(whole.hidden, at)
    got = transformer.forward(params, tokens, cfg, read_at=at, **kw).hidden
    assert got.shape == (2, 3, cfg.d_model)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    run = jax.jit(
        lambda h, j: (
            transformer.forward(
                params, tokens, cfg, hidden_in=h, start_layer=j, read_at=at, **kw
            ).hidden
        )
    )
    for j in range(cfg.n_layers + 1):
        np.testing.assert_allclose(
            run(whole.hiddens[j], jnp.int32(j)), want, rtol=1e-5, atol=1e-5, err_msg=f"j={j}"
        )
    valid = jnp.ones((2, 16), bool).at[0, :4].set(False)  # row 0 left-padded by 4 slots
    pos = jnp.maximum(jnp.arange(13)[None] - jnp.asarray([4, 0])[:, None], 0)
    prefill = functools.partial(
        transformer.forward,
        params,
        tokens,
        cfg,
        positions=pos,
        cache=transformer.init_cache(cfg, 2, 16),
        cache_index=0,
        kv_valid=valid,
    )
    full, last = prefill(), prefill(read_at=jnp.full((2, 1), 12))
    np.testing.assert_allclose(last.hidden, full.hidden[:, -1:], rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), last.cache, full.cache
    )
    with pytest.raises(ValueError, match="collect_hidden"):
        transformer.forward(params, tokens, cfg, read_at=at, collect_hidden=True)


@pytest.mark.parametrize(
    "eq, x_shape, w_shape",
    [
        ("btd,df->btf", (2, 5, 4), (4, 6)),  # MLP
        ("btd,dnh->btnh", (2, 5, 4), (4, 3, 2)),  # attention projections
        ("btnh,nhd->btd", (2, 5, 3, 2), (3, 2, 4)),  # attention output
        ("btd,vd->btv", (2, 5, 4), (7, 4)),  # tied head
        ("td,df->tf", (5, 4), (4, 6)),  # one batch dim: einsum as it is
    ],
)
def test_project_equals_einsum_in_value_and_gradient(eq, x_shape, w_shape):
    from jaxknow.model.layers import project

    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    want = jnp.einsum(eq, x, w)
    got = project(eq, x, w, preferred_element_type=jnp.float32)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    probe = jax.random.normal(kg, want.shape)  # a cotangent that weighs every output apart

    def pull(f):
        return jax.grad(lambda x, w: jnp.sum(f(eq, x, w) * probe), argnums=(0, 1))(x, w)

    for g_got, g_want in zip(pull(project), pull(jnp.einsum), strict=True):
        np.testing.assert_allclose(g_got, g_want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("switches", [{}, GEMMA3_SWITCHES], ids=["llama", "gemma3"])
def test_attention_in_query_blocks_equals_one_block(switches):
    """Causal attention in blocks of 4 queries (each reading only the keys up to its last
    query; 17 tokens: a short last block) gives what one block gives: packed segments,
    sliding windows and soft-capping included, value and gradient, and a left-padded prefill
    into a cache at the static slot 0 (blocked) equals one at a traced slot (never blocked) on
    its real tokens. Fails when a block reads too few keys or is masked wrongly."""
    base = preset("tiny-llama", n_layers=2, dtype="float32", **switches)
    params = init_params(param_specs(base), jax.random.key(0), jnp.float32)
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, base.vocab_size)
    segments = jnp.asarray([[1] * 7 + [2] * 10, [1] * 17])
    positions = jnp.asarray([list(range(7)) + list(range(10)), list(range(17))])
    kw = dict(segment_ids=segments, positions=positions)
    one, blocked = base.replace(attention_query_block=0), base.replace(attention_query_block=4)
    assert transformer.query_block(one) == 0 and transformer.query_block(blocked) == 4
    ref = transformer.apply(params, tokens, one, **kw)
    np.testing.assert_allclose(transformer.apply(params, tokens, blocked, **kw), ref, atol=1e-5)
    grads = [jax.grad(functools.partial(loss_fn, cfg=c))(params, tokens) for c in (one, blocked)]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), *grads)
    cache = transformer.init_cache(base, 2, 20)
    valid = jnp.ones((2, 20), bool).at[0, :3].set(False)  # row 0 left-padded by 3 slots
    static, traced = (
        transformer.forward(params, tokens, blocked, cache=cache, cache_index=c, kv_valid=valid)
        for c in (0, jnp.int32(0))
    )
    # A pad slot's query sees no key: its (unused) output depends on how many keys it skips.
    real = np.asarray(valid[:, :17])
    np.testing.assert_allclose(static.hidden[real], traced.hidden[real], atol=1e-5)
    for a, b in zip(jax.tree.leaves(static.cache), jax.tree.leaves(traced.cache)):
        np.testing.assert_allclose(a[:, :17][real], b[:, :17][real], atol=1e-5)
    with pytest.raises(ValueError, match="attention_query_block"):
        base.replace(attention_query_block=-1)


def test_prompt_flops_count_the_layers_and_only_the_last_layers_keys_and_values_when_read_few():
    """The benchmarks' floors: SmolLM2-135M's layers are 2 × their parameters plus causal
    attention per prompt token; read at a few positions, its last layer counts only its key
    and value projections (576 × 3 heads × 64, twice, per layer)."""
    from jaxknow.model.flops import kv_flops_per_token, prompt_flops_per_token
    from jaxknow.model.params import count_params

    cfg = preset("smollm2-135m")
    layers = count_params(param_specs(cfg)["layers"])
    full = prompt_flops_per_token(cfg, 100)
    assert full == 2 * layers + 2 * 30 * 9 * 64 * 100
    assert kv_flops_per_token(cfg) == 2 * 2 * 576 * 3 * 64
    few = prompt_flops_per_token(cfg, 100, read_few=True)
    assert few == pytest.approx(full * 29 / 30 + kv_flops_per_token(cfg))
