"""What every experiment runner shares: stage training configs, running (or resuming) a stage,
evaluation of a stage's model, and results / report files."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from jaxknow import config as C
from jaxknow.data.jsonl import atomic_path, read_jsonl
from jaxknow.io.metrics import read_metrics
from jaxknow.model.lora import resolve_targets
from jaxknow.train.loop import Evaluator, TrainResult, train

# The training-config sections a stage fills, by section name (as in launch.train's configs).
STAGE_SECTIONS: dict[str, type] = {
    "optim": C.OptimConfig,
    "train": C.LoopConfig,
    "data": C.BatchConfig,
}


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Settings of one training stage (pretraining, finetuning, ...): the optimiser, loop and
    batching sections of its training config, each checked by its own dataclass.

    A study config names a stage's fields flat (``pretrain.lr``, ``pretrain.batch_size``):
    `parse_stage` puts each in the section that declares it, and ``stage.lr`` reads it back.
    The schedule's length (`optim.total_steps`) is the study's: `stage_config` sets it.
    """

    optim: C.OptimConfig = C.OptimConfig()
    train: C.LoopConfig = C.LoopConfig()
    data: C.BatchConfig = C.BatchConfig(seq_len=256, batch_size=32)
    # Epochs instead of steps: when set, steps = ceil(epochs * documents / batch_size).
    epochs: float | None = None
    # Warmup as a fraction of the schedule's length (overrides warmup_steps when set).
    warmup_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs!r}: must be positive")
        if self.warmup_fraction is not None and not 0 <= self.warmup_fraction <= 1:
            raise ValueError(f"warmup_fraction={self.warmup_fraction!r}: must be in [0, 1]")

    def __getattr__(self, name: str) -> Any:
        """Returns a section's field by its flat name: ``stage.lr`` is ``stage.optim.lr``."""
        section = _home(name)
        if section is None or section not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.__dict__[section], name)


def _home(key: str) -> str | None:
    """Returns the section of STAGE_SECTIONS that declares field `key`, or None."""
    for section, cls in STAGE_SECTIONS.items():
        if key in {f.name for f in dataclasses.fields(cls)}:
            return section
    return None


def _values(obj: Any) -> dict[str, Any]:
    """Returns a dataclass's fields as a dict (tuples as lists, as ConfigDicts hold them)."""
    return {
        f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v
        for f in dataclasses.fields(obj)
    }


def parse_stage(
    values: Mapping[str, Any] | None, name: str, base: StageConfig | None = None
) -> StageConfig:
    """Returns `base` (default: StageConfig()) with the flat stage keys of `values` (``lr``,
    ``steps``, ``batch_size``, ``epochs``, ...) set: each key goes to the section that declares
    it and is checked there. Raises ConfigError naming `name` and the key."""
    base = base or StageConfig()
    own = {
        f.name: getattr(base, f.name)
        for f in dataclasses.fields(StageConfig)
        if f.name not in STAGE_SECTIONS
    }
    parts = {s: _values(getattr(base, s)) for s in STAGE_SECTIONS}
    unknown = []
    for key, value in (C.to_plain(values) or {}).items():
        home = _home(key)
        if key in own:
            own[key] = value
        elif home is not None and key != "total_steps":
            parts[home][key] = value
        else:
            unknown.append(key)
    if unknown:
        known = sorted({*own, *(k for p in parts.values() for k in p)} - {"total_steps"})
        raise C.ConfigError(f"{name}: unexpected keyword(s) {unknown}; known: {known}")
    # Validated against a schedule long enough for the warmup: stage_config clamps it.
    warmup, steps = parts["optim"]["warmup_steps"], parts["train"]["steps"]
    numbers = all(isinstance(x, int) and not isinstance(x, bool) for x in (warmup, steps))
    parts["optim"]["total_steps"] = max(steps, warmup) if numbers else steps
    sections = {}
    for section, cls in STAGE_SECTIONS.items():
        try:
            sections[section] = C.section(cls, parts[section], section)
        except C.ConfigError as e:
            raise C.ConfigError(f"{name}: {str(e).removeprefix(section + '.')}") from None
    return C.section(StageConfig, own, name, **sections)


def parse_modes(values: Any, field: str) -> tuple[str, ...]:
    """Returns the finetuning modes listed in `field` (default: full); raises ConfigError
    naming the field for anything but 'full' and 'lora'."""
    modes = tuple(values or ("full",))
    if set(modes) - {"full", "lora"}:
        raise C.ConfigError(f"{field}={list(modes)}: each must be 'full' or 'lora'")
    return modes


