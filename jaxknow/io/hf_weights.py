"""Hugging Face weight files: lazy reading of `*.safetensors` (one file, shards listed by
`model.safetensors.index.json`, or any), and writing them in shards with the index, through the
`safetensors` and `huggingface_hub` libraries."""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
from huggingface_hub import split_state_dict_into_shards_factory
from safetensors.numpy import save_file

from jaxknow.data.jsonl import atomic_path
from jaxknow.io.hf_config import HFConversionError

DEFAULT_MAX_SHARD_SIZE = "5GB"
INDEX_FILE = "model.safetensors.index.json"


def _truncation(file: Path) -> str | None:
    """Returns why a safetensors file is truncated (the first tensor whose bytes lie past its
    end), or None when its header does not say so."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        ends = {
            name: 8 + n + int(info["data_offsets"][1])
            for name, info in header.items()
            if name != "__metadata__"
        }
    except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError):
        return None
    for name, end in ends.items():
        if end > size:
            return f"truncated (tensor {name!r} ends at byte {end}, the file has {size} bytes)"
    return None


class SafetensorsReader:
    """Lazy, memory-mapped access to the tensors of a Hugging Face model directory: one
    `model.safetensors`, shards listed by `model.safetensors.index.json`, or any
    `*.safetensors` files. Reading a slice touches only the bytes of that slice."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._handles: dict[str, Any] = {}  # tensor name -> safe_open handle of its file
        owner: dict[str, Path] = {}
        for file in self._files():
            try:
                handle = safetensors.safe_open(file, framework="numpy")
            except safetensors.SafetensorError as e:
                why = _truncation(file) or f"not a readable safetensors file ({e})"
                raise HFConversionError(f"{file}: {why}") from None
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                if name in owner:
                    raise HFConversionError(
                        f"tensor {name!r} is stored twice ({owner[name].name} and {file.name})"
                    )
                owner[name] = file
                self._handles[name] = handle

    def _files(self) -> list[Path]:
        index = self.directory / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            files = sorted({self.directory / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"{index} lists shard file(s) that do not exist: {missing}")
            return files
        single = self.directory / "model.safetensors"
        if single.is_file():
            return [single]
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            extra = (
                " (pytorch_model.bin checkpoints are not supported: re-save the model with "
                "save_pretrained(..., safe_serialization=True))"
                if any(self.directory.glob("*.bin"))
                else ""
            )
            raise FileNotFoundError(f"no *.safetensors files in {self.directory}{extra}")
        return files

    def names(self) -> list[str]:
        """Returns the stored tensor names."""
        return list(self._handles)

    def shape(self, name: str) -> tuple[int, ...]:
        """Returns the stored shape of a tensor."""
        return tuple(self._handles[name].get_slice(name).get_shape())

    def dtype_code(self, name: str) -> str:
        """Returns the safetensors dtype code ("F32", "BF16", ...) of a tensor."""
        return self._handles[name].get_slice(name).get_dtype()

    def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
        """Returns the part `index` (contiguous slices, one per leading axis; default: all) of
        a tensor, reading only those bytes."""
        return self._handles[name].get_slice(name)[index]

    def close(self) -> None:
        """Releases the files."""
        self._handles.clear()


def parse_size(size: int | str) -> int:
    """Returns a byte count for an int or a string like "5GB", "500MB", "2GiB", "100KB"."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size={size!r}: expected bytes or e.g. '5GB', '500MB'")
    unit = (m.group(2) or "B").upper()
    powers = {
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }
    if unit not in powers:
        raise ValueError(f"max_shard_size={size!r}: unknown unit {m.group(2)!r}")
    return int(float(m.group(1)) * powers[unit])


def write_safetensors(
    dst: Path,
    shapes: Mapping[str, tuple[int, ...]],
    dtype: np.dtype,
    produce: Callable[[str], np.ndarray],
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    write: bool = True,
) -> list[str]:
    """Writes the tensors `shapes` names (in that order; `produce(name)` returns each, as
    `dtype`) into the folder `dst`: one `model.safetensors`, or shards of at most
    `max_shard_size` bytes (a bigger tensor gets a shard of its own) plus the index, split and
    named as `huggingface_hub` does; returns the weight file names. `produce` is called for
    every name also where `write` is False, so that collectives inside it run on every
    process; one shard's tensors are in host memory at a time."""
    split = split_state_dict_into_shards_factory(
        dict(shapes),
        get_storage_size=lambda shape: math.prod(shape) * dtype.itemsize,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=parse_size(max_shard_size),
    )
    for file, names in split.filename_to_tensors.items():
        tensors = {n: np.ascontiguousarray(produce(n)) for n in names}
        if write:
            save_file(tensors, dst / file, metadata={"format": "pt"})
    if write and split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        with atomic_path(dst / INDEX_FILE) as tmp:
            tmp.write_text(json.dumps(index, indent=2))
    return list(split.filename_to_tensors)
