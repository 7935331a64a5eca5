"""Hugging Face interop: tiny random transformers models of every supported family are imported,
compared logit by logit with transformers, exported back and reloaded by transformers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.hf
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from jaxknow.io import hf, hf_config, hf_staging, load  # noqa: E402
from jaxknow.io.checkpoint import save_params_checkpoint  # noqa: E402
from jaxknow.io.load import load_model  # noqa: E402
from jaxknow.model import transformer  # noqa: E402
from jaxknow.model.config import preset  # noqa: E402
from jaxknow.model.params import flatten, param_specs, unflatten  # noqa: E402
from jaxknow.parallel.mesh import make_mesh  # noqa: E402
from tests.util import run_module  # noqa: E402

TOL = 1e-4
# Token sequences of different lengths (all ids < 100, at most 24 tokens).
SEQS = [[7], [1, 5, 7, 9, 22, 3, 50, 99], [(i * 37 + 11) % 100 for i in range(24)]]

_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
_ROPE_COMMON = dict(
    vocab_size=100,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)
SPECS = {
    # name: (config class, model class, config kwargs)
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(
            vocab_size=100,
            n_positions=32,
            n_embd=32,
            n_layer=2,
            n_head=4,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            _ROPE_COMMON,
            num_key_value_heads=2,
            rope_theta=500_000.0,
            rope_scaling=_LLAMA3_ROPE,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(
            _ROPE_COMMON, num_key_value_heads=2, rope_theta=1_000_000.0, tie_word_embeddings=False
        ),
    ),
    "qwen2_tied": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(_ROPE_COMMON, num_key_value_heads=1, tie_word_embeddings=True),
    ),
    "gemma": (
        "GemmaConfig",
        "GemmaForCausalLM",
        dict(_ROPE_COMMON, num_key_value_heads=1, head_dim=16),
    ),
    # Gemma 3: 7 layers (0-4 and 6 local, 5 global), a window of 5 (< the 24-token sequence),
    # distinct local / global rotary bases with linear scaling on the global layer, and a
    # query_pre_attn_scalar other than head_dim.
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            _ROPE_COMMON,
            num_hidden_layers=7,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=5,
            query_pre_attn_scalar=24,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
            },
        ),
    ),
    # Gemma 3 with soft-capped output logits; transformers' Gemma 3 ignores the attention cap
    # (so must the import).
    "gemma3_softcap": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            _ROPE_COMMON,
            num_hidden_layers=3,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=3,
            sliding_window_pattern=2,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=1.5,
        ),
    ),
}


def _one_device():
    """A one-device mesh: conversions in these tests stay cheap on the 8 simulated devices
    (the sharded paths are exercised by the fsdp streaming and CLI tests)."""
    return make_mesh(1, 1, 1, devices=jax.devices()[:1])


def _make_hf(name: str, path: Path, seed: int = 0, **save_kw) -> torch.nn.Module:
    """Saves a tiny random float32 model of SPECS[name] in `path`; returns it (eval mode)."""
    cfg_cls, model_cls, kw = SPECS[name]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kw)).float()
    with torch.no_grad():  # every tensor random, so that any mapping slip shows in the logits
        for pname, p in model.named_parameters():
            is_scale = pname.endswith("weight") and ("norm" in pname or ".ln_" in pname)
            offset = 1.0 if is_scale and not name.startswith("gemma") else 0.0
            p.copy_(offset + 0.3 * torch.randn_like(p))
    model.save_pretrained(path, **save_kw)
    return model.eval()


def _random_params(specs) -> dict:
    """Returns numpy parameters for a ParamSpec tree (cheaper than jitting `init_params`)."""
    rng = np.random.default_rng(0)
    return unflatten(
        {
            p: (0.1 * rng.standard_normal(s.shape)).astype(np.float32)
            for p, s in flatten(specs).items()
        }
    )


def _hf_logits(model: torch.nn.Module, seq: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0].float().numpy()


def _jaxknow_logits(params, cfg) -> list[np.ndarray]:
    """Returns the logits of every SEQS entry, computed as one right-padded batch (causal:
    padding never changes the real positions)."""
    t = max(map(len, SEQS))
    batch = jnp.asarray([s + [0] * (t - len(s)) for s in SEQS], jnp.int32)
    out = np.asarray(jax.jit(lambda p, x: transformer.apply(p, x, cfg))(params, batch))
    return [out[i, : len(s)] for i, s in enumerate(SEQS)]


def _check_parity(model: torch.nn.Module, logits: list[np.ndarray]) -> float:
    """Asserts the logits equal transformers' to TOL; returns the largest difference."""
    worst = 0.0
    for seq, got in zip(SEQS, logits):
        want = _hf_logits(model, seq)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A sharded GPT-2 checkpoint (several safetensors files plus the index)."""
    path = tmp_path_factory.mktemp("hf") / "gpt2"
    model = _make_hf("gpt2", path, max_shard_size="20KB")
    return path, model


@pytest.mark.parametrize(
    "name", ["gpt2", "llama", "qwen2", "qwen2_tied", "gemma", "gemma3", "gemma3_softcap"]
)
def test_import_export_parity(name, tmp_path, gpt2_dir):
    if name == "gpt2":
        src, model = gpt2_dir
        assert (src / "model.safetensors.index.json").is_file()
        assert len(list(src.glob("*.safetensors"))) > 1
    else:
        src = tmp_path / "hf"
        model = _make_hf(name, src)
    family = "gemma3_text" if name.startswith("gemma3") else name.split("_")[0]
    mesh = _one_device()
    dst = hf.hf_to_jaxknow(src, tmp_path / "jk", mesh=mesh)
    loaded = load_model(dst, mesh=mesh)
    assert loaded.meta["source"] == "huggingface" and loaded.meta["family"] == family
    if name == "gemma":
        assert loaded.cfg.dim_per_head * loaded.cfg.n_heads != loaded.cfg.d_model
    if name == "llama":
        assert loaded.cfg.kv_heads == 2 and loaded.cfg.rope_scaling["factor"] == 8.0
    assert loaded.cfg.tie_embeddings == ("lm_head" not in loaded.params)
    _check_parity(model, _jaxknow_logits(loaded.params, loaded.cfg))
    if name == "gemma3_softcap":
        assert loaded.cfg.final_logit_softcap == 1.5 and loaded.cfg.attn_logit_softcap is None
    if name == "gemma3":
        assert loaded.cfg.local_layers == (True,) * 5 + (False, True)
        assert loaded.cfg.rope_scaling == {"factor": 2.0} and loaded.cfg.rope_local_theta == 100

    out = hf.jaxknow_to_hf(
        dst, tmp_path / "export", mesh=mesh, max_shard_size="16KB" if name == "llama" else "5GB"
    )
    hf_cfg = json.loads((out / "config.json").read_text())
    assert hf_cfg["model_type"] == family
    assert hf_config.model_config_from_hf(hf_cfg) == (family, loaded.cfg)
    assert hf_cfg["architectures"] == [hf_config.ARCHITECTURES[family]]
    assert (out / "model.safetensors.index.json").is_file() == (name == "llama")
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for seq in SEQS:
        np.testing.assert_allclose(_hf_logits(back, seq), _hf_logits(model, seq), atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def gemma3_model(tmp_path_factory):
    """(transformers model, imported jaxknow model) of the 7-layer Gemma 3 of SPECS."""
    src = tmp_path_factory.mktemp("hf") / "gemma3"
    model = _make_hf("gemma3", src)
    return model, hf.load_hf_params(src, _one_device())


def test_gemma3_scan_packed_segments_and_window(gemma3_model):
    """Scanned and looped layers, and documents packed into one row, all match transformers;
    ignoring the sliding window (or the local rotary base) would not."""
    model, m = gemma3_model
    cfg = m.cfg
    assert not cfg.use_scan and any(cfg.local_layers) and not all(cfg.local_layers)
    worst = _check_parity(model, _jaxknow_logits(m.params, cfg.replace(scan_layers=True)))
    assert worst < TOL
    # SEQS[1] and SEQS[2] packed into one row: positions restart, attention stays inside.
    a, b = SEQS[1], SEQS[2]
    tokens = jnp.asarray([a + b], jnp.int32)
    positions = jnp.asarray([list(range(len(a))) + list(range(len(b)))], jnp.int32)
    segments = jnp.asarray([[1] * len(a) + [2] * len(b)], jnp.int32)
    for scan in (False, True):
        c = cfg.replace(scan_layers=scan)
        out = transformer.forward(
            m.params, tokens, c, positions=positions, segment_ids=segments, collect_hidden=True
        )
        assert out.hiddens.shape[0] == cfg.n_layers + 1
        got = np.asarray(transformer.logits(m.params, out.hidden, c))[0]
        np.testing.assert_allclose(got[: len(a)], _hf_logits(model, a), atol=TOL, rtol=0)
        np.testing.assert_allclose(got[len(a) :], _hf_logits(model, b), atol=TOL, rtol=0)
    # The tests can fail: without the window, or with one rotary base, the logits move.
    want = _hf_logits(model, SEQS[2])
    for wrong in (
        cfg.replace(sliding_window=None, sliding_window_pattern=None, rope_local_theta=None),
        cfg.replace(rope_local_theta=None),
    ):
        got = np.asarray(transformer.apply(m.params, jnp.asarray([SEQS[2]]), wrong))[0]
        assert np.abs(got - want).max() > 100 * TOL


def test_gemma3_cached_generation_matches_full_forward(gemma3_model):
    """KV-cache greedy decoding (left-padded prompts, generated text longer than the window)
    equals the argmax of transformers' full forward pass over the final sequence."""
    from jaxknow.eval import generate

    model, m = gemma3_model
    prompts = [SEQS[1], SEQS[2][:13], [7, 3]]
    got = generate.generate_tokens(m.params, m.cfg, prompts, max_new_tokens=10, batch_size=4)
    assert all(len(g) == 10 for g in got)
    for prompt, new in zip(prompts, got):
        seq = prompt + new
        want = np.argmax(_hf_logits(model, seq), axis=-1)[len(prompt) - 1 : -1]
        assert new == want.tolist()


