"""Probing: the linear-probe core on synthetic features (eval/probing.py), P-/Q-probing end to
end on a tiny bioS world (studies/bios/probing.py), the low-rank embedding update, and probe
plots."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxknow.data.tokenizer import train_bpe
from jaxknow.eval import probing
from jaxknow.model.config import preset
from jaxknow.model.params import flatten
from jaxknow.model.transformer import forward
from jaxknow.studies.bios import probing as bios_probing
from jaxknow.studies.bios.world import (
    ATTRIBUTES,
    Augmentation,
    BiosConfig,
    generate_world,
    render_biographies,
)
from tests.util import numpy_params


def _synthetic(seed: int = 0, n: int = 600, d: int = 16, classes: int = 5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    onehot = np.eye(classes)[labels]
    noise = lambda: rng.normal(size=(n, d))  # noqa: E731
    encoded = lambda: 3.0 * onehot @ rng.normal(size=(classes, d)) + noise()  # noqa: E731
    feats = np.stack([encoded(), noise(), encoded()]).astype(np.float32)  # layer 1: noise only
    return feats, labels


def test_linear_probe_finds_linear_encoding_per_layer_and_not_shuffled_labels():
    feats, labels = _synthetic()
    train, test = np.arange(300), np.arange(300, 600)
    acc = probing.train_linear_probe(feats, labels, train, test, 5, steps=150, lr=0.05, seed=0)
    assert acc.shape == (3,)
    assert acc[0] > 0.9 and acc[2] > 0.9
    assert acc[1] < 0.2 + 0.1
    shuffled = np.random.default_rng(1).permutation(labels)
    acc_s = probing.train_linear_probe(
        feats, shuffled, train, test, 5, steps=150, lr=0.05, seed=0, batch_size=64
    )
    assert np.all(acc_s < 0.2 + 0.1), acc_s


@pytest.fixture(scope="module")
def bios_setup():
    world = generate_world(BiosConfig(num_people=60, seed=0))
    bios = render_biographies(world, Augmentation.parse("single"), seed=0)
    tok = train_bpe([b.text for b in bios], vocab_size=400)
    cfg = preset("tiny", vocab_size=512, max_seq_len=256)
    params = numpy_params(cfg, seed=0)
    return world, bios, tok, cfg, params


def test_p_probe_reads_the_token_just_before_each_sentence(bios_setup):
    _, bios, tok, _, _ = bios_setup
    bio = bios[0]
    tokens, where = bios_probing.p_probe_positions(tok, bio)
    assert tokens[0] == tok.bos_id and tokens[1:] == tok.encode(bio.text)
    assert where[bios_probing.END] == len(tokens) - 1
    first, *rest = bio.sentences
    assert first.start == 0 and where[first.attribute] == 0  # nothing before it but bos
    for span in rest:
        pos = where[span.attribute]
        # the read token is the sentence-ending "." before it; the next token opens the sentence
        assert tok.decode([tokens[pos]]) == "."
        assert tok.decode(tokens[1 : pos + 1]) == bio.text[: span.start - 1]
        nxt = tok.decode([tokens[pos + 1]])
        assert nxt.startswith(" ") and bio.text[span.start :].startswith(nxt[1:])


def test_hidden_features_match_a_direct_forward(bios_setup):
    _, bios, tok, cfg, params = bios_setup
    seqs = [bios_probing.p_probe_positions(tok, b)[0] for b in bios[:5]]
    pos = np.asarray([[3, len(s) - 1] for s in seqs])
    feats = probing.hidden_features(params, cfg, seqs, pos, batch_size=2, pad_id=tok.pad_id)
    assert feats.shape == (cfg.n_layers + 1, 5, 2, cfg.d_model)
    last = probing.hidden_features(params, cfg, seqs, pos[:, 1], layers=[-1], batch_size=2)
    assert last.shape == (1, 5, cfg.d_model)
    direct = jax.jit(lambda p, t: forward(p, t, cfg, collect_hidden=True).hiddens[:, 0])
    for i in (0, 4):  # unpadded, one at a time
        h = direct(params, jnp.asarray([seqs[i]]))
        np.testing.assert_allclose(feats[:, i], np.asarray(h)[:, pos[i]], atol=1e-5)
        np.testing.assert_allclose(last[0, i], np.asarray(h)[-1, pos[i, 1]], atol=1e-5)


def _check_result(result: bios_probing.ProbeResult, n_layers: int) -> None:
    assert result.layers == list(range(n_layers + 1))
    assert set(result.accuracy) == set(range(n_layers + 1))
    for layer in result.layers:
        assert set(result.accuracy[layer]) == set(ATTRIBUTES)
        assert all(0.0 <= v <= 1.0 for v in result.accuracy[layer].values())
    assert set(result.chance) == set(ATTRIBUTES)
    assert all(0.0 < c <= 1.0 for c in result.chance.values())
    json.dumps(result.to_dict())
    table = result.table()
    assert table.count("\n") >= n_layers + 3 and "| chance |" in table


def test_p_and_q_probe_end_to_end(bios_setup, tmp_path):
    world, bios, tok, cfg, params = bios_setup
    train, test = np.arange(40), np.arange(40, 60)
    settings = probing.ProbeSettings(steps=20, lr=1e-2, seed=0)
    p = bios_probing.p_probe(params, cfg, tok, world, bios, train, test, settings, sweep=True)
    _check_result(p, cfg.n_layers)
    assert (p.num_train, p.num_test) == (40, 20)
    assert set(p.sweep) == {*ATTRIBUTES, bios_probing.END}
    for a in ATTRIBUTES:  # the sweep's diagonal is the main result
        assert p.sweep[a][cfg.n_layers][a] == p.accuracy[cfg.n_layers][a]
    q = bios_probing.q_probe(params, cfg, tok, world, train, test, settings, birth_date="month")
    _check_result(q, cfg.n_layers)
    assert q.chance["birth_date"] >= 1 / 12
    png = q.plot(tmp_path / "q.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_embedding_update_trains_only_the_adapter(bios_setup):
    world, _, tok, cfg, _ = bios_setup
    cfg = cfg.replace(n_layers=1)  # backpropagating through the model: keep the compile small
    params = numpy_params(cfg, seed=1)
    before = {k: np.array(v) for k, v in flatten(params).items()}
    people = np.arange(30)
    seqs = [bios_probing.q_probe_sequence(tok, world.people[i].full_name) for i in people]
    pos = np.asarray([[len(s) - 1] for s in seqs])
    heads = []
    for a in ("birth_city", "major"):
        y = np.unique(bios_probing.probe_labels(world, a, people), return_inverse=True)[1]
        heads.append((0, y, int(y.max()) + 1))
    settings = probing.ProbeSettings(
        layers=[0, -1],
        steps=3,
        lr=1e-2,
        seed=0,
        batch_size=8,
        feature_batch_size=8,
        embedding_rank=2,
    )
    acc, adapters = probing.train_probe_with_embedding_update(
        params, cfg, seqs, pos, heads, np.arange(20), np.arange(20, 30), settings, pad_id=tok.pad_id
    )
    assert acc.shape == (2, 2) and np.all((acc >= 0) & (acc <= 1))
    assert adapters["lora_a"].shape == (2, cfg.vocab_size, 2)
    assert adapters["lora_b"].shape == (2, 2, cfg.d_model)
    assert np.abs(adapters["lora_a"]).max() > 0  # initialised to zero, so it was trained
    after = flatten(params)
    assert set(after) == set(before)
    for k, v in before.items():
        np.testing.assert_array_equal(np.asarray(after[k]), v, err_msg=k)


def test_probe_positions_read_the_names_last_token_and_the_prompts_end():
    from scripts.probe_positions import read_points

    name, question = "Ada Lin Okafor", "What is the birth city of Ada Lin Okafor?"
    tok = train_bpe([f"Question: {question} Answer: Paris", name] * 20, vocab_size=300)
    points = read_points(tok, name, question)
    alone, at = points["name"]
    assert tok.decode(alone[: at + 1]).strip().endswith("Okafor") and at == len(alone) - 1
    full, at = points["question_name"]
    assert tok.decode(full[: at + 1]).endswith("of Ada Lin Okafor")
    assert tok.decode(full[at + 1 :]).startswith("?")
    full_end, end = points["question_end"]
    assert full_end == full and end == len(full) - 1
    assert tok.decode(full).endswith("Answer:")
