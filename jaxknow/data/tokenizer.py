"""Tokenizers: train a byte-level BPE on a corpus, or load any Hugging Face `tokenizer.json`.

Documents are encoded as ``[bos] + tokens(text) + [eos]``; a prompt/answer pair as
``[bos] + tokens(prompt) + tokens(answer) + [eos]`` with the loss on the answer and eos.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
PAD = "<|pad|>"

_BOS_CANDIDATES = ("<|begin_of_text|>", "<bos>", "<s>", EOT)
_EOS_CANDIDATES = ("<|end_of_text|>", "<|endoftext|>", "<eos>", "</s>")


class TokenizerError(ValueError):
    """A tokenizer is missing, unreadable, or cannot encode some text exactly."""


class Tokenizer:
    """A `tokenizers.Tokenizer` with the special ids jaxknow needs (bos, eos, pad)."""

    def __init__(
        self, tok: tokenizers.Tokenizer, bos_id: int | None, eos_id: int, pad_id: int | None = None
    ):
        self.tok = tok
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id if pad_id is not None else eos_id

    @property
    def vocab_size(self) -> int:
        """Returns the number of token ids (including added special tokens)."""
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Returns the token ids of `text` (no special tokens added)."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Returns the token ids of each text (no special tokens added)."""
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Returns the text of `ids`, special tokens skipped."""
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def document(self, text: str) -> list[int]:
        """Returns ``[bos] + encode(text) + [eos]`` (bos omitted when the tokenizer has none)."""
        return self.prefix() + self.encode(text) + [self.eos_id]

    def prefix(self) -> list[int]:
        """Returns the tokens every sequence starts with ([bos] or [])."""
        return [self.bos_id] if self.bos_id is not None else []

    def check_roundtrip(self, texts: Iterable[str], where: str) -> None:
        """Raises TokenizerError naming the first text (and `where` it came from) that does not
        decode back to itself, with and without a leading space."""
        for text in texts:
            for form in (text, " " + text):
                back = self.decode(self.encode(form))
                if back != form:
                    raise TokenizerError(
                        f"{where}: tokenizer cannot encode {form!r} exactly (decodes to {back!r})"
                    )

    def save(self, path: str | Path) -> None:
        """Writes `tokenizer.json` (and `special_tokens.json` with bos/eos/pad) at `path`,
        each atomically (a failed write leaves no partial file)."""
        from jaxknow.data.jsonl import atomic_path

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / "tokenizer.json") as tmp:
            self.tok.save(str(tmp))
        with atomic_path(path / "special_tokens.json") as tmp:
            tmp.write_text(
                json.dumps({"bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id})
            )


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Returns a byte-level BPE tokenizer trained on `texts` (EOT is bos and eos, PAD pads).
    Raises TokenizerError when `vocab_size` is below the 258 ids every byte-level BPE has."""
    minimum = len(pre_tokenizers.ByteLevel.alphabet()) + 2
    if vocab_size < minimum:
        raise TokenizerError(
            f"vocab_size={vocab_size} is below the byte-level minimum of {minimum} ids (256 "
            f"bytes + 2 special tokens); set data.world.vocab_size >= {minimum}"
        )
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    eot = tok.token_to_id(EOT)
    return Tokenizer(tok, bos_id=eot, eos_id=eot, pad_id=tok.token_to_id(PAD))


def _first_id(tok: tokenizers.Tokenizer, candidates: Sequence[str]) -> int | None:
    for c in candidates:
        i = tok.token_to_id(c)
        if i is not None:
            return i
    return None


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Returns the tokenizer stored at `path` (a `tokenizer.json` file or a directory with one).

    Special ids come from `special_tokens.json` (jaxknow) or the Hugging Face
    `tokenizer_config.json`/`config.json` beside it, else from well-known token strings.
    """
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(f"no tokenizer.json at {file}")
    try:
        tok = tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # the library raises a bare Exception on bad JSON
        raise TokenizerError(f"{file}: not a readable tokenizer.json ({e})") from None
    folder = file.parent
    special = folder / "special_tokens.json"
    if special.is_file():
        ids = json.loads(special.read_text())
        return Tokenizer(tok, ids["bos_id"], ids["eos_id"], ids.get("pad_id"))
    bos = eos = None
    for name in ("config.json", "generation_config.json"):
        f = folder / name
        if f.is_file():
            d = json.loads(f.read_text())
            bos = bos if bos is not None else d.get("bos_token_id")
            e = d.get("eos_token_id")
            eos = eos if eos is not None else (e[0] if isinstance(e, list) else e)
    bos = bos if bos is not None else _first_id(tok, _BOS_CANDIDATES)
    eos = eos if eos is not None else _first_id(tok, _EOS_CANDIDATES)
    if eos is None:
        raise TokenizerError(f"{file}: cannot tell the end-of-text token; add special_tokens.json")
    return Tokenizer(tok, bos, eos)
