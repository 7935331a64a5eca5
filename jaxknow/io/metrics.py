"""Metric outputs: `metrics.jsonl`, TensorBoard events and a progress bar (process 0 only)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from absl import logging

from jaxknow.data.jsonl import CorpusFormatError, atomic_path


def _clean(v: Any) -> Any:
    v = float(v) if hasattr(v, "__float__") and not isinstance(v, int | bool) else v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(path: str | os.PathLike, repair_torn: bool = False) -> list[dict[str, Any]]:
    """Returns the rows of a metrics.jsonl file. A malformed line raises CorpusFormatError
    naming file:line, except, with `repair_torn`, an unterminated last line (a write cut off
    by a kill), which is dropped with a warning."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if repair_torn and i == len(lines):  # no newline after it: the last write was torn
                logging.warning(
                    "%s:%d: dropped a torn last line (an interrupted write): %.60r", path, i, line
                )
                continue
            raise CorpusFormatError(f"{path}:{i}: malformed metrics row ({e})") from None
        rows.append(row)
    return rows


class MetricWriter:
    """Writes one JSON object per logged step to DIR/metrics.jsonl and TensorBoard events.

    Resuming at step k drops rows with step > k left by the interrupted run, so the file
    always describes one trajectory.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        resume_step: int = 0,
        tensorboard: bool = True,
        progress_total: int | None = None,
        progress: bool = True,
    ):
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        self._bar = None
        if not self.enabled:
            return
        if self.path.exists():
            kept = [
                r
                for r in read_metrics(self.path, repair_torn=True)
                if r.get("step", 0) <= resume_step
            ]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._f = self.path.open("a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
        if progress and progress_total:
            from tqdm import tqdm

            self._bar = tqdm(
                total=progress_total, initial=resume_step, unit="step", dynamic_ncols=True
            )

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends a row {"step": step, **metrics} and mirrors it to TensorBoard."""
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, step)
        if self._bar is not None:
            shown = {
                k: f"{row[k]:.4g}"
                for k in ("loss", "tokens_per_s")
                if isinstance(row.get(k), float)
            }
            self._bar.set_postfix(shown, refresh=False)

    def advance(self, n: int = 1) -> None:
        """Moves the progress bar by n steps."""
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        """Flushes and closes every output."""
        if not self.enabled:
            return
        self._f.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
