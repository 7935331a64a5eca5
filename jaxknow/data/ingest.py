"""Streaming, parallel, resumable tokenization of local corpora into ArrayRecord sources.

`ingest_source` reads documents in input order (`jaxknow.data.readers`), tokenizes batches
of them in worker processes (or in-process when ``workers=0``), and writes records
``[0, bos, tokens..., eos]`` (see `jaxknow.data.records`) into shards cut every
`shard_tokens` tokens. Memory is bounded: at most ``2 * max(workers, 1)`` batches of at most
`batch_docs` documents / `batch_chars` characters are in flight, and a document longer than
`chunk_chars` is tokenized in whitespace-aligned pieces whose ids are concatenated into one
record (a single document is held once, not its tokenizer encodings). A shard is closed at
`shard_tokens` tokens or 2^18 documents.

Output depends only on the inputs, the tokenizer and the options that shape records (not on
the worker count or the batch sizes): records are written in input order. After every shard
a progress marker (``.NAME.ingest/progress.json``: shards done, the input position after
them, issue counts) is committed, so an interrupted ingestion continues from the last shard.
The index ``NAME.json`` is written last and atomically.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from jaxknow.data.jsonl import CorpusFormatError
from jaxknow.data.readers import Doc, Issue, IssueLog, OnError, ReaderConfig, iter_corpus
from jaxknow.data.tokenizer import Tokenizer, load_tokenizer
from jaxknow.errors import check_choices

_FORMAT_VERSION = 1
# An ArrayRecord writer keeps ~46 bytes per record until closed: bound the records per shard.
SHARD_MAX_DOCS = 1 << 18
_TRAIN_SAMPLE_CHARS = 2000  # each sampled document is cut to this many characters for BPE


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """How a corpus is tokenized into a source (see the module docstring)."""

    reader: ReaderConfig = ReaderConfig()
    on_error: OnError = "skip"
    workers: int = 0  # tokenizer processes; 0: tokenize in this process
    chunk_chars: int = 1 << 16  # longer documents are tokenized in pieces of at most this
    batch_docs: int = 1024  # documents per worker task
    batch_chars: int = 1 << 21  # characters per worker task (a longer document goes alone)
    shard_tokens: int = 1 << 24  # a shard is closed at this many tokens (or 2^18 docs)

    def __post_init__(self) -> None:
        check_choices(self, "")
        for f in ("chunk_chars", "batch_docs", "batch_chars", "shard_tokens"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f}={getattr(self, f)}: must be positive")
        if self.workers < 0:
            raise ValueError(f"workers={self.workers}: must be >= 0")

    def fingerprint_fields(self) -> dict[str, Any]:
        """Returns the options the output bytes depend on."""
        return {
            "reader": dataclasses.asdict(self.reader),
            "on_error": self.on_error,
            "chunk_chars": self.chunk_chars,
            "shard_tokens": self.shard_tokens,
        }


@dataclasses.dataclass
class IngestResult:
    """What `ingest_source` returns: the source index and how the run went."""

    index: dict[str, Any]
    resumed_shards: int  # shards found committed by an earlier, interrupted run
    reused: bool  # the source was already complete for these inputs: nothing was done
    seconds: float


# --- text splitting and encoding (runs in the worker processes) ----------------------------
def split_text(text: str, chunk_chars: int) -> list[str]:
    """Returns pieces of `text` of at most `chunk_chars` characters whose concatenation is
    `text`, cut before a whitespace character where one lies in the second half of a piece
    (byte-level pre-tokenizers — GPT-2, Llama 3, Qwen — attach a space to the word after it,
    so such cuts leave the tokens as they are; a SentencePiece-style tokenizer may add a word
    boundary marker at each cut)."""
    if len(text) <= chunk_chars:
        return [text]
    pieces = []
    start = 0
    n = len(text)
    while n - start > chunk_chars:
        end = start + chunk_chars
        lo = start + chunk_chars // 2
        cut = max(text.rfind(" ", lo, end), text.rfind("\n", lo, end))
        if cut <= start:
            cut = end
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    """Loads the tokenizer once per worker process (single-threaded encoding there)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = load_tokenizer(tokenizer_dir)


