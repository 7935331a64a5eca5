"""Greedy next-token hits (the memorisation measure of the bioS study)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxknow.eval.memorisation import (
    extension_table,
    next_token_hits,
    value_token_index,
    value_token_span,
    whole_value_hits,
)
from jaxknow.model import transformer
from jaxknow.model.config import preset
from jaxknow.model.params import init_params, param_specs


def test_hits_match_the_argmax_of_a_direct_forward_pass():
    cfg = preset("tiny", vocab_size=64, max_seq_len=64)
    params = init_params(param_specs(cfg), jax.random.key(0), cfg.storage_dtype)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 64, n).tolist() for n in (9, 17, 5, 30)]
    # Make some positions hits by construction: put the model's own prediction there.
    for s in seqs:
        pred = np.asarray(jax.numpy.argmax(transformer.apply(params, np.asarray([s]), cfg)[0], -1))
        s[3] = int(pred[2])
    positions = [[1, 3, len(s) - 1] for s in seqs]
    hits = next_token_hits(params, cfg, seqs, positions, batch_size=2)
    for s, pos, h in zip(seqs, positions, hits):
        logits = transformer.apply(params, np.asarray([s[:-1]]), cfg)[0]
        want = [int(np.argmax(logits[j - 1])) == s[j] for j in pos]
        assert h.tolist() == want
        assert h[1]  # position 3 holds the model's own greedy prediction
    assert not all(h.all() for h in hits)  # random tokens elsewhere are mostly misses


def test_bad_positions_and_token_lookup():
    cfg = preset("tiny", vocab_size=64, max_seq_len=64)
    params = init_params(param_specs(cfg), jax.random.key(0), cfg.storage_dtype)
    with pytest.raises(ValueError, match="outside"):
        next_token_hits(params, cfg, [[1, 2, 3]], [[0]])
    offsets = [(0, 4), (4, 10), (10, 11)]  # "Anna", " Smith", "."
    assert value_token_index(offsets, 5) == 1
    assert value_token_index(offsets, 4) == 1
    with pytest.raises(ValueError, match="character 11"):
        value_token_index(offsets, 11)


def test_memorisation_summary_leaves_sentence_initial_values_out_of_its_second_mean():
    from jaxknow.studies.bios.study import ATTRIBUTES, memorisation_summary
    from jaxknow.studies.bios.world import SentenceSpan

    # one biography per attribute: its sentence opens with the value (missed) or not (hit)
    def span(attribute: str, opens: bool) -> SentenceSpan:
        return SentenceSpan(attribute, 10, 40, 10 if opens else 25, 30)

    sentences = [[span(a, True), span(a, False)] for a in ATTRIBUTES]
    hits = [[False, True] for _ in ATTRIBUTES]
    out = memorisation_summary(hits, sentences)
    assert all(out[a] == 0.5 for a in ATTRIBUTES)
    assert out["mean"] == 0.5 and out["mean_not_sentence_initial"] == 1.0
    # a missed value inside a sentence counts against the second mean
    hits[0] = [False, False]
    out = memorisation_summary(hits, sentences)
    assert out["mean_not_sentence_initial"] == pytest.approx(5 / 6)


def _greedy(params, cfg, prompt, n):
    """Step-by-step greedy continuation of `prompt` (n tokens), without a cache."""
    seq = list(prompt)
    for _ in range(n):
        logits = transformer.apply(params, np.asarray([seq]), cfg)[0]
        seq.append(int(np.argmax(logits[-1])))
    return seq[len(prompt) :]


def test_whole_value_hits_need_every_token_and_no_longer_value():
    cfg = preset("tiny", vocab_size=64, max_seq_len=64)
    params = init_params(param_specs(cfg), jax.random.key(1), cfg.storage_dtype)
    prompt = [5, 9, 2, 17, 33]
    g = _greedy(params, cfg, prompt, 4)
    wrong = (g[1] + 1) % 64
    right = prompt + g[:3] + [7]  # the value is the model's own 3-token continuation
    first_only = prompt + [g[0], wrong, g[2], 7]  # first token right, second wrong
    spans = [[(5, 8)], [(5, 8)]]
    hits = whole_value_hits(params, cfg, [right, first_only], spans, batch_size=2)
    assert [h.tolist() for h in hits] == [[True], [False]]
    # First-token accuracy counts both: the whole value is what tells them apart.
    first = next_token_hits(params, cfg, [right, first_only], [[5], [5]])
    assert [h.tolist() for h in first] == [[True], [True]]
    # A generation that runs on into a longer value (value + g[3]) did not recall this one.
    ext = extension_table([g[:3], g[:4]])
    assert ext[tuple(g[:3])] == {g[3]}
    hits = whole_value_hits(params, cfg, [right], [[(5, 8)]], extensions=ext)
    assert hits[0].tolist() == [False]
    with pytest.raises(ValueError, match="outside"):
        whole_value_hits(params, cfg, [right], [[(0, 2)]])


def test_value_token_span_covers_the_value():
    offsets = [(0, 4), (4, 10), (10, 14), (14, 15)]  # "Anna", " Dallas", ", TX", "."
    assert value_token_span(offsets, 5, 14) == (1, 3)
    assert value_token_span(offsets, 5, 10) == (1, 2)