def test_bf16_source_and_fsdp_streaming(tmp_path):
    src = tmp_path / "hf"
    model = _make_hf("llama", src)
    model.to(torch.bfloat16).save_pretrained(src)
    want = model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()  # [H*Dh, D]

    m32 = hf.load_hf_params(src, param_dtype="float32")
    q = np.asarray(m32.params["layers"]["attn"]["q"]["kernel"])[1]  # layer 1: [D, H, Dh]
    np.testing.assert_array_equal(q.reshape(q.shape[0], -1).T, want)

    mesh = make_mesh(1, 2, 4)
    m16 = hf.load_hf_params(src, mesh, param_dtype="bfloat16")
    q16 = m16.params["layers"]["attn"]["q"]["kernel"]  # [L, D, H, Dh], layers unsharded
    assert q16.dtype == jnp.bfloat16 and m16.cfg.param_dtype == "bfloat16"
    assert q16.sharding.spec[:3] == (None, "fsdp", "tensor")
    assert len({str(s.index) for s in q16.addressable_shards}) == 8  # split, not replicated
    np.testing.assert_array_equal(np.asarray(q16, np.float32)[1], q)
    for leaf32, leaf16 in zip(jax.tree.leaves(m32.params), jax.tree.leaves(m16.params)):
        np.testing.assert_array_equal(np.asarray(leaf16, np.float32), np.asarray(leaf32))


