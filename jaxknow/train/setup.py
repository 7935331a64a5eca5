"""Turning a config into the pieces of a run: validated sections, mesh, model parameters
(fresh, from a checkpoint, with LoRA adapters), sharded train state."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxknow import config as C
from jaxknow.io.checkpoint import Checkpointer
from jaxknow.io.load import checkpoint_model_config, resolve_model_dir
from jaxknow.model import lora as lora_lib
from jaxknow.model.config import ModelConfig
from jaxknow.model.layout import is_per_layer, layer_paths, unstack
from jaxknow.model.lora import full_specs
from jaxknow.model.params import flatten, param_specs, per_layer_specs, unflatten
from jaxknow.model.sharded import abstract_params, init_sharded_params
from jaxknow.parallel.mesh import make_mesh
from jaxknow.parallel.rules import DEFAULT_RULES, Rules
from jaxknow.train.forgetting import ForgetConfig
from jaxknow.train.state import TrainState, homogeneous_layers, split_params, state_shardings


class WorkdirError(ValueError):
    """The work directory cannot be used (e.g. it is a file)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSpec:
    """A training run's config, typed: its sections, each parsed by `config.parse`.

    `__post_init__` settles what one section takes from another (optim.total_steps defaults to
    train.steps; lora.targets="all-linear" becomes the model's projections; the model carries
    the adapters' scale) and checks across sections, so a RunSpec built in code (a study's
    stage, `experiments.common.stage_spec`) is the same as one parsed from a config.
    """

    seed: int = C.resume_fixed(0)
    model: ModelConfig
    mesh: C.MeshConfig = C.MeshConfig()
    optim: C.OptimConfig = C.OptimConfig()
    train: C.TrainConfig = C.TrainConfig()
    data: C.DataConfig
    lora: lora_lib.LoraConfig = C.resume_fixed(lora_lib.LoraConfig())
    forget: ForgetConfig | None = None
    name: str | None = None  # a label of the run (kept in config.json; nothing reads it)

    def __post_init__(self) -> None:
        settle = functools.partial(object.__setattr__, self)
        train, data, model, lora = self.train, self.data, self.model, self.lora
        if self.optim.total_steps is None:
            try:
                settle("optim", dataclasses.replace(self.optim, total_steps=train.steps))
            except ValueError as e:
                raise C.ConfigError(f"optim.{e}") from None
        settle("lora", lora.resolved(model.mlp))
        if lora.enabled and model.lora_scale != lora.scale:
            settle("model", model.replace(lora_scale=lora.scale))
        if train.trainable == "lora" and not lora.enabled:
            raise C.ConfigError(
                "train.trainable='lora' needs lora.rank > 0 or lora.embedding_rank > 0"
            )
        if data.batch_size % train.grad_accum:
            raise C.ConfigError(
                f"train.grad_accum={train.grad_accum} does not divide "
                f"data.batch_size={data.batch_size}"
            )
        if data.seq_len > model.max_seq_len and model.pos_embedding == "learned":
            raise C.ConfigError(
                f"data.seq_len={data.seq_len} exceeds model.max_seq_len={model.max_seq_len}"
            )
        if self.forget is not None and any(s > train.steps for s in self.forget.at_steps):
            raise C.ConfigError(
                f"forget.at_steps={list(self.forget.at_steps)}: beyond train.steps={train.steps}"
            )


def parse_run_config(config: Any) -> RunSpec:
    """Returns the RunSpec of a training config (a ConfigDict or a plain mapping); raises
    ConfigError naming the first bad field."""
    return C.parse(RunSpec, C.to_plain(config))


def check_workdir(workdir: str | Path, create: bool = True) -> Path:
    """Returns the work directory as a Path (created if `create`); raises WorkdirError when
    the path exists and is not a directory (nothing is written then)."""
    if workdir is None or not str(workdir).strip():
        raise WorkdirError(
            "--workdir is empty: give the run's directory (it is created if missing)"
        )
    p = Path(workdir)
    if p.exists() and not p.is_dir():
        raise WorkdirError(f"--workdir={p} exists and is not a directory")
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


LOCK_NAME = ".lock"


@contextlib.contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[Path]:
    """Creates `workdir` and holds an exclusive lock on WORKDIR/.lock for the block (process 0
    only; the file records host and pid). Raises WorkdirError naming the holder when another
    live process holds it. The lock is an flock, so a dead holder's lock is free again (its
    stale file is taken over, with a warning)."""
    p = check_workdir(workdir)
    if jax.process_index() != 0:
        yield p
        return
    path = p / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise WorkdirError(
                f"--workdir={p} is in use by another run ({holder}; lock file {path}); "
                f"wait for it to end or use another workdir"
            ) from None
        old = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if old:
            logging.warning("took over the stale lock %s of an ended run (%s)", path, old)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        try:
            yield p
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


