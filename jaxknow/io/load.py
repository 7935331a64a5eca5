"""Loading a trained or converted model for inference (parameters, config and tokenizer), its
`model` config section, and the logits of one token sequence (`launch.score`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxknow.data.tokenizer import Tokenizer, load_tokenizer
from jaxknow.io.checkpoint import Checkpointer, CheckpointError, resolve_checkpoint_dir
from jaxknow.io.named_models import resolve_model_path
from jaxknow.model import transformer
from jaxknow.model.config import ModelConfig
from jaxknow.model.lora import LoraConfig, full_specs
from jaxknow.model.params import param_specs
from jaxknow.model.sharded import abstract_params
from jaxknow.parallel.mesh import make_mesh


@dataclasses.dataclass
class LoadedModel:
    """A model ready to run: parameters (LoRA adapters included if it was trained with them),
    its config, its tokenizer (None if none was found) and the checkpoint metadata."""

    params: Any
    cfg: ModelConfig
    tokenizer: Tokenizer | None
    meta: dict[str, Any]
    path: Path


def find_tokenizer(root: Path) -> Path | None:
    """Returns the tokenizer.json belonging to a workdir or converted-model directory."""
    for cand in (root / "tokenizer.json", root / "data" / "tokenizer.json"):
        if cand.is_file():
            return cand
    return None


def resolve_model_dir(path: str | os.PathLike) -> tuple[Path, int | None]:
    """Returns (checkpoint directory, step or None) for a workdir, a checkpoints directory, a
    single step directory, or a named model ("gguf:NAME", converted into its cache directory
    on first use). Raises CheckpointError naming `path` when nothing is there."""
    return resolve_checkpoint_dir(resolve_model_path(path))


def checkpoint_model_config(path: str | Path) -> ModelConfig:
    """Returns the ModelConfig recorded in a checkpoint's metadata (`path` as in
    `resolve_model_dir`)."""
    directory, step = resolve_model_dir(path)
    ckpt = Checkpointer(directory, read_only=True)
    try:
        meta = ckpt.read_meta(step)
    finally:
        ckpt.close()
    if "model" not in meta:
        raise CheckpointError(f"checkpoint {directory} has no model config in its metadata")
    return ModelConfig.from_dict(meta["model"])


def load_model(
    path: str | Path, mesh: Mesh | None = None, step: int | None = None, dtype: str | None = None
) -> LoadedModel:
    """Returns the LoadedModel stored at `path` (a workdir, a checkpoints directory, one
    step directory or a named model "gguf:NAME"); `step` picks a step (default: the one in
    `path`, else the latest).

    Parameters hold the layers stacked (`model.layout`; a checkpoint of an earlier version,
    per layer, is converted on read) and are laid out over `mesh` (default: all devices on
    the data axis, i.e. replicated); `dtype` overrides the compute dtype. Raises
    CheckpointError naming the path.
    """
    directory, path_step = resolve_model_dir(path)
    step = step if step is not None else path_step
    mesh = mesh or make_mesh(-1, 1, 1)
    ckpt = Checkpointer(directory, read_only=True)
    try:
        meta = ckpt.read_meta(step)
        if "model" not in meta:
            raise CheckpointError(f"checkpoint {directory} has no model config in its metadata")
        cfg = ModelConfig.from_dict(meta["model"])
        if dtype is not None:
            cfg = cfg.replace(dtype=dtype)
        specs = param_specs(cfg)
        lora_meta = meta.get("lora") or {}
        if lora_meta.get("rank", 0) or lora_meta.get("embedding_rank", 0):
            lcfg = LoraConfig(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in lora_meta.items()}
            )
            specs = full_specs(cfg, lcfg)
        params = ckpt.restore(abstract_params(specs, cfg.storage_dtype, mesh), None, step)["params"]
    finally:
        ckpt.close()
    root = directory.parent
    tok_path = find_tokenizer(root)
    tokenizer = load_tokenizer(tok_path) if tok_path is not None else None
    return LoadedModel(params=params, cfg=cfg, tokenizer=tokenizer, meta=meta, path=root)


def model_section(converted_dir: str | os.PathLike) -> dict[str, Any]:
    """Returns the `model` config section (every ModelConfig field, preset None) matching the
    model stored in a converted (or trained) jaxknow directory, for `train.init_from`."""
    cfg = checkpoint_model_config(converted_dir).to_dict()
    return {"preset": None, **cfg}


_logits = jax.jit(transformer.apply, static_argnames=("cfg",))


def parse_token_list(text: str) -> list[int]:
    """Returns the token ids of a comma-separated list such as "1,2,3"; raises ValueError
    naming the first entry that is not an integer."""
    out = []
    for i, part in enumerate(text.split(",")):
        s = part.strip()
        try:
            out.append(int(s))
        except ValueError:
            raise ValueError(f"--tokens: entry {i} ({s!r}) is not an integer") from None
    return out


def check_tokens(tokens: Sequence[Any], cfg: ModelConfig) -> list[int]:
    """Returns `tokens` as a list of ints; raises ValueError naming the first value that is not
    an integer or lies outside [0, vocab_size), or a sequence the model cannot take."""
    out = []
    for i, t in enumerate(tokens):
        if isinstance(t, bool) or not isinstance(t, int | np.integer):
            raise ValueError(f"token {i} ({t!r}) is not an integer")
        if not 0 <= int(t) < cfg.vocab_size:
            raise ValueError(
                f"token {i} ({int(t)}) is outside the vocabulary [0, {cfg.vocab_size})"
            )
        out.append(int(t))
    if not out:
        raise ValueError("no tokens to score")
    if cfg.pos_embedding == "learned" and len(out) > cfg.max_seq_len:
        raise ValueError(f"{len(out)} tokens exceed the model's max_seq_len={cfg.max_seq_len}")
    return out


def score_tokens(model: Any, tokens: Sequence[int]) -> np.ndarray:
    """Returns float32 logits [T, V] of one token sequence under a loaded model (a
    `jaxknow.io.load.LoadedModel`, or anything with `.params` and `.cfg`): row t holds the
    scores of the token following tokens[: t + 1]."""
    cfg = model.cfg
    ids = jnp.asarray([check_tokens(tokens, cfg)], jnp.int32)
    return np.asarray(_logits(model.params, ids, cfg=cfg)[0], np.float32)
