"""Orbax checkpoints: model parameters, optimizer state, metadata and data-iterator state.

A checkpoint directory holds numbered steps; each step has the items
``params`` (the full parameter tree the model runs with), ``opt_state``, ``meta`` (step, model
config, anything the caller adds) and ``data`` (the grain iterator state of every process).
Parameters and optimizer states are saved as they are: the layers stacked (`model.layout`;
a per-layer train state's optimizer state per layer). A restore reads each item in the layout
it was stored in and converts it on the devices into the layout of the caller's abstract tree:
checkpoints of earlier versions, which held every layer under its own index
(``layers/3/...``), are stacked on read.
Saves are asynchronous. When a save has finished, a checksum manifest is written into the
step (`jaxknow.io.integrity`) and old steps are rotated away; a step without a valid manifest
is never counted as one of the N kept, so rotation never deletes the newest intact step.
Restores verify the manifest; `resume_step` picks the newest intact step and sets damaged or
incomplete newer ones aside (by path, in `DIR/damaged/`).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from jaxknow.io import integrity
from jaxknow.model.layout import is_per_layer, stack, unstack


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


# Where rotated-out steps are moved before they are deleted (not a step name, so never listed).
TRASH = ".trash"


class Checkpointer:
    """Saves and restores training checkpoints under one directory."""

    ITEMS = ("params", "opt_state", "meta", "data")

    def __init__(
        self,
        directory: str | os.PathLike,
        keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = as_path(directory)
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint directory at {self.directory}")
        self.keep = keep
        self._finisher: threading.Thread | None = None
        self._error: BaseException | None = None
        self._error_step: int | None = None
        self.last_saved: int | None = None
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                # Rotation is done here, counting only intact (manifested) steps.
                max_to_keep=None,
                save_interval_steps=0 if read_only else 1,
                enable_async_checkpointing=async_save,
                create=not read_only,
                read_only=read_only,
            ),
            item_names=self.ITEMS,
        )

    def latest_step(self) -> int | None:
        """Returns the newest saved (finalised) step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """Returns every finalised step on storage, oldest first."""
        self._mngr.reload()
        return sorted(self._mngr.all_steps())

    def step_dir(self, step: int) -> Any:
        """Returns the directory of checkpoint `step`."""
        return self.directory / str(step)

    def verify(self, step: int) -> str | None:
        """Returns None if checkpoint `step` matches its checksum manifest, else why not."""
        return integrity.verify(self.step_dir(step))

    def resume_step(self, requested: int | None = None) -> int | None:
        """Returns the step a resumed run starts from: `requested`, or the newest intact step
        (None when there is no checkpoint). Newer steps are set aside in DIR/damaged/ (they
        would be overwritten by the resumed run); each is reported by path with the reason.

        Raises CheckpointError naming the path when `requested` is missing or damaged, or when
        no step is intact. Steps saved before manifests existed (none has one) are used as
        they are, with a warning.
        """
        steps = self.all_steps()
        if not steps:
            if requested is not None:
                raise CheckpointError(
                    f"train.resume_step={requested}: no checkpoint in {self.directory}"
                )
            return None
        chosen: int | None = None
        error: CheckpointError | None = None
        if jax.process_index() == 0:
            try:
                chosen = self._choose(steps, requested)
            except CheckpointError as e:
                error = e
        if jax.process_count() > 1:  # process 0 decides (and reads the files) for everyone
            chosen = int(
                multihost_utils.broadcast_one_to_all(np.int32(-1 if chosen is None else chosen))
            )
            if chosen < 0 and error is None:
                error = CheckpointError(
                    f"process 0 found no usable checkpoint in {self.directory} (see its error)"
                )
        if error is not None:
            raise error
        self._mngr.reload()
        return chosen

    def _choose(self, steps: list[int], requested: int | None) -> int:
        """Returns the step to resume from (see `resume_step`); sets newer ones aside."""
        chosen: int | None = None
        reasons: dict[int, str] = {}
        legacy = not any(integrity.has_manifest(self.step_dir(s)) for s in steps)
        if requested is not None:
            if requested not in steps:
                raise CheckpointError(
                    f"train.resume_step={requested}: no checkpoint for that step in "
                    f"{self.directory} (available: {steps})"
                )
            why = None if legacy else self.verify(requested)
            if why is not None:
                raise CheckpointError(
                    f"checkpoint {self.step_dir(requested)} is damaged or incomplete: {why}"
                )
            chosen = requested
            reasons = {
                s: f"newer than train.resume_step={requested}" for s in steps if s > requested
            }
        elif legacy:
            chosen = steps[-1]
            logging.warning(
                "checkpoint %s has no checksum manifest (older version); "
                "resuming from it unverified",
                self.step_dir(chosen),
            )
        else:
            for s in reversed(steps):
                why = self.verify(s)
                if why is None:
                    chosen = s
                    break
                reasons[s] = why
            if chosen is None:
                raise CheckpointError(
                    f"no intact checkpoint in {self.directory}: "
                    + "; ".join(f"{self.step_dir(s)}: {w}" for s, w in sorted(reasons.items()))
                )
        for s, why in sorted(reasons.items()):
            dest = self._set_aside(s)
            logging.warning(
                "checkpoint %s is not used (%s); moved to %s%s",
                self.step_dir(s),
                why,
                dest,
                "" if requested is not None else f"; resuming from the newest intact step {chosen}",
            )
        return chosen

    def _set_aside(self, step: int) -> Any:
        """Moves step `step` to DIR/damaged/STEP-TIME; returns the new path."""
        dest_dir = self.directory / "damaged"
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        self.step_dir(step).rename(dest)
        return dest

    def save(
        self,
        step: int,
        params: Any,
        opt_state: Any | None,
        meta: dict[str, Any],
        data_state: dict[str, Any] | None = None,
    ) -> None:
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
        self.wait()
        self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
        self.last_saved = int(step)
        self._finisher = threading.Thread(
            target=self._finish, args=(int(step),), name=f"jaxknow-checkpoint-{step}"
        )
        self._finisher.start()

    def _finish(self, step: int) -> None:
        """Waits for orbax to finalise `step`, writes its manifest and rotates old steps
        (a background thread; an error is kept for `check`)."""
        try:
            self._mngr.wait_until_finished()
            if jax.process_index() == 0:
                integrity.write_manifest(self.step_dir(step), step)
                self._rotate()
        except BaseException as e:  # reported by check() in the caller's thread
            self._error, self._error_step = e, step

    def _rotate(self) -> None:
        """Deletes steps older than the newest `keep` intact ones (never an intact step that
        fewer than `keep` intact steps follow)."""
        steps = self.all_steps()
        intact = [s for s in steps if integrity.has_manifest(self.step_dir(s))]
        if len(intact) < self.keep:
            return
        oldest_kept = intact[-self.keep]
        for s in steps:
            if s < oldest_kept:
                self._discard(s)

    def _discard(self, step: int) -> None:
        """Deletes step `step`. On a local file system the step is first renamed into
        DIR/.trash (atomic), so that a kill during the deletion never leaves a half-deleted step
        that orbax would still list; the trash (with anything an earlier kill left) is then
        removed."""
        path = self.step_dir(step)
        if not isinstance(path, Path):
            path.rmtree()
            return
        trash = self.directory / TRASH
        trash.mkdir(exist_ok=True)
        path.rename(trash / f"{step}-{os.getpid()}-{time.time_ns()}")
        shutil.rmtree(trash, ignore_errors=True)

    def check(self) -> None:
        """Raises CheckpointError (naming the step's path and the cause) if a background save
        has failed. Cheap: call it every step."""
        if self._error is not None:
            e, self._error = self._error, None
            raise CheckpointError(
                f"saving checkpoint {self.step_dir(self._error_step)} failed: "
                f"{type(e).__name__}: {e}"
            ) from e

    def save_failed(self) -> bool:
        """Returns True if a background save has failed (see `check`)."""
        return self._error is not None

    def _step_or_latest(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoint found in {self.directory}")
        elif step not in self.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (available: {self.all_steps()})"
            )
        return step

    def restore(
        self,
        abstract_params: Any,
        abstract_opt_state: Any | None,
        step: int | None = None,
        verify: bool = True,
    ) -> dict[str, Any]:
        """Returns {"params", "opt_state", "meta", "data", "step"} from the checkpoint at `step`
        (default: the latest). Abstract trees (ShapeDtypeStructs with shardings) say how to lay
        out the arrays; with `abstract_opt_state=None` the optimizer state is not read. An
        item stored in the other layout (per layer, e.g. by an earlier version, where the
        abstract tree is stacked, or the reverse) is read in its own layout and converted on
        the devices into the abstract tree's layout and shardings.
        `data` is this process's iterator state (or None). With `verify`, a step whose files
        differ from its checksum manifest raises CheckpointError naming the file.
        """
        step = self._step_or_latest(step)
        if verify and integrity.has_manifest(self.step_dir(step)):
            why = self.verify(step)
            if why is not None:
                raise CheckpointError(f"checkpoint {self.step_dir(step)} is damaged: {why}")
        targets = {"params": abstract_params}
        if abstract_opt_state is not None:
            targets["opt_state"] = abstract_opt_state
        try:
            stored = {k: self._stored_abstract(step, k, t) for k, t in targets.items()}
            args = {k: ocp.args.StandardRestore(a) for k, a in stored.items()}
            args["meta"] = ocp.args.JsonRestore()
            args["data"] = ocp.args.JsonRestore()
            out = self._mngr.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # orbax raises many kinds; report the path either way
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} is unreadable or does not match the "
                f"model: {type(e).__name__}: {e}"
            ) from e
        items = {k: _to_layout(out[k], targets[k]) for k in targets}
        data = out["data"] or {}
        return {
            "params": items["params"],
            "opt_state": items.get("opt_state"),
            "meta": out["meta"],
            "data": data.get(f"process_{jax.process_index()}"),
            "step": step,
        }

    def _stored_abstract(self, step: int, item: str, target: Any) -> Any:
        """Returns `target` (an abstract tree) in the layout item `item` of checkpoint `step`
        was saved in: per layer for checkpoints of earlier versions (and per-layer states)."""
        try:
            stored = is_per_layer(_tree_metadata(self.step_dir(step) / item))
        except Exception as e:  # no readable tree metadata: try the target's own layout
            logging.warning("checkpoint %s: no tree metadata (%s)", self.step_dir(step) / item, e)
            return target
        if stored == is_per_layer(target):
            return target
        if stored:
            return unstack(target, take=lambda s, _: _layer_struct(s, add=False))
        return stack(target, combine=lambda ss: _layer_struct(ss[0], add=True, n=len(ss)))

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """Returns the metadata item of a checkpoint (default: the latest)."""
        step = self._step_or_latest(step)
        path = self.directory / str(step) / "meta" / "metadata"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"checkpoint metadata {path} is unreadable ({e})") from e

    def wait(self) -> None:
        """Blocks until pending saves (and their manifests) have finished; raises
        CheckpointError if one failed."""
        if self._finisher is not None:
            self._finisher.join()
            self._finisher = None
        self.check()

    def close(self) -> None:
        """Waits for pending saves and releases resources (raises CheckpointError if a save
        failed; resources are released either way)."""
        try:
            self.wait()
        finally:
            try:
                self._mngr.close()
            except Exception as e:  # already reported by wait(), or nothing to report
                logging.info("closing the checkpoint manager: %s", e)


