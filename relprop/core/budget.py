"""The one memory policy of relprop's internal batches (``BUDGET``; tests may swap it)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """The one memory policy of an internal batch, in bytes of stored activations.

    CPU: as many rows as keep the activations near ``cache`` (cache-resident elementwise
    passes; measured on a 100k-row MLP, EpsilonPlusFlat: 63 ms at 4 MiB, 99 ms at 16 MiB, 87 ms
    at 1 MiB), but at least ``min_rows`` (GEMMs stay large on conv nets) and at most ``cpu``.
    GPU: ``gpu`` (large batches fill the device). Expanded batches (integrated-gradients path
    points, perturbed copies, coalitions, noisy copies) take ``expand`` per chunk. Inside a
    layer, one im2col buffer takes at most ``cols`` (the conv forward and backward cut their
    batch into chunks below it), and ``fit_patterns`` cuts its float64 patches at ``patch``."""

    cache: int = 4 * 2**20
    min_rows: int = 32
    cpu: int = 768 * 2**20
    gpu: int = 4 * 2**30
    expand: int = 256 * 2**20
    cols: int = 8 * 2**20
    patch: int = 16 * 2**20

    def rows(self, per_row, device):
        per_row = max(1, int(per_row))
        if device:
            return max(1, self.gpu // per_row)
        return max(1, min(max(self.cache // per_row, self.min_rows), self.cpu // per_row))

    def expand_rows(self, per_row):
        return max(1, self.expand // max(1, int(per_row)))


BUDGET = Budget()
