"""Hugging Face interop: import causal-LM checkpoints (GPT-2, Llama, Qwen2, Gemma) into
jaxknow and export jaxknow models back to the Hugging Face layout.

Import streams: every jaxknow parameter is built with `jax.make_array_from_callback` in its
target sharding, and each callback reads only its slice of the source tensor straight from the
memory-mapped `*.safetensors` files (bf16 included), so the whole model never sits on one device
or in host memory at once. Export gathers the tensors of one safetensors shard at a time
and writes it.

The pieces: `hf_config` (config.json <-> ModelConfig), `hf_tensors` (which stored tensor holds
which parameter), `hf_params` (a tensor reader streamed onto the mesh), `hf_weights`
(safetensors files), `hf_staging` (crash-safe destinations).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from absl import logging
from jax.sharding import Mesh

from jaxknow.data.jsonl import atomic_path
from jaxknow.io.hf_config import (
    FAMILIES,
    HFConversionError,
    detect_family,
    family_mismatches,
    hf_config_from_model,
    model_config_from_hf,
    read_hf_config,
)
from jaxknow.io.hf_params import HFModel, check_param_dtype, load_params_from_reader
from jaxknow.io.hf_staging import (
    abandon,
    finalize_destination,
    prepare_destination,
    write_model_directory,
)
from jaxknow.io.hf_tensors import NP_DTYPES, TensorSource, stored_tensor, tensor_plan
from jaxknow.io.hf_weights import DEFAULT_MAX_SHARD_SIZE, SafetensorsReader, write_safetensors
from jaxknow.model.config import ModelConfig
from jaxknow.model.layout import split_layer_path
from jaxknow.model.params import flatten
from jaxknow.parallel.rules import DEFAULT_RULES, Rules

# Files of a Hugging Face tokenizer that travel with the model in both directions.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _write_atomic(path: Path, text: str) -> None:
    """Writes a text file atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# --- import ---------------------------------------------------------------------------------
def load_hf_params(
    hf_dir: str | os.PathLike,
    mesh: Mesh | None = None,
    *,
    param_dtype: str = "float32",
    dtype: str | None = None,
    rules: Rules = DEFAULT_RULES,
) -> HFModel:
    """Returns the HFModel of a Hugging Face directory, each parameter streamed from the
    safetensors files straight into its sharding on `mesh` (default: all devices, replicated).
    The config is checked (dtype, family) before any weight file is opened.
    """
    check_param_dtype(param_dtype)
    hf = read_hf_config(hf_dir)
    model_config_from_hf(hf, param_dtype=param_dtype, dtype=dtype)  # an unknown model fails here
    reader = SafetensorsReader(hf_dir)
    try:
        return load_params_from_reader(
            hf, reader, mesh, param_dtype=param_dtype, dtype=dtype, rules=rules
        )
    finally:
        reader.close()


def _copy_tokenizer_files(src: Path, dst: Path) -> bool:
    """Copies the Hugging Face tokenizer files found in `src` to `dst`; returns True when
    there was a tokenizer.json."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return (src / "tokenizer.json").is_file()


def _write_special_tokens(hf_dir: Path, dst: Path, hf: Mapping[str, Any]) -> None:
    """Writes jaxknow's special_tokens.json (bos/eos/pad ids) for the copied tokenizer."""
    from jaxknow.data.tokenizer import TokenizerError, load_tokenizer

    try:
        tok = load_tokenizer(hf_dir)
    except TokenizerError as e:
        logging.warning("tokenizer special ids unknown (%s); load_model will guess them", e)
        return
    n = tok.vocab_size
    ok = lambda i: i if isinstance(i, int) and 0 <= i < n else None
    bos, eos = ok(tok.bos_id), ok(tok.eos_id)
    if eos is None:
        logging.warning("eos id %s is outside the tokenizer's vocabulary; not recorded", tok.eos_id)
        return
    pad = ok(hf.get("pad_token_id")) if ok(hf.get("pad_token_id")) is not None else eos
    _write_atomic(
        dst / "special_tokens.json", json.dumps({"bos_id": bos, "eos_id": eos, "pad_id": pad})
    )


def _write_tokenizer_config(dst: Path, tokenizer: Any) -> None:
    """Writes a tokenizer_config.json naming the bos/eos/pad tokens of a jaxknow tokenizer
    (one rebuilt from a GGUF file or trained on a world has none), so that transformers'
    AutoTokenizer (and lm-eval's `hf` model, which needs an end-of-text token) knows them."""
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for key, token_id in (
        ("bos_token", tokenizer.bos_id),
        ("eos_token", tokenizer.eos_id),
        ("pad_token", tokenizer.pad_id),
    ):
        token = tokenizer.tok.id_to_token(token_id) if token_id is not None else None
        if token is not None:
            config[key] = token
    _write_atomic(dst / "tokenizer_config.json", json.dumps(config, indent=1))


def hf_to_jaxknow(
    hf_dir: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    param_dtype: str = "float32",
    dtype: str | None = None,
    mesh: Mesh | None = None,
    overwrite: bool = False,
) -> Path:
    """Converts a Hugging Face model directory into a jaxknow model directory; returns `dst`.

    `dst` gets `checkpoints/` (a parameters-only checkpoint whose metadata holds the model
    config, "source": "huggingface", the family and the original config) and the tokenizer
    files (tokenizer.json, plus special_tokens.json with the bos/eos/pad ids) so that
    `jaxknow.io.load.load_model(dst)` returns the model and its tokenizer. Parameters are
    streamed onto `mesh` (default: all devices, replicated) in `param_dtype`. A non-empty
    `dst` is only replaced with `overwrite`; the result appears at once when complete.
    """
    hf_dir, dst = Path(hf_dir).absolute(), Path(dst).absolute()
    read_hf_config(hf_dir)  # fail on a missing directory before touching dst

    def write_files(folder: Path, model: Any) -> None:
        if _copy_tokenizer_files(hf_dir, folder):
            _write_special_tokens(hf_dir, folder, model.hf_config)

    return write_model_directory(
        hf_dir,
        dst,
        overwrite,
        lambda: load_hf_params(hf_dir, mesh, param_dtype=param_dtype, dtype=dtype),
        {"source": "huggingface", "hf_dir": str(hf_dir)},
        write_files,
    )


