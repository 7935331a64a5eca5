"""Orbax checkpoints: model parameters, optimizer state, metadata and data-iterator state.

A checkpoint directory holds numbered steps; each step has the items
``params`` (the full parameter tree the model runs with), ``opt_state``, ``meta`` (step, model
config, anything the caller adds) and ``data`` (the grain iterator state of every process).
Saves are asynchronous; the last N are kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


def as_path(path: str | os.PathLike) -> Any:
    """Returns an absolute local Path, or an etils epath for URLs such as gs://bucket/run."""
    if "://" in str(path):
        from etils import epath

        return epath.Path(str(path))
    return Path(path).absolute()


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message names the path."""


def _gather_strings(s: str) -> list[str]:
    """Returns every process's string (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return [s]
    raw = np.frombuffer(s.encode(), np.uint8)
    n = int(multihost_utils.process_allgather(np.int32(len(raw))).max())
    padded = np.zeros(n, np.uint8)
    padded[: len(raw)] = raw
    lens = multihost_utils.process_allgather(np.int32(len(raw)))
    allp = multihost_utils.process_allgather(padded)
    return [bytes(allp[i][: lens[i]]).decode() for i in range(len(lens))]


class Checkpointer:
    """Saves and restores training checkpoints under one directory."""

    ITEMS = ("params", "opt_state", "meta", "data")

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = as_path(directory)
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint directory at {self.directory}")
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None if read_only else keep,
                save_interval_steps=0 if read_only else 1,
                enable_async_checkpointing=async_save, create=not read_only,
                read_only=read_only,
            ),
            item_names=self.ITEMS,
        )

    def latest_step(self) -> int | None:
        """Returns the newest saved step, or None."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        """Returns every saved step, oldest first."""
        return sorted(self._mngr.all_steps())

    def save(self, step: int, params: Any, opt_state: Any | None, meta: dict[str, Any],
             data_state: dict[str, Any] | None = None) -> None:
        """Starts saving a checkpoint at `step` (returns before the write ends when async).

        `data_state` is this process's iterator state; every process's state is stored.
        With `opt_state=None` only parameters are saved (an exported or converted model).
        """
        states = _gather_strings(json.dumps(data_state))
        data = {f"process_{i}": json.loads(s) for i, s in enumerate(states)}
        items = {
            "params": ocp.args.StandardSave(params),
            "meta": ocp.args.JsonSave(dict(meta, step=int(step))),
            "data": ocp.args.JsonSave(data),
        }
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        self._mngr.save(step, args=ocp.args.Composite(**items), force=True)

    def _step_or_latest(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoint found in {self.directory}")
        elif step not in self._mngr.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} "
                f"(available: {self.all_steps()})")
        return step

    def restore(self, abstract_params: Any, abstract_opt_state: Any | None,
                step: int | None = None) -> dict[str, Any]:
        """Returns {"params", "opt_state", "meta", "data", "step"} from the checkpoint at `step`
        (default: the latest). Abstract trees (ShapeDtypeStructs with shardings) say how to lay
        out the arrays; with `abstract_opt_state=None` the optimizer state is not read.
        `data` is this process's iterator state (or None).
        """
        step = self._step_or_latest(step)
        args = {
            "params": ocp.args.StandardRestore(abstract_params),
            "meta": ocp.args.JsonRestore(),
            "data": ocp.args.JsonRestore(),
        }
        if abstract_opt_state is not None:
            args["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        try:
            out = self._mngr.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # orbax raises many kinds; report the path either way
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} is unreadable or does not match the "
                f"model: {type(e).__name__}: {e}") from e
        data = out["data"] or {}
        return {
            "params": out["params"],
            "opt_state": out["opt_state"] if abstract_opt_state is not None else None,
            "meta": out["meta"],
            "data": data.get(f"process_{jax.process_index()}"),
            "step": step,
        }

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """Returns the metadata item of a checkpoint (default: the latest)."""
        step = self._step_or_latest(step)
        path = self.directory / str(step) / "meta" / "metadata"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"checkpoint metadata {path} is unreadable ({e})") from e

    def wait(self) -> None:
        """Blocks until pending asynchronous saves have finished."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases resources."""
        self._mngr.wait_until_finished()
        self._mngr.close()


def save_params_checkpoint(directory: str | os.PathLike, params: Any, meta: dict[str, Any],
                           step: int = 0) -> Path:
    """Writes a parameters-only checkpoint (e.g. a converted model) under
    `directory`/checkpoints; returns that checkpoints directory. `meta` should hold the
    model config under "model"."""
    ckpt_dir = as_path(directory) / "checkpoints"
    ckpt = Checkpointer(ckpt_dir, keep=1, async_save=False)
    try:
        ckpt.save(step, params, None, meta)
    finally:
        ckpt.close()
    return ckpt_dir


def resolve_checkpoint_dir(path: str | os.PathLike) -> tuple[Path, int | None]:
    """Returns (checkpoint directory, step or None) for a workdir, a checkpoints directory, or
    a single step directory. Raises CheckpointError naming `path` when nothing is there."""
    p = as_path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint path does not exist: {p}")
    if (p / "checkpoints").is_dir():
        return p / "checkpoints", None
    if p.name.isdigit() and (p / "params").exists():
        return p.parent, int(p.name)
    if any(c.name.isdigit() for c in p.iterdir()):
        return p, None
    raise CheckpointError(f"no checkpoints under {p}")
