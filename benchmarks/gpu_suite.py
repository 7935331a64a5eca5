"""The GPU benchmark suite in one call: every figure of the performance issue, one table.

Runs, one after the other on the same GPU, each in its own process under a time budget
(the whole suite fits 580 s, under a 10-minute command, on one H100/H200; `--budget` caps the
total):

  anchor      PyTorch HF GPT-2 small, 96 x 512, bf16, fused AdamW, torch.compile
              (`shared/bench/torch_gpt2_baseline.py 96`)
  gpt2        jaxknow gpt2-small-rope at the same shape, bf16, a few lever sets
              (`benchmarks/bench_train.py`; loss_chunk, remat=dots, attention_impl)
  llama-1b    jaxknow llama-1b step at 8 x 2048 (`bench_train.py`)
  generation  greedy QA generation vs `transformers.generate` (`bench_generation.py`)
  smollm2-*   the 135M pretrained shape (SmolLM2-135M, random weights): full and LoRA-64
              (rsLoRA, all projections) finetuning at 64 x 512 bf16 (`bench_train.py`),
              greedy generation vs `transformers.generate` (`bench_generation.py`)
  pipeline    the grain pipeline's tokens/s vs the trainer's (`bench_pipeline.py`)
  quickstart  `launch.experiment --config=configs/bios/quickstart.py` (its GPU default) with a
              step cap; tokens/s and MFU from the pretraining metrics.jsonl

and prints ONE markdown table (rate, MFU, ratio, peak GiB, wall seconds) to stdout; progress
and the pieces' logs go to stderr and `--logdir`. `--dry_run` runs every piece on the CPU at
tiny shapes (the CPU PyTorch anchor `torch_cpu_small.py`), as the test suite does.

    python benchmarks/gpu_suite.py [--only gpt2,anchor] [--budget 480] [--out table.md]
    python benchmarks/gpu_suite.py --dry_run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from bench_loop import write_config  # noqa: E402
from bench_train import find_shared_script  # noqa: E402

#: Issue targets printed under the table.
TARGETS = (
    "targets: jaxknow gpt2-small-rope >= 45 % MFU and >= 1.6x the anchor's tokens/s; "
    "generation >= 10x transformers.generate; pipeline >= 5x the trainer's tokens/s"
)


@dataclasses.dataclass
class Row:
    """One line of the suite's table."""

    piece: str
    what: str
    rate: float | None = None
    unit: str = "tokens/s"
    mfu: float | None = None
    ratio: float | None = None
    ratio_to: str = ""
    peak_gib: float | None = None
    wall_s: float | None = None
    note: str = ""


@dataclasses.dataclass
class Piece:
    """One benchmark of the suite: how to run it (argv) and how to read its results."""

    name: str
    budget_s: float
    argv: Callable[[Path], list[str]]
    parse: Callable[[Path, str], list[Row]]
    env: dict[str, str] = dataclasses.field(default_factory=dict)


def _bench(script: str) -> list[str]:
    return [sys.executable, str(HERE / script)]


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def parse_anchor(out: str) -> Row:
    """Returns the anchor's row from the PyTorch script's output line."""
    line = next((ln for ln in out.splitlines() if "tokens/s" in ln), "")
    tps = re.search(r"([\d,]+) tokens/s", line)
    mfu = re.search(r"MFU ([\d.]+)%", line)
    peak = re.search(r"peak mem ([\d.]+) GiB", line)
    if not tps:
        raise ValueError("no 'tokens/s' in the anchor's output")
    return Row(
        "anchor",
        "PyTorch HF GPT-2" + (" + torch.compile" if "compile True" in line else " eager"),
        rate=float(tps.group(1).replace(",", "")),
        mfu=float(mfu.group(1)) / 100 if mfu else None,
        peak_gib=float(peak.group(1)) if peak else None,
    )