# Model fields that may change on resume (how the model is computed, not what it is); its
# lora_scale follows the lora section, compared on its own.
MODEL_RUNTIME = (
    "remat",
    "attention_impl",
    "attention_query_block",
    "dtype",
    "segment_masking",
    "lora_scale",
)


def _get(obj: Any, dotted: str) -> Any:
    for k in dotted.split("."):
        obj = getattr(obj, k)
    return obj


def _diff(a: Any, b: Any, where: str) -> list[str]:
    """Returns the dotted names where plain values `a` and `b` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{where}.{k}")
        return out
    a, b = json.loads(json.dumps(a, default=str)), json.loads(json.dumps(b, default=str))
    return [] if a == b else [f"{where} (recorded {a!r}, now {b!r})"]


def check_resumable(spec: RunSpec, workdir: Path) -> None:
    """Raises WorkdirError naming every differing field when `workdir` holds a trained run
    (config.json and checkpoints) whose model, world or data differ from `spec`: the fields
    declared `config.resume_fixed` and the model but for MODEL_RUNTIME. Fields like steps,
    learning rate or the mesh may change."""
    recorded_path = workdir / "config.json"
    if not recorded_path.is_file() or not has_checkpoints(spec, workdir):
        return
    try:
        old = parse_run_config(json.loads(recorded_path.read_text()))
    except (OSError, ValueError) as e:
        raise WorkdirError(
            f"{recorded_path} is unreadable ({e}); it records the run being resumed"
        ) from None
    diffs: list[str] = []
    for field in C.fixed_on_resume(RunSpec):
        diffs += _diff(C.to_plain(_get(old, field)), C.to_plain(_get(spec, field)), field)
    old_model, new_model = old.model.to_dict(), spec.model.to_dict()
    for k in MODEL_RUNTIME:
        old_model.pop(k)
        new_model.pop(k)
    diffs += _diff(old_model, new_model, "model")
    if diffs:
        raise WorkdirError(
            f"--workdir={workdir} holds a run trained with a different config; cannot resume "
            f"it with: {'; '.join(diffs)} (use a new --workdir)"
        )


def has_checkpoints(spec: RunSpec, workdir: Path) -> bool:
    """Returns whether the run of `spec` in `workdir` may hold checkpoints: a step folder in
    workdir/checkpoints, or any `train.checkpoint_dir` (remote ones are not listed)."""
    if spec.train.checkpoint_dir:
        return True
    return any(c.name.isdigit() for c in (workdir / "checkpoints").glob("*"))


def check_tokenizer_matches(spec: RunSpec, workdir: Path, data_dir: Path) -> None:
    """Raises WorkdirError when `workdir` holds checkpoints trained with a tokenizer other than
    the data directory's: its token ids would mean other text (e.g. the world was
    re-materialised with other documents, which retrains the BPE)."""
    own, data = workdir / "tokenizer.json", data_dir / "tokenizer.json"
    if not (own.is_file() and data.is_file()) or data_dir == workdir:
        return
    if own.read_bytes() != data.read_bytes() and has_checkpoints(spec, workdir):
        raise WorkdirError(
            f"{data} differs from {own}, the tokenizer the checkpoints in --workdir={workdir} "
            "were trained with (was the data directory re-materialised?); use the original "
            "data directory or a new --workdir"
        )


def trainable_predicate(spec: RunSpec) -> Callable[[str], bool]:
    """Returns the predicate on parameter paths that selects what trains. `train.trainable`
    patterns are matched against per-layer paths (``layers/3/mlp/up/kernel``); a stacked
    path trains when every layer's path matches."""
    t = spec.train.trainable
    if t == "all":
        return lambda p: True
    if t == "lora":
        return lora_lib.is_lora_path
    pat = re.compile(t)
    n = spec.model.n_layers
    return lambda p: all(pat.search(q) for q in layer_paths(p, n))


def state_specs(spec: RunSpec) -> dict[str, Any]:
    """Returns the ParamSpec tree of the run's parameters in the layout of its train state:
    stacked, or their per-layer view when the run treats its layers differently
    (`state.homogeneous_layers`)."""
    specs = full_specs(spec.model, spec.lora)
    if homogeneous_layers(
        flatten(specs), spec.model.n_layers, trainable_predicate(spec), spec.optim.no_decay
    ):
        return specs
    return per_layer_specs(specs)


