"""Models that share their first layers with a reference model, and the reference's outputs.

A layer-delta ablation evaluates many mixtures of a base model θ0 and a finetuned model θ1
(`eval.ablation.mix_layers`). A mixture whose first j layers are those of one of the two
reference mixtures (every layer from θ0, or none) computes, on the same prompts, exactly the
residual stream that reference computes up to layer j. `SharedPrefix` wraps such a model's
parameters with its reference and j; the scoring and generation functions (`eval.scoring`,
`eval.generate`) accept it where they take parameters: they run the reference once per batch
(its residual stream at every layer, and for generation its prefill cache), keep that in the
shared `store`, and resume each mixture at layer j (`transformer.forward`'s `hidden_in` and
`start_layer`). Code paths that do not resume simply use `.params`, so a `SharedPrefix` is
never wrong, only sometimes not faster.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


@dataclasses.dataclass(eq=False)
class SharedPrefix:
    """A model's parameters (`params`, layers stacked) whose first `start` layers, and the
    embedding, equal those of `reference`; reference outputs are kept in `store` under
    (`ref_name`, what, batch) — one dict shared by every model of one ablation."""

    params: Any
    reference: Any
    start: int
    ref_name: str
    store: dict[tuple[str, str, str], Any]

    def reference_output(
        self, what: str, arrays: Mapping[str, np.ndarray], compute: Callable[[Any], Any]
    ) -> Any:
        """Returns ``compute(reference)`` for this batch (`arrays`, host arrays) and `what`
        (a name for the function and any setting that changes its result), computed once
        per reference, batch and `what`."""
        key = (self.ref_name, what, batch_key(arrays))
        if key not in self.store:
            self.store[key] = compute(self.reference)
        return self.store[key]


def batch_key(arrays: Mapping[str, np.ndarray]) -> str:
    """Returns a digest of a batch's host arrays (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.shape}:{a.dtype};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def split(params: Any) -> tuple[Any, SharedPrefix | None]:
    """Returns (the plain parameters, the SharedPrefix or None) of what a caller passed."""
    if isinstance(params, SharedPrefix):
        return params.params, params
    return params, None
