"""Grain input pipelines: read -> shuffle -> (mix) -> shard by process -> tokenize/parse ->
pack -> batch.

Each pipeline yields per-process batches in the trainer's batch format (see
`jaxknow.train.step`): ``inputs``, ``targets``, ``weights``, ``segment_ids``, ``positions``,
all [batch, seq_len]. Iterator state (`get_state`/`set_state`) is checkpointed with the model.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np
from absl import logging

from jaxknow.config import Packing
from jaxknow.data.jsonl import CorpusFormatError
from jaxknow.data.packing import ConcatPackIterDataset, EpochShuffle
from jaxknow.data.records import decode_record, shard_paths
from jaxknow.errors import check_choices

Doc = tuple[np.ndarray, int]  # (tokens, loss_start)
FEATURES = ("inputs", "targets", "weights", "sources")


class PipelineConfigError(ValueError):
    """A data pipeline setting is invalid; the message names the field."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How documents become batches (made from a run's validated DataConfig, whose checks of
    seq_len, batch_size and num_epochs are not repeated here)."""

    seq_len: int
    batch_size: int  # per process
    packing: Packing = "concat"
    seed: int = 0
    num_epochs: int | None = None  # None: repeat forever
    workers: int = 0  # grain multiprocessing workers (0: in-process)
    read_threads: int = 0  # grain reader threads per process (0: read in the iterating thread)
    pad_final_batch: bool = True  # finite epochs: pad the last batch with zero-weight rows
    cross_document_attention: bool = False  # see config.BatchConfig

    def __post_init__(self) -> None:
        check_choices(self, "data", PipelineConfigError)


class DocList(grain.sources.RandomAccessDataSource):
    """An in-memory random-access source of documents (tokens, loss_start)."""

    def __init__(self, docs: Sequence[Doc]):
        self._docs = [(np.asarray(t, np.int32), int(s)) for t, s in docs]

    def __len__(self) -> int:
        return len(self._docs)

    def __getitem__(self, i: int) -> Doc:
        return self._docs[i]


def doc_to_example(doc: Doc, max_len: int | None = None) -> dict[str, np.ndarray]:
    """Returns next-token features of one document: inputs = tokens[:-1], targets =
    tokens[1:], weights = 1 where the target index >= loss_start, sources = the mixture
    source (a third tuple element, default 0) (truncated to max_len)."""
    tokens, loss_start = doc[0], doc[1]
    tokens = np.asarray(tokens, np.int32)
    inputs, targets = tokens[:-1], tokens[1:]
    weights = (np.arange(1, len(tokens)) >= loss_start).astype(np.float32)
    if max_len is not None and len(inputs) > max_len:
        inputs, targets, weights = inputs[:max_len], targets[:max_len], weights[:max_len]
    sources = np.full(len(inputs), doc[2] if len(doc) > 2 else 0, np.int32)
    return {"inputs": inputs, "targets": targets, "weights": weights, "sources": sources}


def _pad_row(ex: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    n = len(ex["inputs"])
    out = {}
    for k in FEATURES:
        arr = np.zeros(seq_len, ex[k].dtype)
        arr[:n] = ex[k]
        out[k] = arr
    out["segment_ids"] = (np.arange(seq_len) < n).astype(np.int32)
    out["positions"] = np.where(np.arange(seq_len) < n, np.arange(seq_len), 0).astype(np.int32)
    return out


def _from_packed(ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "inputs": ex["inputs"].astype(np.int32),
        "targets": ex["targets"].astype(np.int32),
        "weights": ex["weights"].astype(np.float32),
        "segment_ids": ex["inputs_segment_ids"].astype(np.int32),
        "positions": ex["inputs_positions"].astype(np.int32),
        "sources": ex["sources"].astype(np.int32),
    }


def join_documents(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Returns `batch` with every row's documents made one segment (id 1; padding stays 0) and
    positions counted along the row, so that attention crosses document boundaries."""
    real = batch["segment_ids"] > 0
    positions = np.where(real, np.cumsum(real, axis=-1) - 1, 0)
    return {**batch, "segment_ids": real.astype(np.int32), "positions": positions.astype(np.int32)}


def _pad_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    n = batch["inputs"].shape[0]
    if n == size:
        return batch
    return {
        k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
        for k, v in batch.items()
    }