def load_params(
    path: str | Path, specs: Any, dtype: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> tuple[Any, dict[str, Any]]:
    """Returns (params, meta) restored from a checkpoint (workdir, checkpoints dir or step dir),
    laid out by the mesh. Raises CheckpointError naming the path when missing or unreadable."""
    directory, step = resolve_model_dir(path)
    ckpt = Checkpointer(directory, read_only=True)
    try:
        out = ckpt.restore(abstract_params(specs, dtype, mesh, rules), None, step)
    finally:
        ckpt.close()
    return out["params"], out["meta"]


def initial_params(spec: RunSpec, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """Returns the run's starting parameters: fresh, or loaded from `train.init_from`, plus
    freshly initialised LoRA adapters when LoRA is on."""
    key = jax.random.key(spec.seed)
    dtype = spec.model.storage_dtype
    if spec.train.init_from is None:
        return init_sharded_params(full_specs(spec.model, spec.lora), key, dtype, mesh, rules)
    base_cfg = checkpoint_model_config(spec.train.init_from)
    mine = dataclasses.replace(
        spec.model,
        lora_scale=base_cfg.lora_scale,
        remat=base_cfg.remat,
        dtype=base_cfg.dtype,
        attention_impl=base_cfg.attention_impl,
        attention_query_block=base_cfg.attention_query_block,
        segment_masking=base_cfg.segment_masking,
    )
    if param_specs(mine) != param_specs(base_cfg):
        raise C.ConfigError(
            f"train.init_from={spec.train.init_from}: the checkpoint's model shape differs from "
            f"the config's model section (checkpoint: {base_cfg.to_dict()})"
        )
    params, _ = load_params(spec.train.init_from, param_specs(spec.model), dtype, mesh, rules)
    if spec.lora.enabled:
        adapters = init_sharded_params(
            lora_lib.lora_specs(spec.model, spec.lora), key, dtype, mesh, rules
        )
        params = unflatten({**flatten(params), **flatten(adapters)})
    return params


def build_state(
    params: Any,
    spec: RunSpec,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
) -> tuple[TrainState, TrainState]:
    """Returns (state, state shardings): the run's parameters split into trainable and frozen,
    a fresh optimizer state created in its sharded layout. The layers stay stacked unless the
    run treats them differently (`state_specs`): then they are split per layer here."""
    specs = state_specs(spec)
    if is_per_layer(specs):
        abstract = abstract_params(specs, spec.model.storage_dtype, mesh, rules)
        out_sh = jax.tree.map(lambda a: a.sharding, abstract)
        params = jax.jit(unstack, out_shardings=out_sh)(params)
    trainable, frozen = split_params(params, trainable_predicate(spec))
    if not flatten(trainable):
        raise C.ConfigError(f"train.trainable={spec.train.trainable!r} selects no parameter")
    return sharded_state(trainable, frozen, flatten(specs), tx, mesh, rules)


def abstract_state(
    spec: RunSpec, tx: optax.GradientTransformation, mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> tuple[TrainState, TrainState]:
    """Returns (the run's TrainState as ShapeDtypeStructs that carry their shardings, those
    shardings): the restore template of a resume, in the layout of the run's state
    (`state_specs`). Nothing is allocated: the optimizer state's shapes come from
    `jax.eval_shape`, so no device ever holds a whole copy of a tensor the mesh shards."""
    specs = state_specs(spec)
    flat_specs = flatten(specs)
    params = abstract_params(specs, spec.model.storage_dtype, mesh, rules)
    trainable, frozen = split_params(params, trainable_predicate(spec))
    if not flatten(trainable):
        raise C.ConfigError(f"train.trainable={spec.train.trainable!r} selects no parameter")
    t_axes = unflatten({p: flat_specs[p].axes for p in flatten(trainable)})
    f_axes = unflatten({p: flat_specs[p].axes for p in flatten(frozen)})
    shardings = state_shardings(tx, trainable, t_axes, frozen, f_axes, mesh, rules)
    opt_state = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
        jax.eval_shape(tx.init, trainable),
        shardings.opt_state,
    )
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=shardings.step)
    state = TrainState(step=step, params=trainable, opt_state=opt_state, frozen=frozen)
    return state, shardings


def sharded_state(
    trainable: Any,
    frozen: Any,
    specs: dict[str, Any],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
) -> tuple[TrainState, TrainState]:
    """Returns (state at step 0, state shardings) for already-sharded parameters: the
    optimizer state is created directly in its sharded layout. `specs` maps every path to its
    ParamSpec (in the parameters' layout)."""
    t_axes = unflatten({p: specs[p].axes for p in flatten(trainable)})
    f_axes = unflatten({p: specs[p].axes for p in flatten(frozen)})
    shardings = state_shardings(tx, trainable, t_axes, frozen, f_axes, mesh, rules)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(trainable)
    step = jax.device_put(jnp.zeros((), jnp.int32), NamedSharding(mesh, PartitionSpec()))
    return TrainState(step=step, params=trainable, opt_state=opt_state, frozen=frozen), shardings


def build_mesh(spec: RunSpec) -> Mesh:
    """Returns the run's mesh (MeshError naming the mesh fields when it does not fit)."""
    return make_mesh(spec.mesh.data, spec.mesh.fsdp, spec.mesh.tensor)
