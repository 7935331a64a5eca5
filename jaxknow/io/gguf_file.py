"""GGUF files (llama.cpp's single-file format): metadata as Python values, tensors dequantized
to float32 numpy one row block at a time, through the `gguf` library's memory-mapped reader.

A 2-d GGUF tensor with dims `ne = [n_in, n_out]` (ggml order, innermost first) is a numpy
`[n_out, n_in]` matrix, i.e. a torch Linear weight; quantization blocks run along the rows, so
any set of rows is dequantized on its own without touching the rest of the tensor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class GGUFError(ValueError):
    """A GGUF file cannot be converted; the message names the file and the problem
    (unreadable or truncated file, unsupported architecture, tensor type or tokenizer)."""


#: Tensor types dequantized to float32 (by `gguf.quants.dequantize`).
SUPPORTED_TYPES = (
    "F32",
    "F16",
    "BF16",
    "F64",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)


def _gguf() -> Any:
    """Returns the `gguf` module; raises GGUFError naming the extra to install."""
    try:
        import gguf
    except ImportError:
        raise GGUFError(
            "reading GGUF files needs the `gguf` package: pip install 'jaxknow[gguf]' "
            "(or pip install 'gguf>=0.17')"
        ) from None
    return gguf


def _field_value(field: Any) -> Any:
    """Returns a GGUF metadata field as a Python value (str, int, float, bool or a list)."""
    gguf = _gguf()
    vt = gguf.GGUFValueType
    types = list(field.types)
    if not types:
        return None

    def one(idx: int, t: Any) -> Any:
        part = field.parts[idx]
        if t == vt.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        v = part[0]
        if t == vt.BOOL:
            return bool(v)
        if t in (vt.FLOAT32, vt.FLOAT64):
            return float(v)
        return int(v)

    if types[0] == vt.ARRAY:
        if len(types) < 2:
            return []
        return [one(i, types[1]) for i in field.data]
    return one(field.data[0], types[0])


class GGUFFile:
    """A GGUF file opened for conversion: `metadata` (every key as a Python value, the
    tokenizer's big arrays included), the tensors by name, and float32 reads of row blocks.

    Raises GGUFError naming the file when it is not a readable GGUF file or is truncated (a
    tensor whose bytes lie past the file's end).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        gguf = _gguf()
        size = self.path.stat().st_size
        try:
            self._reader = gguf.GGUFReader(str(self.path), "r")
        except Exception as e:  # the reader raises ValueError, struct errors, IndexError...
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise GGUFError(
                f"{self.path}: not a readable GGUF file or truncated ({size} bytes; {why})"
            ) from None
        self.metadata: dict[str, Any] = {}
        for name, field in self._reader.fields.items():
            if name.startswith("GGUF."):  # header entries (version, counts)
                continue
            try:
                self.metadata[name] = _field_value(field)
            except Exception as e:
                raise GGUFError(f"{self.path}: metadata key {name!r} is unreadable ({e})") from None
        self.tensors: dict[str, Any] = {}
        for t in self._reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size:
                raise GGUFError(
                    f"{self.path}: truncated (tensor {t.name!r} ends at byte {end}, the file "
                    f"has {size} bytes)"
                )
            self.tensors[t.name] = t

    @property
    def architecture(self) -> str:
        """Returns `general.architecture` (e.g. "llama", "gemma3")."""
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise GGUFError(f"{self.path}: no general.architecture in the metadata")
        return arch

    def type_name(self, name: str) -> str:
        """Returns the tensor type of a tensor ("F32", "Q4_K", ...)."""
        return self.tensors[name].tensor_type.name

    def shape(self, name: str) -> tuple[int, ...]:
        """Returns a tensor's shape in numpy order (outermost first: [n_out, n_in])."""
        return tuple(int(n) for n in reversed(self.tensors[name].shape.tolist()))

    def check_types(self) -> None:
        """Raises GGUFError naming the first tensor whose type cannot be dequantized."""
        for name, t in self.tensors.items():
            if t.tensor_type.name not in SUPPORTED_TYPES:
                raise GGUFError(
                    f"{self.path}: tensor {name!r} has type {t.tensor_type.name}, which jaxknow "
                    f"cannot dequantize (supported: {', '.join(SUPPORTED_TYPES)})"
                )

    def read_rows(self, name: str, rows: slice | Sequence[int] | np.ndarray | None = None) -> Any:
        """Returns float32 rows of a tensor (the outermost axis; default: all of it),
        dequantizing only those rows."""
        gguf = _gguf()
        t = self.tensors[name]
        data = t.data
        if rows is not None:
            data = data[rows] if isinstance(rows, slice) else data[np.asarray(rows)]
        try:
            out = gguf.quants.dequantize(np.asarray(data), t.tensor_type)
        except Exception as e:
            raise GGUFError(
                f"{self.path}: tensor {name!r} ({t.tensor_type.name}) cannot be dequantized ({e})"
            ) from None
        out = np.asarray(out, np.float32)
        shape = self.shape(name)
        n = out.shape[0] if out.ndim == len(shape) else None
        if n is not None:
            return out.reshape((n, *shape[1:])) if len(shape) > 1 else out.reshape(n)
        return out

    def close(self) -> None:
        """Releases the memory map."""
        self.tensors.clear()
        self._reader = None
