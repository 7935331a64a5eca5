"""Typed views of ml_collections experiment configs, validated up front.

An experiment config is a `ConfigDict` with sections (`model`, `mesh`, `optim`, `train`,
`data`, `lora`, ...). Each section is turned into a frozen dataclass here; unknown keys and bad
values raise ConfigError naming the field (e.g. ``train.grad_accum``).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from jaxknow.errors import check_choices
from jaxknow.model.config import ModelConfig, ModelConfigError, preset


class ConfigError(ValueError):
    """An experiment config has an unknown key or a bad value; the message names the field."""


def to_plain(x: Any) -> Any:
    """Returns ConfigDicts / FrozenConfigDicts as plain dicts (recursively), lists as lists."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_plain(v) for v in x]
    return x


def _check_type(value: Any, tp: Any, where: str) -> Any:
    # Literal fields pass through: each dataclass checks them itself (errors.check_choices).
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}={value!r}: bad value")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}={value!r}: must be a list")
        args = typing.get_args(tp)
        elem = args[0] if args else Any
        return tuple(_check_type(v, elem, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict or origin is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}={value!r}: must be a mapping")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}={value!r}: must be a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}={value!r}: must be an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}={value!r}: must be true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r}: must be a string")
        return value
    return value


def section(cls: type, values: Mapping[str, Any] | None, name: str, **extra: Any) -> Any:
    """Returns dataclass `cls` built from a config section, checking keys and types.

    Raises ConfigError naming ``name.key`` for an unknown key, a wrong type, or a value the
    dataclass itself rejects.
    """
    values = dict(to_plain(values) or {})
    values.update(extra)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {unknown}; known: {sorted(fields)}")
    typed = {k: _check_type(v, hints[k], f"{name}.{k}") for k, v in values.items()}
    try:
        return cls(**typed)
    except (ModelConfigError, OptimConfigError, ConfigError) as e:
        raise ConfigError(str(e)) from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{name}: {e}") from None


def model_config(values: Mapping[str, Any]) -> ModelConfig:
    """Returns the ModelConfig of a `model` section: an optional `preset` plus field overrides."""
    values = {k: v for k, v in (to_plain(values) or {}).items() if v is not None}
    name = values.pop("preset", None)
    base: dict[str, Any] = {}
    if name is not None:
        try:
            base = preset(name).to_dict()
        except ModelConfigError as e:
            raise ConfigError(str(e)) from None
    base.update(values)
    return section(ModelConfig, base, "model")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; -1 fills the remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


# How a run starts jax.distributed: "on" calls jax.distributed.initialize().
Distributed = Literal["auto", "on", "off"]
# A non-finite loss or gradient norm: "stop" (no checkpoint of the damaged state) or "skip"
# (drop that update; stop after more than max_skipped).
Nonfinite = Literal["stop", "skip"]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The loop settings one training stage of a study chooses (see TrainConfig)."""

    steps: int = 100
    grad_accum: int = 1
    loss_chunk: int = 0
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end (and on preemption)
    # Run the caller's evaluation (train(..., evaluate=)) every this many steps and at the last
    # step, its scalars logged as "eval/NAME"; 0: never (no cost).
    eval_every: int = 0
    # Optimizer steps per jitted call (a lax.scan over that many batches): the same results as
    # 1, less host work per step (issue 28; docs/lab_notebook.md P4). Evaluations, checkpoints,
    # resets and halt_at stay on their steps; a signal is acted on after the call.
    steps_per_call: int = 1

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ConfigError(f"train.{field}={getattr(self, field)!r}: {why}")

        check_choices(self, "train", ConfigError)
        if self.steps <= 0:
            bad("steps", "must be positive")
        for f in ("grad_accum", "log_every", "steps_per_call"):
            if getattr(self, f) <= 0:
                bad(f, "must be positive")
        if self.loss_chunk < 0:
            bad("loss_chunk", "must be >= 0")
        if self.checkpoint_every < 0:
            bad("checkpoint_every", "must be >= 0")
        if self.eval_every < 0:
            bad("eval_every", "must be >= 0 (0: no evaluation during training)")


@dataclasses.dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """Loop settings of a training run: LoopConfig's plus those of the run as a whole."""

    keep_checkpoints: int = 3
    async_checkpoint: bool = True
    progress: bool = True
    tensorboard: bool = True
    # Stop (with a checkpoint) once this step is reached: time-sliced jobs, tests.
    halt_at: int | None = None
    # Start from the parameters of this checkpoint (a workdir, a checkpoints dir or a step dir).
    init_from: str | None = None
    # Where checkpoints go (default WORKDIR/checkpoints); on a multi-host pod, storage every
    # host reaches, e.g. gs://bucket/run.
    checkpoint_dir: str | None = None
    # Which parameters train: "all", "lora" (adapters only) or a regex over parameter paths.
    trainable: str = "all"
    peak_tflops: float | None = None  # per device, for MFU; None: known accelerators only
    preemption_check_every: int = 1
    distributed: Distributed = "auto"
    nonfinite: Nonfinite = "stop"
    max_skipped: int = 100
    # Resume from this checkpoint step (newer steps are set aside); None: the newest intact.
    resume_step: int | None = None

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ConfigError(f"train.{field}={getattr(self, field)!r}: {why}")

        super().__post_init__()
        for f in ("keep_checkpoints", "preemption_check_every"):
            if getattr(self, f) <= 0:
                bad(f, "must be positive")
        if self.halt_at is not None and not 0 < self.halt_at <= self.steps:
            bad("halt_at", f"must be in (0, steps={self.steps}]")
        if self.max_skipped < 0:
            bad("max_skipped", "must be >= 0")
        if self.resume_step is not None and self.resume_step <= 0:
            bad("resume_step", "must be positive")


