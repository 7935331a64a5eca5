"""Benchmark: multiple choice scored by option text, each (prompt, option) pair run whole
versus the prompt run once and every option branched from its cache (`jaxknow.eval.branches`).

    JAXKNOW_CPU_DEVICES=1 .venv/bin/python benchmarks/bench_branches.py \\
        --data runs/cs_lr3/data [--model gguf:smollm2-135m] [--subset multiple_choice]
        [--repeats 2] [--batch_size 64]

The items are the subset's rows as the co-occurrence study asks them: 5-shot, demonstrations
answering by text (`fewshot.build_prompts(mc_answer_text=True)`). Both paths are compiled in a
warm-up call, then timed in alternating rounds in this one process. Prints each round's
seconds, the median ratio, the largest log-likelihood difference between the paths and whether
they pick the same option for every item.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import launch  # noqa: E402,F401  (CPU device count and compilation cache, before jax loads)


def main() -> None:
    """Parses the flags, times both paths, prints the comparison."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="a directory with eval_<subset>.jsonl")
    ap.add_argument("--model", default="gguf:smollm2-135m")
    ap.add_argument("--subset", default="multiple_choice")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=64)
    args = ap.parse_args()

    import numpy as np

    from jaxknow.data.jsonl import read_jsonl
    from jaxknow.eval import fewshot, scoring
    from jaxknow.eval.generate import mesh_of, place_params
    from jaxknow.io.load import load_model

    model = load_model(args.model)
    rows = list(read_jsonl(Path(args.data) / f"eval_{args.subset}.jsonl"))
    prompts = fewshot.build_prompts(rows, "mc", mc_answer_text=True)
    bos = scoring.use_bos("auto", model.meta)
    pairs, spans = [], []
    for prompt, row in zip(prompts, rows):
        options = scoring.mc_continuations(row, "options")
        spans.append((len(pairs), len(pairs) + len(options)))
        pairs += [scoring.encode_pair(model.tokenizer, prompt, o, bos) for o in options]
    params = place_params(model.params, model.cfg, mesh_of(model.params))
    n_tokens = sum(len(c) + len(x) for c, x in pairs)
    print(f"{args.model}: {len(rows)} items, {len(pairs)} pairs, {n_tokens} tokens pairwise")

    def run(share: bool) -> tuple[float, np.ndarray]:
        t = time.perf_counter()
        s = scoring.score_pairs(
            params, model.cfg, pairs, batch_size=args.batch_size, share_contexts=share
        )
        return time.perf_counter() - t, s.logprob

    _, whole = run(False)  # warm-up: compiles
    _, branched = run(True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.repeats):
        for share in (False, True):
            times[share].append(run(share)[0])
        print(
            f"round {r + 1}: pairs whole {times[False][-1]:.1f} s, branched {times[True][-1]:.1f} s"
        )
    picks = [(int(np.argmax(whole[a:b])), int(np.argmax(branched[a:b]))) for a, b in spans]
    median = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"median: whole {median[False]:.1f} s, branched {median[True]:.1f} s, "
        f"{median[False] / median[True]:.2f}x"
    )
    print(
        f"largest |log-likelihood difference| {np.max(np.abs(whole - branched)):.2e}; "
        f"same option picked for every item: {all(a == b for a, b in picks)}"
    )


if __name__ == "__main__":
    main()