def encode_docs(
    docs: Sequence[Sequence[str]], batch_chars: int, tok: Tokenizer | None = None
) -> tuple[bytes, np.ndarray]:
    """Encodes documents given as lists of text pieces; returns (records, lengths): the
    concatenated int32 records ``[0, bos, ids(piece 0) + ids(piece 1) + ..., eos]`` and the
    number of int32 values of each. Pieces are encoded in batches of at most `batch_chars`
    characters, so a long document's encodings are never all alive at once."""
    tok = tok if tok is not None else _WORKER_TOKENIZER
    if tok is None:
        raise RuntimeError("encode_docs: no tokenizer (worker not initialised)")
    head = np.asarray([0, *tok.prefix()], np.int32)
    tail = np.asarray([tok.eos_id], np.int32)
    flat = [(d, p) for d, pieces in enumerate(docs) for p in pieces]
    ids: list[list[np.ndarray]] = [[] for _ in docs]
    i = 0
    while i < len(flat):
        j, size = i, 0
        while j < len(flat) and (j == i or size + len(flat[j][1]) <= batch_chars):
            size += len(flat[j][1])
            j += 1
        for (d, _), enc in zip(
            flat[i:j], tok.tok.encode_batch([p for _, p in flat[i:j]], add_special_tokens=False)
        ):
            ids[d].append(np.asarray(enc.ids, np.int32))
        i = j
    records = [np.concatenate([head, *parts, tail]) for parts in ids]
    lengths = np.asarray([len(r) for r in records], np.int64)
    return b"".join(r.tobytes() for r in records), lengths


