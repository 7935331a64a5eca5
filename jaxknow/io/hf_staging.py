"""Crash-safe destinations of conversions: the result is written into a hidden sibling folder
(`.NAME.partial`) and renamed into place once complete, so `dst` is either absent, the old
content, or the whole new result; on several processes, process 0 touches the file system and
the others wait at barriers."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax

from jaxknow.io.hf_config import HFConversionError


class DestinationError(HFConversionError):
    """The destination folder cannot be written (not empty without overwrite, a file, or the
    source itself)."""


def _is_within(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def prepare_destination(dst: Path, src: Path, overwrite: bool) -> Path:
    """Checks `dst` may be written; returns the temporary sibling folder to write into."""
    dst, src = dst.absolute(), src.absolute()
    if dst.exists() and not dst.is_dir():
        raise DestinationError(f"destination {dst} exists and is not a directory")
    if _is_within(src.resolve(), dst.resolve()):
        raise DestinationError(f"destination {dst} would replace the source {src}")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise DestinationError(f"destination {dst} is not empty; pass --overwrite to replace it")
    tmp = dst.parent / f".{dst.name}.partial"
    if jax.process_index() == 0:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by an interrupted conversion
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier("jaxknow_hf_tmp")
    return tmp


def finalize_destination(tmp: Path, dst: Path) -> None:
    """Moves the finished temporary folder to `dst` (replacing what was there)."""
    dst = dst.absolute()
    _barrier("jaxknow_hf_written")
    if jax.process_index() == 0:
        old = dst.parent / f".{dst.name}.old"
        if old.exists():
            shutil.rmtree(old)
        if dst.exists():
            dst.rename(old)
        tmp.rename(dst)
        if old.exists():
            shutil.rmtree(old)
    _barrier("jaxknow_hf_done")


def abandon(tmp: Path) -> None:
    """Removes the temporary folder of a conversion that failed."""
    if jax.process_index() == 0 and tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)


def write_model_directory(
    src: Path,
    dst: Path,
    overwrite: bool,
    load: Callable[[], Any],
    meta: Mapping[str, Any],
    write_files: Callable[[Path, Any], None],
) -> Path:
    """Writes an imported model into `dst` crash-safely and returns `dst`: `load()` returns
    the model (an `hf_params.HFModel`), saved as a parameters-only checkpoint whose metadata
    holds its config, family and Hugging Face config plus `meta`; process 0 then writes the
    other files (`write_files(folder, model)`: tokenizer, provenance). Everything is written
    into `.NAME.partial` and renamed into place when complete; a failure leaves `dst` as it
    was."""
    from jaxknow.io.checkpoint import save_params_checkpoint

    tmp = prepare_destination(dst, src, overwrite)
    try:
        model = load()
        full_meta = {
            "model": model.cfg.to_dict(),
            "family": model.family,
            "hf_config": model.hf_config,
            **meta,
        }
        save_params_checkpoint(tmp, model.params, full_meta)
        if jax.process_index() == 0:
            write_files(tmp, model)
        finalize_destination(tmp, dst)
    except BaseException:
        abandon(tmp)
        raise
    return dst


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
