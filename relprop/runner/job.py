"""A dataset job: ``Explainer.map(source, out=...)``.

The samples are cut into chunks of ``chunk_rows`` (the last one shorter); chunk ``i`` holds
rows ``i*chunk_rows ... (i+1)*chunk_rows - 1`` of the source, is computed by one
``Explainer.explain(x, ..., row_offset=first row)`` call (random methods draw per sample from
the seed and the sample's index, so a chunk's result does not depend on which process or run
computes it) and is written whole to the store, then recorded in its manifest. A rerun of the
same job computes only the chunks the manifest lacks; a rerun of another job is refused.

In one process, threads form a pipeline with bounded queues: a reader (the next chunks are
read, converted and checked while the kernels run), the caller's thread (the kernels; they
release the GIL), a writer (each chunk's data into the store) and a committer (syncs what the
writer put, then records it in the manifest, a group of chunks at a time: the device's syncs
never hold up the writer, nor through it the kernels). At most ``QUEUE`` chunks wait on each
side, which with the chunk size chosen from ``max_memory`` bounds the job's memory. With ``scheduler=`` the chunks run as tasks
on a Dask cluster instead (:mod:`relprop.dask`).
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import queue
import re
import sys
import threading
import time
import uuid

import numpy as np

from ..core import backend, budget, dense_chain
from ..core.execute import PAGE, page_aligned
from ..core.checks import _check_targets
from ..core.plan import compiled, fingerprint
from . import stores
from .sources import IterableSource, SourceError, as_source

QUEUE = 2  # chunks read ahead, and chunks waiting for the writer
MAX_CHUNK_ROWS = 65536
MAX_CHUNK_BYTES = 64 * 2**20


class JobError(ValueError):
    """A dataset job that cannot run as asked (the message says what and where)."""


# -- parameters ------------------------------------------------------------------------------
def parse_memory(value):
    """Bytes from an int or a string like ``"2GB"``, ``"512 MiB"``, ``"1.5g"``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"max_memory must be a number of bytes or a string like '2GB', got {value!r}")
    if isinstance(value, numbers.Real):
        b = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*", value.lower())
        if not m:
            raise ValueError(f"max_memory must look like '2GB', '512MB' or a number of bytes, got {value!r}")
        b = float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ")
    else:
        raise TypeError(f"max_memory must be a number of bytes or a string like '2GB', got {type(value).__name__}")
    if not np.isfinite(b) or b < 2**20:
        raise ValueError(f"max_memory must be at least 1 MiB, got {value!r}")
    return int(b)


def model_shape(net, shape, where):
    """The per-sample shape the model reads, for samples shaped ``shape``: the same, or a
    reshape that only adds or drops size-1 axes or flattens for a model whose first layer is
    Dense. A layout change (e.g. channels last) is refused, never guessed."""
    shape = tuple(int(s) for s in shape)
    want = net.input_shape
    rank = net.input_rank()
    size = int(np.prod(shape))
    cand = []
    if want is not None:
        cand.append(tuple(want))
    elif rank == 1:
        cand.append((size,))
    elif rank is not None and len(shape) != rank:
        core = tuple(s for s in shape if s != 1)
        if len(core) <= rank:  # e.g. (28, 28) -> (1, 28, 28) for a Conv2d input
            cand.append((1,) * (rank - len(core)) + core)
    if not cand or shape in cand:
        cand.insert(0, shape)
    for c in cand:
        if int(np.prod(c)) != size:
            continue
        same = c == shape
        squeeze = tuple(s for s in c if s != 1) == tuple(s for s in shape if s != 1)
        if same or squeeze or len(c) == 1:
            try:
                net.infer_shapes(c)
            except ValueError as e:
                raise JobError(f"{where}: samples shaped {shape} do not fit the model ({e})") from None
            if rank is not None and len(c) != rank:
                continue
            return c
    expect = f"{tuple(want)}" if want is not None else (f"rank {rank}" if rank else "the model's input")
    raise JobError(f"{where}: samples shaped {shape} do not fit the model (it reads {expect} per sample; a layout "
                   f"change such as channels-last to channels-first must be done by the source)")


