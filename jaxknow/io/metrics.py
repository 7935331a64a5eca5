"""Metric outputs: `metrics.jsonl`, TensorBoard events and a progress bar (process 0 only)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax


def _clean(v: Any) -> Any:
    v = float(v) if hasattr(v, "__float__") and not isinstance(v, int | bool) else v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Returns the rows of a metrics.jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
    """Writes one JSON object per logged step to DIR/metrics.jsonl and TensorBoard events.

    Resuming at step k drops rows with step > k left by the interrupted run, so the file
    always describes one trajectory.
    """

    def __init__(self, workdir: str | os.PathLike, resume_step: int = 0, tensorboard: bool = True,
                 progress_total: int | None = None, progress: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        self._bar = None
        if not self.enabled:
            return
        if self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
        self._f = self.path.open("a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
        if progress and progress_total:
            from tqdm import tqdm

            self._bar = tqdm(total=progress_total, initial=resume_step, unit="step",
                             dynamic_ncols=True)

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
            shown = {k: f"{row[k]:.4g}" for k in ("loss", "tokens_per_s") if
                     isinstance(row.get(k), float)}
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
