"""Data: packing, iterator state, process sharding, mixtures, tokenizer, materialisation."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import grain
import numpy as np
import pytest

import jaxknow.studies  # noqa: F401  (registers the studies' world kinds)
from jaxknow.data import build, pipeline, records
from jaxknow.data.jsonl import CorpusFormatError
from jaxknow.data.tokenizer import Tokenizer, TokenizerError, load_tokenizer, train_bpe
from jaxknow.data.world_builders import check_world, encode_qa, read_text_corpus
from tests.util import run_module


def _docs(n: int, seed: int = 0, qa: bool = False) -> list[tuple[np.ndarray, int]]:
    """Documents whose first token is a unique id (1000 + i) and whose other tokens are < 1000."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        body = rng.integers(1, 999, rng.integers(2, 30))
        toks = np.concatenate([[1000 + i], body]).astype(np.int32)
        out.append((toks, int(rng.integers(1, len(toks))) if qa else 0))
    return out


def _pipe(docs, packing, seq_len=32, batch=4, seed=0, epochs=None, shard=(0, 1), workers=0):
    cfg = pipeline.PipelineConfig(
        seq_len=seq_len,
        batch_size=batch,
        packing=packing,
        seed=seed,
        num_epochs=epochs,
        workers=workers,
    )
    src = grain.MapDataset.source(pipeline.DocList(docs))
    return pipeline.build_pipeline([src], None, cfg, shard_index=shard[0], shard_count=shard[1])


@pytest.mark.parametrize("packing", ["concat", "first_fit", "pad"])
def test_packing_keeps_weights_off_padding_and_separates_documents(packing):
    docs = _docs(200, qa=True)
    by_id = {int(t[0]): (t, s) for t, s in docs}
    it = iter(_pipe(docs, packing, epochs=1))
    seen_weight = 0.0
    for batch in it:
        seg, w = batch["segment_ids"], batch["weights"]
        assert set(batch) == {"inputs", "targets", "weights", "segment_ids", "positions", "sources"}
        assert not batch["sources"].any(), "one source: every position is source 0"
        assert np.all(w[seg == 0] == 0), "loss weight on padding"
        assert np.all(batch["inputs"][seg == 0] == 0)
        seen_weight += float(w.sum())
        for r in range(seg.shape[0]):
            for s in set(seg[r].tolist()) - {0}:
                idx = np.flatnonzero(seg[r] == s)
                assert np.all(np.diff(idx) == 1), "a segment must be contiguous"
                pos = batch["positions"][r, idx]
                np.testing.assert_array_equal(pos, np.arange(len(idx)))
                inp, tgt, wt = batch["inputs"][r, idx], batch["targets"][r, idx], w[r, idx]
                # targets are the next tokens of the same document
                np.testing.assert_array_equal(inp[1:], tgt[:-1])
                if inp[0] >= 1000:  # a whole document starts here: check its loss mask
                    toks, loss_start = by_id[int(inp[0])]
                    expect = (np.arange(1, len(toks)) >= loss_start)[: len(idx)]
                    np.testing.assert_array_equal(wt, expect.astype(np.float32))
    # nothing lost: every weighted target of every document is seen once (pad and
    # first_fit keep whole documents, concat splits them)
    total = sum(float((np.arange(1, len(t)) >= s).sum()) for t, s in docs)
    assert seen_weight == pytest.approx(total)


@pytest.mark.parametrize("packing", ["concat", "first_fit", "pad"])
def test_cross_document_attention_joins_a_rows_documents_and_changes_nothing_else(packing):
    docs = _docs(120, qa=True)
    cfg = pipeline.PipelineConfig(seq_len=32, batch_size=4, packing=packing, num_epochs=1)
    joined_cfg = dataclasses.replace(cfg, cross_document_attention=True)
    src = grain.MapDataset.source(pipeline.DocList(docs))
    plain = list(pipeline.build_pipeline([src], None, cfg))
    joined = list(pipeline.build_pipeline([src], None, joined_cfg))
    assert len(plain) == len(joined)
    several = 0
    for a, b in zip(plain, joined):
        for k in ("inputs", "targets", "weights", "sources"):
            np.testing.assert_array_equal(a[k], b[k])
        real = a["segment_ids"] > 0
        np.testing.assert_array_equal(b["segment_ids"], real.astype(np.int32))
        for r in range(real.shape[0]):
            n = int(real[r].sum())
            assert real[r, :n].all(), "padding only at the row's end"
            np.testing.assert_array_equal(b["positions"][r, :n], np.arange(n))
            assert not b["positions"][r, n:].any()
            several += a["segment_ids"][r].max() > 1
    # pad puts one document per row: joining must then change nothing at all
    assert several if packing != "pad" else not several


