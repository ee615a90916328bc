"""Where a dataset job writes: a folder of ``.npy`` files, or a zarr group.

A store holds, along the samples axis, ``attributions`` (n, ...) or (n, K, ...), ``targets``
(int64), ``scores`` (float64), and ``error`` (float64: ``sum R`` minus what the method's
property says it sums to; absent when the method defines none), plus ``meta.json``: the job's
identity (method, parameters, model fingerprint, source, dtype, targets), relprop's version
and the chunk layout. Finished chunks are recorded in ``manifest/`` as one small file per
chunk, created by write-then-rename after the chunk's data is on disk; a chunk without its
file is not finished and a rerun computes it again (whatever bytes a killed run left there are
overwritten). So the store a killed-and-resumed job ends with equals an uninterrupted run's.

* :class:`NpyStore` (``out="job/"`` or any path not ending in ``.zarr``): preallocated
  ``.npy`` files written chunk by chunk at their offsets; what a user opens with
  ``np.load(mmap_mode="r")``.
* :class:`ZarrStore` (``out="job.zarr"``): zarr arrays chunked along samples with the job's
  chunk rows, compressed; each chunk is written whole by one writer (zarr's local store writes
  a chunk to a temporary file and renames it), so workers of a Dask cluster write their chunks
  in parallel without touching each other's.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from ..core.execute import PAGE, written_in_place

FORMAT = "relprop-attributions/1"
META = "meta.json"
MANIFEST = "manifest"
CREATING = ".relprop-creating"  # written first, removed once meta.json is in place
COLUMNS = ("attributions", "targets", "scores", "error")
ALIGN = PAGE  # a .npy store's data start at a multiple of this, and direct writes cover whole blocks of it
DIRECT_MIN = 2**16  # bytes: smaller writes go through the page cache


class StoreError(ValueError):
    """A store that cannot be used as asked (another job's results, a damaged or foreign folder)."""


def atomic_write(path, data, sync=True):
    """Write ``data`` (bytes) to ``path`` through a temporary file in the same folder (flushed
    to disk when ``sync``), then renamed over ``path``: readers see the old file or the whole
    new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def store_kind(out):
    return "zarr" if str(out).rstrip("/").endswith(".zarr") else "npy"


def read_meta(out):
    """The store's metadata, or None when ``out`` holds no relprop store."""
    p = Path(out) / META
    if not p.exists():
        return None
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise StoreError(f"{str(p)!r} is not readable relprop metadata ({e}); pass overwrite=True to start over") \
            from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise StoreError(f"{str(p)!r} is not a relprop attribution store (format {fmt!r:.40} where {FORMAT!r} was "
                         f"expected)")
    return meta


def prepare(out, meta, overwrite, auto_rows=False):
    """Make ``out`` ready for the job ``meta``: a new store, or the existing store of the same
    job (resume). Refuses another job's store unless ``overwrite``; never deletes a folder that
    is not a relprop store (or one whose creation was interrupted, marked by ``CREATING``).
    ``auto_rows``: the chunk rows were chosen automatically, so a resumed job takes the store's.
    Returns (store, finished chunk ids)."""
    out = Path(out)
    old = None
    if out.exists():
        if not out.is_dir():
            raise StoreError(f"output {str(out)!r} exists and is not a folder")
        ours = _ours(out)
        try:
            old = read_meta(out)
        except StoreError:
            if not (overwrite and ours):
                raise
        if old is None and any(out.iterdir()):
            if not ours:
                raise StoreError(f"output folder {str(out)!r} exists, is not empty and holds no relprop store; "
                                 f"choose another path (relprop deletes only its own stores, even with overwrite)")
            overwrite = True  # a store whose creation was killed before its metadata: start it again
    if old is not None and not overwrite:
        if auto_rows and old.get("job") == meta["job"]:
            meta = {**meta, "chunk_rows": old.get("chunk_rows")}
        diff = [k for k in ("job", "columns", "n", "chunk_rows") if old.get(k) != meta.get(k)]
        if diff:
            k = diff[0]
            if k == "chunk_rows":
                raise StoreError(f"output {str(out)!r} holds this job with chunks of {old.get(k)} samples; pass "
                                 f"batch_size={old.get(k)} (or 'auto') to resume it, or overwrite=True to start over")
            raise StoreError(f"output {str(out)!r} holds the results of another job ({_what_differs(k, old, meta)}); "
                             f"refusing to mix them: choose another output, or overwrite=True to start over")
        store = open_store(out, old, mode="r+")
        return store, store.finished()
    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / CREATING, meta["job"].encode())
    store = (ZarrStore if meta["store"] == "zarr" else NpyStore).create(out, meta)
    atomic_write(out / META, json.dumps(meta, indent=1, sort_keys=True).encode())
    (out / CREATING).unlink()
    return store, set()


