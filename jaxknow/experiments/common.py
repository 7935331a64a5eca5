"""What every experiment runner shares: stage settings and the training run of a stage,
running (or resuming) it, and results / report files."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from jaxknow import config as C
from jaxknow.data.jsonl import atomic_path, read_jsonl
from jaxknow.io.metrics import read_metrics
from jaxknow.model.config import ModelConfig
from jaxknow.model.lora import LoraConfig
from jaxknow.train.forgetting import ForgetConfig
from jaxknow.train.loop import Evaluator, TrainResult, train
from jaxknow.train.setup import RunSpec


@dataclasses.dataclass(frozen=True)
class StageConfig(C.OptimSettings, C.LoopConfig, C.BatchConfig):
    """Settings of one training stage of a study (pretraining, finetuning, ...): the optimiser
    (`config.OptimSettings`), loop (`config.LoopConfig`) and batching (`config.BatchConfig`)
    settings of its training run, inherited from the dataclasses that declare them, so a study
    config names them flat (``pretrain.lr``, ``pretrain.batch_size``) and `stage_spec` puts
    each back in its section. The schedule's length is the study's: `stage_spec` sets it.
    """

    seq_len: int = 256  # a stage's own defaults
    batch_size: int = 32
    # Epochs instead of steps: when set, steps = ceil(epochs * documents / batch_size).
    epochs: float | None = None
    # Warmup as a fraction of the schedule's length (overrides warmup_steps when set).
    warmup_fraction: float | None = None

    def __post_init__(self) -> None:
        for section in (C.OptimSettings, C.LoopConfig, C.BatchConfig):
            section.__post_init__(self)
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs!r}: must be positive")
        if self.warmup_fraction is not None and not 0 <= self.warmup_fraction <= 1:
            raise ValueError(f"warmup_fraction={self.warmup_fraction!r}: must be in [0, 1]")


#: The finetuning modes of a study: every parameter, or LoRA adapters only.
FinetuneMode = Literal["full", "lora"]


def _section(stage: StageConfig, cls: type) -> dict[str, Any]:
    """Returns the values of `stage` for the fields dataclass `cls` declares."""
    return {f.name: getattr(stage, f.name) for f in dataclasses.fields(cls)}


def stage_spec(
    model: ModelConfig,
    mesh: C.MeshConfig,
    stage: StageConfig,
    *,
    seed: int,
    sources: Sequence[Mapping[str, Any]],
    data_dir: str | Path,
    steps: int | None = None,
    init_from: str | Path | None = None,
    lora: LoraConfig | None = None,
    trainable: str = "all",
    forget: ForgetConfig | None = None,
    total_steps: int | None = None,
    keep_checkpoints: int = 1,
) -> RunSpec:
    """Returns the training run of one stage: the study's model, mesh and seed, the stage's
    optimiser, loop and batching settings (`steps` instead of the stage's own when given; a
    schedule of `total_steps`, default the run's steps; `warmup_fraction` of it when set),
    and the given data sources (already materialised)."""
    n = steps if steps is not None else stage.steps
    horizon = total_steps or n
    warmup = (
        math.ceil(stage.warmup_fraction * horizon)
        if stage.warmup_fraction is not None
        else min(stage.warmup_steps, horizon)
    )
    return RunSpec(
        seed=seed,
        model=model,
        mesh=mesh,
        optim=C.OptimConfig(
            **dict(_section(stage, C.OptimSettings), warmup_steps=warmup),
            total_steps=total_steps,
        ),
        train=C.TrainConfig(
            **dict(_section(stage, C.LoopConfig), steps=n),
            progress=False,
            keep_checkpoints=keep_checkpoints,
            trainable=trainable,
            init_from=None if init_from is None else str(init_from),
        ),
        data=C.DataConfig(
            **_section(stage, C.BatchConfig),
            dir=str(data_dir),
            sources=tuple(dict(s) for s in sources),
        ),
        lora=lora or LoraConfig(),
        forget=forget,
    )


def steps_for_epochs(stage: StageConfig, num_docs: int) -> int:
    """Returns the steps of `stage.epochs` passes over `num_docs` documents (one per row)."""
    if stage.epochs is None:
        return stage.steps
    return max(1, math.ceil(stage.epochs * num_docs / stage.batch_size))


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
    spec: RunSpec,
    workdir: Path,
    log: Any = print,
    evaluate: Evaluator | None = None,
) -> TrainResult:
    """Trains (or resumes, or finds finished) the stage `name` in `workdir`; returns its
    TrainResult with `metrics` (training rows) and `eval_metrics` (the rows of `evaluate`, run
    every `train.eval_every` steps) read back from metrics.jsonl (the whole trajectory). Raises
    StageStopped when a signal stopped the stage early."""
    log(f"[{name}] training in {workdir}")
    result = train(spec, workdir) if evaluate is None else train(spec, workdir, evaluate=evaluate)
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
