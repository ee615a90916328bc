"""The result of a dataset job: :class:`Attributions` (also what :func:`open_attributions`
returns for a finished or partial store)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import stores


class Attributions:
    """A job's results, read from its store (``.npy`` files memory-mapped read-only, or zarr
    arrays) or held in memory.

    Attributes
    ----------
    attributions : (n, ...) or (n, K, ...) array
    targets : int64 (n,) or (n, K): the classes explained
    scores : float64, the model's score of each target
    error : float64 or None: ``sum R`` minus ``s_c(x)`` (conservation), ``s_c(x) - s_c(baseline)``
        (completeness) or 1 (LRP started from ``e_c``: ``start="one_hot"``), where the method defines
        that property
    meta : dict: method, parameters, model fingerprint, relprop version, source, dtype, chunks
    complete : whether every chunk is finished (a partial store holds zeros in the others;
        :meth:`finished_rows` says which rows are valid)
    """

    def __init__(self, path):
        self.path = Path(path)
        self.meta = stores.read_meta(self.path)
        if self.meta is None:
            raise stores.StoreError(f"{str(self.path)!r} holds no relprop attribution store (no {stores.META})")
        self._store = stores.open_store(self.path, self.meta, mode="r")
        self._done = self._store.finished()

    @classmethod
    def in_memory(cls, store):
        self = cls.__new__(cls)
        self.path, self.meta, self._store, self._done = None, store.meta, store, store.finished()
        return self

    def _column(self, name):
        return self._store.arrays.get(name)

    @property
    def attributions(self):
        return self._column("attributions")

    @property
    def targets(self):
        return self._column("targets")

    @property
    def scores(self):
        return self._column("scores")

    @property
    def error(self):
        return self._column("error")

    @property
    def method(self):
        return self.meta["identity"]["method"]

    @property
    def params(self):
        return self.meta["identity"]["params"]

    @property
    def n(self):
        return int(self.meta["n"])

    @property
    def complete(self):
        return len(self._done) == self._store.chunks

    def finished_rows(self):
        """A boolean mask (n,): the rows whose chunk is finished."""
        mask = np.zeros(self.n, bool)
        for i in self._done:
            mask[self._store.chunk_slice(i)] = True
        return mask

    def __len__(self):
        return self.n

    def __repr__(self):
        a = self.attributions
        where = "in memory" if self.path is None else repr(str(self.path))
        state = "complete" if self.complete else f"{len(self._done)}/{self._store.chunks} chunks finished"
        return f"Attributions({self.method}, {tuple(a.shape)} {a.dtype}, {state}, {where})"


def open_attributions(path):
    """Reopen the store a dataset job wrote (finished or partial): :class:`Attributions`."""
    return Attributions(path)
