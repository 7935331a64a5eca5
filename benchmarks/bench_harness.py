"""Benchmark: lm-evaluation-harness with the jaxknow adapter (`--model jaxknow`) versus
lm-eval's own `hf` model (transformers) on the same checkpoint exported with
``launch.convert --from=jaxknow``, same generated tasks, same items.

    .venv/bin/python benchmarks/bench_harness.py [--model DIR] [--data DIR]
        [--subsets qa,multiple_choice,...] [--limit N] [--batch_size 32]
        [--shape d_model=128,n_layers=4,n_heads=4,d_ff=512,max_seq_len=512]
        [--preset smollm2-135m]   # the 135M pretrained shape, random weights

Without --model, a random model of --shape (default: the quickstart model, d128 x 4 layers)
with the world's tokenizer is written; without --data, the tiny country world
(`configs/worlds/countries.py:tiny`) is materialised. Both backends run every task once to
warm up (jaxknow compiles there; the compile time is reported), then once timed. Prints, per
backend, the wall time of the timed `simple_evaluate` call, items/s and requests/s, the ratio,
and whether the two backends gave the same greedy generations and MC choices. Both score
without BOS (the exported tokenizer adds none; the fork's hf-causal-experimental added none).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import launch  # noqa: E402,F401  (CPU device count and compilation cache, before jax loads)

QUICKSTART_SHAPE = "d_model=128,n_layers=4,n_heads=4,d_ff=512,max_seq_len=512"


def default_shape(preset_name: str) -> str:
    """Returns the default `--shape` of a preset: the quickstart model's fields for "tiny",
    none (the preset's own shape) otherwise."""
    return QUICKSTART_SHAPE if preset_name == "tiny" else ""


def parse_shape(text: str) -> dict[str, int]:
    """Returns {field: int} of "k=v,k=v"."""
    out = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        out[k.strip()] = int(v)
    return out


def make_model(
    world: Path, dst: Path, shape: dict[str, int], seed: int, base: str = "tiny"
) -> Path:
    """Writes a random model of preset `base` (default a GPT-2-style one) with the fields of
    `shape` and the world's tokenizer (its vocabulary size) to `dst`."""
    import json

    import jax

    from jaxknow.io.checkpoint import save_params_checkpoint
    from jaxknow.model.config import preset
    from tests.util import numpy_params

    vocab = json.loads((world / "manifest.json").read_text())["vocab_size"]
    cfg = preset(base).replace(**{"vocab_size": vocab, **shape})
    params = jax.tree.map(lambda x: 4.0 * x if x.ndim >= 2 else x, numpy_params(cfg, seed))
    save_params_checkpoint(dst, params, {"model": cfg.to_dict()})
    for f in ("tokenizer.json", "special_tokens.json"):
        shutil.copy(world / f, dst / f)
    return dst


def timed(lm: Any) -> Any:
    """Wraps the request methods of an lm-eval LM instance so that `lm.model_seconds`
    accumulates the time spent inside them (the model's share of an evaluation)."""
    lm.model_seconds = 0.0
    for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        fn = getattr(lm, name)

        def wrapper(*a: Any, _fn: Any = fn, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                lm.model_seconds += time.perf_counter() - t0

        setattr(lm, name, wrapper)
    return lm


def run(lm: Any, tasks: list[str], task_dir: Path, limit: int | None) -> tuple[float, float, dict]:
    """Returns (seconds, seconds inside the model's request methods, results) of one
    simple_evaluate call."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    lm.model_seconds = 0.0
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=tm, limit=limit, log_samples=True
    )
    return time.perf_counter() - t0, lm.model_seconds, res


def scores(res: dict) -> str:
    """Returns "task metric=value ..." of lm-eval's aggregated results."""
    return "; ".join(
        f"{t} "
        + " ".join(
            f"{k.split(',')[0]}={v:.4f}" for k, v in r.items() if "," in k and "stderr" not in k
        )
        for t, r in res["results"].items()
    )


def outputs(res: dict) -> dict[tuple[str, int], Any]:
    """Returns (task, doc_index) -> the generation (free form) or chosen letter index (MC)."""
    out = {}
    for task, samples in res["samples"].items():
        for s in samples:
            r = s["filtered_resps"]
            pick = r[0] if isinstance(r[0], str) else max(range(len(r)), key=lambda i: r[i][0])
            out[(task, int(s["doc"]["doc_index"]))] = pick
    return out


def prompt_tflop(model: Any, res: dict) -> float:
    """Returns the TFLOP of every layer over the prompt tokens of the logged requests (each
    distinct context of an item once: letters share their context; no decoding, no vocabulary
    projection; the last layer's keys and values alone, as only the prompts' last positions are
    read): what any backend must compute (`flops.prompt_flops_per_token`)."""
    from jaxknow.model.flops import prompt_flops_per_token

    total = 0.0
    for samples in res["samples"].values():
        for sample in samples:
            for ctx in {str(a[0]) for a in sample["arguments"]}:
                n = len(model.tokenizer.encode(ctx))
                total += n * prompt_flops_per_token(model.cfg, n, read_few=True)
    return total / 1e12


def own_parity(model: Any, data: Path, subsets: list[str], res: dict, batch_size: int) -> str:
    """Returns a line comparing lm-eval-through-the-adapter with jaxknow's own evaluation of
    the same subsets: identical predictions, largest log-likelihood difference, scores."""
    import numpy as np

    from jaxknow.data.jsonl import read_jsonl
    from jaxknow.eval.tasks import evaluate_subsets_detailed

    rows = {s: read_jsonl(data / f"eval_{s}.jsonl") for s in subsets}
    t0 = time.perf_counter()
    own = evaluate_subsets_detailed(
        model, rows, max_new_tokens=50, batch_size=batch_size, bos="never"
    )
    secs = time.perf_counter() - t0
    same = total = 0
    worst = 0.0
    parts = []
    for s in subsets:
        samples = {int(x["doc"]["doc_index"]): x for x in res["samples"][f"jaxknow_{s}"]}
        for i, x in samples.items():
            rec = own.predictions[s][i]
            total += 1
            if "prediction" in rec:
                same += x["filtered_resps"][0].strip() == rec["prediction"]
            else:
                got = np.array([r[0] for r in x["filtered_resps"]])
                worst = max(worst, float(np.max(np.abs(got - np.array(rec["logprobs"])))))
                same += int(np.argmax(got)) == rec["pred"]
        m = own.metrics[s]
        parts.append(f"{s} " + " ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "n"))
    return (
        f"own evaluation ({secs:.2f} s, full subsets): identical predictions {same}/{total}, "
        f"max |log-likelihood difference| {worst:.2e}; " + "; ".join(parts)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="jaxknow checkpoint (default: a random one)")
    ap.add_argument("--data", type=Path, help="world directory (default: tiny countries)")
    ap.add_argument("--subsets", default="qa,multiple_choice,reverse_qa,two_hop_mc")
    ap.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument(
        "--shape",
        default=None,
        help="model fields of the random model (vocab_size defaults to the tokenizer's; "
        f"default with the tiny preset: {QUICKSTART_SHAPE})",
    )
    ap.add_argument(
        "--preset",
        default="tiny",
        help="preset of the random model, e.g. smollm2-135m (the 135M pretrained shape; its "
        "vocabulary becomes the world tokenizer's)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no_hf", action="store_true", help="time the jaxknow adapter only")
    ap.add_argument(
        "--parity",
        action="store_true",
        help="also run jaxknow's own evaluation and compare it item by item",
    )
    args = ap.parse_args()

    import jax

    from jaxknow.eval.lm_adapter import JaxknowLM
    from jaxknow.eval.lm_tasks import write_lm_tasks
    from jaxknow.io.hf import jaxknow_to_hf
    from jaxknow.io.load import load_model

    work = Path(tempfile.mkdtemp(prefix="bench_harness_"))
    try:
        data = args.data
        if data is None:
            import jaxknow.studies  # noqa: F401  (registers the studies' world kinds)
            from configs.worlds.countries import get_config
            from jaxknow.data.build import materialize

            c = get_config("tiny")
            data = work / "world"
            materialize(c.world.to_dict(), data, c.seed)
        shape = args.shape if args.shape is not None else default_shape(args.preset)
        model_dir = args.model or make_model(
            data, work / "model", parse_shape(shape), args.seed, args.preset
        )
        subsets = [s for s in args.subsets.split(",") if s]
        task_dir = work / "tasks"
        tasks = list(write_lm_tasks(data, task_dir, subsets))
        model = load_model(model_dir)
        print(
            f"devices: {jax.device_count()} x {jax.devices()[0].platform}; model "
            f"d{model.cfg.d_model} x {model.cfg.n_layers} layers, vocab "
            f"{model.cfg.vocab_size}, {model.cfg.dtype}; tasks {tasks}; limit {args.limit}"
        )
        lm = timed(JaxknowLM(model=model, bos="never", batch_size=args.batch_size))
        t_warm, _, _ = run(lm, tasks, task_dir, args.limit)
        t_jk, m_jk, res_jk = run(lm, tasks, task_dir, args.limit)
        n_items = sum(len(s) for s in res_jk["samples"].values())
        n_reqs = sum(len(x["arguments"]) for s in res_jk["samples"].values() for x in s)

        def line(name: str, t: float, m: float, res: dict) -> str:
            return (
                f"{name}: {t:.2f} s timed ({n_items / t:.1f} items/s); inside the model "
                f"{m:.2f} s ({n_reqs / m:.1f} requests/s)\n  {scores(res)}"
            )

        print(
            line("jaxknow adapter", t_jk, m_jk, res_jk) + f"\n  first run {t_warm:.2f} s (compiles)"
        )
        if args.parity:
            print(own_parity(model, data, subsets, res_jk, args.batch_size))
        if args.no_hf:
            return
        from lm_eval.api.registry import get_model

        from jaxknow.io.hf_config import HFConversionError

        try:
            hf_dir = jaxknow_to_hf(model_dir, work / "hf")
        except HFConversionError as e:
            print(f"no lm-eval hf comparison: {e} (the shape has no transformers class)")
            return
        hf = timed(
            get_model("hf").create_from_arg_string(
                f"pretrained={hf_dir},dtype={model.cfg.dtype}",
                {"batch_size": args.batch_size, "device": "cpu"},
            )
        )
        run(hf, tasks, task_dir, args.limit)
        t_hf, m_hf, res_hf = run(hf, tasks, task_dir, args.limit)
        print(line("lm-eval hf", t_hf, m_hf, res_hf))
        a, b = outputs(res_jk), outputs(res_hf)
        same = sum(a[k] == b.get(k) for k in a)
        print(
            f"ratio hf / jaxknow: {t_hf / t_jk:.2f}x end to end, {m_hf / m_jk:.2f}x inside "
            f"the model; identical outputs: {same}/{len(a)}"
        )
        if jax.devices()[0].platform == "cpu":
            from bench_train import matmul_limit_gflops, projection_rate_gflops

            tf, limit = prompt_tflop(model, res_jk), matmul_limit_gflops()
            kernels = projection_rate_gflops(model.cfg, 40 * 256)  # a 5-shot MC batch
            print(
                f"arithmetic: {tf:.2f} TFLOP over the prompts; fp32 matmul limit {limit:.0f} "
                f"GFLOP/s (jax 2048^2): hf ran at {tf * 1e3 / m_hf:.0f} GFLOP/s "
                f"({tf * 1e3 / m_hf / limit:.0%} of it), jaxknow at {tf * 1e3 / m_jk:.0f} "
                f"({tf * 1e3 / m_jk / limit:.0%}); twice hf's speed needs "
                f"{2 * tf * 1e3 / m_hf / limit:.0%} of the limit; XLA's dots alone at the "
                f"layer's projection shapes (10,240 rows) reach {kernels:.0f} GFLOP/s "
                f"({kernels / limit:.0%})"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
