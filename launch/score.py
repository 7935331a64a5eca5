"""Score one token sequence: ``python -m launch.score --checkpoint=DIR --tokens=1,2,3
--out=FILE.npy`` writes the model's float32 logits [T, V] (row t: scores of the token after
the first t + 1 tokens). DIR is a converted model, a workdir or a checkpoint directory."""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from launch.common import run_app, run_main

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model directory (load_model path).")
_TOKENS = flags.DEFINE_string("tokens", None, "Comma-separated token ids.")
_OUT = flags.DEFINE_string("out", None, "Output .npy file.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.mark_flags_as_required(["checkpoint", "tokens", "out"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    def go() -> None:
        import numpy as np

        from jaxknow.io.load import check_tokens, load_model, parse_token_list, score_tokens

        tokens = parse_token_list(_TOKENS.value)
        model = load_model(_CHECKPOINT.value, step=_STEP.value)
        try:
            check_tokens(tokens, model.cfg)
        except ValueError as e:
            raise ValueError(f"--tokens: {e}") from None
        logits = score_tokens(model, tokens)
        out = Path(_OUT.value)
        if out.suffix != ".npy":  # np.save appends it; report the file actually written
            out = out.with_name(out.name + ".npy")
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, logits)
        print(f"wrote logits {list(logits.shape)} to {out}")

    run_main(go)


if __name__ == "__main__":
    run_app(main)