class RecordDocs(grain.sources.RandomAccessDataSource):
    """Documents (tokens, loss_start) read from ArrayRecord shards and decoded in one step."""

    def __init__(self, paths: Sequence[str]):
        self._paths = list(paths)
        try:
            self._src = grain.sources.ArrayRecordDataSource(self._paths)
        except RuntimeError as e:  # name the damaged shard (the library does not)
            for p in self._paths:
                try:
                    grain.sources.ArrayRecordDataSource([p])
                except RuntimeError as one:
                    raise CorpusFormatError(
                        f"{p}: corrupt or truncated ArrayRecord shard ({one}); rebuild the "
                        "data (delete the source's files and run again)"
                    ) from None
            raise CorpusFormatError(f"{self._paths}: unreadable ArrayRecord shards ({e})") from None

    def __len__(self) -> int:
        return len(self._src)

    def __repr__(self) -> str:
        return f"RecordDocs({self._paths})"

    def __getitem__(self, i: int) -> Doc:
        try:
            return decode_record(self._src[i])
        except RuntimeError as e:
            raise CorpusFormatError(
                f"record {i} of {self._paths} is unreadable ({e}); rebuild the data"
            ) from None


def doc_dataset(paths: Sequence[str]) -> grain.MapDataset:
    """Returns a MapDataset of documents (tokens, loss_start) read from ArrayRecord shards."""
    return grain.MapDataset.source(RecordDocs(paths))


def build_pipeline(
    sources: Sequence[grain.MapDataset],
    weights: Sequence[float] | None,
    cfg: PipelineConfig,
    *,
    shard_index: int = 0,
    shard_count: int = 1,
    tokenize: Callable[[Any], Doc] | None = None,
) -> grain.IterDataset:
    """Returns the IterDataset of per-process batches over a weighted mixture of `sources`.

    Every source is shuffled with its own seed and re-shuffled each epoch; the mixture is then
    split between processes by stride (`shard_index`::`shard_count`), so processes see
    disjoint documents whose union is the whole stream. `tokenize` maps a raw element (e.g. a
    text) to a document when sources hold text rather than tokens.
    """
    if not sources:
        raise PipelineConfigError("data.sources: at least one source is required")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    for i, s in enumerate(sources):
        if len(s) == 0:
            raise PipelineConfigError(f"data.sources[{i}]: the source has no documents ({s})")
    # Each document is tagged with its source index (batches carry it as "sources").
    shuffled = [
        EpochShuffle(s, cfg.seed + 7919 * i, cfg.num_epochs).map(functools.partial(_tag_source, i))
        for i, s in enumerate(sources)
    ]
    if len(shuffled) == 1:
        ds = shuffled[0]
    else:
        w = list(weights) if weights is not None else [1.0] * len(shuffled)
        if len(w) != len(shuffled) or any(x <= 0 for x in w):
            raise PipelineConfigError(f"data.sources weights {w}: one positive weight per source")
        ds = grain.MapDataset.mix(shuffled, w)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    if tokenize is not None:
        ds = ds.map(tokenize)
    # Reading is an index lookup: grain's reader threads only add overhead for small records.
    read = grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=64)
    finite = cfg.num_epochs is not None
    pad_final = finite and cfg.pad_final_batch
    if cfg.packing == "concat":
        it = ConcatPackIterDataset(
            ds.to_iter_dataset(read), cfg.seq_len, cfg.batch_size, pad_final=pad_final
        )
    else:
        warned: list[bool] = []

        def to_example(doc: Doc) -> dict[str, np.ndarray]:
            if len(doc[0]) - 1 > cfg.seq_len and not warned:
                warned.append(True)
                logging.warning(
                    "a document of %d tokens is truncated to seq_len=%d",
                    len(doc[0]) - 1,
                    cfg.seq_len,
                )
            return doc_to_example(doc, cfg.seq_len)

        it = ds.map(to_example).to_iter_dataset(read)
        if cfg.packing == "first_fit":
            lengths = {k: cfg.seq_len for k in FEATURES}
            it = grain.experimental.FirstFitPackIterDataset(
                it,
                length_struct=lengths,
                num_packing_bins=cfg.batch_size,
                seed=cfg.seed,
                shuffle_bins=True,
            ).map(_from_packed)
        else:
            it = it.map(lambda ex: _pad_row(ex, cfg.seq_len))
        it = it.batch(cfg.batch_size, drop_remainder=not pad_final)
        if pad_final:
            it = it.map(lambda b: _pad_batch(b, cfg.batch_size))
    if cfg.cross_document_attention:
        it = it.map(join_documents)
    if cfg.workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.workers))
    return it


