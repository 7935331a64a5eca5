"""Fast grain stages for the hot path of pretraining input: per-epoch shuffling and
concatenate-then-split packing straight into batches.

`EpochShuffle` draws one numpy permutation per epoch (grain's own `shuffle` computes a cipher
per element, which costs ~100 us on a small CPU). `ConcatPackIterDataset` concatenates
documents and cuts them into rows of `seq_len` with vectorised numpy, emitting whole batches;
its iterator state is the parent's state before the document it is inside of, plus the offset
into that document, so a restored iterator resumes exactly.
"""

from __future__ import annotations

import sys
from typing import Any

import grain
import numpy as np

Doc = tuple[np.ndarray, int]


class EpochShuffle(grain.MapDataset):
    """Repeats a MapDataset `num_epochs` times (None: forever), each epoch in a fresh random
    order drawn from (seed, epoch)."""

    def __init__(self, parent: grain.MapDataset, seed: int, num_epochs: int | None):
        super().__init__(parent)
        self._n = len(parent)
        if self._n == 0:
            raise ValueError("cannot shuffle an empty source")
        self._seed = seed
        self._epochs = num_epochs
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return sys.maxsize if self._epochs is None else self._n * self._epochs

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._cache.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self._seed, epoch]).permutation(self._n)
            self._cache = {epoch: perm}  # keep one epoch: memory stays O(n)
        return perm

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.slice(index)
        if index >= len(self):
            raise IndexError(f"index {index} past the end ({len(self)})")
        epoch, i = divmod(index, self._n)
        return self._parent[int(self._perm(epoch)[i])]

    def __str__(self) -> str:
        return f"EpochShuffle(seed={self._seed}, num_epochs={self._epochs})"


class ConcatPackIterDataset(grain.IterDataset):
    """Packs documents (tokens, loss_start[, source]) into batches of `rows` x `seq_len`
    next-token examples: documents are concatenated and split at row ends, every fragment is a
    segment (ids 1, 2, ... within a row; 0 = padding) with positions from 0; ``sources`` holds
    each position's mixture source (0 when documents carry none). A final partial batch is
    padded with zero-weight rows (`pad_final=True`) or dropped."""

    def __init__(self, parent: grain.IterDataset, seq_len: int, rows: int, pad_final: bool = True):
        super().__init__(parent)
        self.seq_len, self.rows, self.pad_final = seq_len, rows, pad_final

    def __iter__(self) -> _ConcatPackIterator:
        return _ConcatPackIterator(self._parent.__iter__(), self.seq_len, self.rows, self.pad_final)

    def __str__(self) -> str:
        return f"ConcatPackIterDataset(seq_len={self.seq_len}, rows={self.rows})"


class _ConcatPackIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, seq_len: int, rows: int, pad_final: bool):
        super().__init__(parent)
        self._seq_len, self._rows, self._pad_final = seq_len, rows, pad_final
        self._doc: Doc | None = None  # the document being consumed
        self._src = 0  # the mixture source it came from (a third tuple element; default 0)
        self._offset = 0  # next unconsumed (input, target) pair of _doc
        self._doc_state: Any = None  # parent state before _doc was read
        self._exhausted = False

    def _next_doc(self) -> bool:
        self._doc_state = self._parent.get_state()
        try:
            doc = next(self._parent)
        except StopIteration:
            self._exhausted = True
            return False
        self._doc = (np.asarray(doc[0], np.int32), int(doc[1]))
        self._src = int(doc[2]) if len(doc) > 2 else 0
        self._offset = 0
        if len(self._doc[0]) < 2:  # nothing to predict in a 0/1-token document
            self._doc = None
        return True

    def __next__(self) -> dict[str, np.ndarray]:
        t, r = self._seq_len, self._rows
        starts: list[int] = []  # flat start offset of every piece
        lengths: list[int] = []
        tok_slices: list[np.ndarray] = []
        weight_starts: list[int] = []
        seg: list[int] = []
        srcs: list[int] = []
        filled = 0
        total = t * r
        row_seg = 0
        while filled < total and not self._exhausted:
            if self._doc is None:
                self._next_doc()  # may hit the end, or skip a document too short to use
                continue
            tokens, loss_start = self._doc
            pairs = len(tokens) - 1
            room = t - filled % t
            take = min(pairs - self._offset, room)
            if filled % t == 0:
                row_seg = 0
            row_seg += 1
            tok_slices.append(tokens[self._offset : self._offset + take + 1])
            weight_starts.append(loss_start - 1 - self._offset)
            starts.append(filled)
            lengths.append(take)
            seg.append(row_seg)
            srcs.append(self._src)
            filled += take
            self._offset += take
            if self._offset >= pairs:
                self._doc = None
        if filled == 0 or (filled < total and not self._pad_final):
            raise StopIteration
        inputs = np.zeros(total, np.int32)
        targets = np.zeros(total, np.int32)
        weights = np.zeros(total, np.float32)
        segment_ids = np.zeros(total, np.int32)
        positions = np.zeros(total, np.int32)
        sources = np.zeros(total, np.int32)
        lens = np.asarray(lengths)
        idx = np.arange(filled)
        local = idx - np.repeat(np.asarray(starts), lens)  # position within its piece
        segment_ids[:filled] = np.repeat(np.asarray(seg, np.int32), lens)
        positions[:filled] = local
        sources[:filled] = np.repeat(np.asarray(srcs, np.int32), lens)
        inputs[:filled] = np.concatenate([s[:-1] for s in tok_slices])
        targets[:filled] = np.concatenate([s[1:] for s in tok_slices])
        weights[:filled] = local >= np.repeat(np.asarray(weight_starts), lens)
        shape = (r, t)
        return {
            "inputs": inputs.reshape(shape),
            "targets": targets.reshape(shape),
            "weights": weights.reshape(shape),
            "segment_ids": segment_ids.reshape(shape),
            "positions": positions.reshape(shape),
            "sources": sources.reshape(shape),
        }

    def get_state(self) -> dict[str, Any]:
        """Returns {"parent": state before the current document, "offset": pairs consumed}."""
        if self._doc is None:
            return {"parent": self._parent.get_state(), "offset": 0}
        return {"parent": self._doc_state, "offset": self._offset}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores a state from `get_state` (re-reads the current document)."""
        self._parent.set_state(state["parent"])
        self._doc, self._offset, self._exhausted = None, 0, False
        if state["offset"]:
            self._next_doc()
            self._offset = state["offset"]