def _jsonable(v, depth=0):
    """A JSON value identifying a parameter value (arrays by content hash)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(u, depth + 1) for k, u in sorted(v.items(), key=lambda t: str(t[0]))}
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        a = np.ascontiguousarray(np.asarray(v))
        if a.size <= 8:
            return {"array": a.tolist(), "dtype": str(a.dtype)}
        return {"array_sha256": hashlib.sha256(memoryview(a).cast("B")).hexdigest(), "shape": list(a.shape),
                "dtype": str(a.dtype)}
    if isinstance(v, (list, tuple)):
        return [_jsonable(u, depth + 1) for u in v]
    if depth < 8 and (hasattr(v, "__dict__") or hasattr(v, "__slots__")):
        # rules, composites, fitted patterns: their type and every attribute (arrays by content)
        names = sorted(getattr(v, "__dict__", None) or
                       {k: None for c in type(v).__mro__ for k in getattr(c, "__slots__", ())})
        return {"type": f"{type(v).__module__}.{type(v).__qualname__}",
                **{k: _jsonable(getattr(v, k, None), depth + 1) for k in names if not k.startswith("__")}}
    return repr(v)


# -- targets ---------------------------------------------------------------------------------
class Targets:
    """What each chunk explains: ``"pred"`` (each sample's argmax), ``"label"`` (the source's
    labels), one class, an int array (n,), or several classes (``targets=``: a list, ``"all"``,
    or an int array (n, K))."""

    def __init__(self, target, targets, n, classes, has_labels):
        self.multi = targets is not None
        if self.multi and target not in (None, "pred"):
            raise TypeError("give either target= (one class per sample) or targets= (several classes), not both")
        self.kind, self.value = "pred", None
        if self.multi:
            self.value = _check_targets(targets, n, classes)
            self.kind = "array2" if self.value.ndim == 2 else "list"
            self.k = self.value.shape[-1]
            return
        self.k = 1
        if target is None or (isinstance(target, str) and target == "pred"):
            return
        if isinstance(target, str):
            if target != "label":
                raise ValueError(f"target must be 'pred', 'label', a class index or an int array (n,), got {target!r}")
            if not has_labels:
                raise JobError("target='label' needs labels, and this source has none (pass labels=, a labelled "
                               "source such as IDX images with their labels file, or an iterable of (x, y))")
            self.kind = "label"
            return
        if isinstance(target, (bool, np.bool_)):
            raise TypeError(f"target must be 'pred', 'label', a class index or an int array (n,), got {target!r}")
        if isinstance(target, numbers.Integral):
            if not 0 <= int(target) < classes:
                raise ValueError(f"target {int(target)} is out of range for a model with {classes} outputs")
            self.kind, self.value = "class", int(target)
            return
        t = np.asarray(target)
        if t.ndim != 1 or t.shape[0] != n or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"a target array must be int, shaped ({n},) (one class per sample), got {t.dtype} "
                             f"{t.shape}")
        if t.min() < 0 or t.max() >= classes:
            raise ValueError(f"target classes must lie in 0..{classes - 1} for a model with {classes} outputs")
        self.kind, self.value = "array", t.astype(np.int64)

    def describe(self):
        v = self.value
        return {"kind": self.kind, "value": _jsonable(v) if self.kind != "class" else v}

    def call_args(self, sl, y, classes):
        """The ``target=`` / ``targets=`` keywords for the rows ``sl`` (labels ``y``)."""
        if self.kind == "pred":
            return {"target": None}
        if self.kind == "label":
            if y is None:
                raise JobError(f"rows {sl.start}..{sl.stop - 1}: target='label' but the source gave no labels")
            if y.min() < 0 or y.max() >= classes:
                bad = int(np.argmax((y < 0) | (y >= classes)))
                raise JobError(f"sample {sl.start + bad}: label {int(y[bad])} is out of range for a model with "
                               f"{classes} outputs")
            return {"target": np.asarray(y, np.int64)}
        if self.kind == "class":
            return {"target": self.value}
        if self.kind == "array":
            return {"target": self.value[sl]}
        if self.kind == "array2":
            return {"targets": self.value[sl]}
        return {"targets": self.value}


# -- one chunk ------------------------------------------------------------------------------
class Chunk:
    """Everything a process needs to compute chunks of a job (pickled to Dask workers): the
    Explainer (its seed fixed), the target rule, the model's per-sample shape and the dtype."""

    def __init__(self, ex, targets, shape, dtype, classes, error, n, one_batch_rows=None):
        self.ex, self.targets, self.shape, self.dtype = ex, targets, shape, np.dtype(dtype)
        self.classes, self.error, self.n = classes, error, n
        self.plain = ex
        if one_batch_rows is not None:
            self.set_rows(one_batch_rows)

    def set_rows(self, rows):
        """Run each chunk of ``rows`` rows as one internal batch of the Dense-chain kernel (a job
        ``_chunk_rows`` found one for, with the chunk size it planned or the one a resumed store has)."""
        self.ex = self.plain.with_batch_size(rows)

    def prepare(self, x, where):
        """A source batch as the model's input: cast to the job's dtype, reshaped, every entry
        checked to be finite (in the reader thread, while the kernels compute the chunk before)."""
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.integer):
            x = x.astype(self.dtype)
        else:
            x = x.astype(self.dtype, copy=False)
        x = x.reshape((x.shape[0],) + self.shape)
        if not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise JobError(f"{where}: sample {int(bad[0])} of the chunk contains NaN or Inf (at {tuple(bad[1:])})")
        return x

    def compute(self, x, y, sl, prepared=False, out=None):
        """The columns of rows ``sl``: attributions, targets, scores (and error); ``prepared``:
        ``x`` came through :meth:`prepare` already; ``out``: where the attributions are written
        (an in-memory store's rows), else None. The columns are page-aligned where they are
        copies anyway (a ``.npy`` store writes them by direct I/O)."""
        if not prepared:
            x = self.prepare(x, f"rows {sl.start}..{sl.stop - 1}")
        ex = self.ex.for_rows(sl.start, sl.stop, self.n, x.ndim)
        kw = self.targets.call_args(sl, y, self.classes)
        e = ex._call(x, kw.get("target"), kw.get("targets"), sl.start, explain=True, checked=True, out=out)
        cols = {"attributions": e.attribution, "targets": _aligned(e.targets, np.int64),
                "scores": _aligned(e.scores, np.float64)}
        if self.error:
            cols["error"] = _aligned(e.error, np.float64)
        return cols


