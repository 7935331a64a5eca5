"""Benchmark: batched greedy QA generation with the KV cache (jaxknow) versus Hugging Face
`transformers` `generate` (greedy, KV cache on), same model shape, same prompts.

    .venv/bin/python benchmarks/bench_generation.py [--preset gpt2-small] [--num_questions 256]
        [--prompt_len 24] [--max_new_tokens 16] [--batch_size 64] [--dtype float32]

Random weights (no download). Every row generates exactly `max_new_tokens` tokens in both
implementations (no stop token), so the work is equal. Prints the device, questions/s and new
tokens/s of each, and the ratio; the transformers part is skipped when torch or transformers
is not importable (or with --no_hf). On a CPU, use e.g. ``--preset tiny`` or
``--num_questions 64`` to finish in about a minute.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Returns `n` random prompts of `length` +- 25 % tokens (ids 1..vocab-1)."""
    rng = np.random.default_rng(seed)
    spread = max(1, length // 4)
    lens = rng.integers(max(1, length - spread), length + spread + 1, size=n)
    return [rng.integers(1, vocab, size=int(m)).tolist() for m in lens]


def bench_jaxknow(
    cfg: Any, prompts: list[list[int]], max_new: int, batch_size: int, seed: int
) -> dict[str, float]:
    """Returns {"seconds", "compile_seconds"} of jaxknow's batched greedy generation."""
    import jax

    from jaxknow.eval.generate import generate_tokens
    from jaxknow.model.params import init_params, param_specs

    specs = param_specs(cfg)
    params = jax.jit(lambda k: init_params(specs, k, cfg.storage_dtype))(jax.random.key(seed))
    jax.block_until_ready(params)
    t0 = time.perf_counter()
    # Warm-up on the first batch compiles every bucket the timed run may need.
    generate_tokens(
        params, cfg, prompts[:batch_size], max_new_tokens=max_new, batch_size=batch_size
    )
    t1 = time.perf_counter()
    outs = generate_tokens(params, cfg, prompts, max_new_tokens=max_new, batch_size=batch_size)
    t2 = time.perf_counter()
    assert all(len(o) == max_new for o in outs)
    return {"seconds": t2 - t1, "compile_seconds": t1 - t0}


def bench_transformers(
    cfg: Any, prompts: list[list[int]], max_new: int, batch_size: int, dtype: str, seed: int
) -> dict[str, float] | None:
    """Returns {"seconds"} of transformers' greedy `generate` (None when not importable)."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if cfg.pos_embedding == "learned":
        hf_cfg = transformers.GPT2Config(
            vocab_size=cfg.vocab_size,
            n_positions=cfg.max_seq_len,
            n_embd=cfg.d_model,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_inner=cfg.d_ff,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = transformers.GPT2LMHeadModel(hf_cfg)
    else:
        hf_cfg = transformers.LlamaConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.d_model,
            intermediate_size=cfg.d_ff,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.kv_heads,
            max_position_embeddings=cfg.max_seq_len,
            rope_theta=cfg.rope_theta,
            tie_word_embeddings=cfg.tie_embeddings,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = transformers.LlamaForCausalLM(hf_cfg)
    model = model.to(device=device, dtype=tdtype).eval()

    def run(batch: list[list[int]]) -> None:
        width = max(len(p) for p in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, p in enumerate(batch):  # left padding, as generation needs
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                max_new_tokens=max_new,
                min_new_tokens=max_new,
                use_cache=True,
                pad_token_id=0,
                eos_token_id=None,
            )
        assert out.shape[1] == width + max_new

    run(prompts[:batch_size])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        run(prompts[start : start + batch_size])
    if device == "cuda":
        torch.cuda.synchronize()
    return {
        "seconds": time.perf_counter() - t0,
        "device": device,
        "version": transformers.__version__,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and prints it; returns the figures (seconds, questions/s, ratio)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--num_questions", type=int, default=256)
    parser.add_argument("--prompt_len", type=int, default=24)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--dtype",
        default=None,
        help="compute dtype (default: bfloat16 on a GPU, float32 otherwise)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_hf", action="store_true", help="skip the transformers run")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args(argv)

    repo_root = Path(__file__).resolve().parents[1]
    if str(repo_root) not in sys.path:
        sys.path.insert(0, str(repo_root))
    import jax

    from jaxknow.model.config import preset

    backend = jax.default_backend()
    dtype = args.dtype or ("bfloat16" if backend == "gpu" else "float32")
    cfg = preset(args.preset, dtype=dtype, param_dtype=dtype)
    prompts = make_prompts(args.num_questions, args.prompt_len, cfg.vocab_size, args.seed)
    dev = jax.devices()[0]
    print(f"generation benchmark on {backend}: {dev.device_kind} (x{jax.device_count()})")
    print(
        f"  model {args.preset} (d={cfg.d_model}, L={cfg.n_layers}, V={cfg.vocab_size}), "
        f"{dtype}, random weights"
    )
    print(
        f"  {len(prompts)} prompts of ~{args.prompt_len} tokens, {args.max_new_tokens} new "
        f"tokens each, batch {args.batch_size}"
    )
    n, new = len(prompts), len(prompts) * args.max_new_tokens
    jx = bench_jaxknow(cfg, prompts, args.max_new_tokens, args.batch_size, args.seed)
    out: dict[str, Any] = {
        "jaxknow_seconds": jx["seconds"],
        "jaxknow_questions_per_s": n / jx["seconds"],
    }
    print(
        f"  jaxknow       {jx['seconds']:8.2f} s  {n / jx['seconds']:10.1f} questions/s  "
        f"{new / jx['seconds']:10.1f} new tokens/s  (compile + warm-up "
        f"{jx['compile_seconds']:.1f} s)"
    )
    hf = (
        None
        if args.no_hf
        else bench_transformers(
            cfg, prompts, args.max_new_tokens, args.batch_size, dtype, args.seed
        )
    )
    if hf is None:
        print(
            "  transformers  skipped"
            + ("" if args.no_hf else " (torch/transformers not importable)")
        )
    else:
        out.update(
            hf_seconds=hf["seconds"],
            hf_questions_per_s=n / hf["seconds"],
            speedup=hf["seconds"] / jx["seconds"],
        )
        print(
            f"  transformers  {hf['seconds']:8.2f} s  {n / hf['seconds']:10.1f} questions/s  "
            f"{new / hf['seconds']:10.1f} new tokens/s  ({hf['version']}, torch on "
            f"{hf['device']})"
        )
        print(f"  jaxknow / transformers throughput: {out['speedup']:.2f}x")
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
