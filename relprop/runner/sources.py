"""Where a dataset job reads its samples from.

Every source is one of two kinds:

* **random access** (:class:`ArraySource` and the readers built on it): the number of samples
  ``n`` and the per-sample ``shape`` are known up front and ``read(start, stop)`` returns the
  rows ``start:stop`` as ``(x, labels or None)``. A resumed job reads only the chunks it still
  has to compute.
* **iterable** (:class:`IterableSource`): a sequence of batches ``x`` or ``(x, y)``, e.g. a torch
  ``DataLoader``; ``n`` is known when the iterable (or its ``dataset``) has a length. A resumed
  job iterates again from the start and skips the rows it has finished (the iterable must
  yield the same samples in the same order: no shuffling).

:func:`as_source` turns what a user passes (an array, a path, an iterable) into a source.
Each source describes itself (:meth:`describe`) for the store's metadata.
"""
from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import numpy as np


class SourceError(ValueError):
    """A dataset that cannot be read as given (the message names the file or the object)."""


class ArraySource:
    """Rows of an array-like with ``shape``, ``dtype`` and slicing along axis 0: a numpy array,
    a memory-mapped ``.npy``, a zarr array, an h5py dataset. ``labels``: None or an int array
    (n,) read alongside."""

    random_access = True

    def __init__(self, data, labels=None, description=None):
        if not hasattr(data, "shape") or not hasattr(data, "dtype") or not hasattr(data, "__getitem__"):
            raise SourceError(f"a dataset source must be an array (numpy, memory-mapped .npy, zarr), a path or an "
                              f"iterable of batches, got {type(data).__name__}")
        if len(data.shape) < 2:
            raise SourceError(f"a dataset array must be shaped (n_samples, ...), got shape {tuple(data.shape)}")
        if data.shape[0] == 0:
            raise SourceError("the dataset is empty (0 samples)")
        _check_dtype(np.dtype(data.dtype), "the dataset")
        self.data = data
        self.n = int(data.shape[0])
        self.shape = tuple(int(s) for s in data.shape[1:])
        self.dtype = np.dtype(data.dtype)
        self.labels = None if labels is None else _check_labels(labels, self.n)
        self._description = description or {"kind": type(data).__module__.split(".")[0] + " array"}

    def describe(self):
        d = dict(self._description)
        d.update(n=self.n, shape=list(self.shape), dtype=str(self.dtype), labels=self.labels is not None)
        return d

    def read(self, start, stop):
        """Rows ``start:stop`` and their labels. numpy arrays (memory maps included) give a view,
        no copy: for a memory map the kernel is asked to read the rows ahead now
        (``MADV_WILLNEED``, asynchronous) and :meth:`release` drops them after use."""
        if isinstance(self.data, np.ndarray):
            _advise(self.data, start, stop, "MADV_WILLNEED")
            x = self.data[start:stop]
        else:
            x = np.asarray(self.data[start:stop])
        y = None if self.labels is None else np.asarray(self.labels[start:stop])
        return x, y

    def release(self, start, stop):
        """The rows ``start:stop`` are no longer needed (their chunk is computed)."""
        _advise(self.data, start, stop, "MADV_DONTNEED")