def test_sharded_gpt2_import_matches_replicated(gpt2_dir):
    """Fused q/k/v slices read shard by shard equal the replicated import."""
    whole = hf.load_hf_params(gpt2_dir[0], _one_device())
    split = hf.load_hf_params(gpt2_dir[0], make_mesh(1, 2, 4))
    assert split.params["layers"]["attn"]["k"]["kernel"].sharding.spec[:3] == (
        None,
        "fsdp",
        "tensor",
    )
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(split.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tokenizer_round_trip(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(
        ["The capital of France is Paris.", "héllo wörld, 東京 ☃", "  leading spaces and\ttabs"]
        * 5,
        trainer=trainer,
    )
    src = tmp_path / "hf"
    _make_hf("qwen2_tied", src)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    ).save_pretrained(src)
    dst = hf.hf_to_jaxknow(src, tmp_path / "jk", mesh=_one_device())
    loaded = load_model(dst, mesh=_one_device())
    assert loaded.tokenizer is not None
    eot = tok.token_to_id("<|endoftext|>")
    assert loaded.tokenizer.eos_id == eot and loaded.tokenizer.bos_id == eot
    texts = [
        "The capital of France is Paris.",
        " Paris",
        "  two spaces",
        "héllo wörld 東京 ☃",
        "\tunseen ünïcödé 🙂",
        "",
    ]
    for text in texts:
        assert loaded.tokenizer.encode(text) == tok.encode(text, add_special_tokens=False).ids

    out = hf.jaxknow_to_hf(dst, tmp_path / "export", mesh=_one_device())
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert (out / "tokenizer_config.json").is_file()


def test_lora_adapters_are_merged_on_export(tmp_path):
    from jaxknow.model.lora import LoraConfig, lora_specs

    src = tmp_path / "hf"
    _make_hf("llama", src)
    base = hf.load_hf_params(src, _one_device())
    lcfg = LoraConfig(rank=2, alpha=4.0, targets=("q", "v", "down"), embedding_rank=2)
    cfg = base.cfg.replace(lora_scale=lcfg.scale)
    adapters = _random_params(lora_specs(cfg, lcfg))  # nonzero, unlike a fresh init
    params = unflatten({**flatten(base.params), **flatten(adapters)})
    meta = {"model": cfg.to_dict(), "lora": dataclasses.asdict(lcfg)}
    save_params_checkpoint(tmp_path / "run", params, meta)
    want = _jaxknow_logits(params, cfg)

    out = hf.jaxknow_to_hf(
        tmp_path / "run", tmp_path / "export", family="llama", mesh=_one_device()
    )
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    _check_parity(back, want)


def test_cli_convert_score_and_destination(tmp_path, gpt2_dir):
    src, model = gpt2_dir
    dst = tmp_path / "jk"
    r = run_module(
        "launch.convert", "--from=hf", f"--src={src}", f"--dst={dst}", "--mesh_fsdp=2", devices=2
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (dst / "checkpoints").is_dir() and not list(tmp_path.glob(".jk*"))

    seq = SEQS[-1]
    npy = tmp_path / "logits.npy"
    r = run_module(
        "launch.score",
        f"--checkpoint={dst}",
        f"--tokens={','.join(map(str, seq))}",
        f"--out={npy}",
        devices=1,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    logits = np.load(npy)
    assert logits.dtype == np.float32 and logits.shape == (len(seq), 100)
    mesh = _one_device()
    np.testing.assert_allclose(
        logits, load.score_tokens(load_model(dst, mesh=mesh), seq), atol=1e-6, rtol=0
    )
    np.testing.assert_allclose(logits, _hf_logits(model, seq), atol=TOL, rtol=0)
    # Without the suffix np.save appends ".npy": the report names the file really written.
    r = run_module(
        "launch.score",
        f"--checkpoint={dst}",
        f"--tokens={','.join(map(str, seq))}",
        f"--out={tmp_path / 'noext'}",
        devices=1,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"to {tmp_path / 'noext.npy'}" in r.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "noext.npy"), logits)

    before = sorted(p.name for p in dst.iterdir())
    r = run_module("launch.convert", "--from=hf", f"--src={src}", f"--dst={dst}", devices=1)
    assert r.returncode == 2
    assert "not empty" in r.stderr and "--overwrite" in r.stderr
    assert sorted(p.name for p in dst.iterdir()) == before


def test_bad_tokens_are_named():
    cfg = preset("tiny", vocab_size=100)
    with pytest.raises(ValueError, match="'x'"):
        load.parse_token_list("1,x,3")
    with pytest.raises(ValueError, match=r"\(100\) is outside the vocabulary \[0, 100\)"):
        load.check_tokens([1, 100], cfg)
    with pytest.raises(ValueError, match=r"\(-1\)"):
        load.check_tokens([-1], cfg)
    with pytest.raises(ValueError, match="not an integer"):
        load.check_tokens([1.5], cfg)


def test_unknown_architecture(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]})
    )
    with pytest.raises(hf_config.HFConversionError, match="'mamba'.*supported: gpt2.*llama"):
        hf.hf_to_jaxknow(tmp_path, tmp_path.parent / "out")
    assert not (tmp_path.parent / "out").exists()
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]})
    )
    with pytest.raises(hf_config.HFConversionError, match="LlamaForSequenceClassification"):
        hf.hf_to_jaxknow(tmp_path, tmp_path.parent / "out")