def _tree_metadata(item_dir: Any) -> Any:
    """Returns the tree metadata (nested dicts of array metadata) of a saved pytree item."""
    from etils import epath

    handler = ocp.StandardCheckpointHandler()
    try:
        meta = handler.metadata(epath.Path(item_dir))
    finally:
        handler.close()
    return getattr(meta, "tree", meta)


def _layer_struct(s: Any, *, add: bool, n: int = 0) -> jax.ShapeDtypeStruct:
    """Returns the ShapeDtypeStruct `s` with a leading layer axis of size `n` added (`add`) or
    its leading layer axis removed; its sharding likewise (the layer axis is never sharded)."""
    sh = s.sharding
    if isinstance(sh, NamedSharding):
        spec = tuple(sh.spec)
        spec = (None, *spec) if add else spec[1:]
        sh = NamedSharding(sh.mesh, PartitionSpec(*spec))
    shape = (n, *s.shape) if add else s.shape[1:]
    return jax.ShapeDtypeStruct(shape, s.dtype, sharding=sh)


def _to_layout(tree: Any, target: Any) -> Any:
    """Returns a restored tree in the layout of `target` (stacked or per layer), converted on
    the devices straight into the target's shardings (unchanged when the layouts agree)."""
    if is_per_layer(tree) == is_per_layer(target):
        return tree
    convert = stack if is_per_layer(tree) else unstack
    shardings = jax.tree.map(lambda s: s.sharding, target)
    return jax.jit(convert, out_shardings=shardings)(tree)


def save_params_checkpoint(
    directory: str | os.PathLike, params: Any, meta: dict[str, Any], step: int = 0
) -> Path:
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
    a single step directory. Raises CheckpointError naming `path` when nothing is there.
    (Named models, "gguf:NAME", are resolved above this: `jaxknow.io.load.resolve_model_dir`.)"""
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