def stage_config(
    exp: Mapping[str, Any],
    stage: StageConfig,
    *,
    sources: Sequence[Mapping[str, Any]],
    data_dir: str | Path,
    steps: int | None = None,
    init_from: str | Path | None = None,
    lora: Mapping[str, Any] | None = None,
    trainable: str = "all",
    forget: Mapping[str, Any] | None = None,
    total_steps: int | None = None,
    seed: int | None = None,
    keep_checkpoints: int = 1,
) -> ConfigDict:
    """Returns the training config of one stage: the experiment's model and mesh sections,
    the stage's optimiser settings, and the given data sources (already materialised)."""
    c = C.base_config()
    c.seed = exp.get("seed", 0) if seed is None else seed
    for k, v in (exp.get("model") or {}).items():
        c.model[k] = v
    for k, v in (exp.get("mesh") or {}).items():
        c.mesh[k] = v
    n = steps if steps is not None else stage.train.steps
    horizon = total_steps or n
    optim = _values(stage.optim)
    del optim["total_steps"]  # the schedule's length is the study's, not the stage's
    optim["warmup_steps"] = (
        math.ceil(stage.warmup_fraction * horizon)
        if stage.warmup_fraction is not None
        else min(stage.optim.warmup_steps, horizon)
    )
    c.optim.update(optim)
    if total_steps is not None:
        c.optim.total_steps = total_steps
    c.train.update(
        dict(
            _values(stage.train),
            steps=n,
            progress=False,
            keep_checkpoints=keep_checkpoints,
            trainable=trainable,
        )
    )
    if init_from is not None:
        c.train.init_from = str(init_from)
    c.data.update(dict(_values(stage.data), dir=str(data_dir), sources=[dict(s) for s in sources]))
    if lora:
        c.lora.update(resolve_targets(lora, C.model_config(c.model.to_dict()).mlp))
    if forget:
        c.forget = ConfigDict(dict(forget))
    return c


def steps_for_epochs(stage: StageConfig, num_docs: int) -> int:
    """Returns the steps of `stage.epochs` passes over `num_docs` documents (one per row)."""
    if stage.epochs is None:
        return stage.train.steps
    return max(1, math.ceil(stage.epochs * num_docs / stage.data.batch_size))


class StageStopped(RuntimeError):
    """A stage stopped before its last step on SIGTERM or SIGINT (its checkpoint is saved):
    the study stops rather than go on with a half-trained model; the same command resumes."""

    def __init__(self, name: str, result: TrainResult) -> None:
        self.interrupted = result.interrupted
        signal = "SIGINT" if result.interrupted else "SIGTERM"
        super().__init__(
            f"stage {name!r} stopped at step {result.final_step} on {signal} "
            f"(checkpoint saved in {result.workdir}); run the same command again "
            f"to resume the study"
        )


def run_stage(
    name: str,
    cfg: ConfigDict,
    workdir: Path,
    log: Any = print,
    evaluate: Evaluator | None = None,
) -> TrainResult:
    """Trains (or resumes, or finds finished) the stage `name` in `workdir`; returns its
    TrainResult with `metrics` (training rows) and `eval_metrics` (the rows of `evaluate`, run
    every `train.eval_every` steps) read back from metrics.jsonl (the whole trajectory). Raises
    StageStopped when a signal stopped the stage early."""
    log(f"[{name}] training in {workdir}")
    result = train(cfg, workdir) if evaluate is None else train(cfg, workdir, evaluate=evaluate)
    if result.preempted or result.interrupted:
        raise StageStopped(name, result)
    if (workdir / "metrics.jsonl").exists():
        rows = read_metrics(workdir / "metrics.jsonl")
        result.metrics = [r for r in rows if "loss" in r]
        result.eval_metrics = [r for r in rows if any(k.startswith("eval/") for k in r)]
    last = result.metrics[-1]["loss"] if result.metrics else float("nan")
    log(f"[{name}] step {result.final_step}, final loss {last:.4f}")
    return result


def read_events(workdir: Path) -> list[dict[str, Any]]:
    """Returns the rows of a run's events.jsonl (parameter resets), or []."""
    f = workdir / "events.jsonl"
    return read_jsonl(f) if f.is_file() else []


def write_json(path: Path, obj: Any) -> None:
    """Writes JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=_jsonable))


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)


def write_text(path: Path, text: str) -> None:
    """Writes a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