def train_piece(name: str, budget: int, args: list[str], what: str) -> Piece:
    """Returns the piece that runs `bench_train.py` with `args` and reports its rows as
    `what` (the figures go through the piece's own out.json)."""
    return Piece(
        name,
        budget,
        lambda d: [*_bench("bench_train.py"), *args, "--json", str(d / "out.json")],
        lambda d, out: train_rows(name, what, json.loads((d / "out.json").read_text())),
    )


def train_rows(piece: str, what: str, data: dict[str, Any]) -> list[Row]:
    """Returns one row per variant of a `bench_train.py --json` file."""
    rows = []
    for r in data["rows"]:
        mem = r.get("peak_bytes") or r.get("compiled_bytes")
        rows.append(
            Row(
                piece,
                f"{what} {r['batch']}x{r['seq_len']} [{r['label']}]",
                rate=r["tokens_per_s"],
                mfu=r.get("mfu"),
                peak_gib=mem / 2**30 if mem else None,
                note=f"compile {r.get('compile_s', 0):.0f} s",
            )
        )
    for why in data.get("failed", []):
        rows.append(Row(piece, f"{what}: a variant failed", note=" ".join(why.split())[:200]))
    return rows


def quickstart_rows(workdir: Path, steps: int) -> list[Row]:
    """Returns the quickstart's row: median tokens/s and MFU of its pretraining stages."""
    tps, mfu = [], []
    for path in sorted(glob.glob(str(workdir / "pretrain_*" / "metrics.jsonl"))):
        rows = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
        rows = [r for r in rows if "tokens_per_s" in r]
        rows = rows[1:] or rows  # the first includes warm-up
        tps += [r["tokens_per_s"] for r in rows]
        mfu += [r["mfu"] for r in rows if "mfu" in r]
    if not tps:
        raise ValueError(f"{workdir}/pretrain_*/metrics.jsonl: no tokens_per_s rows")
    done = (workdir / "results.json").is_file()
    return [
        Row(
            "quickstart",
            f"bioS quickstart, pretraining capped at {steps} steps",
            rate=_median(tps),
            mfu=_median(mfu),
            note="all stages done" if done else "results.json missing",
        )
    ]


def generation_piece(name: str, budget: int, args: list[str], what: str) -> Piece:
    """Returns the piece that runs `bench_generation.py` with `args` (jaxknow's greedy
    generation vs `transformers.generate`) and reports questions/s of `what`."""

    def rows(d: Path, out: str) -> list[Row]:
        r = json.loads((d / "out.json").read_text())
        return [
            Row(
                name,
                f"greedy QA generation, {what}",
                rate=r["jaxknow_questions_per_s"],
                unit="questions/s",
                ratio=r.get("speedup"),
                ratio_to="transformers.generate",
                note=(
                    f"transformers {r['hf_questions_per_s']:.1f} q/s"
                    if "hf_questions_per_s" in r
                    else "transformers skipped"
                ),
            )
        ]

    return Piece(
        name,
        budget,
        lambda d: [*_bench("bench_generation.py"), *args, "--json", str(d / "out.json")],
        rows,
    )


#: The batch shape of every dry-run `bench_train.py` piece (tiny, float32 on the CPU).
DRY_TRAIN_SHAPE = ["--batch", "2", "--seq_len", "16", "--dtype", "float32"]
#: The question shape of every dry-run `bench_generation.py` piece.
DRY_GENERATION = (
    ["--num_questions", "4", "--batch_size", "4"]
    + ["--prompt_len", "4"]
    + ["--max_new_tokens", "2"]
)
#: The CPU anchor's flags in the dry run (a 1-layer GPT-2 of width 32).
DRY_ANCHOR = (
    ["--batch", "2", "--seq", "16", "--d", "32"]
    + ["--layers", "1", "--heads", "2", "--vocab", "128"]
    + ["--steps", "2"]
)


def anchor_script(dry: bool, anchor: str | None) -> Path | None:
    """Returns the PyTorch anchor script: `anchor`, else shared/bench/torch_cpu_small.py (when
    `dry`) or torch_gpt2_baseline.py found above the checkout; None when not found."""
    if anchor:
        return Path(anchor)
    return find_shared_script("torch_cpu_small.py" if dry else "torch_gpt2_baseline.py")