# --- export ---------------------------------------------------------------------------------
def write_hf_model(
    params: Any,
    cfg: ModelConfig,
    dst: str | os.PathLike,
    family: str,
    *,
    dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    token_ids: Mapping[str, int | None] | None = None,
) -> list[str]:
    """Writes `config.json` and the safetensors weights (one `model.safetensors`, or shards
    plus `model.safetensors.index.json` above `max_shard_size`) of a jaxknow model (without
    LoRA adapters; layers stacked, written one layer's tensor at a time) into the existing
    folder `dst`; returns the weight file names."""
    dst = Path(dst)
    dtype = dtype or cfg.param_dtype
    if dtype not in NP_DTYPES:
        raise HFConversionError(f"dtype={dtype!r}: must be one of {list(NP_DTYPES)}")
    np_dtype = NP_DTYPES[dtype]
    hf = hf_config_from_model(cfg, family, dtype=dtype, token_ids=token_ids)
    plan = tensor_plan(family, cfg)
    flat = flatten(params)
    expected = {split_layer_path(p)[0] for p in plan}  # the stacked paths of the plan's
    if set(flat) != expected:
        raise HFConversionError(
            f"the parameters do not match the model config: missing "
            f"{sorted(expected - set(flat))}, unexpected {sorted(set(flat) - expected)}"
        )
    by_name: dict[str, list[tuple[str, TensorSource]]] = {}
    for path, src in plan.items():
        by_name.setdefault(src.name, []).append((path, src))
    shapes = {n: s[0][1].stored_shape for n, s in by_name.items()}
    write = jax.process_index() == 0
    files = write_safetensors(
        dst,
        shapes,
        np_dtype,
        lambda name: stored_tensor(by_name[name], flat, np_dtype),
        max_shard_size=max_shard_size,
        write=write,
    )
    if write:
        _write_atomic(dst / "config.json", json.dumps(hf, indent=2))
    return files


def _token_ids(meta: Mapping[str, Any], tokenizer: Any) -> dict[str, int | None]:
    """Returns bos/eos/pad ids for config.json: the imported model's own, else the
    tokenizer's."""
    orig = meta.get("hf_config") or {}
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    if any(orig.get(k) is not None for k in keys):
        return {k: orig.get(k) for k in keys}
    if tokenizer is None:
        return {}
    return {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    }


def jaxknow_to_hf(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    step: int | None = None,
    family: str | None = None,
    dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    mesh: Mesh | None = None,
    overwrite: bool = False,
) -> Path:
    """Exports a jaxknow model (a converted model directory, a workdir, a checkpoints directory
    or one step directory) as a Hugging Face model directory; returns `dst`.

    LoRA adapters are merged into their kernels first. `family` defaults to the one recorded at
    import, else the one the config matches (HFConversionError when none does); `dtype`
    (default: the model's param_dtype) is the stored dtype. The tokenizer files found beside
    the checkpoints are copied. A non-empty `dst` is only replaced with `overwrite`.
    """
    from jaxknow.io.checkpoint import Checkpointer, resolve_checkpoint_dir
    from jaxknow.io.load import find_tokenizer, load_model
    from jaxknow.model.lora import is_lora_path, merge_lora

    src, dst = Path(src).absolute(), Path(dst).absolute()
    if not src.exists():
        raise FileNotFoundError(f"jaxknow model not found: {src}")
    # Settle the family from the metadata before reading (possibly huge) parameters.
    directory, path_step = resolve_checkpoint_dir(src)
    ckpt = Checkpointer(directory, read_only=True)
    try:
        meta = ckpt.read_meta(step if step is not None else path_step)
    finally:
        ckpt.close()
    if "model" not in meta:
        raise HFConversionError(f"checkpoint {directory} has no model config in its metadata")
    cfg = ModelConfig.from_dict(meta["model"])
    if family is None:
        recorded = meta.get("family")
        family = (
            recorded
            if recorded in FAMILIES and not family_mismatches(cfg, recorded)
            else detect_family(cfg)
        )
    hf_config_from_model(cfg, family)  # raises when the model is not of `family`
    tmp = prepare_destination(dst, src, overwrite)
    try:
        model = load_model(src, mesh=mesh, step=step)
        cfg, params = model.cfg, model.params
        if any(is_lora_path(p) for p in flatten(params)):
            params = merge_lora(params, cfg)
        write_hf_model(
            params,
            cfg,
            tmp,
            family,
            dtype=dtype,
            max_shard_size=max_shard_size,
            token_ids=_token_ids(model.meta, model.tokenizer),
        )
        tok = find_tokenizer(model.path)
        if tok is not None and jax.process_index() == 0:
            shutil.copyfile(tok, tmp / "tokenizer.json")
            for name in TOKENIZER_FILES[1:]:
                if (tok.parent / name).is_file():
                    shutil.copyfile(tok.parent / name, tmp / name)
            if model.tokenizer is not None and not (tmp / "tokenizer_config.json").is_file():
                _write_tokenizer_config(tmp, model.tokenizer)
        finalize_destination(tmp, dst)
    except BaseException:
        abandon(tmp)
        raise
    return dst