def _advise(data, start, stop, advice):
    """``madvise`` the memory-mapped pages of rows ``start:stop`` of a whole ``np.memmap``:
    ``MADV_WILLNEED`` starts reading them ahead; ``MADV_DONTNEED`` tells the kernel this process
    no longer needs them, so a job streaming a large ``.npy`` keeps its resident memory bounded
    by its chunks instead of growing with the file (the file is unchanged: it is mapped
    shared, and only ever read)."""
    mm = getattr(data, "base", None)  # a whole np.memmap (as np.load gives) has the mmap as its base
    if not isinstance(mm, mmap.mmap) or not hasattr(mmap, advice) or not data.flags.c_contiguous:
        return
    row = data.itemsize * int(np.prod(data.shape[1:]))
    skip = int(data.offset) % mmap.ALLOCATIONGRANULARITY  # numpy maps from the granule below the offset
    lo, hi = skip + start * row, skip + stop * row
    page = mmap.PAGESIZE
    if advice == "MADV_DONTNEED":
        lo, hi = -(-lo // page) * page, hi // page * page  # only whole pages inside these rows
    else:
        lo, hi = lo // page * page, -(-hi // page) * page
    hi = min(hi, len(mm))
    if hi > lo:
        try:
            mm.madvise(getattr(mmap, advice), lo, hi - lo)
        except (OSError, ValueError):
            pass  # advice only


class IterableSource:
    """Batches ``x`` or ``(x, y)`` (or ``[x, y]``; numpy arrays or torch tensors) from any
    iterable, in a fixed order. ``n``: the number of samples when known (``len(iterable.dataset)``
    for a torch DataLoader, else ``len(iterable)`` only when the items are samples is not
    assumed; pass ``n=`` to ``ex.map``)."""

    random_access = False

    def __init__(self, iterable, n=None):
        if isinstance(iterable, (str, bytes, dict)):
            raise SourceError(f"a dataset iterable must yield batches x or (x, y), got a {type(iterable).__name__}")
        sampler = getattr(iterable, "sampler", None)
        if type(sampler).__name__ in ("RandomSampler", "SubsetRandomSampler", "WeightedRandomSampler"):
            raise SourceError("the DataLoader shuffles (its sampler is a RandomSampler): a job must see the samples in "
                              "the same order on every pass to store and resume them; use shuffle=False")
        self.iterable = iterable
        ds = getattr(iterable, "dataset", None)
        if n is None and ds is not None and hasattr(ds, "__len__"):
            n = len(ds)
        self.n = None if n is None else int(n)
        self.shape = None
        self.dtype = None
        self.labels = None  # known per batch
        self._first = None

    def describe(self):
        return {"kind": f"iterable ({type(self.iterable).__module__}.{type(self.iterable).__name__})", "n": self.n,
                "shape": None if self.shape is None else list(self.shape),
                "dtype": None if self.dtype is None else str(self.dtype)}

    def peek(self):
        """The first batch (x, y or None), kept so that :meth:`batches` yields it again: the job
        learns the sample shape, dtype and whether labels come along before it starts."""
        if self._first is None:
            it = iter(self.iterable)
            try:
                first = next(it)
            except StopIteration:
                raise SourceError("the dataset iterable yielded no batch") from None
            self._first = (_batch(first, 0), it)
            x, y = self._first[0]
            self.shape, self.dtype, self.labels = tuple(x.shape[1:]), x.dtype, y is not None
        return self._first[0]

    def batches(self):
        """(x, y or None) batches, each checked against the first (shape, dtype, labels)."""
        self.peek()
        (x0, y0), it = self._first
        self._first = None  # a second pass (a resumed job) iterates afresh
        yield x0, y0
        for i, b in enumerate(it, 1):
            x, y = _batch(b, i)
            if tuple(x.shape[1:]) != self.shape or x.dtype != self.dtype:
                raise SourceError(f"batch {i} of the dataset iterable has samples {tuple(x.shape[1:])} {x.dtype}, "
                                  f"the first had {self.shape} {self.dtype}")
            if (y is not None) != self.labels:
                raise SourceError(f"batch {i} of the dataset iterable {'has' if y is not None else 'lacks'} labels, "
                                  f"the first {'did' if self.labels else 'did not'}")
            yield x, y


def _batch(b, i):
    """One batch from an iterable as numpy (x, y or None)."""
    y = None
    if isinstance(b, (tuple, list)):
        if len(b) not in (1, 2):
            raise SourceError(f"batch {i} of the dataset iterable must be x or (x, y), got a "
                              f"{type(b).__name__} of {len(b)} items")
        x = b[0]
        y = b[1] if len(b) == 2 else None
    else:
        x = b
    x = _to_numpy(x, f"batch {i} of the dataset iterable")
    if x.ndim < 2 or x.shape[0] == 0:
        raise SourceError(f"batch {i} of the dataset iterable must be shaped (batch, ...) with at least one sample, "
                          f"got shape {x.shape}")
    _check_dtype(x.dtype, f"batch {i} of the dataset iterable")
    if y is not None:
        y = _check_labels(_to_numpy(y, f"the labels of batch {i}"), x.shape[0], f"the labels of batch {i}")
    return x, y


def _to_numpy(a, what):
    if type(a).__module__.startswith("torch"):
        a = a.detach().cpu().numpy()
    if not hasattr(a, "__array__"):
        raise SourceError(f"{what} must be an array (numpy or torch), got {type(a).__name__}")
    return np.asarray(a)


def _check_dtype(dtype, what):
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)) or dtype.itemsize > 8:
        raise SourceError(f"{what} must hold numbers (float or integer pixels), got dtype {dtype}")