# How documents become fixed-length rows (jaxknow.data.pipeline): concat splits them across
# rows; first_fit keeps each whole; pad puts one per row.
Packing = Literal["concat", "first_fit", "pad"]


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """How documents are batched: the data settings one training stage of a study chooses."""

    seq_len: int = 128
    batch_size: int = 8  # global, across processes
    packing: Packing = "concat"
    # False: a token attends only within its own document (segment masks, positions from 0
    # per document). True: within its whole row, as in GPT-style packing, so a document is
    # read after whatever documents precede it in the row.
    cross_document_attention: bool = False

    def __post_init__(self) -> None:
        check_choices(self, "data", ConfigError)
        for f in ("seq_len", "batch_size"):
            if getattr(self, f) <= 0:
                raise ConfigError(f"data.{f}={getattr(self, f)!r}: must be positive")


@dataclasses.dataclass(frozen=True)
class DataConfig(BatchConfig):
    """Where training documents come from and how they are batched."""

    sources: tuple[dict, ...] = ()  # [{"name": ..., "weight": ...}]
    dir: str | None = None  # default: WORKDIR/data
    num_epochs: int | None = None
    workers: int = 0
    seed: int | None = None  # default: the config's seed
    world: dict | None = None  # what to materialise when `dir` lacks the sources
    # Shards of the global stream (each feeds batch_size / shards rows); default: one per
    # process. Fix it to reproduce a trajectory bit for bit on another number of hosts.
    shards: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sources:
            raise ConfigError("data.sources: at least one source is required")
        for i, s in enumerate(self.sources):
            if "name" not in s:
                raise ConfigError(f"data.sources[{i}]: missing 'name'")
            unknown = set(s) - {"name", "weight"}
            if unknown:
                raise ConfigError(f"data.sources[{i}]: unknown key(s) {sorted(unknown)}")
            if float(s.get("weight", 1.0)) <= 0:
                raise ConfigError(f"data.sources[{i}].weight: must be positive")
        if self.num_epochs is not None and self.num_epochs <= 0:
            raise ConfigError(f"data.num_epochs={self.num_epochs}: must be positive")


class OptimConfigError(ValueError):
    """An optimizer setting is invalid; the message names the field."""


