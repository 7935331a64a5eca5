"""The kinds of world a data directory is materialised from, in one registry (`WORLD_KINDS`):
per kind, the check of a world description (nothing generated, read or written) and the builder.

The engine's own kinds live here: ``synthetic`` (token progressions), the user corpora
``jsonl`` / ``text`` / ``parquet`` (streamed, see `jaxknow.data.ingest`) and ``mix`` (several
worlds with one tokenizer). A study adds its kinds with `register_world_kind` when its package
is imported (`jaxknow.studies` imports every built-in study), building on the helpers here:
`world_options` (options checked against the builder's known keys), `make_tokenizer`,
`encode_docs` / `encode_qa`, `write_files`, `write_corpus_sources`.

Each builder writes the world's JSONL subsets, a tokenizer (trained byte-level BPE, or the
`tokenizer` option's tokenizer.json for imported models) and one tokenized ArrayRecord source
per training corpus.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxknow.config import to_plain
from jaxknow.data import ingest, readers, records, synthetic
from jaxknow.data.jsonl import CorpusFormatError, iter_jsonl, write_jsonl
from jaxknow.data.tokenizer import Tokenizer, load_tokenizer, train_bpe

# (world description without its kind, output directory, seed) -> the manifest's sources,
# files and vocabulary size.
Builder = Callable[[dict[str, Any], Path, int], dict[str, Any]]
# (world description without its kind, seed) -> anything; raises WorldConfigError.
Checker = Callable[[Mapping[str, Any], int], object]


class WorldConfigError(ValueError):
    """A world description is invalid; the message names the field."""


# Options every builder accepts.
COMMON = {"vocab_size": 4096, "tokenizer": None, "num_shards": 1, "tokenizer_sample": 200_000}


def world_options(world: Mapping[str, Any], kind: str, own: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the options of a world description of `kind`: the defaults `own` (plus the
    options every builder accepts, `COMMON`) overridden by `world`. Raises WorldConfigError
    listing the known keys when `world` holds another key."""
    known = {**COMMON, **own}
    unknown = sorted(set(world) - set(known))
    if unknown:
        raise WorldConfigError(
            f"data.world: unknown key(s) {unknown} for kind {kind!r}; known: {sorted(known)}"
        )
    return {**known, **world}


