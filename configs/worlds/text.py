"""Your own text as a world: `python -m launch.data --config=configs/worlds/text.py:'GLOB'
--out=DIR` streams every file the comma-separated paths/globs name (JSONL, plain text or
Parquet, optionally .gz/.zst) into one tokenized source `text`.

The tokenizer is a BPE trained on a 200k-document sample unless
`--config.world.tokenizer=PATH` names a tokenizer.json (or a folder with one: a converted
Hugging Face model, a training workdir). Bad lines are skipped, counted and reported with
file:line (`--config.world.on_error=raise` refuses them instead); `workers` sets the
tokenizer processes (0: in this process, with the tokenizer's own threads).
"""

from ml_collections import ConfigDict


def get_config(paths: str = "corpus/*.jsonl") -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.world = ConfigDict(
        dict(
            kind="jsonl",  # format from each file's suffix; "text" / "parquet" force one
            paths=[p for p in paths.split(",") if p],
            source="text",
            text_field="text",  # JSONL key or Parquet column
            text_mode="paragraph",  # plain text: "paragraph" (blank-line separated), "line", "file"
            tokenizer=None,
            vocab_size=4096,
            tokenizer_sample=200_000,
            on_error="skip",
            workers=2,
            shard_tokens=1 << 24,
        )
    )
    return c
