"""The tokenizer a GGUF file describes in its metadata (`tokenizer.ggml.*`), rebuilt as a
`tokenizers` tokenizer: "gpt2" (byte-level BPE from tokens + merges, split as
`tokenizer.ggml.pre` says) and "llama" (SentencePiece BPE with byte fallback, merges recovered
from the vocabulary), the way transformers' GGUF loader rebuilds them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from jaxknow.io.gguf_file import GGUFError

# llama.cpp token types.
_CONTROL, _USER_DEFINED = 3, 4

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: tokenizer.ggml.pre values whose split differs from GPT-2's (the others split like GPT-2).
PRE_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


def _byte_alphabet() -> dict[int, str]:
    """Returns GPT-2's byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _merges_from_vocab(tokens: Sequence[str], ranks: Mapping[str, float]) -> list[tuple[str, str]]:
    """Returns BPE merges implied by a vocabulary: every split of a token into two tokens,
    best rank first (SentencePiece files list no merges)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for token, score in ranks.items():
        local = []
        for k in range(1, len(token)):
            left, right = token[:k], token[k:]
            if left in vocab and right in vocab:
                local.append((left, right, score))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda x: (x[2], len(x[0]), len(x[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _gpt2(meta: Mapping[str, Any], tokens: list[str], path: Any) -> tokenizers.Tokenizer:
    merges = meta.get("tokenizer.ggml.merges")
    if not merges:
        raise GGUFError(f"{path}: the gpt2 tokenizer has no tokenizer.ggml.merges")
    alphabet = _byte_alphabet()
    chars = set(alphabet.values())
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        spelled = t if set(t) <= chars else "".join(alphabet[b] for b in t.encode("utf-8"))
        vocab.setdefault(spelled, i)
    try:
        pairs = [tuple(m.split(" ")) for m in merges]
        bpe = models.BPE(
            vocab=vocab,
            merges=pairs,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    except Exception as e:
        raise GGUFError(f"{path}: the gpt2 tokenizer cannot be rebuilt ({e})") from None
    tok = tokenizers.Tokenizer(bpe)
    split = PRE_SPLITS.get(meta.get("tokenizer.ggml.pre"))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(
    meta: Mapping[str, Any], tokens: list[str], path: Any, arch: str
) -> tokenizers.Tokenizer:
    if arch.startswith("gemma"):
        # Runs of spaces are stored as spaces; Gemma's merges are in file order, not by score.
        tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
        ranks: dict[str, float] = {}
        for i, t in enumerate(tokens):
            ranks[t] = -i
    else:
        scores = meta.get("tokenizer.ggml.scores")
        if not scores or len(scores) != len(tokens):
            raise GGUFError(f"{path}: the llama tokenizer has no scores for its tokens")
        ranks = dict(zip(tokens, scores))
    merges = meta.get("tokenizer.ggml.merges")
    pairs = [tuple(m.split(" ")) for m in merges] if merges else _merges_from_vocab(tokens, ranks)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < len(tokens) else "<unk>"
    vocab = {t: i for i, t in enumerate(tokens)}
    try:
        bpe = models.BPE(
            vocab=vocab, merges=pairs, fuse_unk=True, unk_token=unk, byte_fallback=True
        )
    except Exception as e:
        raise GGUFError(f"{path}: the llama tokenizer cannot be rebuilt ({e})") from None
    tok = tokenizers.Tokenizer(bpe)
    if arch.startswith("gemma"):
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split(
            pattern=" ", behavior="merged_with_previous", invert=False
        )
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
    else:
        add_prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first" if add_prefix else "never", split=False
        )
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                *([decoders.Strip(content=" ", left=1, right=0)] if add_prefix else []),
            ]
        )
    return tok


def tokenizer_from_gguf(
    meta: Mapping[str, Any], path: Any = "GGUF file"
) -> tuple[tokenizers.Tokenizer, dict[str, int | None]]:
    """Returns (tokenizer, {"bos_id", "eos_id", "pad_id"}) rebuilt from a GGUF file's metadata;
    raises GGUFError naming the file when the tokenizer cannot be rebuilt."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise GGUFError(f"{path}: no tokenizer.ggml.tokens; the tokenizer cannot be rebuilt")
    tokens = list(tokens)
    arch = str(meta.get("general.architecture", ""))
    if kind == "gpt2":
        tok = _gpt2(meta, tokens, path)
    elif kind == "llama":
        tok = _sentencepiece(meta, tokens, path, arch)
    else:
        raise GGUFError(
            f"{path}: tokenizer.ggml.model={kind!r} cannot be rebuilt (supported: gpt2, llama)"
        )
    types = meta.get("tokenizer.ggml.token_type") or []
    alphabet = set(_byte_alphabet().values()) if kind == "gpt2" else None
    control = [
        AddedToken(t, normalized=False, special=True)
        for t, ty in zip(tokens, types)
        if ty == _CONTROL and (alphabet is None or set(t) <= alphabet)
    ]
    if control:
        tok.add_special_tokens(control)
    vocab = tok.get_vocab()
    user = [
        AddedToken(t, normalized=False, special=False)
        for t, ty in zip(tokens, types)
        if ty == _USER_DEFINED and t in vocab
    ]
    if user:
        tok.add_tokens(user)
    n = len(tokens)

    def special(key: str) -> int | None:
        v = meta.get(f"tokenizer.ggml.{key}")
        return int(v) if isinstance(v, int) and 0 <= v < n else None

    ids = {
        "bos_id": special("bos_token_id"),
        "eos_id": special("eos_token_id"),
        "pad_id": special("padding_token_id"),
    }
    if ids["eos_id"] is None:
        raise GGUFError(f"{path}: no usable tokenizer.ggml.eos_token_id")
    if ids["pad_id"] is None:
        ids["pad_id"] = ids["eos_id"]
    return tok, ids