def _tag_source(i: int, doc: Doc) -> tuple[np.ndarray, int, int]:
    return doc[0], doc[1], i


class ShardGroup:
    """Iterates several data shards of one process and stacks their rows into one batch.

    The global data stream is split into a fixed number of shards, each feeding an equal share
    of every batch's rows; a process handles a contiguous group of them. The global batch is
    then the same whatever the number of processes, so a run on 2 hosts reproduces a run on
    1 host with the same `data.shards`.
    """

    def __init__(self, iterators: Sequence[Any], num_sources: int = 1):
        self._its = list(iterators)
        # loss-bearing tokens this process has yielded from each mixture source
        self._source_tokens = np.zeros(num_sources, np.int64)

    def __iter__(self) -> ShardGroup:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self._its]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if "sources" in batch:
            self._source_tokens += np.bincount(
                batch["sources"][batch["weights"] > 0].ravel(), minlength=len(self._source_tokens)
            )[: len(self._source_tokens)]
        return batch

    def source_tokens(self) -> list[int]:
        """Returns the loss-bearing tokens this process has yielded per source (cumulative
        over the run, resumed runs included)."""
        return [int(x) for x in self._source_tokens]

    def get_state(self) -> dict[str, Any]:
        """Returns the states of every shard's iterator and the per-source token counts."""
        return {
            "shards": [it.get_state() for it in self._its],
            "source_tokens": self.source_tokens(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores states from `get_state`."""
        if len(state["shards"]) != len(self._its):
            raise ValueError(
                f"iterator state has {len(state['shards'])} shards, the pipeline "
                f"{len(self._its)} (data.shards or the process count changed)"
            )
        for it, s in zip(self._its, state["shards"]):
            it.set_state(s)
        counts = state.get("source_tokens")
        if counts is not None and len(counts) == len(self._source_tokens):
            self._source_tokens = np.asarray(counts, np.int64)


def process_batches(
    sources: Sequence[grain.MapDataset],
    weights: Sequence[float] | None,
    cfg: PipelineConfig,
    *,
    num_shards: int,
    process_index: int,
    process_count: int,
) -> ShardGroup:
    """Returns this process's batch iterator: `num_shards` shards of the global stream, each
    giving cfg.batch_size / num_shards rows; this process takes shards
    [p * k, (p + 1) * k) with k = num_shards / process_count. `cfg.batch_size` is global."""
    if num_shards % process_count:
        raise PipelineConfigError(
            f"data.shards={num_shards} must be a multiple of the {process_count} processes"
        )
    if cfg.batch_size % num_shards:
        raise PipelineConfigError(
            f"data.batch_size={cfg.batch_size} must be a multiple of data.shards={num_shards}"
        )
    per = dataclasses.replace(cfg, batch_size=cfg.batch_size // num_shards)
    k = num_shards // process_count
    its = [
        iter(build_pipeline(sources, weights, per, shard_index=s, shard_count=num_shards))
        for s in range(process_index * k, (process_index + 1) * k)
    ]
    return ShardGroup(its, num_sources=len(sources))


def source_token_metrics(it: ShardGroup, names: Sequence[str]) -> dict[str, float]:
    """Returns {"source_tokens/NAME": loss-bearing tokens of source NAME fed so far, summed
    over processes} (a collective when there are several processes: call it on all)."""
    counts = np.asarray(it.source_tokens(), np.int64)
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        # int32 halves: without jax_enable_x64 an int64 array would be cut to int32
        parts = np.stack([counts >> 31, counts & (2**31 - 1)]).astype(np.int32)
        parts = np.asarray(multihost_utils.process_allgather(parts), np.int64).sum(axis=0)
        counts = (parts[0] << 31) + parts[1]
    return {f"source_tokens/{n}": float(c) for n, c in zip(names, counts)}


def source_datasets(data_dir: str, names: Sequence[str]) -> list[grain.MapDataset]:
    """Returns one document MapDataset per named tokenized source in `data_dir`; a source
    without documents is a PipelineConfigError naming it."""
    out = []
    for n in names:
        ds = doc_dataset(shard_paths(data_dir, n))
        if len(ds) == 0:
            raise PipelineConfigError(f"data source {n!r} in {data_dir} has no documents")
        out.append(ds)
    return out
