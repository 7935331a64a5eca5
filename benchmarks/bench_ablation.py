"""Benchmark: the co-occurrence study's layer-delta ablation of a finetuned model, every k on
both sides, evaluated with shared layer prefixes vs model by model (issue 28, target 2).

    JAXKNOW_CPU_DEVICES=1 .venv/bin/python benchmarks/bench_ablation.py \
        --base gguf:smollm2-135m --finetuned runs/cs_lr3/ft_narrative_full_s0 \
        --data runs/cs_lr3/data [--subsets qa,multiple_choice] [--k_step 1] \
        [--sides first,last] [--whole 2]

The finetuned model and its data: any SmolLM2 co-occurrence study's, or the narrative finetune
alone (about 6 minutes on 2 cores; `runs/cs_n/ft_narrative_full_s0` and `runs/cs_n/data`):

    JAXKNOW_CPU_DEVICES=1 .venv/bin/python -m launch.experiment \
        --config=configs/cooccurrence/smollm2_narrative_cpu.py --workdir=runs/cs_n \
        --config.forget.enabled=False --config.ablation.enabled=False \
        --config.eval.subsets="('qa',)" --config.eval.max_items=8

Both models are loaded, the subsets read from DATA/eval_{name}.jsonl and evaluated as the study
evaluates them (5-shot as the authors' harness, 16 new tokens, batch 64). First the finetuned
model alone (compiles the whole-model path; reported, not timed as a selection), then `--whole`
ablated models evaluated whole (first / last k = L / 3 and 2L / 3: their median is the cost of
one selection the old way), then the whole ablation with `share_prefix` (each model resumed
from the residual stream of the reference it shares its first layers with; the references'
passes and the one compile included). Prints seconds per selection, the total, what the same
selections would take whole (median × count), the ratio, and whether the selections timed
both ways gave the same metrics.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import launch  # noqa: E402,F401  (CPU device count and compilation cache, before jax loads)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Runs the benchmark; returns its figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="gguf:smollm2-135m")
    ap.add_argument("--finetuned", required=True, help="a finetuned model's directory")
    ap.add_argument("--data", required=True, help="the study's data directory (eval_*.jsonl)")
    ap.add_argument("--subsets", default="qa,multiple_choice")
    ap.add_argument("--k_step", type=int, default=1)
    ap.add_argument("--sides", default="first,last")
    ap.add_argument("--whole", type=int, default=2, help="ablated models timed whole (0-2)")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--max_new_tokens", type=int, default=16)
    args = ap.parse_args(argv)

    from bench_train import matmul_limit_gflops, projection_rate_gflops

    from jaxknow.eval import ablation, fewshot, tasks
    from jaxknow.eval.scoring import use_bos
    from jaxknow.eval.shared_prefix import SharedPrefix
    from jaxknow.io.load import load_model
    from jaxknow.io.named_models import resolve_model_path
    from jaxknow.model.flops import kv_flops_per_token, prompt_flops_per_token
    from jaxknow.model.lora import merge_lora

    base = load_model(resolve_model_path(args.base))
    ft = load_model(args.finetuned)
    cfg, tok = ft.cfg, ft.tokenizer
    theta1 = merge_lora(ft.params, cfg)
    names = [n for n in args.subsets.split(",") if n]
    subsets = {
        n: [json.loads(x) for x in (Path(args.data) / f"eval_{n}.jsonl").read_text().splitlines()]
        for n in names
    }
    n_layers = cfg.n_layers
    bos = use_bos("auto")  # what evaluate_subsets decides for a (params, cfg, tok) tuple

    def prompt_lengths(rows: list[dict], name: str) -> list[int]:
        """Returns the token counts of the subset's 5-shot prompts."""
        kind = tasks.subset_kind(name, rows)
        prompts = fewshot.build_prompts(rows, kind, fewshot.DEFAULT_SHOTS)
        return [len(tok.prefix() if bos else []) + len(tok.encode(p)) for p in prompts]

    def evaluate(params: object) -> dict[str, float]:
        m = tasks.evaluate_subsets(
            (params, cfg, tok),
            subsets,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
        )
        return {f"{n}/{k}": v for n, by in m.items() for k, v in by.items() if k != "n"}

    t = time.perf_counter()
    evaluate(theta1)
    first_call = time.perf_counter() - t
    whole: dict[tuple[str, int], dict[str, float]] = {}
    whole_s = []
    for side, k in [("first", n_layers // 3), ("last", 2 * n_layers // 3)][: args.whole]:
        sel = ablation.ablated_layers(side, k, n_layers)
        t = time.perf_counter()
        whole[(side, k)] = evaluate(ablation.mix_layers(base.params, theta1, sel))
        whole_s.append(time.perf_counter() - t)
    sides = tuple(s for s in args.sides.split(",") if s)
    ks = ablation.ablation_ks(n_layers, args.k_step)
    calls = []

    def timed(params: object) -> dict[str, float]:
        calls.append(n_layers - params.start if isinstance(params, SharedPrefix) else n_layers)
        return evaluate(params)

    t = time.perf_counter()
    res = ablation.layer_delta_ablation(
        base.params, theta1, n_layers, timed, sides=sides, ks=ks, share_prefix=True
    )
    shared_total = time.perf_counter() - t
    both = {sk: m for sk, m in whole.items() if sk[1] in res.results.get(sk[0], {})}
    same = all(res.results[s][k] == m for (s, k), m in both.items()) if both else "not compared"
    n_sel = len(calls)
    # The arithmetic no evaluation can skip: every layer run over every prompt token (the two
    # references run every layer once, keeping every layer's stream), but a model's last layer
    # only its keys and values (the prompts are read at their last positions only), at this
    # CPU's fp32 matmul limit; decoding not counted.
    passes = sum(calls) + 2 * n_layers
    lengths = [n for name, rows in subsets.items() for n in prompt_lengths(rows, name)]
    layer_flops = sum(n * prompt_flops_per_token(cfg, n) for n in lengths) / n_layers
    kv_share = kv_flops_per_token(cfg) * sum(lengths) / layer_flops
    flops = (passes - len(calls) * (1 - kv_share)) * layer_flops
    limit = matmul_limit_gflops()
    floor_s = flops / (limit * 1e9)
    mc_rows = len(next(iter(subsets.values())))
    kernels = projection_rate_gflops(cfg, mc_rows * 256)  # a 5-shot MC batch's token slots
    per_whole = statistics.median(whole_s) if whole_s else float("nan")
    out = {
        "layers": n_layers,
        "selections": n_sel,
        "first_call_s": first_call,
        "whole_per_selection_s": per_whole,
        "shared_total_s": shared_total,
        "shared_per_selection_s": shared_total / n_sel,
        "whole_estimate_s": per_whole * n_sel,
        "ratio": per_whole * n_sel / shared_total,
        "layer_passes": passes,
        "prompt_tflop": flops / 1e12,
        "matmul_limit_gflops": limit,
        "floor_at_limit_s": floor_s,
        "share_of_limit": floor_s / shared_total,
        "projection_dots_gflops": kernels,
    }
    print(f"model {args.finetuned} vs {args.base}: {n_layers} layers, sides {sides}, ks {ks}")
    print(f"subsets {', '.join(f'{n} ({len(r)} items)' for n, r in subsets.items())}")
    print(f"finetuned model alone, first call (compiles): {first_call:.1f} s")
    print(f"ablated models evaluated whole: {', '.join(f'{s:.1f}' for s in whole_s)} s")
    print(
        f"shared-prefix ablation: {n_sel} selections in {shared_total:.1f} s "
        f"({shared_total / 60:.1f} min, {shared_total / n_sel:.1f} s each)"
    )
    print(
        f"whole, estimated: {n_sel} x {per_whole:.1f} s = {per_whole * n_sel / 60:.1f} min; "
        f"ratio {out['ratio']:.2f}x; same metrics on the selections timed both ways: {same}"
    )
    print(
        f"arithmetic: {passes} layer passes over the prompts ({len(calls)} models' own layers, "
        f"each model's last one at {kv_share:.0%} (keys and values), "
        f"+ 2 references x {n_layers}) = {flops / 1e12:.1f} TFLOP; at this CPU's fp32 matmul "
        f"limit ({limit:.0f} GFLOP/s, jax 2048^2) >= {floor_s / 60:.1f} min; measured "
        f"{shared_total / 60:.1f} min = {floor_s / shared_total:.0%} of the limit; XLA's dots "
        f"alone at the layer's projection shapes ({mc_rows * 256} rows): {kernels:.0f} GFLOP/s "
        f"= {kernels / limit:.0%} of the limit, >= {flops / kernels / 1e9 / 60:.1f} min"
    )
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))
    return out


if __name__ == "__main__":
    main()
