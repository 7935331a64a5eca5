"""GGUF import: tiny GGUF files written with gguf.GGUFWriter (llama.cpp's tensor names, its q/k
row permutation, quantized tensors) are converted and compared logit by logit with jaxknow on
the same weights and with transformers' own GGUF loading; broken files fail in one line; the
tokenizer rebuilt from the metadata round-trips. Slow tests: the real SmolLM2 and Gemma 3
files against transformers (skipped when their packages are not installed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import jax  # noqa: E402

from jaxknow.io import gguf as jgguf  # noqa: E402
from jaxknow.io import hf_tensors, named_models  # noqa: E402
from jaxknow.io.gguf_file import GGUFError  # noqa: E402
from jaxknow.io.load import load_model, score_tokens  # noqa: E402
from jaxknow.model.config import ModelConfig  # noqa: E402
from jaxknow.model.layout import stack, unstack  # noqa: E402
from jaxknow.model.params import flatten, unflatten  # noqa: E402
from tests.util import numpy_params, run_module  # noqa: E402

Q = gguf.GGMLQuantizationType
HAVE_HF = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
#: XLA:CPU without its YNNPACK fusions (dots and the elementwise work fused into them).
WITHOUT_YNN_FUSIONS = "--xla_cpu_experimental_ynn_fusion_type="
SEQ = [5, 17, 3, 99, 42, 7, 63, 250, 11, 0, 128, 64]

# The tiny model: d=64 (quantization blocks are 32 wide), 4 heads of 16, 2 kv heads.
CFG = ModelConfig(
    vocab_size=264,
    d_model=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    d_ff=128,
    max_seq_len=128,
    pos_embedding="rope",
    rope_theta=10_000.0,
    norm="rmsnorm",
    norm_eps=1e-5,
    mlp="swiglu",
    tie_embeddings=True,
)
# Tensor type per llama.cpp tensor kind (norms stay F32).
TYPES = {
    "token_embd": Q.Q8_0,
    "attn_q": Q.F16,
    "attn_k": Q.BF16,
    "attn_v": Q.Q4_0,
    "attn_output": Q.Q4_1,
    "ffn_gate": Q.Q5_0,
    "ffn_up": Q.Q8_0,
    "ffn_down": Q.Q4_1,
}


def _byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes, written independently of jaxknow's."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


MERGES = ["Ġ t", "h e", "Ġt he", "Ġ V", "e l", "Ġ 1"]
TOKENS = _byte_alphabet() + ["Ġt", "he", "Ġthe", "ĠV", "el", "Ġ1", "<|endoftext|>", "<pad>"]
assert len(TOKENS) == CFG.vocab_size


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (HF -> GGUF)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _roundtrip(w: np.ndarray, qtype: Q) -> np.ndarray:
    """Returns what a tensor becomes after being stored as `qtype` and read back."""
    if qtype == Q.F32:
        return w.astype(np.float32)
    if qtype == Q.F16:
        return w.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).astype(np.float32)


def _stored(w: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        return w.astype(np.float32)
    if qtype == Q.F16:
        return w.astype(np.float16)
    return gguf.quants.quantize(w, qtype)


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = "llama",
    types: dict[str, Q] | None = None,
    tokenizer: str = "gpt2",
    extra: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> tuple[dict, dict]:
    """Writes a tiny Llama-shaped GGUF file; returns (original float32 params, the params the
    file holds after quantization), both as jaxknow parameter trees."""
    types = TYPES if types is None else types
    params = jax.tree.map(np.asarray, numpy_params(CFG, seed))
    flat = flatten(params)
    plan = hf_tensors.tensor_plan("llama", CFG)
    by_name: dict[str, list] = {}
    for p, src in plan.items():
        by_name.setdefault(src.name, []).append((p, src))
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, CFG.n_layers)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(CFG.n_layers)
    w.add_context_length(CFG.max_seq_len)
    w.add_embedding_length(CFG.d_model)
    w.add_feed_forward_length(CFG.d_ff)
    w.add_head_count(CFG.n_heads)
    w.add_head_count_kv(CFG.kv_heads)
    w.add_rope_freq_base(CFG.rope_theta)
    w.add_layer_norm_rms_eps(CFG.norm_eps)
    w.add_rope_dimension_count(CFG.dim_per_head)
    w.add_tokenizer_model(tokenizer)
    w.add_tokenizer_pre("smollm")
    w.add_token_list(TOKENS)
    w.add_token_types([1] * (len(TOKENS) - 2) + [3, 3])
    w.add_token_merges(MERGES)
    w.add_bos_token_id(len(TOKENS) - 2)
    w.add_eos_token_id(len(TOKENS) - 2)
    quantized = {}
    for hf_name, sources in by_name.items():
        t = hf_tensors.stored_tensor(sources, flat, np.dtype("float32"))
        base, suffix = hf_name.rsplit(".", 1)
        g = name_map.get_name(base) + "." + suffix
        kind = g.split(".")[-2]
        qtype = types.get(kind, Q.F32)
        heads = {"attn_q": CFG.n_heads, "attn_k": CFG.kv_heads}.get(kind)
        back = _roundtrip(t, qtype)  # rows are quantized independently: permute commutes
        stored = _permute(t, heads) if heads else t
        w.add_tensor(
            g, _stored(stored, qtype), raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype
        )
        quantized[hf_name] = back
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    qflat = {}
    per_layer = flatten(unstack(params))  # the tensors are per layer
    for hf_name, sources in by_name.items():
        t = quantized[hf_name]
        for p, src in sources:
            a = t.T if src.torch_linear else t
            qflat[p] = a.reshape(per_layer[p].shape)
    return params, stack(unflatten(qflat), combine=np.stack)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("gguf")
    path = d / "tiny.gguf"
    orig, quant = write_tiny_gguf(path)
    out = jgguf.gguf_to_jaxknow(path, d / "model")
    return {"dir": d, "path": path, "orig": orig, "quant": quant, "model": load_model(out)}


def _logits(params: dict, cfg: ModelConfig = CFG) -> np.ndarray:
    class M:
        pass

    m = M()
    m.params, m.cfg = jax.tree.map(np.asarray, params), cfg
    return score_tokens(m, SEQ)


def test_tiny_llama_matches_dequantized_weights(tiny: dict) -> None:
    model = tiny["model"]
    got = score_tokens(model, SEQ)
    # Every parameter is exactly what the file holds (q/k rows un-permuted).
    flat_got = {k: np.asarray(v) for k, v in flatten(model.params).items()}
    for k, v in flatten(tiny["quant"]).items():
        np.testing.assert_allclose(flat_got[k], v, rtol=0, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(got, _logits(tiny["quant"]), atol=1e-4)
    # Against the original float32 weights: within quantization error, same argmax mostly.
    ref = _logits(tiny["orig"])
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max() + 0.05
    assert model.meta["source"] == "gguf" and model.meta["family"] == "llama"


def test_permutation_is_undone(tmp_path: Path) -> None:
    """Without un-permuting q and k the logits differ: the test can fail."""
    path = tmp_path / "f32.gguf"
    orig, _ = write_tiny_gguf(path, types={})
    out = jgguf.gguf_to_jaxknow(path, tmp_path / "m")
    got = score_tokens(load_model(out), SEQ)
    np.testing.assert_allclose(got, _logits(orig), atol=1e-4)
    flat = flatten(orig)
    for k in [k for k in flat if k.endswith("attn/q/kernel")]:
        wrong = dict(flat)
        q = flat[k]  # [d, h, hd]: permute the head dims as llama.cpp stores them
        wrong[k] = _permute(q.reshape(q.shape[0], -1).T, CFG.n_heads).T.reshape(q.shape)
        assert np.abs(_logits(unflatten(wrong)) - got).max() > 1e-3
        break


@pytest.mark.hf
@pytest.mark.skipif(not HAVE_HF, reason="torch/transformers not installed")
def test_tiny_llama_matches_transformers(tiny: dict) -> None:
    import torch
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(
        str(tiny["dir"]), gguf_file="tiny.gguf", dtype=torch.float32
    )
    with torch.no_grad():
        ref = m(torch.tensor([SEQ])).logits[0].numpy()
    got = score_tokens(tiny["model"], SEQ)
    assert np.abs(got - ref).max() <= 1e-4


def test_tokenizer_round_trips(tiny: dict) -> None:
    tok = tiny["model"].tokenizer
    for text in ["the theory of Veldoria", " the 1987 then", "Zürich — naïve!"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode(" the") == [TOKENS.index("Ġthe")]
    assert tok.encode("<|endoftext|>") == [len(TOKENS) - 2]  # a control token stays whole
    assert tok.eos_id == len(TOKENS) - 2 and tok.bos_id == len(TOKENS) - 2
    if HAVE_HF:
        import transformers

        ref = transformers.AutoTokenizer.from_pretrained(str(tiny["dir"]), gguf_file="tiny.gguf")
        for text in ["the theory of Veldoria", " the 1987 then", "Zürich — naïve!"]:
            assert tok.encode(text) == ref.encode(text, add_special_tokens=False)


@pytest.mark.skipif(not HAVE_HF, reason="transformers not installed")
def test_export_names_the_special_tokens_for_transformers(tiny: dict, tmp_path: Path) -> None:
    """A model converted from GGUF carries no tokenizer_config.json; its HF export writes one,
    so AutoTokenizer (and lm-eval's `hf` model, which needs an end-of-text id) knows eos."""
    import transformers

    from jaxknow.io.hf import jaxknow_to_hf

    out = jaxknow_to_hf(tiny["dir"] / "model", tmp_path / "hf")
    ref = transformers.AutoTokenizer.from_pretrained(str(out))
    tok = tiny["model"].tokenizer
    assert ref.eos_token_id == tok.eos_id and ref.bos_token_id == tok.bos_id
    assert ref.pad_token_id == tok.pad_id
    for text in ["the theory of Veldoria", "Zürich — naïve!"]:
        assert ref.encode(text, add_special_tokens=False) == tok.encode(text)


def _one_line_error(fn, *needles: str) -> str:
    with pytest.raises(GGUFError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_truncated_file(tiny: dict, tmp_path: Path) -> None:
    bad = tmp_path / "cut.gguf"
    data = tiny["path"].read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    _one_line_error(lambda: jgguf.gguf_to_jaxknow(bad, tmp_path / "m"), str(bad), "truncated")
    bad.write_bytes(data[:100])
    _one_line_error(lambda: jgguf.gguf_to_jaxknow(bad, tmp_path / "m"), str(bad))
    assert not (tmp_path / "m").exists()
    r = run_module("launch.convert", "--from=gguf", f"--src={bad}", f"--dst={tmp_path / 'm'}")
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and str(bad) in lines[0], r.stderr


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _one_line_error(
        lambda: jgguf.gguf_to_jaxknow(path, tmp_path / "m"), str(path), "'mamba'", "llama"
    )


def test_unsupported_tensor_type(tmp_path: Path) -> None:
    path = tmp_path / "int.gguf"
    write_tiny_gguf(
        path, types={"attn_q": Q.F32}, extra={"blk.0.attn_q_norm.weight": np.zeros(4, np.int32)}
    )
    _one_line_error(
        lambda: jgguf.gguf_to_jaxknow(path, tmp_path / "m"), "blk.0.attn_q_norm.weight", "I32"
    )


def test_tokenizer_that_cannot_be_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "bert.gguf"
    write_tiny_gguf(path, tokenizer="bert")
    _one_line_error(lambda: jgguf.gguf_to_jaxknow(path, tmp_path / "m"), str(path), "'bert'")
    assert not (tmp_path / "m").exists()


def test_named_model_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    model = named_models.NamedModel(
        "nothing", ("no-such-pkg==1",), (named_models.Chunk("no-such-jaxknow-pkg", "x.gguf"),)
    )
    monkeypatch.setitem(named_models.NAMED_MODELS, "nothing", model)
    _one_line_error(
        lambda: named_models.ensure_converted("gguf:nothing"),
        "no-such-jaxknow-pkg",
        "python -m launch.get_model nothing",
    )
    _one_line_error(lambda: named_models.named_model("gguf:nope"), "gguf:smollm2-135m")


def test_named_model_cache(tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A named model resolves through importlib.metadata, converts once, is reused."""
    import importlib.metadata as md

    class Dist:
        version = "1"
        files = ["pkg/tiny.gguf"]

        def locate_file(self, f: str) -> Path:
            return tiny["dir"] / "tiny.gguf"

    monkeypatch.setattr(md, "distribution", lambda name: Dist())
    monkeypatch.setenv("JAXKNOW_CACHE", str(tmp_path / "cache"))
    model = named_models.NamedModel("tiny", ("x",), (named_models.Chunk("x", "pkg/tiny.gguf"),))
    monkeypatch.setitem(named_models.NAMED_MODELS, "tiny", model)
    out = named_models.resolve_model_path("gguf:tiny")
    assert Path(out) == tmp_path / "cache" / "models" / "tiny"
    stamp = (Path(out) / "tokenizer.json").stat().st_mtime_ns
    assert named_models.resolve_model_path("gguf:tiny") == out
    assert (Path(out) / "tokenizer.json").stat().st_mtime_ns == stamp
    got = load_model("gguf:tiny")  # load.resolve_model_dir takes the name too
    np.testing.assert_allclose(score_tokens(got, SEQ), score_tokens(tiny["model"], SEQ))
    assert named_models.resolve_model_path("some/dir") == "some/dir"


# --- the real files -------------------------------------------------------------------------
def _real(name: str) -> Path:
    try:
        parts = named_models.chunk_files(named_models.named_model(name))
    except GGUFError as e:
        pytest.skip(f"gguf:{name} not installed ({e})")
    return parts


@pytest.mark.slow
@pytest.mark.hf
@pytest.mark.skipif(not HAVE_HF, reason="torch/transformers not installed")
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_file_matches_transformers(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    import transformers

    parts = _real(name)
    monkeypatch.setenv("JAXKNOW_CACHE", str(tmp_path / "cache"))
    if len(parts) == 1:
        src = parts[0]
    else:
        src = tmp_path / f"{name}.gguf"
        src.write_bytes(b"".join(p.read_bytes() for p in parts))
    model = load_model(named_models.resolve_model_path(f"gguf:{name}"))
    text = "The capital of Veldoria is Marovin. Veldoria's capital is called"
    tok = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    for t in [text, "In 1987, 42 people moved to Zürich."]:
        assert model.tokenizer.encode(t) == tok.encode(t, add_special_tokens=False)
    ids = tok.encode(text, add_special_tokens=False)
    if name.startswith("gemma"):
        ids = [model.tokenizer.bos_id, *ids]
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=torch.float32
    )
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).logits[0].numpy()
    got = score_tokens(model, ids)
    diff = np.abs(got - ref).max()
    # The weights are bit-identical and the forward is the same computation: in float64 the
    # two agree to 1.1e-6 (SmolLM2). In float32 each side's matmul round-off (XLA CPU vs
    # torch) is amplified at the first token, whose residual stream reaches 2.3e4 from layer 11
    # on: SmolLM2 measured 1.47e-4 (jaxknow 1.63e-4 from the float64 result, transformers
    # 4.5e-5); the bound leaves 2x for other XLA/torch builds. See WORKSPACE's measurements.
    print(f"{name}: max |logit diff| {diff:.3e}")
    assert diff <= 3e-4, diff
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    # Most of that round-off is XLA:CPU's YNNPACK dot fusions (layer 11's MLP output at token
    # 0: 14 ulp off the float64 value, torch 3): without them jaxknow is within the 1e-4 aimed
    # at (SmolLM2 6.2e-5). A flag is process-wide, so this side runs in a child process.
    plain = tmp_path / "logits_without_ynn.npy"
    flags = f"{os.environ.get('XLA_FLAGS', '')} {WITHOUT_YNN_FUSIONS}"
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, numpy as np; from jaxknow.io.load import load_model, score_tokens; "
            "np.save(sys.argv[1], score_tokens(load_model(sys.argv[2]), "
            "[int(t) for t in sys.argv[3].split(',')]))",
            str(plain),
            named_models.resolve_model_path(f"gguf:{name}"),
            ",".join(map(str, ids)),
        ],
        env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    diff_plain = np.abs(np.load(plain) - ref).max()
    print(f"{name}: max |logit diff| without YNNPACK fusions {diff_plain:.3e}")
    assert diff_plain <= 1e-4, diff_plain
