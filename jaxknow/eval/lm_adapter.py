"""jaxknow models inside lm-evaluation-harness (0.4.x): the ``jaxknow`` model type.

``lm_eval --model jaxknow --model_args path=DIR[,bos=auto|always|never][,dtype=bfloat16]
[,step=N][,batch_size=32][,max_gen_toks=256][,mesh=DATA:FSDP:TENSOR] --tasks ...`` (or
``lm_eval.simple_evaluate(model=JaxknowLM(path=DIR), ...)``) evaluates a jaxknow checkpoint (a
training workdir, a checkpoints directory, a step directory, or a model converted from Hugging
Face with ``launch.convert``) with the tokenizer stored beside it.

- ``loglikelihood`` (inherited from lm-eval's ``TemplateLM``: the harness's pair encoding) and
  ``loglikelihood_rolling`` run jaxknow's batched, jitted scorer
  (`jaxknow.eval.scoring.score_pairs`): length-sorted, bucket-padded batches sharded over the
  mesh, summed log-likelihood plus the harness's ``is_greedy``;
- ``generate_until`` runs jaxknow's KV-cache greedy generation
  (`jaxknow.eval.generate.generate_tokens`): every token whose text contains a stop string
  (and EOS) ends its row on the device, the text is then cut at the first stop string, as the
  harness does. Only greedy decoding is offered.

BOS: ``bos=auto`` (default) starts sequences with the tokenizer's BOS for jaxknow-trained
models and leaves it out for models converted from Hugging Face, which is what the authors'
``hf-causal-experimental`` did (`jaxknow.eval.scoring.use_bos`). Requests longer than the
model's context lose tokens from the left, as in the harness; each call logs one line saying
how many requests were cut and by how many tokens at most.

Importing this module registers the model type with lm-eval's registry. lm-eval 0.4.13 does
not load plugins from entry points by itself, so the command line goes through
`jaxknow.eval.lm_cli` (``jaxknow-lm-eval``, or ``python -m jaxknow.eval.lm_cli``), which
registers the type and then runs lm-eval's own CLI; the task files written by
`jaxknow.eval.lm_tasks` also register it when lm-eval loads them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import lm_eval.models  # noqa: F401  (built-in model types first: lm-eval only fills an empty
import numpy as np  #                    registry, so registering ours alone would hide them)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from jaxknow.data.tokenizer import Tokenizer
from jaxknow.eval import generate, scoring

log = logging.getLogger("jaxknow.lm_eval")


class JaxknowLMError(ValueError):
    """A model directory or a request the adapter cannot serve (one line, names the cause)."""


def _parse_mesh(text: str | None) -> tuple[int, int, int]:
    if text is None or text == "":
        return (-1, 1, 1)
    parts = str(text).replace(",", ":").split(":")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise JaxknowLMError(f"mesh={text!r}: expected DATA:FSDP:TENSOR, e.g. -1:1:1") from None
    if len(dims) != 3:
        raise JaxknowLMError(f"mesh={text!r}: expected three axes DATA:FSDP:TENSOR")
    return dims  # type: ignore[return-value]


@functools.lru_cache(maxsize=16)
def _stop_table(tok: Tokenizer, vocab_size: int, until: tuple[str, ...]) -> np.ndarray:
    """Returns bool [vocab_size]: EOS and every token whose decoded text contains a stop
    string (a row can stop on the device there; multi-token stops are cut afterwards)."""
    n = tok.vocab_size
    texts = tok.tok.decode_batch([[i] for i in range(n)], skip_special_tokens=True)
    base = np.array([any(u in t for u in until) for t in texts], bool) if until else None
    return generate.make_stop_table(vocab_size, (tok.eos_id,), base)


@register_model("jaxknow")
class JaxknowLM(TemplateLM):
    """An lm-eval ``LM`` backed by a jaxknow checkpoint (module docstring)."""

    def __init__(
        self,
        path: str | None = None,
        *,
        model: Any = None,
        bos: str = "auto",
        dtype: str | None = None,
        step: int | None = None,
        batch_size: int | str | None = 32,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        mesh: str | None = None,
        max_batch_size: int | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        del max_batch_size, device  # lm-eval passes them to every model; jaxknow uses the mesh
        if kwargs:
            raise JaxknowLMError(
                f"jaxknow model: unknown argument(s) {sorted(kwargs)}; known: "
                "path, bos, dtype, step, batch_size, max_length, "
                "max_gen_toks, mesh"
            )
        if model is None:
            if not path:
                raise JaxknowLMError(
                    "jaxknow model: give path=DIR (a jaxknow workdir, "
                    "checkpoint or converted model directory)"
                )
            from jaxknow.io.load import load_model
            from jaxknow.parallel.mesh import make_mesh

            mesh_obj = make_mesh(*_parse_mesh(mesh))
            model = load_model(str(path), mesh=mesh_obj, step=step, dtype=dtype)
        meta = getattr(model, "meta", None)
        if isinstance(model, tuple):
            params, cfg, tok = model
        else:
            params, cfg, tok = model.params, model.cfg, model.tokenizer
        if tok is None:
            where = getattr(model, "path", path)
            raise JaxknowLMError(
                f"jaxknow model {where}: no tokenizer.json beside the "
                "checkpoint (looked in DIR and DIR/data); copy the tokenizer "
                "of the training data there"
            )
        self.params, self.cfg, self.tok = params, cfg, tok
        try:
            self.add_bos = scoring.use_bos(bos, meta) and tok.bos_id is not None
            bs = (
                32
                if batch_size in (None, "auto") or str(batch_size).startswith("auto")
                else int(batch_size)
            )
        except ValueError as e:
            raise JaxknowLMError(f"jaxknow model: {e}") from None
        if bs <= 0:
            raise JaxknowLMError(f"batch_size={batch_size}: must be positive")
        self._batch_size = bs
        self._max_length = int(max_length) if max_length else cfg.max_seq_len
        if self._max_length > cfg.max_seq_len:
            raise JaxknowLMError(
                f"max_length={max_length} exceeds the model's max_seq_len={cfg.max_seq_len}"
            )
        self._max_gen_toks = int(max_gen_toks)
        self.mesh = generate.mesh_of(params)
        self.params = generate.place_params(params, cfg, self.mesh)

    # ---- properties lm-eval reads -------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        """The context of an empty-context request: BOS when sequences start with it, else
        EOS (the fork's end-of-text context)."""
        return self.tok.bos_id if self.add_bos else self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return "jaxknow"

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        """Returns the token ids of `string`, with BOS first when `add_special_tokens` (None:
        the model's BOS setting)."""
        add = self.add_bos if add_special_tokens is None else bool(add_special_tokens)
        prefix = [self.tok.bos_id] if add and self.tok.bos_id is not None else []
        return prefix + self.tok.encode(string)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        """Returns the text of `tokens`, special tokens skipped."""
        return self.tok.decode(tokens)

    # ---- scoring ------------------------------------------------------------------------
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> scoring.TokenScores:
        """Scores (context ids, continuation ids) pairs, cutting context tokens from the left
        of any pair longer than the context (+1: the last token is only a target)."""
        limit = self._max_length + 1
        fitted, cut = [], []
        for i, (ctx, cont) in enumerate(pairs):
            if len(cont) >= limit:
                raise JaxknowLMError(
                    f"request {i}: its continuation alone has {len(cont)} "
                    f"tokens; the model's context is {self._max_length}"
                )
            extra = len(ctx) + len(cont) - limit
            if extra > 0:
                cut.append(extra)
                ctx = ctx[extra:]
            fitted.append((ctx, cont))
        if cut:
            log.warning(
                "jaxknow: %d of %d requests are longer than the context of %d tokens: "
                "up to %d of their leading context tokens were dropped",
                len(cut),
                len(pairs),
                self._max_length,
                max(cut),
            )
        return scoring.score_pairs(
            self.params, self.cfg, fitted, batch_size=self._batch_size, mesh=self.mesh
        )

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        """Returns (summed log-likelihood, is_greedy) of each (key, context ids,
        continuation ids) request, in request order."""
        if not requests:
            return []
        scores = self._score([(list(c), list(x)) for _, c, x in requests])
        out = []
        for (key, _, _), lp, gr in zip(requests, scores.logprob, scores.greedy):
            answer = (float(lp), bool(gr))
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Returns the log-likelihood of each whole string (``Instance.args = (text,)``),
        scored in disjoint windows of the model's context with the harness's rolling-window
        rule (first window conditioned on `prefix_token_id`)."""
        pairs: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for r, req in enumerate(requests):
            (text,) = req.args
            ids = self.tok_encode(text, add_special_tokens=False)
            for ctx, cont in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=ids,
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self._max_length,
                    context_len=1,
                ),
            ):
                pairs.append((list(ctx), list(cont)))
                owner.append(r)
        totals = np.zeros(len(requests), np.float64)
        if pairs:
            scores = self._score(pairs)
            np.add.at(totals, np.asarray(owner), scores.logprob)
        out = [float(x) for x in totals]
        for req, x in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, x)
        return out

    # ---- generation ---------------------------------------------------------------------
    def _gen_settings(self, kwargs: dict[str, Any]) -> tuple[tuple[str, ...], int]:
        kw = dict(kwargs or {})
        until = kw.pop("until", None)
        if isinstance(until, str):
            until = [until]
        until = tuple(until or ())
        max_new = int(kw.pop("max_gen_toks", self._max_gen_toks))
        do_sample = kw.pop("do_sample", False)
        temperature = float(kw.pop("temperature", 0.0) or 0.0)
        if do_sample or temperature > 0:
            raise JaxknowLMError(
                f"jaxknow generates greedily only; got do_sample={do_sample}, "
                f"temperature={temperature}"
            )
        if max_new <= 0 or max_new >= self._max_length:
            raise JaxknowLMError(f"max_gen_toks={max_new}: must be in [1, {self._max_length})")
        return until, max_new

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Returns the greedy continuation of each ``(context, gen_kwargs)`` request, cut at
        the first of its ``until`` strings (EOS always stops)."""
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        settings = []
        for r, req in enumerate(requests):
            context, kwargs = req.args
            s = self._gen_settings(kwargs)
            settings.append(s)
            groups.setdefault(s, []).append(r)
        out = [""] * len(requests)
        for (until, max_new), idx in groups.items():
            prompts = [self.tok_encode(requests[r].args[0]) for r in idx]
            limit = self._max_length - max_new
            cut = [len(p) - limit for p in prompts if len(p) > limit]
            if cut:
                log.warning(
                    "jaxknow: %d of %d prompts are longer than %d tokens (context %d "
                    "- %d new): up to %d of their leading tokens were dropped",
                    len(cut),
                    len(prompts),
                    limit,
                    self._max_length,
                    max_new,
                    max(cut),
                )
            prompts = [p[-limit:] or [self.prefix_token_id] for p in prompts]
            table = _stop_table(self.tok, self.cfg.vocab_size, until)
            toks = generate.generate_tokens(
                self.params,
                self.cfg,
                prompts,
                max_new_tokens=max_new,
                stop_table=table,
                pad_id=self.tok.pad_id,
                batch_size=self._batch_size,
                mesh=self.mesh,
            )
            for r, ids in zip(idx, toks):
                if ids and ids[-1] == self.tok.eos_id:
                    ids = ids[:-1]
                text = self.tok_decode(ids)
                for term in until:
                    text = text.split(term)[0]
                self.cache_hook.add_partial("generate_until", requests[r].args, text)
                out[r] = text
        return out