def make_tokenizer(
    opts: Mapping[str, Any], texts: Sequence[str], out: Path, names: Iterable[str], where: str
) -> Tokenizer:
    """Returns the world's tokenizer, saved in `out`: loaded from ``opts["tokenizer"]`` or
    trained on (a sample of) `texts`. Raises TokenizerError if an entity name in `names` does
    not round-trip exactly (the message names the name and `where` it comes from)."""
    if opts["tokenizer"]:
        src = Path(opts["tokenizer"])
        tok = load_tokenizer(src)
        tok.save(out)
        for extra in ("tokenizer_config.json", "special_tokens_map.json"):
            f = (src if src.is_dir() else src.parent) / extra
            if f.is_file() and f.resolve() != (out / extra).resolve():
                shutil.copyfile(f, out / extra)
    else:
        step = max(1, len(texts) // max(1, opts["tokenizer_sample"]))
        tok = train_bpe(texts[::step], vocab_size=opts["vocab_size"])
        tok.save(out)
    tok.check_roundtrip(names, where)
    return tok


def encode_docs(tok: Tokenizer, texts: Sequence[str]) -> list[tuple[list[int], int]]:
    """Returns documents ``([bos] + tokens + [eos], loss_start=0)`` for plain texts."""
    pre = tok.prefix()
    return [(pre + ids + [tok.eos_id], 0) for ids in tok.encode_batch(list(texts))]


def encode_qa(
    tok: Tokenizer, prompts: Sequence[str], answers: Sequence[str]
) -> list[tuple[list[int], int]]:
    """Returns QA documents ``[bos] + enc(prompt) + enc(" " + answer) + [eos]`` with the loss
    starting at the first answer token (prompt and answer are encoded separately, exactly as
    evaluation encodes a prompt and scores or generates the continuation)."""
    pre = tok.prefix()
    p_ids = tok.encode_batch(list(prompts))
    a_ids = tok.encode_batch([" " + a for a in answers])
    return [(pre + p + a + [tok.eos_id], len(pre) + len(p)) for p, a in zip(p_ids, a_ids)]


def write_files(out: Path, files: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """Writes every JSONL file atomically; returns their names."""
    for name, rows in files.items():
        write_jsonl(out / name, rows)
    return sorted(files)


def write_corpus_sources(
    out: Path, tok: Tokenizer, files: Mapping[str, list[dict[str, Any]]], num_shards: int
) -> dict[str, Any]:
    """Tokenizes every ``corpus_*.jsonl`` file into a source of the same stem; returns
    {source name: index}."""
    sources = {}
    for fname, rows in files.items():
        if fname.startswith("corpus_") and fname.endswith(".jsonl"):
            name = fname[: -len(".jsonl")]
            sources[name] = records.write_source(
                out, name, encode_docs(tok, [r["text"] for r in rows]), num_shards
            )
    return sources


# --- synthetic ---------------------------------------------------------------------------
def _synthetic_options(world: Mapping[str, Any]) -> dict[str, Any]:
    opts = {"num_docs": 2000, "vocab_size": 512, "min_len": 8, "max_len": 40, "num_shards": 1}
    unknown = set(world) - set(opts)
    if unknown:
        raise WorldConfigError(f"data.world: unknown key(s) {sorted(unknown)} for synthetic")
    return {**opts, **world}


def build_synthetic(world: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """Arithmetic-progression documents (see jaxknow.data.synthetic)."""
    opts = _synthetic_options(world)
    docs = synthetic.progression_docs(
        opts["num_docs"], opts["vocab_size"], opts["min_len"], opts["max_len"], seed
    )
    index = records.write_source(out, "synthetic", docs, opts["num_shards"])
    return {"sources": {"synthetic": index}, "vocab_size": opts["vocab_size"]}


# --- user corpora ---------------------------------------------------------------------------
def read_text_corpus(path: str | Path) -> list[str]:
    """Returns the documents of a corpus file: JSONL rows ``{"text": ...}`` (errors name file
    and line) or plain text with documents separated by blank lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    if path.suffix in (".jsonl", ".json"):
        docs = []
        for i, row in enumerate(iter_jsonl(path, required=("text",))):
            if not isinstance(row["text"], str):
                raise CorpusFormatError(f"{path}: row {i + 1}: 'text' must be a string")
            docs.append(row["text"])
        return docs
    text = path.read_text(encoding="utf-8")
    return [d.strip() for d in text.split("\n\n") if d.strip()]


_TEXT_KIND_FORMAT = {"jsonl": "auto", "text": "text", "parquet": "parquet"}
_TEXT_OPTIONS = {
    "paths": [],
    "names": [],
    "source": None,
    "format": None,
    "text_field": "text",
    "text_mode": "paragraph",
    "on_error": "skip",
    "workers": 0,
    "chunk_chars": 1 << 16,
    "max_doc_bytes": 256 << 20,
    "shard_tokens": 1 << 24,
    "batch_docs": 1024,
    "batch_chars": 1 << 21,
}


def _source_name(pattern: str) -> str:
    stem = readers.split_suffixes(pattern)[0]
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_.-")
    if not clean:
        raise WorldConfigError(
            f"data.world.paths: cannot name a source after {pattern!r}; set data.world.source"
        )
    return f"corpus_{clean}"


def _text_options(world: Mapping[str, Any], kind: str = "jsonl") -> dict[str, Any]:
    """Returns checked options of a user-corpus world, with "sources" ({source name: list of
    paths/globs}) and "ingest" (an IngestConfig) added; raises WorldConfigError naming the
    option."""
    opts = world_options(world, kind, _TEXT_OPTIONS)
    paths = opts["paths"]
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise WorldConfigError("data.world.paths: list at least one corpus file or glob")
    if opts["num_shards"] != 1:
        raise WorldConfigError(
            f"data.world.num_shards={opts['num_shards']}: a streamed corpus is cut into shards "
            f"of shard_tokens tokens; set data.world.shard_tokens instead"
        )
    fmt = opts["format"] or _TEXT_KIND_FORMAT[kind]
    try:
        reader = readers.ReaderConfig(
            format=fmt,
            text_field=opts["text_field"],
            text_mode=opts["text_mode"],
            max_doc_bytes=opts["max_doc_bytes"],
        )
        opts["ingest"] = ingest.IngestConfig(
            reader=reader,
            on_error=opts["on_error"],
            workers=opts["workers"],
            chunk_chars=opts["chunk_chars"],
            batch_docs=opts["batch_docs"],
            batch_chars=opts["batch_chars"],
            shard_tokens=opts["shard_tokens"],
        )
    except ValueError as e:
        raise WorldConfigError(f"data.world ({kind}): {e}") from None
    if opts["source"]:
        opts["sources"] = {str(opts["source"]): list(paths)}
    else:
        opts["sources"] = {}
        for p in paths:
            name = _source_name(str(p))
            if name in opts["sources"]:
                raise WorldConfigError(
                    f"data.world.paths: {p!r} and {opts['sources'][name][0]!r} both make "
                    f"source {name!r}; set data.world.source to merge them into one"
                )
            opts["sources"][name] = [str(p)]
    return opts


def build_text_world(world: dict[str, Any], out: Path, seed: int, kind: str) -> dict[str, Any]:
    """Streams user corpora into sources (see `jaxknow.data.ingest`): every entry of `paths`
    (a file or a glob) becomes the source ``corpus_<stem>``, or all of them the one source
    `source`. The tokenizer is `tokenizer` (a tokenizer.json or a folder with one: a
    converted Hugging Face model, a training workdir) or a BPE of `vocab_size` trained on
    a seeded sample of `tokenizer_sample` documents; `names` (optional) must round-trip."""
    opts = _text_options(world, kind)
    files = {name: readers.expand_paths(pats) for name, pats in opts["sources"].items()}
    cfg: ingest.IngestConfig = opts["ingest"]
    every = [f for fs in files.values() for f in fs]
    # A BPE trained earlier on the same sample of the same files is reused (a resumed build
    # skips the sampling pass); anything else is (re)made.
    digest = json.dumps(
        {
            "inputs": [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in every],
            "vocab_size": opts["vocab_size"],
            "sample": opts["tokenizer_sample"],
            "seed": seed,
            "reader": dataclasses.asdict(cfg.reader),
        },
        sort_keys=True,
    )
    marker = out / ".tokenizer_sample.json"
    if (
        not opts["tokenizer"]
        and marker.is_file()
        and marker.read_text() == digest
        and (out / "tokenizer.json").is_file()
    ):
        tok = load_tokenizer(out)
        tok.check_roundtrip(opts["names"], "data.world.names")
    else:
        sample: list[str] = []
        if not opts["tokenizer"]:
            sample = ingest.sample_texts(
                every, cfg.reader, opts["tokenizer_sample"], seed, cfg.on_error
            )
        tok = make_tokenizer(opts, sample, out, opts["names"], "data.world.names")
        if opts["tokenizer"]:
            marker.unlink(missing_ok=True)
        else:
            marker.write_text(digest)
    sources = {
        name: ingest.ingest_source(fs, out, name, out, cfg).index for name, fs in files.items()
    }
    return {"sources": sources, "files": [], "vocab_size": tok.vocab_size}


def build_text_corpus(world: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """User corpora, format from each file's suffix (JSONL / plain text / Parquet, optionally
    .gz / .zst): see `build_text_world`."""
    return build_text_world(world, out, seed, "jsonl")


def build_plain_text(world: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """Plain-text corpora (`text_mode`: paragraph, line or file): see `build_text_world`."""
    return build_text_world(world, out, seed, "text")


def build_parquet(world: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """Parquet corpora (local Hugging Face dataset files; column `text_field`): see
    `build_text_world`."""
    return build_text_world(world, out, seed, "parquet")


# --- mixtures -------------------------------------------------------------------------------
def _mix_options(world: Mapping[str, Any]) -> dict[str, Any]:
    """Returns {"worlds": [(label, world dict)] in build order, "tokenizer"}: `worlds` is a
    list or a mapping label -> world (what a ConfigDict override can reach:
    ``--config.data.world.worlds.bios.num_people=...``); the world named by
    `tokenizer_from` (label or list index; default the first) is built first."""
    known = ["tokenizer", "tokenizer_from", "worlds"]
    unknown = sorted(set(world) - set(known))
    if unknown:
        raise WorldConfigError(
            f"data.world: unknown key(s) {unknown} for kind 'mix'; known: {known}"
        )
    raw = to_plain(world.get("worlds")) or []
    items = (
        list(raw.items()) if isinstance(raw, Mapping) else [(str(i), w) for i, w in enumerate(raw)]
    )
    if not items:
        raise WorldConfigError("data.world.worlds: list at least one world")
    for label, sub in items:
        if not isinstance(sub, Mapping) or sub.get("kind") in (None, "mix"):
            raise WorldConfigError(f"data.world.worlds.{label}: needs a kind other than 'mix'")
    first = world.get("tokenizer_from")
    if first is not None:
        labels = [label for label, _ in items]
        if str(first) not in labels:
            raise WorldConfigError(
                f"data.world.tokenizer_from={first!r}: not one of the worlds {labels}"
            )
        items.sort(key=lambda kv: kv[0] != str(first))
    return {
        "worlds": [(label, dict(sub)) for label, sub in items],
        "tokenizer": world.get("tokenizer"),
    }


def build_mix(world: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """Several worlds in one data folder with one tokenizer, so their sources can be mixed
    by weight in one run (e.g. a bioS world beside a real corpus). The tokenizer is
    `tokenizer` if given, else that of the world `tokenizer_from` (default: the first;
    trained on its text), reused by the others."""
    opts = _mix_options(world)
    tokenizer = opts["tokenizer"]
    sources: dict[str, Any] = {}
    files: list[str] = []
    vocab = 0
    for label, sub in opts["worlds"]:
        kind = sub.pop("kind")
        build = world_kind(kind, f"data.world.worlds.{label}.kind").build
        if tokenizer:
            sub["tokenizer"] = tokenizer
        manifest = build(sub, out, seed)
        clash = sorted(set(manifest["sources"]) & set(sources))
        if clash:
            raise WorldConfigError(
                f"data.world.worlds.{label} ({kind}): source(s) {clash} "
                f"also made by an earlier world"
            )
        sources.update(manifest["sources"])
        files += manifest.get("files", [])
        vocab = max(vocab, manifest["vocab_size"])
        tokenizer = str(out)
    return {"sources": sources, "files": sorted(set(files)), "vocab_size": vocab}


# --- the registry ---------------------------------------------------------------------------
def _check_mix(world: Mapping[str, Any], seed: int) -> None:
    for _, sub in _mix_options(world)["worlds"]:
        check_world(sub, seed)


@dataclasses.dataclass(frozen=True)
class WorldKind:
    """One kind of world: `check(description, seed)` raises WorldConfigError naming the option
    its builder would reject first, without building anything; `build(description, out_dir,
    seed)` materialises it. Descriptions are passed without their ``kind``."""

    check: Checker
    build: Builder


WORLD_KINDS: dict[str, WorldKind] = {
    "synthetic": WorldKind(lambda w, seed: _synthetic_options(w), build_synthetic),
    "jsonl": WorldKind(lambda w, seed: _text_options(w, "jsonl"), build_text_corpus),
    "text": WorldKind(lambda w, seed: _text_options(w, "text"), build_plain_text),
    "parquet": WorldKind(lambda w, seed: _text_options(w, "parquet"), build_parquet),
    "mix": WorldKind(_check_mix, build_mix),
}


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == (
        getattr(b, "__module__", None),
        getattr(b, "__qualname__", None),
    )


def register_world_kind(name: str, build: Builder, check: Checker) -> None:
    """Adds the world kind `name` to `WORLD_KINDS` (what a study package does when it is
    imported): `build(description, out_dir, seed)` materialises a description (without its
    ``kind``) and returns the manifest's sources, files and vocabulary size; `check(description,
    seed)` raises WorldConfigError naming the option `build` would reject first, building
    nothing. Registering the same functions again (a re-imported module) is a no-op; raises
    ValueError when `name` is already another kind."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a world kind needs a non-empty name, got {name!r}")
    old = WORLD_KINDS.get(name)
    if old is not None and not (
        _same_function(old.build, build) and _same_function(old.check, check)
    ):
        raise ValueError(
            f"world kind {name!r} is already registered (builder "
            f"{old.build.__module__}.{old.build.__qualname__})"
        )
    WORLD_KINDS[name] = WorldKind(check=check, build=build)


def world_kind(kind: Any, where: str = "data.world.kind") -> WorldKind:
    """Returns the WorldKind named `kind`; raises WorldConfigError naming `where` and the known
    kinds when there is none (a study's kinds are known once its package is imported: every
    entry point imports `jaxknow.studies`)."""
    if kind not in WORLD_KINDS:
        raise WorldConfigError(f"{where}={kind!r}: unknown; known: {sorted(WORLD_KINDS)}")
    return WORLD_KINDS[kind]


def check_world(world: Mapping[str, Any], seed: int = 0) -> None:
    """Checks a world description without building it (nothing generated, read or written);
    raises WorldConfigError naming the option a builder would reject first."""
    world_kind(world.get("kind")).check({k: v for k, v in world.items() if k != "kind"}, seed)