def anchor_argv(script: Path | None, dry: bool) -> list[str]:
    """Returns the anchor's command line (the tiny CPU shape when `dry`, else batch 96); raises
    FileNotFoundError when `script` is missing."""
    if script is None or not script.is_file():
        raise FileNotFoundError(
            f"anchor script {script or 'shared/bench/torch_*.py'}"
            f" not found (above {REPO}); pass --anchor PATH"
        )
    return [sys.executable, str(script), *(DRY_ANCHOR if dry else ["96"])]


def anchor_piece(dry: bool, anchor: str | None) -> Piece:
    """Returns the PyTorch anchor's piece: HF GPT-2 small at 96 x 512 (the tiny CPU script when
    `dry`); `anchor` is the script's path (default: found above the checkout)."""
    script = anchor_script(dry, anchor)
    return Piece(
        "anchor", 75, lambda d: anchor_argv(script, dry), lambda d, out: [parse_anchor(out)]
    )


def gpt2_train_args(dry: bool) -> list[str]:
    """Returns `bench_train.py` flags of the GPT-2 piece: gpt2-small-rope at the anchor's shape
    (96 x 512 bf16, in isolated processes) with three lever sets, or the tiny preset when
    `dry`."""
    if dry:
        steps = ["--steps", "2", "--warmup", "1", "--variant", "loss_chunk=8"]
        return ["--preset", "tiny", *DRY_TRAIN_SHAPE, *steps]
    return (
        ["--preset", "gpt2-small-rope", "--batch", "96", "--seq_len", "512", "--dtype", "bfloat16"]
        + ["--steps", "10", "--warmup", "2", "--isolate"]
        + ["--variant", "loss_chunk=128", "--variant", "loss_chunk=128,remat=dots"]
        + ["--variant", "loss_chunk=128,attention_impl=xla"]
    )


def llama_train_args(dry: bool) -> list[str]:
    """Returns `bench_train.py` flags of the llama-1b piece (8 x 2048 bf16, remat=dots, chunked
    loss), or the tiny-llama preset when `dry`."""
    if dry:
        return ["--preset", "tiny-llama", *DRY_TRAIN_SHAPE, "--steps", "1", "--warmup", "1"]
    return (
        ["--preset", "llama-1b", "--batch", "8", "--seq_len", "2048", "--dtype", "bfloat16"]
        + ["--remat", "dots", "--loss_chunk", "256"]
        + ["--steps", "5", "--warmup", "2"]
    )


def training_pieces(dry: bool) -> list[Piece]:
    """Returns the training-shape pieces: jaxknow gpt2-small-rope (measured against the anchor)
    and a llama-1b step, each its own `bench_train.py` process."""
    gpt2_what = "jaxknow " + ("tiny" if dry else "gpt2-small-rope")
    llama_what = "jaxknow " + ("tiny-llama" if dry else "llama-1b")
    return [
        train_piece("gpt2", 170, gpt2_train_args(dry), gpt2_what),
        train_piece("llama-1b", 70, llama_train_args(dry), llama_what),
    ]


def gpt2_generation_piece(dry: bool) -> Piece:
    """Returns the generation piece: gpt2-small greedy QA generation (bf16, 1024 questions)
    vs `transformers.generate`, the tiny preset when `dry`."""
    args = (
        ["--preset", "tiny", *DRY_GENERATION]
        if dry
        else ["--preset", "gpt2-small", "--dtype", "bfloat16", "--num_questions", "1024"]
    )
    return generation_piece("generation", 45, args, "tiny" if dry else "gpt2-small")


#: A SmolLM2-shaped model small enough for the dry run (2 layers, GQA 4:2, tied embeddings).
SMOLLM2_DRY = "n_layers=2,d_model=64,n_heads=4,n_kv_heads=2,d_ff=128,vocab_size=512"