def _aligned(a, dtype):
    """``a`` as a page-aligned C-order array of ``dtype`` (one copy, as ``astype`` would make)."""
    a = np.asarray(a)
    out = page_aligned(a.shape, dtype)
    np.copyto(out, a, casting="same_kind")
    return out


# -- the job --------------------------------------------------------------------------------
def plan_job(ex, source, out, target=None, targets=None, batch_size="auto", max_memory="2GB", overwrite=False,
             dtype=None, n=None, labels=None, **options):
    """Check everything about a job before any kernel runs; returns (source, Chunk, meta)."""
    src = as_source(source, labels=labels, n=n, **options)
    if isinstance(src, IterableSource):
        x0, y0 = src.peek()
        if src.n is None:
            raise JobError("the dataset iterable has no length: pass n= (the number of samples it yields) so the "
                           "store can be laid out")
        if n is not None and src.n != int(n):
            raise JobError(f"n={n} but the dataset iterable's dataset holds {src.n} samples")
        has_labels = y0 is not None
    else:
        if n is not None and int(n) != src.n:
            raise JobError(f"n={n} but the source holds {src.n} samples")
        has_labels = src.labels is not None
    net = ex.net
    shape = model_shape(net, src.shape, "the dataset")
    if dtype is None:
        dtype = np.float64 if (src.dtype.kind == "f" and src.dtype.itemsize == 8) else np.float32
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    shapes = net.infer_shapes(shape)
    classes = shapes[net.score_node]
    if len(classes) != 1:
        raise JobError(f"the model's output must be (N, classes) scores, got per-sample shape {classes}")
    classes = classes[0]
    T = Targets(target, targets, src.n, classes, has_labels)
    # a random method's seed is fixed for the whole job and recorded; a rerun with seed=None
    # continues with the seed its store recorded
    ex = ex.with_seed(_recorded_seed(ex, out))
    sums_to = ex.sums_to
    kshape = (T.k,) if T.multi else ()
    cols = {"attributions": [list(kshape + shape), dtype.str], "targets": [list(kshape), "<i8"],
            "scores": [list(kshape), "<f8"]}
    if sums_to is not None:
        cols["error"] = [list(kshape), "<f8"]
    rows, one_batch = _chunk_rows(ex, shapes, shape, src, dtype, T.k, batch_size, max_memory)
    identity = {"method": ex.method.name, "params": _jsonable(ex.job_params()),
                "backend": ex.backend, "allow_tf32": ex.allow_tf32,
                "model": fingerprint(net), "dtype": dtype.str, "targets": T.describe(),
                "source": {**{k: v for k, v in src.describe().items() if k not in ("kind", "path", "labels_file")},
                           "n": src.n, "shape": list(src.shape), "dtype": str(src.dtype), "labels": has_labels,
                           "sha256": _sample_digest(src)}}
    from .. import __version__

    job = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    meta = {"format": stores.FORMAT, "store": stores.store_kind(out) if out is not None else "memory",
            "job": job, "identity": identity, "n": src.n, "chunk_rows": rows, "columns": cols,
            "sums_to": sums_to, "relprop": __version__, "source": src.describe(), "model_shape": list(shape),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return src, Chunk(ex, T, shape, dtype, classes, sums_to is not None, src.n, rows if one_batch else None), meta


def _sample_digest(src):
    """SHA-256 of a few samples (first, middle, last; an iterable's first): which data a store
    holds, without reading the whole dataset; a job over other data is refused on rerun."""
    h = hashlib.sha256()
    if src.random_access:
        rows = sorted({0, src.n // 2, src.n - 1})
        parts = [src.read(i, i + 1) for i in rows]
    else:
        x, y = src.peek()
        parts = [(x[:1], None if y is None else y[:1])]
    for x, y in parts:
        h.update(np.ascontiguousarray(x).tobytes())
        if y is not None:
            h.update(np.ascontiguousarray(y).astype(np.int64).tobytes())
    if src.random_access and src.labels is not None:  # all labels: cheap, and they may be the targets
        h.update(np.ascontiguousarray(src.labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def _recorded_seed(ex, out):
    """The seed an existing store of a random method recorded, when ``ex``'s own seed is None."""
    if out is None or not (ex.method.random or ex.runs.random):
        return None
    if ex.configured_seed is not None:
        return None
    try:
        meta = stores.read_meta(out)
    except (stores.StoreError, OSError):
        return None
    params = (meta or {}).get("identity", {}).get("params", {})
    seed = params.get("seed") if isinstance(params, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _chunk_rows(ex, shapes, shape, src, dtype, k, batch_size, max_memory):
    """(rows per chunk, whether a chunk runs as one internal batch): ``batch_size`` when given,
    else what fits ``max_memory`` with the engine's own working set set aside, at most
    MAX_CHUNK_ROWS rows and MAX_CHUNK_BYTES of output, and a whole number of the engine's internal
    batches. An MLP's traversal in the Dense-chain kernel holds per row only its input, scores and
    results: its working set is counted per row, and each chunk is one internal batch (no
    stitching of batch results)."""
    if batch_size not in (None, "auto"):
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be 'auto' or an int >= 1 (samples per chunk), got {batch_size!r}")
        return int(min(batch_size, src.n)), False
    mem = parse_memory(max_memory)
    size = int(np.prod(shape))
    kernels = backend.kernels_for(np.empty(0, dtype))
    engine_rows, per, chain = ex._engine_rows(compiled(ex.net, dtype), ex._validated(None), kernels, shapes,
                                              dtype.itemsize, k, src.n)
    chain = chain and ex.batch_size is None and ex.backend != "gpu"  # (the kernel is the CPU's)
    engine_rows = ex.batch_size or engine_rows
    expands = ex.runs.mode is None or ex.base is not None  # path points, perturbed or noisy copies
    engine = (0 if chain else 4 * engine_rows * per) + (budget.BUDGET.expand if expands else 0)  # activations, copies
    src_item = np.dtype(src.dtype).itemsize if src.dtype is not None else dtype.itemsize
    in_row = size * (src_item + dtype.itemsize)  # as read, and as cast
    convert = size * 8  # the reader's float64 conversion buffer of integer pixels (one chunk)
    out_row = k * (size * dtype.itemsize + 24)
    # QUEUE chunks read ahead + the one computing; its output, QUEUE waiting + the one writing
    pipeline = (QUEUE + 1) * in_row + (QUEUE + 2) * out_row + convert + (4 * per if chain else 0)
    room = mem - engine
    if room < pipeline:
        need = (engine + pipeline) / 2**20
        raise JobError(f"max_memory={max_memory!r} is too small for this model and method: one sample needs about "
                       f"{need:.0f} MiB with the engine's working set (give at least {int(need * 1.5) + 1}MB)")
    rows = min(room // pipeline, MAX_CHUNK_ROWS, max(1, MAX_CHUNK_BYTES // out_row), src.n)
    if chain:
        # whole pages per chunk in every column (the kernel's results are page-aligned: a .npy store
        # writes all of them by direct I/O), when that still leaves one internal batch per chunk
        col_bytes = [k * size * dtype.itemsize] + [8 * k] * 3
        whole = int(np.lcm.reduce([PAGE // math.gcd(b, PAGE) for b in col_bytes]))
        if rows >= max(whole, dense_chain.MIN_ROWS) and rows < src.n:
            rows = rows // whole * whole
        return int(max(1, rows)), rows >= dense_chain.MIN_ROWS
    if rows > engine_rows:
        rows = rows // engine_rows * engine_rows
    return int(max(1, rows)), False


def run_job(ex, source, out=None, *, target=None, targets=None, batch_size="auto", max_memory="2GB",
            progress=True, overwrite=False, dtype=None, n=None, labels=None, scheduler=None, **options):
    """``Explainer.map``: see there."""
    if not isinstance(overwrite, (bool, np.bool_)):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a path (a folder for .npy files, or a path ending in .zarr) or None, got "
                        f"{type(out).__name__}")
    src, chunk, meta = plan_job(ex, source, out, target, targets, batch_size, max_memory, overwrite, dtype, n,
                                labels, **options)
    if scheduler is not None and not src.random_access:
        raise JobError("a cluster job (scheduler=) needs a random-access source: an array, a .npy or zarr path, "
                       "IDX files or a folder of images, not an iterable")
    if out is None:
        if scheduler is not None:
            raise JobError("scheduler= needs out= (a store the workers write to)")
        store, done = stores.MemoryStore(meta), set()
    else:
        store, done = stores.prepare(out, meta, overwrite, auto_rows=batch_size in (None, "auto"))
        if chunk.plain is not chunk.ex and store.rows != meta["chunk_rows"]:  # resumed with the store's chunks
            chunk.set_rows(store.rows)
    try:
        if scheduler is not None:
            from .. import dask as rdask

            rdask.run_chunks(chunk, src, store, done, scheduler, progress)
        else:
            _run_local(chunk, src, store, done, progress)
    finally:
        store.close()
    from .results import Attributions

    if out is None:
        return Attributions.in_memory(store)
    return Attributions(out)


def _run_local(chunk, src, store, done, progress):
    todo = [i for i in range(store.chunks) if i not in done]
    run = uuid.uuid4().hex[:12]  # recorded with each chunk: which run computed it
    bar = Progress(store.n, sum(_rows(store, i) for i in done), progress)
    if not todo:
        bar.close()
        return
    stop = threading.Event()
    inq, outq = queue.Queue(QUEUE), queue.Queue(QUEUE)
    release = getattr(src, "release", lambda start, stop: None)
    failure = []

    def put(q, item):
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader():
        try:
            for i, x, y in _read_chunks(src, store, set(done), todo):
                sl, ready = store.chunk_slice(i), False
                try:  # the cast and the finite check here, while the kernels compute the chunk before
                    read, x, ready = x, chunk.prepare(x, f"rows {sl.start}..{sl.stop - 1}"), True
                    if not np.shares_memory(read, x):
                        release(sl.start, sl.stop)  # cast into memory of its own: the memory map's pages can go now
                    del read
                except Exception:  # noqa: BLE001 - raised again by compute, in chunk order
                    ready = False
                if not put(inq, (i, x, y, ready)):
                    return
            put(inq, None)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            failure.append(e)
            put(inq, None)

    # the writer puts each chunk's data into the store; the committer records them, in groups:
    # it syncs the data of every chunk put so far, then writes their manifest entries (a sync waits
    # for the device, so the writer never does: the kernels never wait for a full output queue)
    written, cond, writing = [], threading.Condition(), [True]

    def writer():
        ended = False
        try:
            while True:
                item = outq.get()
                if item is None:
                    ended = True
                    return
                i, cols, info = item
                store.put(i, cols)
                with cond:
                    written.append((i, info))
                    cond.notify()
                bar.update(_rows(store, i))
        except BaseException as e:  # noqa: BLE001 - the chunks put before this one are whole and get committed
            failure.append(e)
            stop.set()
            while not ended and outq.get() is not None:  # drain so the compute side never blocks
                pass
        finally:
            with cond:
                writing[0] = False
                cond.notify()

    def committer():
        try:
            while True:
                with cond:
                    while not written and writing[0]:
                        cond.wait()
                    group, written[:] = list(written), []
                    if not group:
                        return  # the writer ended and everything it put is recorded
                store.commit(group)
        except BaseException as e:  # noqa: BLE001
            failure.append(e)
            stop.set()

    rd = threading.Thread(target=reader, name="relprop-reader", daemon=True)
    wr = threading.Thread(target=writer, name="relprop-writer", daemon=True)
    cm = threading.Thread(target=committer, name="relprop-committer", daemon=True)
    rd.start()
    wr.start()
    cm.start()
    ok = False
    try:
        while not failure:
            try:
                item = inq.get(timeout=0.1)  # polled: a failed writer stops the reader before its end mark
            except queue.Empty:
                continue
            if item is None:
                break
            i, x, y, ready = item
            item = None  # the chunk's input is freed once computed (del x below)
            sl = store.chunk_slice(i)
            t0 = time.perf_counter()
            rows = store.result_rows(i) if isinstance(store, stores.MemoryStore) else None  # (in place)
            cols = chunk.compute(x, y, sl, prepared=ready, out=rows)
            del x
            release(sl.start, sl.stop)
            info = {"seconds": round(time.perf_counter() - t0, 4), "run": run, "pid": os.getpid()}
            if not put(outq, (i, cols, info)):
                break
        ok = not failure
    finally:
        if not ok:
            stop.set()  # the reader stops; the writer still writes the chunks already computed
        outq.put(None)
        wr.join()
        cm.join()
        rd.join(timeout=10)
        bar.close()
    if failure:
        raise failure[0]


def _rows(store, i):
    sl = store.chunk_slice(i)
    return sl.stop - sl.start


def _read_chunks(src, store, done, todo):
    """(i, x, y) for each chunk in ``todo``, read from the source."""
    if src.random_access:
        for i in todo:
            sl = store.chunk_slice(i)
            x, y = src.read(sl.start, sl.stop)
            yield i, x, y
        return
    # an iterable: re-cut its batches into the store's chunks; finished chunks are skipped
    rows = store.rows
    xs, ys, have, i = [], [], 0, 0
    for x, y in src.batches():
        xs.append(x)
        ys.append(y)
        have += x.shape[0]
        while have >= rows or (have and i * rows + have >= store.n):
            take = min(rows, store.n - i * rows)
            if take <= 0 or have < take:
                break
            # memory of its own (a copy when one batch of the iterable holds the chunk): an iterable
            # may refill the array it yielded, after the reader checked it
            xa = np.concatenate(xs) if len(xs) > 1 else np.array(xs[0])
            ya = None if ys[0] is None else (np.concatenate(ys) if len(ys) > 1 else np.array(ys[0]))
            if i not in done:
                yield i, xa[:take], None if ya is None else ya[:take]
            xs, ys = [xa[take:]], [None if ya is None else ya[take:]]
            have -= take
            i += 1
        if i * rows >= store.n and have:
            raise SourceError(f"the dataset iterable yields more than n={store.n} samples")
    if i * rows < store.n:
        raise SourceError(f"the dataset iterable yielded {i * rows + have} samples, n={store.n} were expected")


class Progress:
    """A tqdm bar (samples/s, ETA) on a terminal when tqdm is installed; otherwise a plain line
    every ``every`` seconds and at the end (``enabled=False``: silent)."""

    def __init__(self, total, initial, enabled, every=10.0, stream=None, unit="sample", desc="relprop"):
        self.total, self.count, self.enabled, self.every = total, initial, bool(enabled), every
        self.unit, self.desc = unit, desc
        self.stream = stream or sys.stderr
        self.t0 = self.last = time.perf_counter()
        self.start = initial
        self.bar = None
        self.lock = threading.Lock()
        if self.enabled and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=initial, unit=unit, unit_scale=True, file=self.stream,
                                desc=desc, smoothing=0.1)
            except ImportError:
                pass

    def update(self, k):
        with self.lock:
            self.count += k
            if self.bar is not None:
                self.bar.update(k)
            elif self.enabled and time.perf_counter() - self.last >= self.every:
                self._line()

    def _line(self, final=False):
        now = time.perf_counter()
        self.last = now
        rate = (self.count - self.start) / max(now - self.t0, 1e-9)
        left = (self.total - self.count) / rate if rate > 0 else float("inf")
        eta = "" if final else f", ETA {left:.0f} s" if np.isfinite(left) else ""
        if final and self.count == self.start:
            print(f"{self.desc}: {self.count}/{self.total} {self.unit}s, nothing left to compute", file=self.stream,
                  flush=True)
            return
        speed = f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"
        print(f"{self.desc}: {self.count}/{self.total} {self.unit}s ({100 * self.count / max(self.total, 1):.1f}%), "
              f"{speed} {self.unit}s/s{eta}", file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line(final=True)