def test_qa_documents_put_loss_on_answer_and_eos_only():
    tok = train_bpe(["Question: Where? Answer: Paris, France"] * 20, vocab_size=300)
    ((doc, start),) = encode_qa(tok, ["Question: Where? Answer:"], ["Paris, France"])
    ex = pipeline.doc_to_example((np.asarray(doc), start))
    answer_ids = tok.encode(" Paris, France") + [tok.eos_id]
    np.testing.assert_array_equal(ex["targets"][ex["weights"] > 0], answer_ids)
    assert tok.decode(ex["targets"][ex["weights"] > 0]) == " Paris, France"


@pytest.mark.parametrize("packing", ["concat", "first_fit", "pad"])
def test_restoring_iterator_state_resumes_the_same_batches(packing):
    docs = _docs(300, seed=1)
    it = iter(_pipe(docs, packing))
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # as the checkpoint stores it
    want = [next(it) for _ in range(6)]
    it2 = iter(_pipe(docs, packing))
    it2.set_state(state)
    got = [next(it2) for _ in range(6)]
    for a, b in zip(want, got):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_mixture_state_restores_and_weights_are_respected():
    a, b = _docs(300, seed=2), [(t + 2000, s) for t, s in _docs(300, seed=3)]
    cfg = pipeline.PipelineConfig(seq_len=16, batch_size=8, packing="pad", seed=5)
    srcs = [grain.MapDataset.source(pipeline.DocList(x)) for x in (a, b)]
    it = iter(pipeline.build_pipeline(srcs, [3.0, 1.0], cfg))
    firsts = Counter()
    for _ in range(40):
        batch = next(it)
        firsts.update("b" if x >= 3000 else "a" for x in batch["inputs"][:, 0])
    assert firsts["a"] / (firsts["a"] + firsts["b"]) == pytest.approx(0.75, abs=0.02)
    state = it.get_state()
    want = next(it)
    it2 = iter(pipeline.build_pipeline(srcs, [3.0, 1.0], cfg))
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["inputs"], want["inputs"])


def test_epochs_reshuffle_and_seed_changes_order():
    docs = _docs(50)

    def order(seed, epochs):
        return [
            int(x)
            for b in _pipe(docs, "pad", batch=10, seed=seed, epochs=epochs)
            for x in b["inputs"][:, 0]
        ]

    two = order(0, 2)
    assert sorted(two[:50]) == sorted(two[50:]) == list(range(1000, 1050))
    assert two[:50] != two[50:]
    assert order(0, 1) == two[:50]
    assert order(1, 1) != order(0, 1)


@pytest.mark.parametrize("packing", ["concat", "pad"])
def test_process_sharding_splits_data_without_overlap_or_loss(packing):
    docs = _docs(101)
    seen = []
    for p in range(3):
        ids = []
        for b in _pipe(docs, packing, epochs=1, shard=(p, 3)):
            ids += [int(x) for x in b["inputs"].ravel() if x >= 1000]
        seen.append(ids)
    flat = [i for s in seen for i in s]
    assert len(flat) == len(set(flat)) == 101  # disjoint and complete
    assert all(len(s) >= 33 for s in seen)


def test_records_round_trip_and_missing_source_error(tmp_path):
    docs = [(np.arange(5, dtype=np.int32), 0), (np.arange(3, dtype=np.int32) + 7, 2)]
    idx = records.write_source(tmp_path, "s", docs, num_shards=2)
    assert idx["num_docs"] == 2 and len(idx["files"]) == 2
    ds = pipeline.doc_dataset(records.shard_paths(tmp_path, "s"))
    got = [ds[i] for i in range(2)]
    np.testing.assert_array_equal(got[1][0], docs[1][0])
    assert got[1][1] == 2
    with pytest.raises(FileNotFoundError, match="no tokenized source 'nope'"):
        records.read_index(tmp_path, "nope")
    assert not list(tmp_path.glob(".s.*")), "no temporary folder left behind"