def smollm2_train_args(dry: bool, lora: int) -> list[str]:
    """Returns `bench_train.py` flags of the 135M pretrained shape (SmolLM2-135M, random
    weights) at a GPU-sized batch, full finetuning or rank-`lora` rsLoRA on every projection
    (tiny widths on the CPU when `dry`)."""
    shape = (
        ["--model", SMOLLM2_DRY, *DRY_TRAIN_SHAPE]
        if dry
        else ["--batch", "64", "--seq_len", "512", "--dtype", "bfloat16", "--loss_chunk", "128"]
    )
    steps = ["--steps", "1", "--warmup", "1"] if dry else ["--steps", "10", "--warmup", "2"]
    return ["--preset", "smollm2-135m", *shape, *steps, *(["--lora", str(lora)] if lora else [])]


def smollm2_pieces(dry: bool) -> list[Piece]:
    """Returns the pieces of the workload users now run, the 135M pretrained shape: full and
    LoRA-64 finetuning steps, greedy generation vs `transformers.generate` (each its own
    process)."""
    what = "jaxknow smollm2-135m" + (" (dry: 2 layers, d64)" if dry else "")
    gen = (
        ["--preset", "tiny-llama", *DRY_GENERATION]
        if dry
        else ["--preset", "smollm2-135m", "--dtype", "bfloat16", "--num_questions", "512"]
    )
    return [
        train_piece("smollm2-full", 35, smollm2_train_args(dry, 0), what + " full finetune"),
        train_piece("smollm2-lora", 35, smollm2_train_args(dry, 64), what + " LoRA-64 (rsLoRA)"),
        generation_piece("smollm2-gen", 30, gen, "tiny-llama" if dry else "smollm2-135m"),
    ]


def pipeline_rows(d: Path, out: str) -> list[Row]:
    """Returns the pipeline's row (bioS concat packing tokens/s) from the piece's out.json."""
    r = json.loads((d / "out.json").read_text())
    concat = r["bios_multi5_permute_fullname/concat"]
    return [
        Row(
            "pipeline",
            f"grain bioS concat packing {concat['batch']}x"
            f"{concat['seq_len']}, {concat['workers']} workers",
            rate=concat["tokens_per_s"],
        )
    ]


def pipeline_piece(dry: bool) -> Piece:
    """Returns the piece that runs `bench_pipeline.py` (the grain pipeline's tokens/s, 5000
    people and 8 workers; 40 people, tiny batches when `dry`) on a world in its folder."""
    args = (
        ["--num_people", "40", "--batches", "2", "--batch", "2", "--seq_len", "32"]
        + ["--vocab_size", "512"]
        if dry
        else ["--num_people", "5000", "--workers", "8", "--batches", "30"]
    )
    return Piece(
        "pipeline",
        35,
        lambda d: (
            [*_bench("bench_pipeline.py"), *args]
            + ["--data_dir", str(d / "world"), "--json", str(d / "out.json")]
        ),
        pipeline_rows,
    )


#: Quickstart overrides of the dry run: a 1-layer model of width 32 on 40 people, tiny batches.
QUICKSTART_DRY: dict[str, Any] = {
    "world.num_people": 40,
    "model.d_model": 32,
    "model.n_layers": 1,
    "model.n_heads": 2,
    "model.d_ff": 64,
    "pretrain.batch_size": 4,
    "pretrain.seq_len": 32,
    "pretrain.warmup_steps": 1,
    "pretrain.log_every": 1,
    "finetune.batch_size": 4,
    "finetune.warmup_steps": 1,
    "finetune.log_every": 1,
    "eval.max_people": 4,
    "eval.max_new_tokens": 4,
    "eval.batch_size": 4,
}


def quickstart_overrides(dry: bool, steps: int) -> dict[str, Any]:
    """Returns the quickstart's config overrides: pretraining capped at `steps`, finetuning at
    100 steps (2 when `dry`, with the tiny shapes of QUICKSTART_DRY), probing off."""
    over: dict[str, Any] = {
        "pretrain.steps": steps,
        "finetune.steps": 2 if dry else 100,
        "probing.enabled": False,
    }
    if dry:
        over.update(QUICKSTART_DRY)
    return over


