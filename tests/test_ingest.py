"""Streaming ingestion of user corpora: formats, bad input, determinism across worker counts,
resumption, any tokenizer, and a real-text source mixed with a synthetic world in training."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import jaxknow.studies  # noqa: F401  (registers the studies' world kinds)
from jaxknow.data import ingest, readers, records
from jaxknow.data.build import WorldConfigError, materialize
from jaxknow.data.jsonl import CorpusFormatError
from jaxknow.data.tokenizer import load_tokenizer, train_bpe
from jaxknow.data.world_builders import check_world

DOCS = [
    f"Document {i}: the {['red', 'blue', 'green'][i % 3]} fox jumps over dog {i * 7}."
    for i in range(40)
]


def _tokenizer(tmp_path: Path, texts=DOCS, vocab: int = 300) -> Path:
    d = tmp_path / "tok"
    if not (d / "tokenizer.json").is_file():
        train_bpe(list(texts) * 3, vocab_size=vocab).save(d)
    return d


def _read(files, **kw) -> tuple[list[readers.Doc], list[readers.Issue]]:
    items = list(readers.iter_corpus([Path(f) for f in files], readers.ReaderConfig(**kw)))
    return (
        [i for i in items if isinstance(i, readers.Doc)],
        [i for i in items if isinstance(i, readers.Issue)],
    )


def _source_docs(out: Path, name: str) -> list[np.ndarray]:
    from array_record.python.array_record_module import ArrayRecordReader

    docs = []
    for p in records.shard_paths(out, name):
        r = ArrayRecordReader(p)
        docs += [records.decode_record(x)[0] for x in r.read_all()]
        r.close()
    return docs


def _write_jsonl(path: Path, texts, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t, "id": 1}) + "\n")
    return path


# --- formats --------------------------------------------------------------------------------
def test_every_format_yields_the_same_documents_with_their_lines(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    _write_jsonl(tmp_path / "a.jsonl", DOCS)
    _write_jsonl(tmp_path / "a.ndjson.gz", DOCS, opener=gzip.open)
    blob = "".join(json.dumps({"text": t}) + "\n" for t in DOCS).encode()
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(blob))
    (tmp_path / "lines.txt").write_text("\n".join(DOCS) + "\n")
    (tmp_path / "paras.md").write_text("\n\n".join(DOCS) + "\n")
    pq.write_table(
        pa.table({"text": DOCS, "n": list(range(len(DOCS)))}),
        tmp_path / "a.parquet",
        row_group_size=7,
    )
    files = tmp_path / "files"
    files.mkdir()
    for i, t in enumerate(DOCS):
        (files / f"{i:03d}.txt").write_text(t + "\n")

    for name in ("a.jsonl", "a.ndjson.gz", "a.jsonl.zst", "a.parquet"):
        docs, issues = _read([tmp_path / name])
        assert [d.text for d in docs] == DOCS and not issues, name
        assert [d.line for d in docs] == list(range(1, len(DOCS) + 1)), name
    docs, _ = _read([tmp_path / "lines.txt"], text_mode="line")
    assert [d.text for d in docs] == DOCS
    docs, _ = _read([tmp_path / "paras.md"])  # paragraph mode is the default
    assert [d.text for d in docs] == DOCS and docs[1].line == 3
    docs, _ = _read(readers.expand_paths([str(files / "*.txt")]), text_mode="file")
    assert [d.text.strip() for d in docs] == DOCS
    assert [d.file_index for d in docs] == list(range(len(DOCS)))
    # resuming inside a file skips what was read, in every mode
    for name, kw in (
        ("lines.txt", {"text_mode": "line"}),
        ("paras.md", {}),
        ("files/000.txt", {"text_mode": "file"}),
        ("a.jsonl.zst", {}),
        ("a.parquet", {}),
    ):
        every = list(readers.read_file(tmp_path / name, 0, readers.ReaderConfig(**kw)))
        rest = list(
            readers.read_file(
                tmp_path / name, 0, readers.ReaderConfig(**kw), start=every[0].end_line + 1
            )
        )
        assert rest == every[1:], name
    # a JSONL file read with another text field
    docs, issues = _read([tmp_path / "a.jsonl"], text_field="id")
    assert not docs and {i.kind for i in issues} == {"not_a_string"}


def test_globs_and_suffixes(tmp_path):
    (tmp_path / "sub").mkdir()
    for n in ("b.jsonl", "a.jsonl", "sub/c.jsonl"):
        _write_jsonl(tmp_path / n, ["x"])
    got = readers.expand_paths([str(tmp_path / "**" / "*.jsonl"), str(tmp_path / "a.jsonl")])
    assert [p.name for p in got] == ["a.jsonl", "b.jsonl", "c.jsonl"]  # sorted, no duplicate
    with pytest.raises(FileNotFoundError, match=r"nothing\*\.jsonl.*matches no file"):
        readers.expand_paths([str(tmp_path / "nothing*.jsonl")])
    assert readers.split_suffixes("x/web.en.jsonl.zst") == ("web.en", "zstd", ".jsonl")
    with pytest.raises(CorpusFormatError, match=r"corpus.csv: cannot tell the format"):
        readers.file_format("corpus.csv")


# --- bad input ------------------------------------------------------------------------------
def _bad_corpus(tmp_path: Path) -> list[Path]:
    a = tmp_path / "a.jsonl"
    a.write_bytes(
        b'{"text": "good one"}\n'
        b'{"text": broken\n'  # 2 malformed
        b'{"txt": "wrong key"}\n'  # 3 missing field
        b'{"text": 5}\n'  # 4 not a string
        b'{"text": "caf\xe9 latin-1"}\n'  # 5 invalid UTF-8
        b'{"text": "' + b"y" * 5000 + b'"}\n'  # 6 over max_doc_bytes
        b"\n"
        b'{"text": " "}\n'  # 8 empty text
        b'{"text": "good two"}\n'
    )  # 9
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "good three"}\n' * 50)[:-30])  # truncated
    return [a, empty, gz]


def test_each_bad_input_is_skipped_counted_and_named(tmp_path):
    files = _bad_corpus(tmp_path)
    docs, issues = _read(files, max_doc_bytes=1000)
    assert [d.text for d in docs][:2] == ["good one", "good two"]
    where = {(Path(i.path).name, i.line, i.kind) for i in issues}
    assert {
        ("a.jsonl", 2, "malformed_line"),
        ("a.jsonl", 3, "missing_field"),
        ("a.jsonl", 4, "not_a_string"),
        ("a.jsonl", 5, "invalid_utf8"),
        ("a.jsonl", 6, "too_long"),
        ("a.jsonl", 8, "empty_text"),
        ("empty.jsonl", 0, "empty_file"),
    } <= where
    assert any(k == "corrupt_file" and n == "cut.jsonl.gz" for n, _, k in where)
    # through ingestion: counted in the index, examples name file:line
    tok = _tokenizer(tmp_path)
    cfg = ingest.IngestConfig(reader=readers.ReaderConfig(max_doc_bytes=1000))
    index = ingest.ingest_source(files, tmp_path / "out", "c", tok, cfg).index
    counts = index["ingest"]["issues"]["counts"]
    assert counts == {
        "malformed_line": 1,
        "missing_field": 1,
        "not_a_string": 1,
        "invalid_utf8": 1,
        "too_long": 1,
        "empty_text": 1,
        "empty_file": 1,
        "corrupt_file": 1,
    }
    assert any(
        e.endswith("a.jsonl:5: invalid_utf8: invalid UTF-8 at byte 13")
        for e in index["ingest"]["issues"]["examples"]
    )
    assert index["num_docs"] == len(docs)


@pytest.mark.parametrize(
    "content,match",
    [
        (b'{"text": "ok"}\n{"text": broken\n', r"a.jsonl:2: malformed_line"),
        (b'{"text": "ok"}\n{"body": "x"}\n', r"a.jsonl:2: missing_field: no field 'text'"),
        (b'{"text": "ok"}\n{"text": "\xff"}\n', r"a.jsonl:2: invalid_utf8"),
        (b'{"text": "' + b"z" * 3000 + b'"}\n', r"a.jsonl:1: too_long"),
        (b"", r"a.jsonl:0: empty_file"),
    ],
)
def test_bad_input_is_refused_with_file_and_line_when_asked(tmp_path, content, match):
    (tmp_path / "a.jsonl").write_bytes(content)
    cfg = ingest.IngestConfig(reader=readers.ReaderConfig(max_doc_bytes=1000), on_error="raise")
    with pytest.raises(CorpusFormatError, match=match):
        ingest.ingest_source(
            [tmp_path / "a.jsonl"], tmp_path / "out", "c", _tokenizer(tmp_path), cfg
        )
    assert not (tmp_path / "out" / "c.json").exists()


def test_a_corpus_with_no_document_left_is_an_error(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(CorpusFormatError, match=r"no documents.*missing_field"):
        ingest.ingest_source([tmp_path / "a.jsonl"], tmp_path / "out", "c", _tokenizer(tmp_path))


def test_a_long_document_is_tokenized_in_pieces_with_the_same_tokens(tmp_path):
    words = [f"w{i % 97}x{'abc'[i % 3]}" for i in range(60_000)]
    text = " ".join(words)  # ~400k characters on one line
    pieces = ingest.split_text(text, 4096)
    assert "".join(pieces) == text and max(map(len, pieces)) <= 4096 and len(pieces) > 50
    assert all(p.startswith(" ") for p in pieces[1:]), "cut before a space"
    _write_jsonl(tmp_path / "big.jsonl", [text, "short one"])
    tok_dir = _tokenizer(tmp_path, texts=words[:3000] + DOCS, vocab=400)
    cfg = ingest.IngestConfig(chunk_chars=4096, batch_chars=20_000)
    index = ingest.ingest_source(
        [tmp_path / "big.jsonl"], tmp_path / "out", "c", tok_dir, cfg
    ).index
    assert index["num_docs"] == 2 and index["ingest"]["split_docs"] == 1
    tok = load_tokenizer(tok_dir)
    got = _source_docs(tmp_path / "out", "c")
    np.testing.assert_array_equal(got[0], tok.document(text))  # one record, exact tokens
    np.testing.assert_array_equal(got[1], tok.document("short one"))


# --- determinism and resumption -------------------------------------------------------------
def _corpus(tmp_path: Path, n: int = 600) -> list[Path]:
    texts = [f"{DOCS[i % len(DOCS)]} More words {i} and {i % 13}." for i in range(n)]
    return [
        _write_jsonl(tmp_path / "p1.jsonl", texts[: n // 2]),
        _write_jsonl(tmp_path / "p2.jsonl.gz", texts[n // 2 :], opener=gzip.open),
    ]


def _bytes_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_shards_are_byte_identical_for_0_1_and_2_workers(tmp_path):
    files = _corpus(tmp_path)
    tok = _tokenizer(tmp_path)
    outs = {}
    for w in (0, 1, 2):
        cfg = ingest.IngestConfig(workers=w, shard_tokens=2000, batch_docs=37)
        r = ingest.ingest_source(files, tmp_path / f"w{w}", "c", tok, cfg)
        outs[w] = _bytes_of(tmp_path / f"w{w}")
        assert len(r.index["files"]) > 3
    assert outs[0] == outs[1] == outs[2]
    # the records are the documents in input order
    docs = _source_docs(tmp_path / "w2", "c")
    t = load_tokenizer(tok)
    np.testing.assert_array_equal(docs[0], t.document(f"{DOCS[0]} More words 0 and 0."))
    np.testing.assert_array_equal(
        docs[-1], t.document(f"{DOCS[599 % 40]} More words 599 and {599 % 13}.")
    )


class _Stop(Exception):
    pass


def test_an_interrupted_ingestion_resumes_from_its_last_shard(tmp_path):
    files = _corpus(tmp_path)
    tok = _tokenizer(tmp_path)
    cfg = ingest.IngestConfig(workers=1, shard_tokens=2000, batch_docs=50)
    full = ingest.ingest_source(files, tmp_path / "full", "c", tok, cfg)

    def stop_after_three(i: int) -> None:
        if i == 2:
            raise _Stop

    with pytest.raises(_Stop):
        ingest.ingest_source(files, tmp_path / "part", "c", tok, cfg, on_shard=stop_after_three)
    assert not (tmp_path / "part" / "c.json").exists(), "no index before the end"
    progress = json.loads((tmp_path / "part" / ".c.ingest" / "progress.json").read_text())
    assert len(progress["shards"]) == 3
    seen: list[int] = []
    r = ingest.ingest_source(files, tmp_path / "part", "c", tok, cfg, on_shard=seen.append)
    assert r.resumed_shards == 3 and seen[0] == 3, "continued, did not restart"
    assert _bytes_of(tmp_path / "part") == _bytes_of(tmp_path / "full")
    assert r.index == full.index
    # done: running again reuses it; a changed input starts over
    assert ingest.ingest_source(files, tmp_path / "part", "c", tok, cfg).reused
    _write_jsonl(files[0], ["a changed corpus"])
    again = ingest.ingest_source(files, tmp_path / "part", "c", tok, cfg)
    assert not again.reused and again.index["num_docs"] == 1 + 300


def test_issue_counts_survive_a_resume(tmp_path):
    files = _bad_corpus(tmp_path)[:1] + _corpus(tmp_path)
    tok = _tokenizer(tmp_path)
    cfg = ingest.IngestConfig(reader=readers.ReaderConfig(max_doc_bytes=1000), shard_tokens=1500)
    full = ingest.ingest_source(files, tmp_path / "full", "c", tok, cfg).index

    def stop(i: int) -> None:
        if i == 1:
            raise _Stop

    with pytest.raises(_Stop):
        ingest.ingest_source(files, tmp_path / "part", "c", tok, cfg, on_shard=stop)
    part = ingest.ingest_source(files, tmp_path / "part", "c", tok, cfg).index
    assert part["ingest"]["issues"] == full["ingest"]["issues"]
    assert sum(part["ingest"]["issues"]["counts"].values()) == 6


# --- tokenizers -----------------------------------------------------------------------------
def test_tokenizer_sample_is_seeded_and_sized(tmp_path):
    files = _corpus(tmp_path)
    cfg = readers.ReaderConfig()
    a = ingest.sample_texts(files, cfg, 50, seed=0)
    assert len(a) == 50 and a == ingest.sample_texts(files, cfg, 50, seed=0)
    assert a != ingest.sample_texts(files, cfg, 50, seed=1)
    assert len(ingest.sample_texts(files, cfg, 10_000, seed=0)) == 600


def test_world_with_a_hugging_face_tokenizer_folder(tmp_path):
    hf = tmp_path / "hf_model"
    t = train_bpe(DOCS * 3, vocab_size=320)
    hf.mkdir()
    t.tok.save(str(hf / "tokenizer.json"))  # no special_tokens.json: ids from config.json
    (hf / "config.json").write_text(
        json.dumps({"bos_token_id": t.bos_id, "eos_token_id": t.eos_id})
    )
    (hf / "tokenizer_config.json").write_text("{}")
    _write_jsonl(tmp_path / "web.jsonl", DOCS)
    m = materialize(
        {"kind": "jsonl", "paths": [str(tmp_path / "web.jsonl")], "tokenizer": str(hf)},
        tmp_path / "data",
        seed=0,
    )
    assert m["vocab_size"] == t.vocab_size
    assert (tmp_path / "data" / "tokenizer_config.json").is_file()
    docs = _source_docs(tmp_path / "data", "corpus_web")
    np.testing.assert_array_equal(docs[3], t.document(DOCS[3]))


def test_world_kinds_text_and_parquet_and_option_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "notes.txt").write_text("\n".join(DOCS))
    pq.write_table(pa.table({"content": DOCS}), tmp_path / "hf-00000.parquet")
    m = materialize(
        {
            "kind": "text",
            "paths": [str(tmp_path / "notes.txt")],
            "text_mode": "line",
            "vocab_size": 300,
            "tokenizer_sample": 20,
        },
        tmp_path / "t",
        seed=0,
    )
    assert m["sources"]["corpus_notes"]["num_docs"] == len(DOCS)
    shard = tmp_path / "t" / m["sources"]["corpus_notes"]["files"][0]
    before = (shard.stat().st_mtime_ns, (tmp_path / "t" / "tokenizer.json").stat().st_mtime_ns)
    again = materialize(
        {
            "kind": "text",
            "paths": [str(tmp_path / "notes.txt")],
            "text_mode": "line",
            "vocab_size": 300,
            "tokenizer_sample": 20,
        },
        tmp_path / "t",
        seed=0,
    )
    assert again["sources"] == m["sources"]
    assert before == (
        shard.stat().st_mtime_ns,
        (tmp_path / "t" / "tokenizer.json").stat().st_mtime_ns,
    ), "reused"
    m = materialize(
        {
            "kind": "parquet",
            "paths": [str(tmp_path / "*.parquet")],
            "source": "web",
            "text_field": "content",
            "vocab_size": 300,
        },
        tmp_path / "p",
        seed=0,
    )
    assert m["sources"]["web"]["num_docs"] == len(DOCS)
    for world, match in [
        ({"kind": "jsonl", "paths": ["x.jsonl"], "num_shards": 4}, "shard_tokens"),
        ({"kind": "jsonl", "paths": ["x.jsonl"], "on_error": "ignore"}, "on_error"),
        ({"kind": "text", "paths": ["x.txt"], "text_mode": "word"}, "text_mode"),
        ({"kind": "jsonl", "paths": ["a/x.jsonl", "b/x.jsonl"]}, "both make source"),
        ({"kind": "parquet", "paths": ["x"], "colum": "t"}, "unknown key"),
        ({"kind": "mix", "worlds": []}, "worlds"),
        ({"kind": "mix", "worlds": [{"kind": "jsonl"}]}, "paths"),
        (
            {"kind": "mix", "worlds": {"a": {"kind": "bios"}}, "tokenizer_from": "b"},
            "tokenizer_from",
        ),
    ]:
        with pytest.raises(WorldConfigError, match=match):
            check_world(world)


# --- a real-text source beside a synthetic world --------------------------------------------
def test_bios_and_real_text_in_one_run_with_per_source_token_counts(tmp_path):
    from configs.smoke import get_config
    from jaxknow.io.metrics import read_metrics
    from jaxknow.train import loop, setup

    _corpus(tmp_path)
    c = get_config()
    c.train.update(
        dict(steps=3, log_every=1, checkpoint_every=0, progress=False, tensorboard=False)
    )
    c.optim.warmup_steps = 1
    c.data.batch_size = 8
    c.data.sources = [dict(name="bios_single", weight=1.0), dict(name="web", weight=1.0)]
    c.data.world = dict(
        kind="mix",
        worlds=[
            dict(
                kind="jsonl",
                paths=[str(tmp_path / "p*.jsonl*")],
                source="web",
                vocab_size=1024,
                workers=1,
            ),
            dict(kind="bios", num_people=40, augmentations=["single"]),
        ],
    )
    c.data.dir = str(tmp_path / "data")
    loop.train(c, tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    # expected: the same batches, counted by source from the pipeline itself
    spec = setup.parse_run_config(c)
    it = loop.make_iterator(spec, tmp_path / "data", None)
    want = np.zeros(2)
    for row in rows:
        b = next(it)
        want += [b["weights"][b["sources"] == s].sum() for s in (0, 1)]
        got = [row["source_tokens/bios_single"], row["source_tokens/web"]]
        np.testing.assert_array_equal(got, want)
    assert min(want) > 0, "both sources feed the run"


def test_per_source_token_counts_are_part_of_the_iterator_state():
    from jaxknow.data import pipeline

    srcs = [
        pipeline.grain.MapDataset.source(
            pipeline.DocList([(np.arange(k, k + 9, dtype=np.int32), 0) for k in range(0, 200, 10)])
        )
        for _ in range(2)
    ]
    cfg = pipeline.PipelineConfig(seq_len=16, batch_size=4, seed=0)

    def group():
        return pipeline.process_batches(
            srcs, [3.0, 1.0], cfg, num_shards=2, process_index=0, process_count=1
        )

    it = group()
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    counts = it.source_tokens()
    assert counts[0] > counts[1] > 0 and sum(counts) <= 3 * 4 * 16
    after = next(it)
    again = group()
    again.set_state(state)
    assert again.source_tokens() == counts
    b = next(again)
    np.testing.assert_array_equal(b["sources"], after["sources"])
    assert again.source_tokens() == it.source_tokens()
    assert pipeline.source_token_metrics(again, ["a", "b"]) == {
        "source_tokens/a": float(it.source_tokens()[0]),
        "source_tokens/b": float(it.source_tokens()[1]),
    }


@pytest.mark.parametrize("name", ["worlds.text", "mix_bios_text"])
def test_shipped_text_configs_parse(name):
    import importlib

    from jaxknow.train.setup import parse_run_config

    cfg = importlib.import_module("configs." + name).get_config("a/*.jsonl.gz,b.parquet")
    if name == "mix_bios_text":
        spec = parse_run_config(cfg)
        assert [s["name"] for s in spec.data.sources] == ["bios_single", "qa_train", "text"]
        from jaxknow.config import to_plain
        from jaxknow.data.world_builders import _mix_options

        world = to_plain(cfg.data.world)
        assert [
            label
            for label, _ in _mix_options({k: v for k, v in world.items() if k != "kind"})["worlds"]
        ] == ["text", "bios"]
    else:
        world = cfg.world.to_dict()
    check_world(world)