# The learning-rate schedule after the linear warmup.
Schedule = Literal["cosine", "linear", "constant"]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW hyperparameters and the learning-rate schedule."""

    lr: float = 1e-3
    schedule: Schedule = "cosine"
    warmup_steps: int = 0
    total_steps: int = 1000
    end_lr_fraction: float = 0.1  # final lr as a fraction of `lr` (cosine and linear)
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    # Regexes over parameter paths that get no weight decay (norm scales, biases by default).
    no_decay: tuple[str, ...] = (r"norm/", r"/bias$")

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise OptimConfigError(f"optim.{field}={getattr(self, field)!r}: {why}")

        check_choices(self, "optim", OptimConfigError)
        if not self.lr > 0:
            bad("lr", "must be positive")
        if self.total_steps <= 0:
            bad("total_steps", "must be positive")
        if not 0 <= self.warmup_steps <= self.total_steps:
            bad("warmup_steps", f"must be in [0, total_steps={self.total_steps}]")
        if not 0 <= self.end_lr_fraction <= 1:
            bad("end_lr_fraction", "must be in [0, 1]")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        for beta in ("b1", "b2"):
            if not 0 <= getattr(self, beta) < 1:
                bad(beta, "must be in [0, 1)")
        if not self.eps > 0:
            bad("eps", "must be positive")
        if self.grad_clip < 0:
            bad("grad_clip", "must be >= 0")
        for pat in self.no_decay:
            try:
                re.compile(pat)
            except re.error as e:
                raise OptimConfigError(f"optim.no_decay: bad regex {pat!r} ({e})") from None


def optim_config(values: Mapping[str, Any] | None, steps: int) -> OptimConfig:
    """Returns the OptimConfig of an `optim` section (total_steps defaults to train.steps)."""
    values = dict(to_plain(values) or {})
    if values.get("total_steps") is None:
        values["total_steps"] = steps
    return section(OptimConfig, values, "optim")


KNOWN_SECTIONS = ("seed", "model", "mesh", "optim", "train", "data", "lora", "forget", "name")


def _scalar_type(tp: Any) -> Any:
    """Returns the type of a field's values: X of `X | None`, str of a Literal of strings."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = args[0] if args and typing.get_origin(tp) is not typing.Literal else tp
    if typing.get_origin(tp) is typing.Literal:
        return type(typing.get_args(tp)[0])
    return tp


def command_line_any(value: Any) -> Any:
    """Returns `value` in an untyped ml_collections `FieldReference`: a config file may assign
    it any value, and ``--config.KEY=TEXT`` gives the Python literal TEXT stands for (a tuple,
    list, number, ...) or else TEXT itself as a string."""
    from ml_collections import config_dict

    return config_dict.FieldReference(value, field_type=object)


def section_defaults(cls: type, skip: tuple[str, ...] = ()) -> Any:
    """Returns a ConfigDict holding every field of dataclass `cls` with its default, so that
    each can be overridden from the command line (None defaults become typed placeholders).

    Tuple defaults become lists held by an untyped `FieldReference` (`command_line_any`):
    ml_collections cannot override a list field from the command line, and a tuple field would
    refuse a string, while e.g. ``lora.targets`` takes either a preset name
    (``--config.lora.targets=all-linear``) or a tuple (``--config.lora.targets='("q","v")'``).
    The dataclass checks the value when the section is parsed.
    """
    from ml_collections import ConfigDict, config_dict

    hints = typing.get_type_hints(cls)
    out = ConfigDict()
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        tp = _scalar_type(hints[f.name])
        if value is None and tp in (int, float, str, bool):
            value = config_dict.placeholder(tp)
        elif isinstance(value, tuple):
            value = command_line_any(list(value))
        setattr(out, f.name, value)
    return out


def base_config() -> Any:
    """Returns a config with every section and field of a training run at its default.

    Experiment configs start from this and change what they need; any field can then be set
    with ``--config.SECTION.FIELD=VALUE``.
    """
    from ml_collections import ConfigDict, config_dict

    from jaxknow.model.lora import LoraConfig

    c = ConfigDict()
    c.seed = 0
    model = ConfigDict()
    model.preset = config_dict.placeholder(str)
    hints = typing.get_type_hints(ModelConfig)
    for f in dataclasses.fields(ModelConfig):
        tp = _scalar_type(hints[f.name])
        model[f.name] = config_dict.placeholder(tp) if tp in (int, float, str, bool) else None
    c.model = model
    c.mesh = section_defaults(MeshConfig)
    c.optim = section_defaults(OptimConfig)
    c.optim.total_steps = config_dict.placeholder(int)  # default: train.steps
    c.train = section_defaults(TrainConfig)
    c.data = section_defaults(DataConfig)
    c.lora = section_defaults(LoraConfig)
    return c


def check_top_level(
    config: Any, extra: tuple[str, ...] = (), known: tuple[str, ...] = KNOWN_SECTIONS
) -> None:
    """Raises ConfigError for top-level keys no consumer knows (`known` plus `extra`)."""
    unknown = sorted(set(to_plain(config)) - set(known) - set(extra))
    if unknown:
        raise ConfigError(f"config: unknown top-level key(s) {unknown}; known: {[*known, *extra]}")
