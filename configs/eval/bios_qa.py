"""Evaluate a bioS model: zero-shot QA on the held-out people (P_test), exact match per
attribute and averaged.

``python -m launch.evaluate --config=configs/eval/bios_qa.py --workdir=DIR`` reads
``DIR/data/qa_test.jsonl`` (rows ``{"question", "answer", "person", "attribute"}``), prompts
each question as ``"Question: {q} Answer:"`` and greedily generates the answer.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    """Returns the evaluation config (sections `eval` and `mesh`)."""
    c = ConfigDict()
    c.eval = ConfigDict(
        dict(
            subsets=["qa_test"],
            data_dir=None,  # default: WORKDIR/data
            file_pattern="{name}.jsonl",
            files={},
            kinds={"qa_test": "free"},
            few_shot=0,
            few_shot_per_subset={},
            seed=42,
            max_new_tokens=24,
            batch_size=64,
            mc_mode="letters",
            save_predictions=False,
            dtype=None,
        )
    )
    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return c
