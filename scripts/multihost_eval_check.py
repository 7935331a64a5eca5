"""Evaluation of a model sharded over every device of every JAX process (issue 29 item 2).

    python scripts/multihost_eval_check.py MODEL_DIR OUT.json [--data=2] [--fsdp=4]

Run once per process: with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set
(as `tests/test_multihost.py` sets them) each process joins `jax.distributed` first
(`jaxknow.parallel.distributed.maybe_initialize`); without them it runs alone. The model at
MODEL_DIR (it needs a tokenizer) is loaded with `load_model` onto a (data, fsdp) mesh over
all global devices, then every process runs the same evaluation:

- greedy generation (`generate_text`, with and without the newline stop) and greedy
  next-token hits (`memorisation.next_token_hits`);
- scoring: `continuation_logprobs` (multi-token continuations, the batched scorer) and
  `score_multiple_choice` (letters: one-token continuations sharing one pass per context),
  plus `score_pairs`' greedy flags;
- probing: `hidden_features` of every layer at chosen positions, linear probes of every layer
  (`probe_heads`) and probes trained with a rank-2 embedding update
  (`train_probe_with_embedding_update`, a few steps).

Process 0 writes the results as JSON to OUT.json; `tests/test_multihost.py` compares a
2 processes x 4 devices run with a 1 process x 8 devices run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import launch  # noqa: E402,F401  (CPU device count, compilation cache)
from jaxknow.parallel.distributed import maybe_initialize  # noqa: E402

PROMPTS = (
    "The capital of Arvia is",
    "Its animal is the",
    "Question: What is the capital of Belmor? Answer:",
    "The",
    "The capital of Corrin is Dast. Its animal is the",
)
CONTEXTS = ("The capital of Arvia is", "Its animal is", "The capital of Belmor", "The")
CONTINUATIONS = (" Vell and its animal is the fox.", " the owl", " is Norra.", " capital")
PROBE_TEXTS = tuple(
    f"The capital of {country} is {city}."
    for country in ("Arvia", "Belmor", "Corrin", "Dastia", "Elmor", "Farrin")
    for city in ("Vell", "Norra", "Dast", "Umber")
)


def evaluate(model_dir: str, data: int, fsdp: int) -> dict[str, Any]:
    """Returns the generation, scoring and probing results of the model at `model_dir` on a
    (data, fsdp) mesh over all global devices; every process must call it alike."""
    import jax

    from jaxknow.eval.generate import generate_text
    from jaxknow.eval.memorisation import next_token_hits
    from jaxknow.eval.probing import (
        ProbeHead,
        ProbeSettings,
        hidden_features,
        probe_heads,
        train_probe_with_embedding_update,
    )
    from jaxknow.eval.scoring import (
        continuation_logprobs,
        encode_pair,
        score_multiple_choice,
        score_pairs,
    )
    from jaxknow.io.load import load_model
    from jaxknow.parallel.mesh import make_mesh
    from jaxknow.parallel.rules import Sharder

    mesh = make_mesh(data, fsdp, 1)
    model = load_model(model_dir, mesh=mesh)
    params, cfg, tok = model.params, model.cfg, model.tokenizer
    if tok is None:
        raise SystemExit(f"{model_dir} has no tokenizer")
    out: dict[str, Any] = {
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
    }
    out["generated"] = generate_text(model, list(PROMPTS), max_new_tokens=8, batch_size=4)
    out["generated_no_newline_stop"] = generate_text(
        model, list(PROMPTS), max_new_tokens=8, stop_at_newline=False, batch_size=8
    )
    lp, counts = continuation_logprobs(
        params, cfg, tok, list(CONTEXTS), list(CONTINUATIONS), batch_size=4
    )
    out["logprobs"] = [float(x) for x in lp]
    out["counts"] = [int(x) for x in counts]
    pairs = [encode_pair(tok, c, x) for c, x in zip(CONTEXTS, CONTINUATIONS)]
    out["greedy"] = [bool(g) for g in score_pairs(params, cfg, pairs, batch_size=4).greedy]
    rows = [{"choices": ["Vell", "Norra", "Dast"], "answer": i % 3} for i in range(3)]
    mc = score_multiple_choice(params, cfg, tok, list(PROMPTS[:3]), rows, batch_size=4)
    out["mc"] = {"acc": mc.acc, "pred": mc.pred, "logprobs": mc.logprobs}

    seqs = [tok.prefix() + tok.encode(t) for t in PROBE_TEXTS]
    hits = next_token_hits(params, cfg, seqs, [range(1, len(s)) for s in seqs], batch_size=8)
    out["next_token_hits"] = [h.astype(int).tolist() for h in hits]

    sharder = Sharder(mesh)
    # read the city's last token and the sentence's last token (the full stop)
    pos = np.asarray([[len(s) - 2, len(s) - 1] for s in seqs], np.int32)
    n = len(seqs)
    feats = hidden_features(
        params, cfg, seqs, pos, batch_size=8, pad_id=tok.pad_id, sharder=sharder
    )
    out["features_shape"] = list(feats.shape)
    out["features_sum"] = [float(x) for x in feats.astype(np.float64).sum(axis=(1, 2, 3))]
    out["features_head"] = [float(x) for x in feats[:, 0, 0, :4].ravel()]
    labels = np.asarray([i % 4 for i in range(n)], np.int32)  # the city
    heads = [ProbeHead(0, labels, 4), ProbeHead(1, labels, 4)]
    train_idx, test_idx = np.arange(16), np.arange(16, n)  # every city in both
    settings = ProbeSettings(steps=50, lr=0.05, feature_batch_size=8)
    acc = probe_heads(
        params,
        cfg,
        seqs,
        pos,
        heads,
        train_idx,
        test_idx,
        settings,
        pad_id=tok.pad_id,
        sharder=sharder,
    )
    out["probe_acc"] = acc.tolist()
    emb_settings = ProbeSettings(
        layers=[0, -1], steps=3, lr=0.05, feature_batch_size=8, embedding_rank=2
    )
    emb_acc, adapters = train_probe_with_embedding_update(
        params,
        cfg,
        seqs,
        pos,
        heads,
        train_idx,
        test_idx,
        emb_settings,
        pad_id=tok.pad_id,
        sharder=sharder,
    )
    out["embedding_probe_acc"] = emb_acc.tolist()
    out["adapter_sums"] = {k: float(np.asarray(v, np.float64).sum()) for k, v in adapters.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    """Joins jax.distributed when the environment asks, evaluates, and has process 0 write
    the JSON results; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("out")
    parser.add_argument("--data", type=int, default=2)
    parser.add_argument("--fsdp", type=int, default=-1)
    args = parser.parse_args(argv)
    maybe_initialize()
    import jax

    result = evaluate(args.model_dir, args.data, args.fsdp)
    if jax.process_index() == 0:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"process {jax.process_index()}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
