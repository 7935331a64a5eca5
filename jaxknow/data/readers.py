"""Streaming readers of local text corpora: JSONL, plain text and Parquet files, optionally
gzip- or zstd-compressed, named by paths or globs.

A reader yields `Doc`s (one document's text and where it came from) and `Issue`s (a bad
input: malformed line, missing or non-string text field, invalid UTF-8, an empty or corrupt
file, a document over the size limit) in input order, holding at most one document (or one
Parquet record batch) in memory. Whether an issue is skipped or raised is the caller's
choice (see `IssueLog`). Positions are 1-based lines (rows for Parquet), so every document
and issue is reported as ``file:line``.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import io
import json
import os
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from jaxknow.data.jsonl import CorpusFormatError
from jaxknow.errors import check_choices

# auto: from the file suffix (.jsonl/.json/.ndjson, .txt/.md, .parquet)
Format = Literal["auto", "jsonl", "text", "parquet"]
# plain text: blank-line separated, one per line, one per file
TextMode = Literal["paragraph", "line", "file"]
# bad input: "skip" (count, report file:line) or "raise"
OnError = Literal["skip", "raise"]
ON_ERROR = typing.get_args(OnError)
_COMPRESSION = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_FORMAT_OF_SUFFIX = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_READ_BLOCK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Doc:
    """One document: its text, the index of its file in the input list, and its first and
    last line (rows for Parquet) in that file."""

    text: str
    file_index: int
    line: int
    end_line: int


@dataclasses.dataclass(frozen=True)
class Issue:
    """A bad input at ``path:line`` (line 0: the whole file); `kind` is one of ISSUE_KINDS."""

    kind: str
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}: {self.message}"


ISSUE_KINDS = (
    "malformed_line",
    "missing_field",
    "not_a_string",
    "invalid_utf8",
    "empty_text",
    "empty_file",
    "corrupt_file",
    "too_long",
)


@dataclasses.dataclass(frozen=True)
class ReaderConfig:
    """How documents are read out of corpus files."""

    format: Format = "auto"
    text_field: str = "text"  # JSONL key / Parquet column holding the text
    text_mode: TextMode = "paragraph"
    max_doc_bytes: int = 256 << 20  # longer documents are an issue ("too_long")

    def __post_init__(self) -> None:
        check_choices(self, "")
        if not self.text_field:
            raise ValueError("text_field: must be a non-empty field name")
        if self.max_doc_bytes <= 0:
            raise ValueError(f"max_doc_bytes={self.max_doc_bytes}: must be positive")


class IssueLog:
    """Counts issues by kind and keeps the first `keep` as examples; raises CorpusFormatError
    (naming file:line) on the first issue when `on_error` is "raise"."""

    def __init__(
        self,
        on_error: str = "skip",
        keep: int = 20,
        counts: dict[str, int] | None = None,
        examples: Sequence[str] = (),
    ):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: must be one of {ON_ERROR}")
        self.on_error = on_error
        self.keep = keep
        self.counts: dict[str, int] = dict(counts or {})
        self.examples: list[str] = list(examples)

    def add(self, issue: Issue) -> None:
        """Records `issue` (or raises it when refusing bad input)."""
        if self.on_error == "raise":
            raise CorpusFormatError(f"{issue} (set on_error='skip' to skip and count such input)")
        self.counts[issue.kind] = self.counts.get(issue.kind, 0) + 1
        if len(self.examples) < self.keep:
            self.examples.append(str(issue))

    @property
    def total(self) -> int:
        """Returns the number of issues recorded."""
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        """Returns {"counts": ..., "examples": [...]} (JSON-serialisable)."""
        return {"counts": dict(sorted(self.counts.items())), "examples": list(self.examples)}


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Returns the files named by `patterns` (paths or globs, ``**`` allowed), each glob's
    matches sorted, in pattern order, without duplicates. Raises FileNotFoundError naming a
    path or a glob that matches no file."""
    out: list[Path] = []
    seen: set[str] = set()
    for pat in patterns:
        pat = os.path.expanduser(str(pat))
        if glob.has_magic(pat):
            matches = sorted(p for p in glob.glob(pat, recursive=True) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(f"corpus glob {pat!r} matches no file")
        else:
            if not os.path.isfile(pat):
                raise FileNotFoundError(f"corpus file not found: {pat}")
            matches = [pat]
        for m in matches:
            key = os.path.abspath(m)
            if key not in seen:
                seen.add(key)
                out.append(Path(m))
    return out


def split_suffixes(path: str | Path) -> tuple[str, str | None, str]:
    """Returns (stem, compression or None, format suffix) of a file name, e.g.
    ``"a.jsonl.zst"`` -> ("a", "zstd", ".jsonl")."""
    name = Path(path).name
    stem, ext = os.path.splitext(name)
    comp = _COMPRESSION.get(ext.lower())
    if comp is not None:
        name = stem
        stem, ext = os.path.splitext(name)
    return stem, comp, ext.lower()


def file_format(path: str | Path, fmt: str = "auto") -> str:
    """Returns the format of `path` ("jsonl", "text" or "parquet"): `fmt` unless "auto", else
    from the suffix; raises CorpusFormatError for an unknown suffix."""
    if fmt != "auto":
        return fmt
    _, _, ext = split_suffixes(path)
    if ext not in _FORMAT_OF_SUFFIX:
        raise CorpusFormatError(
            f"{path}: cannot tell the format from the suffix {ext!r}; known "
            f"{sorted(_FORMAT_OF_SUFFIX)} (+ .gz/.zst), or set format=jsonl|text|parquet"
        )
    return _FORMAT_OF_SUFFIX[ext]


def open_binary(path: str | Path) -> IO[bytes]:
    """Returns a buffered binary stream of `path`, decompressing .gz/.zst on the fly."""
    _, comp, _ = split_suffixes(path)
    if comp == "gzip":
        return gzip.open(path, "rb")
    if comp == "zstd":
        import zstandard

        raw = open(path, "rb")  # noqa: SIM115 (closed with the reader)
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(reader, buffer_size=_READ_BLOCK)
    return open(path, "rb", buffering=_READ_BLOCK)  # noqa: SIM115


def _lines(f: IO[bytes], max_bytes: int, start: int = 1) -> Iterator[tuple[int, bytes | None]]:
    """Yields (line number, line without its newline) — None for a line over `max_bytes`,
    which is skipped in blocks, never held whole. Lines before `start` are yielded as b""
    without being kept (resuming)."""
    lineno = 0
    while True:
        line = f.readline(max_bytes + 2)
        if not line:
            return
        lineno += 1
        if not line.endswith(b"\n") and len(line) > max_bytes:
            while True:  # drain the rest of an over-long line
                block = f.readline(_READ_BLOCK)
                if not block or block.endswith(b"\n"):
                    break
            yield lineno, None
            continue
        if lineno < start:
            yield lineno, b""
            continue
        yield lineno, line.rstrip(b"\r\n") if line.endswith(b"\n") else line


class _Reader:
    def __init__(self, path: Path, index: int, cfg: ReaderConfig):
        self.path, self.index, self.cfg = path, index, cfg
        self.where = str(path)

    def issue(self, kind: str, line: int, message: str) -> Issue:
        return Issue(kind, self.where, line, message)

    def decode(self, raw: bytes, line: int) -> str | Issue:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return self.issue("invalid_utf8", line, f"invalid UTF-8 at byte {e.start}")

    def too_long(self, line: int, n: int | None = None) -> Issue:
        size = f"{n} bytes" if n is not None else "a line"
        return self.issue("too_long", line, f"{size} over max_doc_bytes={self.cfg.max_doc_bytes}")

    def doc(self, text: str, line: int, end: int | None = None) -> Doc:
        return Doc(text, self.index, line, line if end is None else end)


def _read_jsonl(r: _Reader, f: IO[bytes], start: int) -> Iterator[Doc | Issue]:
    field = r.cfg.text_field
    for lineno, raw in _lines(f, r.cfg.max_doc_bytes, start):
        if lineno < start:
            continue
        if raw is None:
            yield r.too_long(lineno)
            continue
        if not raw.strip():
            continue
        text = r.decode(raw, lineno)
        if isinstance(text, Issue):
            yield text
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            yield r.issue("malformed_line", lineno, f"invalid JSON ({e.msg}, column {e.colno})")
            continue
        if not isinstance(row, dict):
            yield r.issue(
                "malformed_line", lineno, f"expected a JSON object, got {type(row).__name__}"
            )
        elif field not in row:
            yield r.issue("missing_field", lineno, f"no field {field!r}")
        elif not isinstance(row[field], str):
            yield r.issue(
                "not_a_string",
                lineno,
                f"field {field!r} is {type(row[field]).__name__}, not a string",
            )
        elif not row[field].strip():
            yield r.issue("empty_text", lineno, f"field {field!r} holds no text")
        else:
            yield r.doc(row[field], lineno)


def _read_text(r: _Reader, f: IO[bytes], start: int) -> Iterator[Doc | Issue]:
    mode, limit = r.cfg.text_mode, r.cfg.max_doc_bytes
    if mode == "file":
        if start > 1:  # resuming past this file's one document
            return
        data = f.read(limit + 1)
        if len(data) > limit:
            yield r.too_long(1)
            return
        text = r.decode(data, 1)
        if isinstance(text, Issue) or text.strip():
            yield text if isinstance(text, Issue) else r.doc(text, 1, max(1, text.count("\n")))
        return
    if mode == "line":
        for lineno, raw in _lines(f, limit, start):
            if lineno < start:
                continue
            if raw is None:
                yield r.too_long(lineno)
                continue
            text = r.decode(raw, lineno)
            if isinstance(text, Issue) or text.strip():
                yield text if isinstance(text, Issue) else r.doc(text, lineno)
        return
    # paragraph: documents separated by blank lines
    parts: list[str] = []
    size = 0
    first = 0
    bad: Issue | None = None
    last = 0
    for lineno, raw in _lines(f, limit, start):
        last = lineno
        if lineno < start:
            continue
        if raw is not None and not raw.strip():
            if bad is not None:
                yield bad
            elif parts:
                yield r.doc("\n".join(parts).strip(), first, lineno - 1)
            parts, size, bad = [], 0, None
            continue
        if bad is not None:
            continue
        if not parts:
            first = lineno
        if raw is None or size + len(raw) > limit:
            bad, parts = r.too_long(first), []
            continue
        text = r.decode(raw, lineno)
        if isinstance(text, Issue):
            bad, parts = text, []
            continue
        parts.append(text)
        size += len(raw) + 1
    if bad is not None:
        yield bad
    elif parts:
        yield r.doc("\n".join(parts).strip(), first, last)


def _read_parquet(r: _Reader, start: int, batch_rows: int) -> Iterator[Doc | Issue]:
    import pyarrow.parquet as pq

    field = r.cfg.text_field
    try:
        pf = pq.ParquetFile(r.path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError variants
        yield r.issue("corrupt_file", 0, f"not a readable Parquet file ({e})")
        return
    names = pf.schema_arrow.names
    if field not in names:
        yield r.issue("missing_field", 0, f"no column {field!r} (columns: {names})")
        return
    if pf.metadata.num_rows == 0:
        yield r.issue("empty_file", 0, "no rows")
        return
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=[field]):
        n = batch.num_rows
        if row + n < start:  # resuming: skip whole batches before the start row
            row += n
            continue
        for value in batch.column(0).to_pylist():
            row += 1
            if row < start:
                continue
            if value is None:
                yield r.issue("missing_field", row, f"{field!r} is null")
            elif isinstance(value, bytes):
                if len(value) > r.cfg.max_doc_bytes:
                    yield r.too_long(row, len(value))
                    continue
                text = r.decode(value, row)
                if isinstance(text, Issue) or not text.strip():
                    yield (
                        text
                        if isinstance(text, Issue)
                        else r.issue("empty_text", row, f"{field!r} holds no text")
                    )
                else:
                    yield r.doc(text, row)
            elif not isinstance(value, str):
                yield r.issue("not_a_string", row, f"{field!r} is {type(value).__name__}")
            elif len(value) > r.cfg.max_doc_bytes and len(value.encode()) > r.cfg.max_doc_bytes:
                yield r.too_long(row, len(value.encode()))
            elif not value.strip():
                yield r.issue("empty_text", row, f"{field!r} holds no text")
            else:
                yield r.doc(value, row)


def read_file(
    path: str | Path, index: int, cfg: ReaderConfig, start: int = 1, parquet_batch_rows: int = 1024
) -> Iterator[Doc | Issue]:
    """Yields the documents and issues of one corpus file in order, from line (row) `start`
    on. A file with no bytes is an "empty_file" issue; a decompression or read error mid-file
    is a "corrupt_file" issue at the line reached, and the rest of the file is skipped."""
    path = Path(path)
    r = _Reader(path, index, cfg)
    fmt = file_format(path, cfg.format)
    if os.path.getsize(path) == 0:
        if start <= 1:
            yield r.issue("empty_file", 0, "the file is empty")
        return
    if fmt == "parquet":
        yield from _read_parquet(r, start, parquet_batch_rows)
        return
    produced = False
    last_line = [0]
    try:
        with open_binary(path) as f:
            gen = _read_jsonl(r, f, start) if fmt == "jsonl" else _read_text(r, f, start)
            for item in gen:
                produced = True
                last_line[0] = item.line if isinstance(item, Issue) else item.end_line
                yield item
    except _read_errors() as e:  # gzip.BadGzipFile is an OSError
        yield r.issue(
            "corrupt_file", last_line[0] + 1, f"cannot read past here ({type(e).__name__}: {e})"
        )
        return
    if not produced and start <= 1 and _is_blank(path):
        yield r.issue("empty_file", 0, "no text in the file")


def _read_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (OSError, EOFError, zstandard.ZstdError)


def _is_blank(path: Path) -> bool:
    """Returns True if the (decompressed) file holds only whitespace."""
    with open_binary(path) as f:
        while True:
            block = f.read(_READ_BLOCK)
            if not block:
                return True
            if block.strip():
                return False


def iter_corpus(
    files: Sequence[Path], cfg: ReaderConfig, start: tuple[int, int] = (0, 1)
) -> Iterator[Doc | Issue]:
    """Yields the documents and issues of every file in order, from (file index, line)."""
    for i, path in enumerate(files):
        if i < start[0]:
            continue
        yield from read_file(path, i, cfg, start[1] if i == start[0] else 1)