# --- progress marker ----------------------------------------------------------------------
def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(files: Sequence[Path], tokenizer_dir: Path, cfg: IngestConfig) -> str:
    """Returns a digest of everything the output depends on: each input's path, size and
    modification time, the tokenizer files, and the record-shaping options."""
    tok = {}
    for f in ("tokenizer.json", "special_tokens.json"):
        p = tokenizer_dir / f
        if p.is_file():
            tok[f] = _file_sha256(p)
    inputs = [(str(Path(f).resolve()), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files]
    blob = json.dumps(
        {
            "version": _FORMAT_VERSION,
            "inputs": inputs,
            "tokenizer": tok,
            "options": cfg.fingerprint_fields(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class _ShardWriter:
    """Writes records into staging shards and commits progress after each one."""

    def __init__(
        self,
        staging: Path,
        name: str,
        cfg: IngestConfig,
        log: IssueLog,
        progress: dict[str, Any],
        on_shard: Callable[[int], None] | None,
    ):
        self.staging, self.name, self.cfg, self.log = staging, name, cfg, log
        self.progress = progress
        self.on_shard = on_shard
        self.writer: Any = None
        self.docs = self.tokens = 0
        self.split_docs = progress["split_docs"]

    def _path(self, i: int, tmp: bool = False) -> Path:
        return self.staging / f"{self.name}-{i:05d}.arecord{'.tmp' if tmp else ''}"

    def write(self, record: bytes, n_tokens: int, doc: Doc) -> None:
        if self.writer is None:
            from array_record.python.array_record_module import ArrayRecordWriter

            i = len(self.progress["shards"])
            self.writer = ArrayRecordWriter(str(self._path(i, tmp=True)), "group_size:1")
        self.writer.write(record)
        self.docs += 1
        self.tokens += n_tokens
        if self.tokens >= self.cfg.shard_tokens or self.docs >= SHARD_MAX_DOCS:
            self.commit((doc.file_index, doc.end_line + 1))

    def commit(self, position: tuple[int, int]) -> None:
        """Closes the open shard (if any) and records `position` as where to resume."""
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        i = len(self.progress["shards"])
        os.replace(self._path(i, tmp=True), self._path(i))
        self.progress["shards"].append(
            {"file": self._path(i).name, "num_docs": self.docs, "num_tokens": self.tokens}
        )
        self.progress["next"] = list(position)
        self.progress["issues"] = self.log.to_dict()
        self.progress["split_docs"] = self.split_docs
        _atomic_write_json(self.staging / "progress.json", self.progress)
        self.docs = self.tokens = 0
        if self.on_shard is not None:
            self.on_shard(i)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _load_progress(staging: Path, fp: str) -> dict[str, Any] | None:
    path = staging / "progress.json"
    if not path.is_file():
        return None
    try:
        progress = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if progress.get("fingerprint") != fp:
        return None
    if not all((staging / s["file"]).is_file() for s in progress["shards"]):
        return None
    return progress


def _existing_index(out_dir: Path, name: str, fp: str) -> dict[str, Any] | None:
    path = out_dir / f"{name}.json"
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if index.get("ingest", {}).get("fingerprint") != fp:
        return None
    if not all((out_dir / f).is_file() for f in index["files"]):
        return None
    return index


# --- the ingestion loop ---------------------------------------------------------------------
def ingest_source(
    files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    name: str,
    tokenizer_dir: str | os.PathLike,
    cfg: IngestConfig = IngestConfig(),
    *,
    on_shard: Callable[[int], None] | None = None,
) -> IngestResult:
    """Tokenizes the documents of `files` (in order) into the source `name` in `out_dir`,
    with the tokenizer saved in `tokenizer_dir` (a folder with tokenizer.json, as
    `Tokenizer.save` writes it). Returns an IngestResult whose index is also `NAME.json`.

    Resumes an interrupted run of the same inputs and options; returns at once when the
    source is already complete for them. `on_shard(i)` is called after shard i is committed.
    Raises CorpusFormatError naming file:line on bad input when ``cfg.on_error == "raise"``,
    or when no document is left.
    """
    t0 = time.perf_counter()
    files = [Path(f) for f in files]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = Path(tokenizer_dir)
    fp = fingerprint(files, tok_dir, cfg)
    done = _existing_index(out, name, fp)
    if done is not None:
        return IngestResult(done, 0, True, time.perf_counter() - t0)
    staging = out / f".{name}.ingest"
    progress = _load_progress(staging, fp)
    if progress is None:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        progress = {
            "fingerprint": fp,
            "shards": [],
            "next": [0, 1],
            "split_docs": 0,
            "issues": {"counts": {}, "examples": []},
            "complete": False,
        }
    resumed = len(progress["shards"])
    if resumed:
        logging.info(
            "%s: resuming after %d committed shard(s), at %s:%d",
            name,
            resumed,
            files[progress["next"][0]] if progress["next"][0] < len(files) else "end",
            progress["next"][1],
        )
    for stale in staging.glob("*.tmp"):
        stale.unlink()
    log = IssueLog(
        cfg.on_error, counts=progress["issues"]["counts"], examples=progress["issues"]["examples"]
    )
    writer = _ShardWriter(staging, name, cfg, log, progress, on_shard)
    if not progress["complete"]:
        try:
            _run(files, tok_dir, cfg, log, writer, tuple(progress["next"]))
            writer.commit((len(files), 1))
        finally:
            writer.close()
        progress.update(complete=True, issues=log.to_dict(), split_docs=writer.split_docs)
        _atomic_write_json(staging / "progress.json", progress)
    index = _finalize(out, staging, name, files, progress, log, fp)
    secs = time.perf_counter() - t0
    logging.info(
        "%s: %d documents, %d tokens in %d shard(s), %d issue(s), %.1f s",
        name,
        index["num_docs"],
        index["num_tokens"],
        len(index["files"]),
        log.total,
        secs,
    )
    return IngestResult(index, resumed, False, secs)


@contextlib.contextmanager
def _plain_main() -> Iterator[None]:
    """Hides the __main__ module while worker processes are spawned, so they import only
    this module (not the entry point, e.g. `launch.data` with jax and absl flags, and
    without needing an ``if __name__ == "__main__"`` guard in a user's script)."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _run(
    files: Sequence[Path],
    tok_dir: Path,
    cfg: IngestConfig,
    log: IssueLog,
    writer: _ShardWriter,
    start: tuple[int, int],
) -> None:
    """Reads, tokenizes and writes every document from `start` on, in input order."""
    inline_tok = load_tokenizer(tok_dir) if cfg.workers == 0 else None
    pool = None
    if cfg.workers > 0:
        import multiprocessing

        pool = ProcessPoolExecutor(
            max_workers=cfg.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(str(tok_dir),),
        )
    max_inflight = 2 * max(cfg.workers, 1)
    # Each slot: (entries in input order — a Doc or an Issue —, encoded result or its future)
    inflight: collections.deque[tuple[list[Doc | Issue], Any, list[list[str]]]] = (
        collections.deque()
    )

    def submit(entries: list[Doc | Issue], pieces: list[list[str]]) -> None:
        if pool is None:
            result: Any = encode_docs(pieces, cfg.batch_chars, inline_tok)
        else:
            with _plain_main():  # worker processes start at the first submit
                result = pool.submit(encode_docs, pieces, cfg.batch_chars)
        # Only the piece counts are kept: the texts themselves are the worker's now.
        inflight.append((entries, result, [len(p) for p in pieces]))
        while len(inflight) >= max_inflight:
            drain()

    def drain() -> None:
        entries, result, nparts = inflight.popleft()
        blob, lengths = result.result() if isinstance(result, Future) else result
        offsets = np.concatenate([[0], np.cumsum(lengths)]) * 4
        k = 0
        for e in entries:
            if isinstance(e, Issue):
                log.add(e)
                continue
            # record values: [loss_start, bos?, tokens..., eos]; tokens counted as in
            # records.write_source (everything after loss_start)
            writer.split_docs += nparts[k] > 1
            writer.write(blob[offsets[k] : offsets[k + 1]], int(lengths[k]) - 1, e)
            k += 1

    try:
        entries: list[Doc | Issue] = []
        pieces: list[list[str]] = []
        chars = 0
        for item in iter_corpus(files, cfg.reader, start):
            if isinstance(item, Issue):
                if cfg.on_error == "raise":
                    log.add(item)  # raises CorpusFormatError naming file:line
                entries.append(item)
                continue
            parts = split_text(item.text, cfg.chunk_chars)
            n = len(item.text)
            if pieces and (len(pieces) >= cfg.batch_docs or chars + n > cfg.batch_chars):
                submit(entries, pieces)
                entries, pieces, chars = [], [], 0
            entries.append(item)
            pieces.append(parts)
            chars += n
        if entries:
            submit(entries, pieces)
        while inflight:
            drain()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _finalize(
    out: Path,
    staging: Path,
    name: str,
    files: Sequence[Path],
    progress: dict[str, Any],
    log: IssueLog,
    fp: str,
) -> dict[str, Any]:
    """Moves the staged shards into place and writes the index last (atomically)."""
    shards = progress["shards"]
    num_docs = sum(s["num_docs"] for s in shards)
    if num_docs == 0:
        raise CorpusFormatError(
            f"source {name!r}: no documents in {[str(f) for f in files]} "
            f"(issues: {log.to_dict()['counts'] or 'none; the files hold no text'})"
        )
    n = len(shards)
    names = [f"{name}-{i:05d}-of-{n:05d}.arecord" for i in range(n)]
    old = out / f"{name}.json"
    if old.exists():
        old.unlink()
    keep = set(names)
    for f in out.glob(f"{name}-*-of-*.arecord"):
        if f.name not in keep:
            f.unlink()
    for s, final in zip(shards, names):
        if (staging / s["file"]).is_file():
            os.replace(staging / s["file"], out / final)
    index = {
        "name": name,
        "files": names,
        "num_docs": num_docs,
        "num_tokens": sum(s["num_tokens"] for s in shards),
        "ingest": {
            "fingerprint": fp,
            "inputs": [str(f) for f in files],
            "shard_docs": [s["num_docs"] for s in shards],
            "split_docs": progress["split_docs"],
            "issues": log.to_dict(),
        },
    }
    _atomic_write_json(old, index)
    shutil.rmtree(staging, ignore_errors=True)
    if log.total:
        logging.warning(
            "%s: skipped %d bad input(s) %s; first: %s",
            name,
            log.total,
            log.to_dict()["counts"],
            log.examples[:3],
        )
    return index


# --- tokenizer sample -----------------------------------------------------------------------
def sample_texts(
    files: Sequence[Path], reader: ReaderConfig, n: int, seed: int, on_error: str = "skip"
) -> list[str]:
    """Returns a uniform random sample (reservoir, seeded) of `n` documents of the corpus,
    each cut to its first 2000 characters, in input order: what a BPE is trained on. Bad
    input raises here when `on_error` is "raise" (it is counted by the ingestion pass)."""
    rng = np.random.default_rng(seed)
    sample: list[tuple[int, str]] = []
    seen = 0
    log = IssueLog(on_error)
    for item in iter_corpus(files, reader):
        if isinstance(item, Issue):
            log.add(item)
            continue
        text = item.text[:_TRAIN_SAMPLE_CHARS]
        if len(sample) < n:
            sample.append((seen, text))
        else:
            j = int(rng.integers(0, seen + 1))
            if j < n:
                sample[j] = (seen, text)
        seen += 1
    return [t for _, t in sorted(sample)]


def iter_texts(files: Iterable[Path], reader: ReaderConfig) -> Iterable[str]:
    """Yields the text of every document (issues skipped): a convenience for benchmarks."""
    for item in iter_corpus(list(files), reader):
        if isinstance(item, Doc):
            yield item.text