def test_missing_and_unexpected_tensors(tmp_path):
    src = tmp_path / "hf"
    _make_hf("gemma", src)
    tensors = load_file(src / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"], tensors["model.norm.weight"]
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)  # ignored
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(hf_config.HFConversionError, match="missing 2 tensor") as e:
        hf.hf_to_jaxknow(src, tmp_path / "jk")
    assert "model.layers.1.mlp.up_proj.weight" in str(e.value)
    assert "model.norm.weight" in str(e.value) and "inv_freq" not in str(e.value)
    assert not (tmp_path / "jk").exists() and not list(tmp_path.glob(".jk*"))

    tensors = load_file(src / "model.safetensors")
    tensors["model.norm.weight"] = np.ones(32, np.float32)
    tensors["model.layers.1.mlp.up_proj.weight"] = np.ones((64, 32), np.float32)
    tensors["model.layers.0.mlp.extra.weight"] = np.ones(3, np.float32)
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        hf_config.HFConversionError, match=r"unexpected 1 tensor.*mlp\.extra\.weight"
    ):
        hf.hf_to_jaxknow(src, tmp_path / "jk")


def test_destination_and_family_errors(tmp_path, gpt2_dir):
    # A jaxknow model no Hugging Face family describes: GPT-2 blocks with rotary positions.
    cfg = preset("tiny", vocab_size=64, pos_embedding="rope")
    params = _random_params(param_specs(cfg))
    save_params_checkpoint(tmp_path / "rope_gpt2", params, {"model": cfg.to_dict()})
    with pytest.raises(hf_config.HFConversionError, match="matches no Hugging Face family"):
        hf.jaxknow_to_hf(tmp_path / "rope_gpt2", tmp_path / "out", mesh=_one_device())
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(hf_staging.DestinationError, match="not empty"):
        hf.hf_to_jaxknow(gpt2_dir[0], busy, mesh=_one_device())
    with pytest.raises(hf_staging.DestinationError, match="would replace the source"):
        hf.hf_to_jaxknow(gpt2_dir[0], gpt2_dir[0].parent, overwrite=True)
    assert (busy / "keep.txt").read_text() == "x"