def quickstart_argv(d: Path, overrides: dict[str, Any]) -> list[str]:
    """Writes the quickstart config with `overrides` to `d`; returns the `launch.experiment`
    command line that runs it into d/run."""
    d.mkdir(parents=True, exist_ok=True)
    conf = write_config(
        str(REPO / "configs" / "bios" / "quickstart.py"), overrides, d / "quickstart_capped.py"
    )
    return [sys.executable, "-m", "launch.experiment", f"--config={conf}", f"--workdir={d / 'run'}"]


def quickstart_piece(dry: bool) -> Piece:
    """Returns the piece that runs the bioS quickstart (its GPU default, pretraining capped at
    300 steps; 4 steps at tiny shapes when `dry`) and reads its pretraining metrics."""
    steps = 4 if dry else 300
    over = quickstart_overrides(dry, steps)
    return Piece(
        "quickstart",
        85,
        lambda d: quickstart_argv(d, over),
        lambda d, out: quickstart_rows(d / "run", steps),
    )


def make_pieces(dry: bool, anchor: str | None = None) -> list[Piece]:
    """Returns the suite's pieces: GPU shapes, or tiny CPU shapes when `dry`. `anchor` is the
    PyTorch script (default: shared/bench/torch_{gpt2_baseline,cpu_small}.py found above the
    checkout)."""
    return [
        anchor_piece(dry, anchor),
        *training_pieces(dry),
        gpt2_generation_piece(dry),
        *smollm2_pieces(dry),
        pipeline_piece(dry),
        quickstart_piece(dry),
    ]


def run_piece(p: Piece, workdir: Path, timeout: float, env: dict[str, str]) -> list[Row]:
    """Runs one piece in a subprocess under `timeout` seconds; returns its rows (a row with
    the failure in its note when it fails or runs out of time)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "log.txt"
    t0 = time.perf_counter()
    try:
        argv = p.argv(workdir)
    except (OSError, ValueError) as e:
        return [Row(p.name, p.name, note=f"not run: {e}")]
    with log.open("w") as f:
        f.write(" ".join(argv) + "\n")
        f.flush()
        # Its own process group, so a time-out also stops the processes it started.
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**env, **p.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        rc: int | None
        try:
            out, _ = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            rc = None
        f.write(out)
    wall = time.perf_counter() - t0
    status = (
        f"timed out after {timeout:.0f} s" if rc is None else (f"failed (exit {rc})" if rc else "")
    )
    try:
        rows = p.parse(workdir, out)
    except (OSError, ValueError, KeyError, StopIteration) as e:
        last = out.strip().splitlines()[-1][:120] if out.strip() else ""
        return [
            Row(
                p.name,
                p.name,
                wall_s=wall,
                note=f"{status or 'no result'}: {e}; {last} (log {log})",
            )
        ]
    for r in rows:
        r.wall_s = wall
        if status:
            r.note = f"{status}, partial; {r.note}".strip("; ")
    return rows


def add_ratios(rows: list[Row]) -> None:
    """Fills the ratio column: jaxknow GPT-2 rows vs the anchor, the pipeline vs the best
    GPT-2 trainer row, the 135M LoRA step vs the full one."""
    anchor = next((r.rate for r in rows if r.piece == "anchor" and r.rate), None)
    full = next((r.rate for r in rows if r.piece == "smollm2-full" and r.rate), None)
    trainer = max((r.rate for r in rows if r.piece == "gpt2" and r.rate), default=None)
    for r in rows:
        if r.piece == "anchor" and r.rate:
            r.ratio, r.ratio_to = 1.0, "anchor"
        elif r.piece == "gpt2" and r.rate and anchor:
            r.ratio, r.ratio_to = r.rate / anchor, "anchor"
        elif r.piece == "pipeline" and r.rate and trainer:
            r.ratio, r.ratio_to = r.rate / trainer, "best gpt2 trainer"
        elif r.piece == "smollm2-lora" and r.rate and full:
            r.ratio, r.ratio_to = r.rate / full, "smollm2 full finetune"


def markdown_table(rows: list[Row], title: str) -> str:
    """Returns the suite's table as markdown."""
    lines = [
        title,
        "",
        "| piece | what | rate | MFU | ratio | peak GiB | wall s | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = (
            f"{r.rate:,.0f} {r.unit}"
            if r.rate is not None and r.rate >= 100
            else (f"{r.rate:.2f} {r.unit}" if r.rate is not None else "-")
        )
        mfu = f"{r.mfu:.1%}" if r.mfu is not None else "-"
        ratio = f"{r.ratio:.2f}x vs {r.ratio_to}" if r.ratio is not None else "-"
        peak = f"{r.peak_gib:.1f}" if r.peak_gib is not None else "-"
        wall = f"{r.wall_s:.0f}" if r.wall_s is not None else "-"
        note = r.note.replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {r.piece} | {r.what} | {rate} | {mfu} | {ratio} | {peak} | {wall} | {note} |"
        )
    return "\n".join(lines + ["", TARGETS])


