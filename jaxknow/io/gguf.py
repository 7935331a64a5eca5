"""GGUF import: a llama.cpp GGUF file (Llama, Gemma 3; quantized or not) -> a jaxknow model
directory, the layout `launch.convert --from=hf` writes (`checkpoints/` + `tokenizer.json` +
`special_tokens.json`), so `jaxknow.io.load.load_model` and `train.init_from` take it.

The file's metadata becomes a Hugging Face config dict and its tensor names Hugging Face names
(`gguf_config`), and `GGUFTensorReader` serves those tensors, dequantized to float32, to the
Hugging Face importer's tensor plan (`hf_params.load_params_from_reader`): whatever family the
Hugging Face path supports, a GGUF file of that family goes the same way. Each parameter
slice is dequantized from the memory-mapped file when it is placed on the devices, so host
memory holds the model being written plus one tensor, never the model twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxknow.io.gguf_config import HFTensor, hf_config_from_gguf, hf_tensor_map
from jaxknow.io.gguf_file import GGUFError, GGUFFile
from jaxknow.io.gguf_tokenizer import tokenizer_from_gguf
from jaxknow.io.hf_params import HFModel, load_params_from_reader
from jaxknow.io.hf_staging import write_model_directory

__all__ = [
    "GGUFError",
    "GGUFTensorReader",
    "gguf_to_jaxknow",
    "load_gguf_params",
    "open_gguf",
]

# Metadata keys recorded in the converted model's checkpoint metadata.
_GENERAL_KEYS = (
    "general.architecture",
    "general.name",
    "general.basename",
    "general.size_label",
    "general.license",
    "general.file_type",
    "general.quantization_version",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
)


class GGUFTensorReader:
    """A GGUF file seen as a Hugging Face checkpoint: the `SafetensorsReader` interface
    (names, shape, dtype_code, read) over Hugging Face tensor names, every read dequantized to
    float32 from only the rows it needs (q/k rows un-permuted, Gemma norms made w again)."""

    def __init__(self, file: GGUFFile, hf_config: dict[str, Any]):
        self.file = file
        self.directory = file.path  # named in the importer's messages
        self.map: dict[str, HFTensor] = hf_tensor_map(
            file.path, file.architecture, hf_config, {n: file.shape(n) for n in file.tensors}
        )

    def names(self) -> list[str]:
        """Returns the Hugging Face names of the file's tensors."""
        return list(self.map)

    def shape(self, name: str) -> tuple[int, ...]:
        """Returns the shape of a tensor (torch Linear order: [out, in])."""
        return self.file.shape(self.map[name].gguf_name)

    def dtype_code(self, name: str) -> str:
        """Returns "F32": every tensor is read dequantized to float32."""
        del name
        return "F32"

    def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
        """Returns the part `index` (contiguous slices, one per leading axis) of a tensor as
        float32, dequantizing only the rows it covers."""
        t = self.map[name]
        shape = self.shape(name)
        rows = index[0] if index else slice(None)
        start, stop, step = rows.indices(shape[0])
        if t.rows is not None:
            block = self.file.read_rows(t.gguf_name, t.rows[start:stop:step])
        else:
            block = self.file.read_rows(t.gguf_name, slice(start, stop, step))
        if len(index) > 1:
            block = block[(slice(None), *index[1:])]
        if t.add:
            block = block + np.float32(t.add)
        return block

    def close(self) -> None:
        """Releases the file."""
        self.file.close()


def open_gguf(path: str | os.PathLike) -> tuple[GGUFFile, dict[str, Any]]:
    """Opens a GGUF file and checks it can be converted; returns (file, Hugging Face config
    dict). Raises GGUFError (one line naming the file) for an unreadable or truncated file,
    an unsupported architecture or an unsupported tensor type."""
    file = GGUFFile(path)
    try:
        hf = hf_config_from_gguf(
            file.path,
            file.metadata,
            set(file.tensors),
            {n: file.shape(n) for n in file.tensors},
        )
        file.check_types()
    except BaseException:
        file.close()
        raise
    return file, hf


def load_gguf_params(
    path: str | os.PathLike,
    mesh: Mesh | None = None,
    *,
    param_dtype: str = "float32",
    dtype: str | None = None,
) -> tuple[HFModel, dict[str, Any]]:
    """Returns (HFModel, GGUF metadata) of a GGUF file, each parameter dequantized and placed
    on `mesh` (default: all devices on the fsdp axis, so host memory holds one copy)."""
    from jaxknow.parallel.mesh import make_mesh

    file, hf = open_gguf(path)
    reader = GGUFTensorReader(file, hf)
    try:
        mesh = mesh or make_mesh(1, -1, 1)
        model = load_params_from_reader(hf, reader, mesh, param_dtype=param_dtype, dtype=dtype)
        return model, file.metadata
    finally:
        reader.close()


def _summary(meta: dict[str, Any], file: Path) -> dict[str, Any]:
    out: dict[str, Any] = {k: meta[k] for k in _GENERAL_KEYS if k in meta}
    out["file"] = str(file)
    out["size"] = file.stat().st_size
    return out


def gguf_to_jaxknow(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    param_dtype: str = "float32",
    dtype: str | None = None,
    mesh: Mesh | None = None,
    overwrite: bool = False,
) -> Path:
    """Converts a GGUF file into a jaxknow model directory; returns `dst`.

    `dst` gets `checkpoints/` (a parameters-only checkpoint whose metadata holds the model
    config, "source": "gguf", the family, the Hugging Face config the metadata maps to and the
    file's general.* keys), `tokenizer.json` rebuilt from the file's metadata and
    `special_tokens.json`. The tokenizer is rebuilt before any weight is read, so a file whose
    tokenizer cannot be rebuilt fails at once. Parameters are placed on `mesh` (default: one
    device in a single-process run, else all devices). The result is written into `.NAME.partial`
    beside `dst` and renamed into place when complete; a non-empty `dst` is only replaced
    with `overwrite`.
    """
    from jaxknow.data.tokenizer import Tokenizer

    src, dst = Path(src).absolute(), Path(dst).absolute()
    file, hf = open_gguf(src)  # fail on a bad file before touching dst
    try:
        tok, ids = tokenizer_from_gguf(file.metadata, src)
        meta_summary = _summary(file.metadata, src)
    finally:
        file.close()
    if mesh is None and jax.process_count() == 1:
        # One device: each tensor is dequantized once (a mesh over N devices dequantizes a
        # tensor sharded along its inner axis N times) and no per-device staging is added;
        # the checkpoint holds global arrays, so load_model lays them out on any mesh.
        from jaxknow.parallel.mesh import make_mesh

        mesh = make_mesh(1, 1, 1, devices=jax.local_devices()[:1])

    def write_files(folder: Path, model: Any) -> None:
        Tokenizer(tok, ids["bos_id"], ids["eos_id"], ids["pad_id"]).save(folder)
        (folder / "gguf_source.json").write_text(json.dumps(meta_summary, indent=2))

    return write_model_directory(
        src,
        dst,
        overwrite,
        lambda: load_gguf_params(src, mesh, param_dtype=param_dtype, dtype=dtype)[0],
        {"source": "gguf", "gguf": meta_summary},
        write_files,
    )