def test_finetune_configs_parse(tmp_path, gpt2_dir):
    from configs.hf import finetune_full, finetune_lora
    from jaxknow import config as C
    from jaxknow.train.setup import parse_run_config

    dst = hf.hf_to_jaxknow(gpt2_dir[0], tmp_path / "jk", mesh=_one_device())
    for mod in (finetune_full, finetune_lora):
        c = mod.get_config()
        c.train.init_from = str(dst)
        parse_run_config(c)
        spec = parse_run_config(mod.get_config(str(dst)))
        assert spec.train.init_from == str(dst)
        assert param_specs(spec.model) == param_specs(load_model(dst, mesh=_one_device()).cfg)
        assert spec.data.world["tokenizer"] == str(dst)
    assert parse_run_config(finetune_lora.get_config(str(dst))).train.trainable == "lora"
    assert C.to_plain(finetune_full.get_config().data.world)["kind"] == "countries"


# The config.json files of real checkpoints, as published (transformers 4 style).
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}
GEMMA_7B = {
    "architectures": ["GemmaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "head_dim": 256,
    "hidden_act": "gelu",
    "hidden_size": 3072,
    "intermediate_size": 24576,
    "max_position_embeddings": 8192,
    "model_type": "gemma",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 16,
    "pad_token_id": 0,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "torch_dtype": "bfloat16",
    "vocab_size": 256000,
}
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "hidden_act": "silu",
    "hidden_size": 576,
    "initializer_range": 0.041666666666666664,
    "intermediate_size": 1536,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 100000,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "vocab_size": 49152,
}
GEMMA3_270M = {
    "_sliding_window_pattern": 6,
    "architectures": ["Gemma3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "final_logit_softcapping": None,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 640,
    "initializer_range": 0.02,
    "intermediate_size": 2048,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "max_position_embeddings": 32768,
    "model_type": "gemma3_text",
    "num_attention_heads": 4,
    "num_hidden_layers": 18,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 512,
    "torch_dtype": "bfloat16",
    "use_bidirectional_attention": False,
    "use_cache": True,
    "vocab_size": 262144,
}
GPT2_SMALL = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "vocab_size": 50257,
}


@pytest.mark.parametrize(
    "hf_cfg, name",
    [
        (LLAMA31_8B, "llama-8b"),
        (GEMMA_7B, "gemma-7b"),
        (GPT2_SMALL, "gpt2-small"),
        (SMOLLM2_135M, "smollm2-135m"),
        (GEMMA3_270M, "gemma3-270m"),
    ],
)
def test_published_configs_map_to_presets(hf_cfg, name):
    family, cfg = hf_config.model_config_from_hf(hf_cfg, param_dtype="bfloat16")
    ref = preset(name)
    assert family == hf_cfg["model_type"]
    assert param_specs(cfg) == param_specs(ref)
    for field in (
        "norm",
        "norm_eps",
        "norm_scale_offset",
        "mlp",
        "embed_scale",
        "rope_theta",
        "tie_embeddings",
        "attn_bias",
        "pos_embedding",
        "gelu_approximate",
        "qk_norm",
        "post_norms",
        "attn_scale",
        "sliding_window",
        "sliding_window_pattern",
        "rope_local_theta",
        "attn_logit_softcap",
        "final_logit_softcap",
    ):
        assert getattr(cfg, field) == getattr(ref, field), field
    if name == "llama-8b":
        assert cfg.rope_scaling == {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    back = hf_config.hf_config_from_model(cfg, family)
    assert hf_config.model_config_from_hf(back, param_dtype="bfloat16") == (family, cfg)
