"""KV-cache generation equals step-by-step greedy decoding with full recomputation."""

from __future__ import annotations

import random

import jax
import numpy as np
import pytest

from jaxknow.data.tokenizer import train_bpe
from jaxknow.eval import generate
from jaxknow.model import transformer
from jaxknow.model.config import preset
from jaxknow.parallel.mesh import make_mesh
from tests.util import numpy_params

MAX_NEW = 8
# Lengths 1..17: left padding within a batch; with 4 rows a batch, two prompt buckets (32, 16).
LENGTHS = (3, 9, 17, 5, 1, 12, 7)
REF_WIDTH = 32  # one compile of the reference per model

_REF_FNS: dict[int, object] = {}


def _model(name: str):
    # A larger init than the default gives peaked logits, so greedy choices are not near-ties.
    cfg = preset(name, init_std=0.2)
    return cfg, numpy_params(cfg)


@pytest.fixture(scope="module")
def gpt2_like():
    """Returns (cfg, params) of a random GPT-2-like tiny model."""
    return _model("tiny")


@pytest.fixture(scope="module")
def llama_like():
    """Returns (cfg, params) of a random Llama-like tiny model (GQA, RoPE, SwiGLU)."""
    return _model("tiny-llama")


def _prompts(vocab: int, lengths=LENGTHS, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=n).tolist() for n in lengths]


def greedy_reference(params, cfg, prompts, max_new, stops=frozenset()):
    """Greedy decoding recomputing the whole sequence at every step (no cache, no left pads:
    each row sits at the start of a fixed buffer; causal attention ignores what follows)."""
    width = REF_WIDTH
    assert max(len(p) for p in prompts) + max_new <= width
    if id(cfg) not in _REF_FNS:
        _REF_FNS[id(cfg)] = jax.jit(lambda p, t: transformer.apply(p, t, cfg))
    fwd = _REF_FNS[id(cfg)]
    seqs = [list(p) for p in prompts]
    outs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for _ in range(max_new):
        buf = np.zeros((len(seqs), width), np.int32)
        for r, s in enumerate(seqs):
            buf[r, : len(s)] = s
        lg = np.asarray(fwd(params, buf))
        for r, s in enumerate(seqs):
            if done[r]:
                continue
            t = int(np.argmax(lg[r, len(s) - 1]))
            s.append(t)
            outs[r].append(t)
            done[r] = t in stops
    return outs


@pytest.mark.parametrize("which", ["gpt2_like", "llama_like"])
def test_cached_generation_matches_full_recompute(which, request):
    cfg, params = request.getfixturevalue(which)
    # The Llama-like model gets one prompt bucket (fewer compiles); the GPT-2-like one two.
    prompts = _prompts(cfg.vocab_size, LENGTHS if which == "gpt2_like" else (3, 9, 14, 5, 1))
    ref = greedy_reference(params, cfg, prompts, MAX_NEW)
    got = generate.generate_tokens(params, cfg, prompts, max_new_tokens=MAX_NEW, batch_size=4)
    assert got == ref
    # Stop tokens that hit early in some rows (and not in others).
    stops = {ref[0][1], ref[3][0]}
    ref_stop = greedy_reference(params, cfg, prompts, MAX_NEW, stops)
    assert any(len(r) < MAX_NEW for r in ref_stop) and any(len(r) == MAX_NEW for r in ref_stop)
    got_stop = generate.generate_tokens(
        params, cfg, prompts, max_new_tokens=MAX_NEW, stop_ids=sorted(stops), batch_size=4
    )
    assert got_stop == ref_stop
    # The same rows as a stop table, all prompts in one batch of 8 (one prompt bucket).
    if which == "gpt2_like":
        table = np.zeros(cfg.vocab_size, bool)
        table[sorted(stops)] = True
        got_one = generate.generate_tokens(
            params, cfg, prompts, max_new_tokens=MAX_NEW, stop_table=table, batch_size=8
        )
        assert got_one == ref_stop


def test_sharded_generation_on_a_3d_mesh(gpt2_like):
    cfg, params = gpt2_like
    mesh = make_mesh(2, 2, 2)
    prompts = _prompts(cfg.vocab_size, lengths=(4, 11, 2, 7, 9), seed=1)
    ref = greedy_reference(params, cfg, prompts, MAX_NEW)
    got = generate.generate_tokens(
        params, cfg, prompts, max_new_tokens=MAX_NEW, batch_size=4, mesh=mesh
    )
    assert got == ref


def test_generate_text_stops_at_eos_and_newline(gpt2_like):
    cfg, params = gpt2_like
    rng = random.Random(0)
    letters = "abcdefghijklmnop"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(300)]
    corpus = [" ".join(rng.choice(words) for _ in range(12)) + ".\n" for _ in range(400)]
    tok = train_bpe(corpus, vocab_size=cfg.vocab_size)
    table = generate.newline_stop_table(tok, cfg.vocab_size)
    nl = tok.encode("\n")
    assert table[nl].all() and table.sum() < cfg.vocab_size // 4
    assert all("\n" in tok.decode([i]) for i in np.flatnonzero(table))

    prompts = ["ab cd ef", "the", "op no mi lk"]
    stops = set(np.flatnonzero(table).tolist()) | {tok.eos_id}
    ids = [tok.prefix() + tok.encode(p) for p in prompts]
    ref = greedy_reference(params, cfg, ids, MAX_NEW, stops)
    expected = []
    for out in ref:
        if out and out[-1] == tok.eos_id:
            out = out[:-1]
        expected.append(tok.decode(out).split("\n", 1)[0])
    got = generate.generate_text((params, cfg, tok), prompts, max_new_tokens=MAX_NEW, batch_size=4)
    assert got == expected
    assert all("\n" not in t for t in got)


def test_buckets_and_errors(gpt2_like):
    cfg, params = gpt2_like
    assert [generate.bucket_length(n) for n in (1, 16, 17, 200, 257, 600)] == [
        16,
        16,
        32,
        256,
        320,
        640,
    ]
    assert generate.batch_rows(5, 64, None) == 8
    # The fewest batches, rows evened out to a multiple of 8 (no power-of-two padding).
    assert [generate.batch_rows(n, 64, None) for n in (40, 64, 65, 120, 200)] == [
        40,
        64,
        40,
        64,
        56,
    ]
    assert generate.batch_rows(100, 64, make_mesh(2, 2, 2)) == 56
    assert generate.batch_rows(3, 64, make_mesh(-1, 1, 1)) == 8
    with pytest.raises(ValueError, match="empty"):
        generate.generate_tokens(params, cfg, [[]], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate.generate_tokens(params, cfg, [[1]], max_new_tokens=cfg.max_seq_len)
    assert generate.generate_tokens(params, cfg, [], max_new_tokens=4) == []
