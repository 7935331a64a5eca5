"""Evaluate a checkpoint: ``python -m launch.evaluate --config=configs/eval/NAME.py
--workdir=DIR [--step=N] [--out=FILE.json] [--config.eval.KEY=VALUE ...]``.

Loads the latest (or the named) checkpoint of DIR with its tokenizer, reads the subsets named in
the config's ``eval`` section (JSONL files, by default ``DIR/data/eval_<name>.jsonl``), evaluates
them (`jaxknow.eval.tasks`), writes the results JSON atomically (default
``DIR/eval/results_step<N>.json``) and prints a table. A missing checkpoint or subset file is
reported in one line with exit code 2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from absl import flags
from ml_collections import config_flags

from launch.common import run_app, run_main

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Evaluation config file (.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training directory holding checkpoints/.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Results JSON (default: WORKDIR/eval/results_stepN.json).")
flags.mark_flags_as_required(["config", "workdir"])


def format_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Returns the metrics as a plain-text table: one row per subset, one column per metric
    (metrics a subset lacks are left blank)."""
    columns: list[str] = []
    for m in metrics.values():
        columns += [k for k in m if k not in columns and k != "n"]
    columns.append("n")
    width = max([len("subset")] + [len(n) for n in metrics])
    widths = [max(len(c), 7) for c in columns]
    head = "subset".ljust(width) + "".join(f"  {c:>{w}}" for c, w in zip(columns, widths))
    lines = [head, "-" * len(head)]
    for name, m in metrics.items():
        cells = []
        for c in columns:
            v = m.get(c)
            cells.append("" if v is None else f"{int(v)}" if c == "n" else f"{v:.4f}")
        lines.append(name.ljust(width) + "".join(f"  {x:>{w}}" for x, w in zip(cells, widths)))
    return "\n".join(lines)


def _finite(x: Any) -> Any:
    """Returns x with non-finite floats replaced by None (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def check_writable(directory: Path) -> None:
    """Raises OSError naming `directory` when a results file cannot be written there (it is
    created if missing)."""
    import tempfile

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
        pass


def evaluate(
    config: Any, workdir: str | Path, step: int | None = None, out: str | Path | None = None
) -> dict[str, Any]:
    """Evaluates the checkpoint of `workdir` as `config` says; returns the results dict that
    was written to `out` (default ``workdir/eval/results_step<N>.json``)."""
    from jaxknow.config import parse, to_plain
    from jaxknow.data.jsonl import atomic_path
    from jaxknow.eval.tasks import (
        EvaluationConfig,
        evaluate_subsets_detailed,
        load_subsets,
        subset_paths,
    )
    from jaxknow.io.load import load_model
    from jaxknow.parallel.mesh import make_mesh

    values = to_plain(config)
    cfg = parse(EvaluationConfig, values)
    ecfg, mcfg = cfg.eval, cfg.mesh
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"--workdir {workdir} does not exist")
    paths = subset_paths(ecfg, workdir)
    subsets = load_subsets(paths, ecfg.kinds)  # before the model: fail fast on a bad file
    check_writable(Path(out).parent if out else workdir / "eval")  # before computing
    mesh = make_mesh(mcfg.data, mcfg.fsdp, mcfg.tensor)
    model = load_model(workdir, mesh=mesh, step=step, dtype=ecfg.dtype)
    if model.tokenizer is None:
        raise FileNotFoundError(f"no tokenizer.json in {workdir} or {workdir / 'data'}")
    res = evaluate_subsets_detailed(
        model,
        subsets,
        ecfg.kinds,
        ecfg.shots(),
        ecfg.seed,
        ecfg.max_new_tokens,
        ecfg.batch_size,
        mc_mode=ecfg.mc_mode,
        mesh=mesh,
        bos=ecfg.bos,
    )
    ckpt_step = int(model.meta.get("step", step if step is not None else 0))
    result: dict[str, Any] = {
        "step": ckpt_step,
        "workdir": str(workdir.absolute()),
        "config": dict(values["eval"], subsets=list(ecfg.subsets)),
        "files": {n: str(p) for n, p in paths.items()},
        "results": res.metrics,
    }
    if ecfg.save_predictions:
        result["predictions"] = res.predictions
    out_path = Path(out) if out else workdir / "eval" / f"results_step{ckpt_step}.json"
    with atomic_path(out_path) as tmp:
        tmp.write_text(json.dumps(_finite(result), indent=1, ensure_ascii=False) + "\n")
    result["out"] = str(out_path)
    return result


def main(argv: list[str]) -> None:
    """Runs the evaluation named by the flags and prints the table."""
    del argv

    def go() -> None:
        result = evaluate(_CONFIG.value, _WORKDIR.value, _STEP.value, _OUT.value)
        print(f"step {result['step']} of {result['workdir']}")
        print(format_table(result["results"]))
        print(f"wrote {result['out']}")

    run_main(go)


if __name__ == "__main__":
    run_app(main)
