"""Selecting parameters by path: layer ranges and regex patterns (for freezing, resetting,
ablation)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable

from jaxknow.model.layout import LAYERS, split_layer_path


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which parameters: those in the layer range AND matching any pattern.

    Layers: `layer_start` (inclusive) .. `layer_stop` (exclusive), or `layer_fraction` = f
    meaning layers >= ceil(f * L) (the paper's default for active forgetting: f = 1/3, the
    upper two-thirds). Parameters outside `layers/` (embeddings, final norm, head) are in a
    layer selection only if `include_non_layer`. `patterns` are regexes over paths such as
    ``layers/3/mlp/up/kernel``; with no layer bounds the patterns alone select.
    """

    layer_start: int | None = None
    layer_stop: int | None = None
    layer_fraction: float | None = None
    patterns: tuple[str, ...] = ()
    include_non_layer: bool = False

    def __post_init__(self) -> None:
        if self.layer_fraction is not None and not 0 <= self.layer_fraction <= 1:
            raise ValueError(f"layer_fraction={self.layer_fraction}: must be in [0, 1]")
        if self.layer_fraction is not None and self.layer_start is not None:
            raise ValueError("give layer_start or layer_fraction, not both")
        if not self.has_layers and not self.patterns:
            raise ValueError("a selection needs a layer range, a layer_fraction or patterns")
        for p in self.patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"bad pattern {p!r}: {e}") from None

    @property
    def has_layers(self) -> bool:
        """Returns True when the selection restricts layers."""
        return any(v is not None for v in (self.layer_start, self.layer_stop, self.layer_fraction))

    def layer_range(self, n_layers: int) -> range:
        """Returns the selected layer indices for a model of `n_layers` layers."""
        if self.layer_fraction is not None:
            start = math.ceil(self.layer_fraction * n_layers)
        else:
            start = self.layer_start or 0
        stop = self.layer_stop if self.layer_stop is not None else n_layers
        return range(max(0, start), min(n_layers, stop))

    def matches(self, path: str, n_layers: int) -> bool:
        """Returns True when the parameter at `path` (a per-layer path) is selected; raises
        ValueError for a path into stacked layers (select on `model.layout.unstack`'s view)."""
        _, layer = split_layer_path(path)
        if layer is None and path.startswith(LAYERS + "/"):
            raise ValueError(f"select by per-layer paths, not the stacked path {path!r}")
        if self.has_layers:
            if layer is None:
                if not self.include_non_layer:
                    return False
            elif layer not in self.layer_range(n_layers):
                return False
        if self.patterns:
            return any(re.search(p, path) for p in self.patterns)
        return True

    def paths(self, all_paths: Iterable[str], n_layers: int) -> list[str]:
        """Returns the selected paths among `all_paths`."""
        return [p for p in all_paths if self.matches(p, n_layers)]
