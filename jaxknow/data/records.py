"""Tokenized documents on disk: ArrayRecord shards plus a JSON index.

A record is one document: int32 values ``[loss_start, token_0, token_1, ...]`` where targets
at token positions >= loss_start carry loss (0: the whole document; a QA pair: the index of
the first answer token). A source named NAME in DIR is ``DIR/NAME.json`` (the index, written
last) and ``DIR/NAME-00000-of-000NN.arecord``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from jaxknow.data.jsonl import CorpusFormatError


def encode_record(tokens: Sequence[int], loss_start: int = 0) -> bytes:
    """Returns the bytes of one document record."""
    arr = np.empty(len(tokens) + 1, np.int32)
    arr[0] = loss_start
    arr[1:] = tokens
    return arr.tobytes()


def decode_record(raw: bytes) -> tuple[np.ndarray, int]:
    """Returns (tokens, loss_start) of one record."""
    arr = np.frombuffer(raw, np.int32)
    return arr[1:], int(arr[0])


def write_source(
    out_dir: str | os.PathLike,
    name: str,
    docs: Iterable[tuple[Sequence[int], int]],
    num_shards: int = 1,
    metadata: dict | None = None,
) -> dict:
    """Writes documents (tokens, loss_start) as ArrayRecord shards; returns the index dict.

    Shards are written in a temporary folder and moved into place; the index is written last,
    so a reader never sees a partial source and a failure leaves an earlier copy intact.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = list(docs)
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    num_shards = max(1, min(num_shards, len(docs)))
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        files = []
        bounds = np.linspace(0, len(docs), num_shards + 1).astype(int)
        n_tokens = longest = 0
        for i in range(num_shards):
            fname = f"{name}-{i:05d}-of-{num_shards:05d}.arecord"
            w = ArrayRecordWriter(str(tmp / fname), "group_size:1")
            for tokens, loss_start in docs[bounds[i] : bounds[i + 1]]:
                w.write(encode_record(tokens, loss_start))
                n_tokens += len(tokens)
                longest = max(longest, len(tokens))
            w.close()
            files.append(fname)
        index = {
            "name": name,
            "files": files,
            "num_docs": len(docs),
            "num_tokens": n_tokens,
            "max_doc_tokens": longest,
            **(metadata or {}),
        }
        old = out_dir / f"{name}.json"
        if old.exists():
            old.unlink()
        for f in out_dir.glob(f"{name}-*-of-*.arecord"):
            f.unlink()
        for fname in files:
            os.replace(tmp / fname, out_dir / fname)
        tmp_index = tmp / "index.json"
        tmp_index.write_text(json.dumps(index, indent=1))
        os.replace(tmp_index, old)
        return index
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_index(data_dir: str | os.PathLike, name: str) -> dict:
    """Returns the index of source `name` in `data_dir`; a clear error if it is missing."""
    path = Path(data_dir) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no tokenized source {name!r} in {data_dir} (missing {path}); "
            f"run `python -m launch.data` first"
        )
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CorpusFormatError(f"{path}: corrupt index ({e.msg})") from None
    for f in index["files"]:
        if not (Path(data_dir) / f).is_file():
            raise FileNotFoundError(f"{path}: shard {f} is missing")
    return index


def longest_document(data_dir: str | os.PathLike, name: str) -> int:
    """Returns the token count of source `name`'s longest document (from its index; sources
    written before the index recorded it are read through once)."""
    index = read_index(data_dir, name)
    if "max_doc_tokens" in index:
        return int(index["max_doc_tokens"])
    from array_record.python.array_record_module import ArrayRecordReader

    longest = 0
    for path in shard_paths(data_dir, name):
        reader = ArrayRecordReader(path)
        try:
            for raw in reader.read_all():
                longest = max(longest, len(decode_record(raw)[0]))
        finally:
            reader.close()
    return longest


def shard_paths(data_dir: str | os.PathLike, name: str) -> list[str]:
    """Returns the shard file paths of source `name`."""
    index = read_index(data_dir, name)
    return [str(Path(data_dir) / f) for f in index["files"]]