def _ours(out):
    """Whether ``out`` is a relprop store (its metadata names the format), or one whose
    creation was interrupted (the ``CREATING`` marker is the first thing a store gets)."""
    if (out / CREATING).exists():
        return True
    try:
        meta = json.loads((out / META).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _what_differs(key, old, new):
    if key != "job":
        return f"{key} {old.get(key)!r} there, {new.get(key)!r} now"
    a, b = old.get("identity", {}), new.get("identity", {})
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return f"{k}: {json.dumps(a.get(k))[:120]} there, {json.dumps(b.get(k))[:120]} now"
    return "its job id differs"


def open_store(out, meta=None, mode="r"):
    meta = meta or read_meta(out)
    if meta is None:
        raise StoreError(f"{str(out)!r} holds no relprop attribution store (no {META})")
    return (ZarrStore if meta["store"] == "zarr" else NpyStore)(Path(out), meta, mode)


class _Store:
    def __init__(self, path, meta, mode):
        self.path, self.meta, self.mode = (None if path is None else Path(path)), meta, mode
        self.n, self.rows = int(meta["n"]), int(meta["chunk_rows"])
        self.columns = {c: (tuple(s), np.dtype(d)) for c, (s, d) in meta["columns"].items()}
        self.arrays = self._open(mode)

    @property
    def chunks(self):
        return -(-self.n // self.rows)

    def chunk_slice(self, i):
        return slice(i * self.rows, min(self.n, (i + 1) * self.rows))

    def finished(self):
        d = self.path / MANIFEST
        if not d.is_dir():
            return set()
        done = set()
        for f in d.iterdir():
            if f.suffix == ".json" and f.stem.isdigit() and int(f.stem) < self.chunks:
                done.add(int(f.stem))
        return done

    def write(self, i, columns, info=None):
        """Write chunk ``i`` (a dict column -> array of the chunk's rows) and record it."""
        self.put(i, columns)
        self.commit([(i, info)])

    def put(self, i, columns):
        """Write chunk ``i``'s data (not yet recorded: see :meth:`commit`)."""
        sl = self.chunk_slice(i)
        for name, a in columns.items():
            want = (sl.stop - sl.start,) + self.columns[name][0]
            if tuple(a.shape) != want:
                raise StoreError(f"chunk {i}: column {name!r} shaped {tuple(a.shape)}, the store expects {want}")
            self._put(name, sl, a)

    def commit(self, entries):
        """Record the chunks ``entries`` ((i, info) pairs, their data already put) as finished:
        the data files are synced first, then one manifest file per chunk is created by
        rename and the manifest folder synced once (a group commit: one sync for many chunks)."""
        if not entries:
            return
        self._sync(None)
        self._check_same_job()
        d = self.path / MANIFEST
        d.mkdir(exist_ok=True)
        for i, info in entries:
            sl = self.chunk_slice(i)
            atomic_write(d / f"{i:08d}.json", json.dumps({"rows": [sl.start, sl.stop], **(info or {})}).encode(),
                         sync=False)  # the folder's sync below makes the renames durable
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _check_same_job(self):
        """The store on disk is still this job's (not replaced by an ``overwrite=True`` run while
        this writer, e.g. a cluster task of the old job, was still computing)."""
        try:
            now = read_meta(self.path)
        except StoreError:
            now = None
        if now is None or now.get("job") != self.meta["job"] or now.get("created") != self.meta.get("created"):
            raise StoreError(f"store {str(self.path)!r} was replaced by another run while this chunk was computed; "
                             f"its result is not recorded")


class NpyStore(_Store):
    """One ``.npy`` file per column, preallocated on disk (``posix_fallocate``: a full disk shows
    up when the job starts, not in the middle of a write) and written chunk by chunk with
    ``pwrite`` at the chunk's offset, then ``fdatasync``: no memory map is held while writing,
    so the job's memory does not grow with the store.

    The data of each file start at a multiple of ``ALIGN`` bytes (the header is padded, as the
    ``.npy`` format allows). Where a chunk's bytes in memory and in the file are aligned alike
    (the Dense-chain kernel's results are page-aligned, and a chunk of a multiple of ``ALIGN``
    bytes starts aligned), its whole blocks are written with ``O_DIRECT``: the device reads them
    from the result itself, and the CPU, which the kernels are using, does not copy them into
    the page cache. The blocks around them, and every write on a system or file system without
    direct I/O, go through the page cache. The bytes on disk are the same either way."""

    @classmethod
    def create(cls, out, meta):
        n = int(meta["n"])
        for name, (shape, dtype) in meta["columns"].items():
            # created under a temporary name and renamed: a killed run leaves no half-made file
            tmp = out / f".{name}.npy.tmp"
            dt = np.dtype(dtype)
            header = _npy_header(dt, (n,) + tuple(shape), ALIGN)
            size = len(header) + n * int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            with open(tmp, "wb") as f:
                f.write(header)
                f.flush()
                try:
                    os.posix_fallocate(f.fileno(), 0, max(size, 1))
                except OSError as e:
                    f.close()
                    tmp.unlink()
                    raise OSError(e.errno, f"cannot reserve {size / 2**20:.1f} MiB for {name}.npy in "
                                           f"{str(out)!r}: {e.strerror}") from None
                f.truncate(size)
            os.replace(tmp, out / f"{name}.npy")
        return cls(out, meta, "r+")

    def _open(self, mode):
        arrays, self._files, self._direct = {}, {}, {}
        self.direct_bytes = 0  # how many bytes went to disk by direct I/O (the rest through the page cache)
        try:
            self._open_columns(mode, arrays)
        except BaseException:
            self.close()  # the descriptors of the columns opened before the one that failed
            raise
        return arrays

    def _open_columns(self, mode, arrays):
        for name, (shape, dtype) in self.columns.items():
            p = self.path / f"{name}.npy"
            try:
                a = np.load(p, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise StoreError(f"store {str(self.path)!r}: {name}.npy is missing or damaged ({e}); "
                                 f"pass overwrite=True to start over") from None
            if a.shape != (self.n,) + shape or a.dtype != dtype or not a.flags.c_contiguous:
                raise StoreError(f"store {str(self.path)!r}: {name}.npy is {a.dtype} {a.shape}, its metadata says "
                                 f"{dtype} {(self.n,) + shape}; pass overwrite=True to start over")
            arrays[name] = a
            if mode != "r":
                self._files[name] = (os.open(p, os.O_WRONLY), int(a.offset), a.itemsize * int(np.prod(shape)))
                self._direct[name] = _open_direct(p)

    def _put(self, name, sl, a):
        fd, offset, row = self._files[name]
        a = np.ascontiguousarray(a, dtype=self.columns[name][1])
        buf = memoryview(a).cast("B")
        pos = offset + sl.start * row
        dfd = self._direct.get(name)
        head = (-pos) % ALIGN  # bytes before the first whole block of the file
        body = (len(buf) - head) // ALIGN * ALIGN if len(buf) > head else 0
        if dfd is None or body < DIRECT_MIN or (a.ctypes.data + head) % ALIGN:
            _pwrite(fd, buf, pos)
            return
        _pwrite(fd, buf[:head], pos)
        try:
            done = _pwrite(dfd, buf[head:head + body], pos + head, direct=True)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            done = 0  # refused at write time (a file system that opens O_DIRECT files but cannot write them)
            self._close_direct(name)
        self.direct_bytes += done
        _pwrite(fd, buf[head + done:], pos + head + done)  # a short direct write's rest, and the tail

    def _close_direct(self, name):
        dfd = self._direct.pop(name, None)
        if dfd is not None:
            os.close(dfd)

    def _sync(self, sl):
        for fd, _, _ in self._files.values():
            os.fdatasync(fd)  # the file's data, whichever descriptor wrote them

    def close(self):
        for name in list(getattr(self, "_direct", {})):
            self._close_direct(name)
        for fd, _, _ in getattr(self, "_files", {}).values():
            os.close(fd)
        self._files = {}


def _open_direct(path):
    """A descriptor writing ``path`` with ``O_DIRECT``, or None where there is none (no such
    flag, as on macOS and Windows; a file system that refuses it, as tmpfs before Linux 6.6)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError:
        return None


def _pwrite(fd, buf, pos, direct=False):
    """Write all of ``buf`` at ``pos``; returns the bytes written. ``direct``: stop at a short
    write that leaves the rest unaligned (the caller writes the rest through the page cache)."""
    total = len(buf)
    while len(buf):
        k = os.pwrite(fd, buf, pos)
        if k <= 0:
            raise OSError(errno.EIO, f"a write of {len(buf)} bytes at offset {pos} wrote nothing")
        buf, pos = buf[k:], pos + k
        if direct and k % ALIGN:
            break
    return total - len(buf)


def _npy_header(dtype, shape, align=64):
    """The bytes of a ``.npy`` header (version 1.0; 2.0 when it does not fit) for a C-order
    array, padded with spaces to a multiple of ``align`` bytes (the format pads to 64; readers
    take any length a version's size field can state)."""
    import struct

    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(int(s) for s in shape)}
    text = repr(d).encode("latin1")
    for version, size in ((1, "<H"), (2, "<I")):
        pre = 8 + struct.calcsize(size)  # magic (6), version (2), header length
        total = -(-(pre + len(text) + 1) // align) * align
        if total - pre < 2 ** (8 * struct.calcsize(size)):
            return (np.lib.format.magic(version, 0) + struct.pack(size, total - pre) + text
                    + b" " * (total - pre - len(text) - 1) + b"\n")
    raise ValueError(f"a .npy header for shape {shape} does not fit the format")


class MemoryStore(_Store):
    """In-memory columns (``out=None``): the embedded use; nothing survives the process."""

    def __init__(self, meta):
        super().__init__(None, meta, "r+")
        self._done = set()

    def _open(self, mode):
        return {name: np.zeros((self.n,) + shape, dtype) for name, (shape, dtype) in self.columns.items()}

    def finished(self):
        return set(self._done)

    def _put(self, name, sl, a):
        rows = self.arrays[name][sl]
        if not written_in_place(a, rows):
            rows[...] = a

    def result_rows(self, i):
        """The attributions column's rows of chunk ``i`` as (rows, K, ...): where the chunk's
        results can be written directly."""
        a = self.arrays["attributions"][self.chunk_slice(i)]
        shape, _ = self.columns["attributions"]
        return a.reshape((a.shape[0],) + ((1,) if len(shape) == len(self.meta["model_shape"]) else ()) + a.shape[1:])

    def _sync(self, sl):
        pass

    def put(self, i, columns):
        for name, a in columns.items():
            self._put(name, self.chunk_slice(i), a)

    def commit(self, entries):
        self._done.update(i for i, _ in entries)

    def close(self):
        pass


class ZarrStore(_Store):
    """A zarr group with one array per column, chunked along samples by the job's chunk rows."""

    @classmethod
    def create(cls, out, meta):
        zarr = _zarr()
        g = zarr.open_group(str(out), mode="a")  # not "w": it would wipe the folder (and its CREATING marker)
        n, rows = int(meta["n"]), int(meta["chunk_rows"])
        for name, (shape, dtype) in meta["columns"].items():
            g.create_array(name, shape=(n,) + tuple(shape), chunks=(rows,) + tuple(shape), dtype=np.dtype(dtype),
                           fill_value=0)
        return cls(out, meta, "r+")

    def _open(self, mode):
        zarr = _zarr()
        try:
            g = zarr.open_group(str(self.path), mode="r" if mode == "r" else "r+")
            arrays = {name: g[name] for name in self.columns}
        except Exception as e:  # zarr raises several types for a damaged group
            raise StoreError(f"store {str(self.path)!r} is not a readable zarr group ({e}); pass overwrite=True to "
                             f"start over") from None
        for name, (shape, dtype) in self.columns.items():
            a = arrays[name]
            if tuple(a.shape) != (self.n,) + shape or np.dtype(a.dtype) != dtype or a.chunks[0] != self.rows:
                raise StoreError(f"store {str(self.path)!r}: array {name!r} is {a.dtype} {a.shape} chunks {a.chunks}, "
                                 f"its metadata says {dtype} {(self.n,) + shape} chunks of {self.rows}")
        return arrays

    def _put(self, name, sl, a):
        self.arrays[name][sl] = np.ascontiguousarray(a)

    def _sync(self, sl):
        pass  # each chunk file was written to a temporary name and renamed by zarr's local store

    def close(self):
        self.arrays = {}


def _zarr():
    try:
        import zarr
    except ImportError:
        raise ImportError("a .zarr output needs zarr (pip install 'relprop[zarr]')") from None
    return zarr
