"""Write lm-evaluation-harness tasks for a materialised world's evaluation subsets.

``python -m launch.lm_tasks --data=DATA_DIR --out=TASK_DIR [--subsets=qa,multiple_choice]
[--num_fewshot=5] [--prefix=jaxknow_]`` writes one task per free-form or multiple-choice
``eval_*.jsonl`` subset of DATA_DIR (`jaxknow.eval.lm_tasks`), then prints how to run them::

    jaxknow-lm-eval --model jaxknow --model_args path=WORKDIR \\
        --include_path TASK_DIR --tasks jaxknow

A missing directory or subset, a line that does not parse (file:line) or a subset smaller than
num_fewshot + 1 is reported in one line with exit code 2.
"""

from __future__ import annotations

from absl import app, flags

from launch.common import run_main

_DATA = flags.DEFINE_string("data", None, "Data directory holding eval_<name>.jsonl subsets.")
_OUT = flags.DEFINE_string("out", None, "Directory for the task YAML, JSONL and utils.py.")
_SUBSETS = flags.DEFINE_list(
    "subsets", [], "Subset names (default: every free-form and multiple-choice eval_*.jsonl)."
)
_SHOTS = flags.DEFINE_integer("num_fewshot", 5, "Demonstrations per item (the authors' 5).")
_SEED = flags.DEFINE_integer("seed", 42, "Seed of the demonstration choice (the authors' 42).")
_PREFIX = flags.DEFINE_string("prefix", "jaxknow_", "Task name prefix.")
_TAG = flags.DEFINE_string("tag", "jaxknow", "Tag naming all the written tasks.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 50, "Greedy tokens per free-form answer.")
flags.mark_flags_as_required(["data", "out"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    def go() -> None:
        from jaxknow.eval.lm_tasks import write_lm_tasks

        tasks = write_lm_tasks(
            _DATA.value,
            _OUT.value,
            _SUBSETS.value or None,
            prefix=_PREFIX.value,
            num_fewshot=_SHOTS.value,
            seed=_SEED.value,
            max_new_tokens=_MAX_NEW.value,
            tag=_TAG.value,
        )
        for name, kind in tasks.items():
            print(f"{name}\t{kind}")
        print(
            f"run: jaxknow-lm-eval --model jaxknow --model_args path=WORKDIR "
            f"--include_path {_OUT.value} --tasks {_TAG.value}"
        )

    run_main(go)


if __name__ == "__main__":
    app.run(main)