def _check_labels(labels, n, what="labels"):
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n or not np.issubdtype(y.dtype, np.integer):
        raise SourceError(f"{what} must be an int array of shape ({n},), got {y.dtype} {y.shape}")
    return y


def as_source(data, labels=None, n=None, **options):
    """A source for ``data``: an array-like, a path (``.npy``, ``.zarr``, IDX ``*-ubyte[.gz]``,
    a folder of images), a source object, or an iterable of batches. ``labels`` (random-access
    sources): an int array (n,) or, for IDX images, the labels file. ``options`` go to the
    folder-of-images and IDX readers (see :mod:`relprop.runner.images`)."""
    if hasattr(data, "random_access"):
        return data
    if isinstance(data, (str, os.PathLike)):
        return _from_path(Path(data), labels, **options)
    if options:
        raise TypeError(f"source options {sorted(options)} apply to a folder of images or IDX files, not to a "
                        f"{type(data).__name__}")
    if hasattr(data, "shape") and hasattr(data, "dtype"):
        if type(data).__module__.startswith("torch"):
            data = data.detach().cpu().numpy()
        return ArraySource(data, labels)
    if hasattr(data, "__iter__"):
        if labels is not None:
            raise TypeError("labels= goes with an array source; an iterable yields (x, y) batches itself")
        return IterableSource(data, n)
    raise SourceError(f"cannot read a dataset from {type(data).__name__}: pass an array, a .npy/.zarr path, IDX "
                      f"files, a folder of images, or an iterable of batches")


def _from_path(path, labels, **options):
    from . import images

    if not path.exists():
        raise SourceError(f"dataset {str(path)!r} does not exist")
    if isinstance(labels, (str, os.PathLike)):
        labels = images.read_labels(Path(labels))
    if path.is_dir() and (path / "zarr.json").exists() or path.suffix == ".zarr" or (path / ".zarray").exists():
        _no_options(options, path)
        try:
            import zarr
        except ImportError:
            raise ImportError("reading a zarr dataset needs zarr (pip install 'relprop[zarr]')") from None
        try:
            arr = zarr.open_array(str(path.resolve()), mode="r")
        except Exception as e:  # zarr raises several types for a folder that is not an array
            raise SourceError(f"dataset {str(path)!r} is not a readable zarr array ({e})") from None
        codecs = json.dumps(_zarr_codecs(arr), default=str).lower()
        if "pickle" in codecs or '"object"' in codecs:
            raise SourceError(f"dataset {str(path)!r}: its zarr codecs include pickle/object encoding, which would "
                              f"run code from the file when read; store numbers with numeric codecs")
        return ArraySource(arr, labels, {"kind": "zarr", "path": str(path.resolve())})
    if path.is_dir():
        return images.ImageFolder(path, labels=labels, **options)
    if path.suffix == ".npy":
        _no_options(options, path)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise SourceError(f"dataset {str(path)!r} is not a readable .npy array ({e})") from None
        return ArraySource(arr, labels, {"kind": "npy", "path": str(path.resolve())})
    if images.is_idx(path):
        return images.idx_source(path, labels, **options)
    raise SourceError(f"dataset {str(path)!r}: unknown format (expected .npy, .zarr, IDX '*-ubyte[.gz]' files or a "
                      f"folder of images)")


def _zarr_codecs(arr):
    """The codec and filter declarations of a zarr array (v2 or v3 metadata), as JSON values."""
    md = arr.metadata
    try:
        d = md.to_dict()
    except Exception:  # noqa: BLE001 - metadata classes differ between zarr versions
        d = {}
    return {k: d.get(k) for k in ("codecs", "filters", "compressor", "compressors", "dtype", "data_type")}


def _no_options(options, path):
    if options:
        raise TypeError(f"source options {sorted(options)} do not apply to {str(path)!r}")