def device_name(env: dict[str, str]) -> str:
    """Returns the accelerator's name (nvidia-smi, else "cpu")."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "cpu"


def main(argv: list[str] | None = None) -> list[Row]:
    """Runs the suite; prints the table (stdout) and returns its rows."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dry_run", action="store_true", help="every piece on CPU, tiny shapes")
    ap.add_argument("--only", default="", help="comma list of pieces to run")
    ap.add_argument(
        "--budget",
        type=float,
        default=580,
        help="seconds for the whole suite; each piece also has its own cap",
    )
    ap.add_argument(
        "--budget_scale",
        type=float,
        default=1.0,
        help="multiplies every piece's cap (e.g. 3 on a slower GPU)",
    )
    ap.add_argument(
        "--anchor",
        default=None,
        help="path of the PyTorch anchor script (default: shared/bench/ above the "
        "checkout: torch_gpt2_baseline.py, torch_cpu_small.py with --dry_run)",
    )
    ap.add_argument("--logdir", default=None, help="keep the pieces' logs and outputs here")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)

    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="gpu_suite_"))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if args.dry_run:
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    pieces = make_pieces(args.dry_run, args.anchor)
    known = [p.name for p in pieces]
    only = [x for x in args.only.split(",") if x]
    unknown = [x for x in only if x not in known]
    if unknown:
        raise SystemExit(f"--only: unknown piece(s) {unknown}; known: {known}")
    device = "cpu (dry run)" if args.dry_run else device_name(env)
    if device == "cpu" and not args.dry_run:
        print(
            "warning: no GPU found (nvidia-smi); the GPU pieces will fail or crawl: use "
            "--dry_run on a CPU",
            file=sys.stderr,
        )
    start = time.perf_counter()
    rows: list[Row] = []
    for p in pieces:
        if only and p.name not in only:
            continue
        left = args.budget - (time.perf_counter() - start)
        cap = min(p.budget_s * args.budget_scale, left)
        if cap < 5:
            rows.append(
                Row(p.name, p.name, note=f"skipped: suite budget {args.budget:.0f} s spent")
            )
            continue
        print(
            f"[gpu_suite] {p.name}: up to {cap:.0f} s (log {logdir / p.name / 'log.txt'})",
            file=sys.stderr,
            flush=True,
        )
        got = run_piece(p, logdir / p.name, cap, env)
        rows += got
        print(
            f"[gpu_suite] {p.name}: {got[0].wall_s or 0:.0f} s"
            + (f" ({got[0].note})" if got[0].note else ""),
            file=sys.stderr,
            flush=True,
        )
    add_ratios(rows)
    total = time.perf_counter() - start
    table = markdown_table(
        rows, f"GPU suite on {device}: {total:.0f} s in all ({time.strftime('%Y-%m-%d %H:%M')})"
    )
    print(table, flush=True)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
