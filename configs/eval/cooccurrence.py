"""Evaluate a co-occurrence (country world) model on every evaluation subset of the novel split.

``python -m launch.evaluate --config=configs/eval/cooccurrence.py --workdir=DIR`` reads
``DIR/data/eval_<subset>.jsonl`` (as written by ``launch.data``) and runs the authors' harness:
five-shot QA-style generation (at most 50 new tokens, stop at newline), five-shot multiple
choice by the log-likelihood of " A".." D", and the likelihood probes.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    """Returns the evaluation config (sections `eval` and `mesh`)."""
    c = ConfigDict()
    c.eval = ConfigDict(
        dict(
            subsets=[
                "qa",
                "reverse_qa",
                "indirect",
                "animal_commonsense",
                "two_hop",
                "multiple_choice",
                "two_hop_mc",
                "likelihood",
            ],
            data_dir=None,  # default: WORKDIR/data
            file_pattern="eval_{name}.jsonl",
            files={},
            kinds={},
            few_shot=5,
            few_shot_per_subset={},
            seed=42,
            max_new_tokens=50,
            batch_size=32,
            mc_mode="letters",
            save_predictions=True,
            dtype=None,
        )
    )
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return c