def test_malformed_jsonl_corpus_names_file_and_line(tmp_path):
    f = tmp_path / "corpus.jsonl"
    f.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": broken\n')
    with pytest.raises(CorpusFormatError, match=r"corpus.jsonl:3: invalid JSON"):
        read_text_corpus(f)
    f.write_text('{"text": "fine"}\n{"txt": "wrong key"}\n')
    with pytest.raises(CorpusFormatError, match=r"corpus.jsonl:2: missing field"):
        read_text_corpus(f)
    t = tmp_path / "plain.txt"
    t.write_text("First doc.\nstill first.\n\nSecond doc.\n")
    assert read_text_corpus(t) == ["First doc.\nstill first.", "Second doc."]


def test_tokenizer_round_trips_names_and_rejects_one_that_cannot(tmp_path):
    names = ["Anya Briar Forger", "Zürich-Ost", "O'Neil", "São Paulo, SP"]
    tok = train_bpe([f"{n} lives here." for n in names] * 5, vocab_size=400)
    tok.check_roundtrip(names, "test names")
    tok.save(tmp_path / "t")
    again = load_tokenizer(tmp_path / "t")
    assert again.encode("Anya Briar Forger") == tok.encode("Anya Briar Forger")
    assert again.eos_id == tok.eos_id and again.bos_id == tok.bos_id
    # A word-level tokenizer maps an unseen name to [UNK]: the check names it and its origin.
    import tokenizers
    from tokenizers import models, pre_tokenizers

    wl = tokenizers.Tokenizer(
        models.WordLevel({"[UNK]": 0, "Anya": 1, "<eos>": 2}, unk_token="[UNK]")
    )
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    bad = Tokenizer(wl, bos_id=None, eos_id=2)
    with pytest.raises(TokenizerError, match=r"people.jsonl: tokenizer cannot encode 'Zed'"):
        bad.check_roundtrip(["Zed"], "people.jsonl")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "missing")


def test_materialize_fails_cleanly_on_bad_world_options(tmp_path):
    with pytest.raises(build.WorldConfigError, match="unknown key"):
        build.materialize({"kind": "bios", "num_peple": 10}, tmp_path, 0)
    with pytest.raises(build.WorldConfigError, match="kind='nope'"):
        build.materialize({"kind": "nope"}, tmp_path, 0)
    with pytest.raises(build.WorldConfigError, match="num_people"):
        build.materialize({"kind": "bios", "num_people": 0}, tmp_path, 0)


def test_check_world_knows_every_kind_materialize_builds():
    check_world({"kind": "synthetic", "num_docs": 10})
    with pytest.raises(build.WorldConfigError, match="unknown key.*for synthetic"):
        check_world({"kind": "synthetic", "num_dogs": 10})
    with pytest.raises(build.WorldConfigError, match=r"kind='nope': unknown; known: \['bios'"):
        check_world({"kind": "nope"})


def test_launch_data_writes_subsets_and_shards(tmp_path):
    out = tmp_path / "countries"
    r = run_module("launch.data", "--config=configs/worlds/countries.py:tiny", f"--out={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    for f in (
        "facts.jsonl",
        "corpus_narrative.jsonl",
        "corpus_referencing.jsonl",
        "corpus_pretrain.jsonl",
        "eval_qa.jsonl",
        "eval_multiple_choice.jsonl",
        "eval_reverse_qa.jsonl",
        "eval_indirect.jsonl",
        "eval_two_hop.jsonl",
        "eval_two_hop_mc.jsonl",
        "eval_animal_commonsense.jsonl",
        "eval_likelihood.jsonl",
        "tokenizer.json",
        "manifest.json",
    ):
        assert (out / f).is_file(), f
    fact = json.loads((out / "facts.jsonl").read_text().splitlines()[0])
    assert set(fact) == {"head", "relation", "tail", "split"}
    mc = json.loads((out / "eval_multiple_choice.jsonl").read_text().splitlines()[0])
    assert set(mc) >= {"question", "choices", "answer"} and isinstance(mc["answer"], int)
    for src in ("corpus_narrative", "corpus_referencing", "corpus_pretrain"):
        idx = records.read_index(out, src)
        assert idx["num_docs"] > 0
    # the same config twice gives the same bytes (determinism by seed)
    out2 = tmp_path / "again"
    assert (
        run_module(
            "launch.data", "--config=configs/worlds/countries.py:tiny", f"--out={out2}"
        ).returncode
        == 0
    )
    for f in ("corpus_referencing.jsonl", "eval_two_hop.jsonl", "tokenizer.json"):
        assert (out / f).read_bytes() == (out2 / f).read_bytes()
    bad = run_module(
        "launch.data", "--config=configs/worlds/countries.py:tiny", f"--out={out / 'facts.jsonl'}"
    )
    assert bad.returncode == 2 and "not a directory" in bad.stderr
