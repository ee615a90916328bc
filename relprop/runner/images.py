"""Dataset sources for images: IDX files (the MNIST family) and folders of image files.

Both are random-access sources (:class:`relprop.runner.sources.ArraySource` and
:class:`ImageFolder`) that keep the pixels as stored and convert each chunk when it is read:

    x = (pixels * scale - mean) / std        (per channel, in float64, rounded once to float32;
                                              float64 for float64 IDX data)

``scale`` defaults to 1/255 for 8-bit pixels (images in [0, 1]) and to 1 for other data;
``mean`` and ``std`` (a number, or one per channel) are applied when given. Each source's
:meth:`describe` records its kind, path and these options, so a job run with other options is
another job.

Reading is hardened against hostile files: an IDX header is checked (type code, rank 1..8,
every dimension > 0) and the size it declares must match the file exactly (raw files, then
memory-mapped without a copy) or the decompressed stream exactly (``.gz``, decompressed in
pieces into a buffer of the declared size, refused above ``max_bytes``); images are decoded by
Pillow from a fixed list of formats, with a pixel limit per reader. Nothing read executes code,
and every refusal is a :class:`~relprop.runner.sources.SourceError` naming the file.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import numbers
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from .sources import ArraySource, SourceError, _check_labels

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IDX_MAX_NDIM = 8
MAX_BYTES = 2**30  # largest decompressed .gz payload read into memory by default (raw files are memory-mapped)
GZ_PIECE = 16 * 2**20  # bytes decompressed per step

# formats Pillow may decode: the common raster ones (never EPS, which runs Ghostscript)
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
MAX_PIXELS = 2**26  # per image (8192 x 8192), checked from the header before decoding


# -- pixel conversion ------------------------------------------------------------------------
class Pixels:
    """The per-chunk conversion ``(x * scale - mean) / std`` of a source's samples.

    Parameters
    ----------
    scale : float > 0
    mean, std : None, a number, or a sequence of ``channels`` numbers (``std`` > 0)
    channels : int, the length of the channel axis
    axis : int, the channel axis of a sample (e.g. 0 for (C, H, W), -1 for (H, W, C))
    what : str, the source, for error messages
    """

    def __init__(self, scale, mean, std, channels, axis, what):
        if not (_real(scale) and np.isfinite(scale) and scale > 0):
            raise ValueError(f"{what}: scale must be a finite number > 0, got {scale!r}")
        self.scale = float(scale)
        self.channels, self.axis = int(channels), axis
        self.mean = self._per_channel(mean, "mean", what)
        self.std = self._per_channel(std, "std", what)
        if self.std is not None and not (self.std > 0).all():
            raise ValueError(f"{what}: std must be > 0, got {std!r}")

    def _per_channel(self, v, name, what):
        if v is None:
            return None
        if _real(v):
            a = np.array(float(v))
        elif isinstance(v, (list, tuple, np.ndarray)) and np.ndim(v) == 1 and len(v) and all(map(_real, v)):
            a = np.array([float(u) for u in v])
        else:
            a = np.array(np.nan)
        if not np.isfinite(a).all():
            raise ValueError(f"{what}: {name} must be a finite number or one per channel, got {v!r}")
        if a.ndim == 1 and a.shape[0] != self.channels:
            raise ValueError(f"{what}: {name} has {a.shape[0]} values, the samples have {self.channels} "
                             f"channel{'s' if self.channels != 1 else ''}")
        return a

    def describe(self):
        def js(a):
            return None if a is None else (float(a) if a.ndim == 0 else a.tolist())

        return {"scale": self.scale, "mean": js(self.mean), "std": js(self.std)}

    def __call__(self, x, dtype):
        """``x`` (k, ...) as stored -> a new ``dtype`` array (k, ...), converted in float64 and
        rounded once (so that 8-bit pixels with the default scale are exactly ``x / 255``)."""
        y = np.asarray(x).astype(np.float64)
        if self.scale != 1.0:
            y *= self.scale
        for v, op in ((self.mean, np.subtract), (self.std, np.divide)):
            if v is not None:
                if v.ndim == 1:  # broadcast along the sample's channel axis
                    shape = [1] * y.ndim
                    shape[self.axis if self.axis < 0 else 1 + self.axis] = v.shape[0]
                    v = v.reshape(shape)
                op(y, v, out=y)
        return y.astype(dtype, copy=False)


def _real(u):
    return isinstance(u, numbers.Real) and not isinstance(u, (bool, np.bool_))


class PixelSource(ArraySource):
    """An :class:`ArraySource` whose rows are converted by :class:`Pixels` when read; its
    ``dtype`` is what :meth:`read` returns (float32, or float64 for float64 data)."""

    def __init__(self, data, labels, description, pixels):
        super().__init__(data, labels, description)
        self.stored_dtype = self.dtype
        wide = self.stored_dtype.kind == "f" and self.stored_dtype.itemsize == 8  # any byte order
        self.dtype = np.dtype(np.float64 if wide else np.float32)
        self.pixels = pixels

    def describe(self):
        d = super().describe()
        d.update(self.pixels.describe(), stored_dtype=str(self.stored_dtype.newbyteorder("=")))
        return d

    def read(self, start, stop):
        x, y = super().read(start, stop)
        x = self.pixels(x, self.dtype)  # a converted copy: the stored rows are done with
        super().release(start, stop)
        return x, y

    def release(self, start, stop):
        pass


# -- IDX files -------------------------------------------------------------------------------
def _idx_magic(head):
    """Whether 4 bytes are an IDX magic number: 00 00 <known type code> <ndim 1..8>."""
    return len(head) == 4 and head[:2] == b"\0\0" and head[2] in IDX_TYPES and 1 <= head[3] <= IDX_MAX_NDIM


def _gz(path):
    return Path(path).name.endswith(".gz")


def is_idx(path):
    """Whether ``path`` is an IDX file: named ``*-ubyte`` / ``*-ubyte.gz`` (as the MNIST
    family ships), or starting with an IDX magic number (``00 00 <type> <ndim>``)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.name.endswith(("-ubyte", "-ubyte.gz")):
        return True
    try:
        with (gzip.open(path, "rb") if _gz(path) else open(path, "rb")) as f:
            head = f.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return _idx_magic(head)


def _idx_header(f, name):
    """(dtype, dims) from the start of an IDX stream, checked."""
    head = f.read(4)
    if len(head) < 4:
        raise SourceError(f"IDX file {name!r} is too short for a header ({len(head)} bytes)")
    if head[0] != 0 or head[1] != 0:
        raise SourceError(f"IDX file {name!r}: bad magic number {head.hex()} (an IDX file starts with 00 00)")
    if head[2] not in IDX_TYPES:
        raise SourceError(f"IDX file {name!r}: unknown type code 0x{head[2]:02x} (expected one of "
                          f"{', '.join(f'0x{c:02x}' for c in IDX_TYPES)})")
    ndim = head[3]
    if not 1 <= ndim <= IDX_MAX_NDIM:
        raise SourceError(f"IDX file {name!r}: the header declares {ndim} dimensions (1..{IDX_MAX_NDIM} allowed)")
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise SourceError(f"IDX file {name!r} ends inside its header ({ndim} dimensions declared)")
    dims = struct.unpack(f">{ndim}I", raw)
    if min(dims) == 0:
        raise SourceError(f"IDX file {name!r}: the header declares an empty dimension {dims}")
    return IDX_TYPES[head[2]], dims


def read_idx(path, max_bytes=MAX_BYTES):
    """The array of an IDX file: memory-mapped read-only (raw files) or decompressed into
    memory (``.gz``, at most ``max_bytes``).

    Parameters
    ----------
    path : str or path, ``*.gz`` for a gzip-compressed file
    max_bytes : int, the largest decompressed payload accepted (default 1 GiB)

    Returns
    -------
    numpy array (memmap for a raw file) of the header's shape and (big-endian) dtype
    """
    path = Path(path)
    name = str(path)
    try:
        if not _gz(path):
            with open(path, "rb") as f:
                dtype, dims = _idx_header(f, name)
            offset = 4 + 4 * len(dims)
            want = offset + math.prod(dims) * dtype.itemsize
            size = path.stat().st_size
            if size != want:
                why = "truncated" if size < want else "trailing data"
                raise SourceError(f"IDX file {name!r}: the header declares {dims} {dtype.name} ({want} bytes with the "
                                  f"header), the file has {size} bytes ({why})")
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=dims)
        with gzip.open(path, "rb") as f:
            dtype, dims = _idx_header(f, name)
            nbytes = math.prod(dims) * dtype.itemsize
            if nbytes > max_bytes:
                raise SourceError(f"IDX file {name!r}: the header declares {dims} {dtype.name} = {nbytes} bytes, above "
                                  f"max_bytes={max_bytes} (pass a larger max_bytes= to read it)")
            buf = np.empty(nbytes, np.uint8)
            view, pos = memoryview(buf), 0
            while pos < nbytes:  # pieces into the declared buffer: the stream never sizes memory
                k = f.readinto(view[pos:pos + GZ_PIECE])
                if not k:
                    raise SourceError(f"IDX file {name!r}: the stream ends after {pos} of the {nbytes} data bytes its "
                                      f"header declares {dims} (truncated)")
                pos += k
            if f.read(1):  # also reads to the end of the stream, which checks its CRC and length
                raise SourceError(f"IDX file {name!r}: the stream holds more than the {nbytes} data bytes its header "
                                  f"declares {dims} (trailing data)")
        return buf.view(dtype).reshape(dims)
    except (OSError, EOFError, zlib.error) as e:
        raise SourceError(f"IDX file {name!r} cannot be read ({type(e).__name__}: {e})") from None


def read_labels(path):
    """Labels from an IDX labels file (1-D, integer; ``*-labels-idx1-ubyte[.gz]``) or a
    ``.npy`` 1-D integer array, as int64 (n,)."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise SourceError(f"labels file {name!r} does not exist")
    if path.suffix == ".npy":
        try:
            y = np.load(path, mmap_mode="r", allow_pickle=False)  # the file size bounds what the header declares
        except (ValueError, OSError, EOFError) as e:
            raise SourceError(f"labels file {name!r} is not a readable .npy array ({e})") from None
    elif is_idx(path):
        y = read_idx(path)
    else:
        raise SourceError(f"labels file {name!r}: expected an IDX labels file ('*-labels-idx1-ubyte[.gz]') or a .npy "
                          f"int array")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise SourceError(f"labels file {name!r} must hold a 1-D integer array, got {y.dtype.name} {y.shape}")
    return np.asarray(y, np.int64)


def labels_file_for(path):
    """The MNIST-named labels file beside an images file (``X-images-idx3-ubyte[.gz]`` ->
    ``X-labels-idx1-ubyte[.gz]``; ``X-images.idx3-ubyte`` likewise), or None."""
    path = Path(path)
    m = re.fullmatch(r"(.*)-images([-.])idx\d-ubyte(\.gz)?", path.name)
    if not m:
        return None
    stem = f"{m[1]}-labels{m[2]}idx1-ubyte"
    for cand in ((stem + ".gz", stem) if m[3] else (stem, stem + ".gz")):
        if path.with_name(cand).is_file():
            return path.with_name(cand)
    return None


def idx_source(path, labels=None, *, scale=None, mean=None, std=None, max_bytes=MAX_BYTES):
    """A random-access source over the images of an IDX file.

    Parameters
    ----------
    path : an IDX file (``*-images-idx3-ubyte[.gz]``), samples along its first axis
    labels : None, an int array (n,), or a labels file (see :func:`read_labels`). None: the
        MNIST-named labels file beside ``path`` when there is one (see :func:`labels_file_for`)
    scale : pixel factor; default 1/255 for uint8 data (images in [0, 1]), else 1
    mean, std : subtracted, then divided, after scaling: numbers, or one per channel for
        samples (C, H, W) (the first axis of a 3-D sample is taken as the channel axis)
    max_bytes : the largest decompressed ``.gz`` payload read (default 1 GiB); raw files are
        memory-mapped and need no limit

    Samples keep the file's shape ((28, 28) for MNIST); a job adds the size-1 channel axis for
    a model whose ``input_shape`` is (1, 28, 28).

    Examples
    --------
    >>> src = idx_source("t10k-images-idx3-ubyte.gz", mean=0.2860, std=0.3530)  # doctest: +SKIP
    >>> x, y = src.read(0, 8)                                # float32 (8, 28, 28), int64 (8,)
    """
    path = Path(path)
    if isinstance(max_bytes, (bool, np.bool_)) or not isinstance(max_bytes, numbers.Integral) or max_bytes < 1:
        raise ValueError(f"max_bytes must be an int >= 1, got {max_bytes!r}")
    args = (path, labels, {"scale": scale, "mean": mean, "std": std, "max_bytes": int(max_bytes)})
    data = read_idx(path, int(max_bytes))
    if data.ndim < 2:
        raise SourceError(f"IDX file {str(path)!r} holds a 1-D array {data.shape} (a labels file?); images need "
                          f"(n, ...) with at least 2 dimensions")
    labels_file = None
    if labels is None:
        labels_file = labels_file_for(path)
        if labels_file is not None:
            labels = read_labels(labels_file)
    elif isinstance(labels, (str, os.PathLike)):
        labels_file = Path(labels)
        labels = read_labels(labels_file)
    if labels is not None:
        y = np.asarray(labels)
        if y.ndim != 1 or y.shape[0] != data.shape[0]:
            where = f"labels file {str(labels_file)!r}" if labels_file is not None else "labels"
            got = y.shape[0] if y.ndim == 1 else y.shape
            raise SourceError(f"{where}: {got} labels for the {data.shape[0]} images of IDX file {str(path)!r}")
        labels = _check_labels(y, data.shape[0])
    if scale is None:
        scale = 1 / 255 if data.dtype == np.uint8 else 1.0
    sample = data.shape[1:]
    pixels = Pixels(scale, mean, std, sample[0] if len(sample) == 3 else 1, 0, f"IDX file {str(path)!r}")
    description = {"kind": "idx", "path": str(path.resolve()), "compressed": _gz(path),
                   "labels_file": None if labels_file is None else labels_file.name}
    src = IdxSource(data, labels, description, pixels)
    src.args = args
    return src


class IdxSource(PixelSource):
    """The source :func:`idx_source` returns. It pickles as its arguments (a Dask worker
    opens the file again) instead of as its data (a memmap pickles as its whole contents)."""

    def __reduce__(self):
        return _reopen_idx, self.args + ((self.n, self.shape),)


def _reopen_idx(path, labels, options, planned):
    src = idx_source(path, labels, **options)
    if (src.n, src.shape) != planned:
        raise SourceError(f"IDX file {str(path)!r} now holds {src.n} samples {src.shape}, it held {planned[0]} "
                          f"{planned[1]} when the job was planned (it changed, or this machine sees another file)")
    return src


# -- folders of images -----------------------------------------------------------------------
def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading a folder of images needs Pillow (pip install pillow)") from None
    return Image


def _image_files(folder, extensions):
    """The image files under ``folder``, in torchvision's ImageFolder order (by folder, then
    name); links to folders below it are not followed, so a link loop cannot trap the scan."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(root) / f for f in names if not f.startswith(".") and f.lower().endswith(extensions)]
    return sorted(files, key=lambda f: (str(f.parent), f.name))


class ImageFolder:
    """A random-access source over a folder of image files (decoded with Pillow).

    The folder holds either one sub-folder per class (``root/cat/1.png``, ``root/dog/x.jpg``:
    classes are the sorted sub-folder names and label the images, as torchvision's
    ``ImageFolder``), or the images themselves (no labels, unless ``labels=`` gives them).
    Files are sorted by path; names starting with ``.`` are skipped.

    Parameters
    ----------
    path : the folder
    size : None, an int (a square ``size x size``) or ``(height, width)``: every image is
        resized with Pillow's bilinear filter (which averages over the source pixels when
        shrinking, like torchvision's ``Resize`` on PIL images). None: all images must have
        the first image's size.
    mode : ``"RGB"`` (3 channels) or ``"L"`` (1 channel, grey); other modes are converted by
        Pillow (an alpha channel is dropped)
    layout : ``"CHW"`` (what relprop's Conv2d reads) or ``"HWC"``
    mean, std : subtracted, then divided, after scaling: numbers or one per channel
    scale : pixel factor (default 1/255: images in [0, 1])
    extensions : the file name endings read (case-insensitive)
    labels : int array (n,) for a folder without class sub-folders
    max_pixels : the largest image (width x height) decoded, checked from its header
        (default 2**26). Pillow's own global limit, ``PIL.Image.MAX_IMAGE_PIXELS``, applies
        too; relprop never changes it.

    Examples
    --------
    >>> src = ImageFolder("val/", size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))  # doctest: +SKIP
    >>> x, y = src.read(0, 4)                                  # float32 (4, 3, 224, 224), int64 (4,)
    """

    random_access = True

    def __init__(self, path, size=None, mode="RGB", layout="CHW", mean=None, std=None, scale=1 / 255,
                 extensions=EXTENSIONS, labels=None, max_pixels=MAX_PIXELS):
        Image = _pillow()  # not kept on the instance, which stays picklable
        self.path = Path(path)
        name = str(self.path)
        if not self.path.is_dir():
            raise SourceError(f"image folder {name!r} is not a folder")
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
        if layout not in ("CHW", "HWC"):
            raise ValueError(f"layout must be 'CHW' or 'HWC', got {layout!r}")
        if isinstance(extensions, str):
            extensions = (extensions,)
        if not extensions or not all(isinstance(e, str) and e for e in extensions):
            raise ValueError(f"extensions must be a non-empty sequence of file endings like '.png', got {extensions!r}")
        if isinstance(max_pixels, (bool, np.bool_)) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1:
            raise ValueError(f"max_pixels must be an int >= 1, got {max_pixels!r}")
        self.mode, self.layout, self.max_pixels = mode, layout, int(max_pixels)
        Image.init()  # registers the installed plugins, so that the formats below can be looked up
        self._formats = tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)
        self.extensions = tuple(e.lower() for e in extensions)
        self.size = self._size(size)
        channels = 3 if mode == "RGB" else 1
        self.pixels = Pixels(scale, mean, std, channels, -1, f"image folder {name!r}")  # applied while HWC
        self.classes, self.files, y = self._scan()
        self.n = len(self.files)
        if labels is not None:
            if self.classes:
                raise SourceError(f"image folder {name!r}: labels= is given, but its class sub-folders "
                                  f"{self.classes[:3]}... label the images already")
            if isinstance(labels, (str, os.PathLike)):
                labels = read_labels(labels)
            y = _check_labels(labels, self.n)
        self.labels = None if y is None else np.asarray(y, np.int64)
        if self.size is not None:
            h, w = self.size
        else:
            h, w = self._open_checked(self.files[0], lambda im: im.size)[::-1]
        self.shape = (channels, h, w) if layout == "CHW" else (h, w, channels)
        self.dtype = np.dtype(np.float32)

    @staticmethod
    def _size(size):
        if size is None:
            return None
        if isinstance(size, numbers.Integral) and not isinstance(size, (bool, np.bool_)):
            size = (size, size)
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_)) and s >= 1
                           for s in size)):
            raise ValueError(f"size must be None, an int or (height, width) of ints >= 1, got {size!r}")
        return int(size[0]), int(size[1])

    def _scan(self):
        name = str(self.path)
        subdirs = sorted(e.name for e in os.scandir(self.path) if e.is_dir() and not e.name.startswith("."))
        top = sorted(self.path / e.name for e in os.scandir(self.path)
                     if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(self.extensions))
        if not subdirs:
            if not top:
                raise SourceError(f"image folder {name!r} holds no images (files ending in "
                                  f"{', '.join(self.extensions)})")
            return [], top, None
        if top:
            raise SourceError(f"image folder {name!r} holds both images ({top[0].name}, ...) and sub-folders "
                              f"({subdirs[0]}, ...): give one class per sub-folder, or only images")
        files, labels = [], []
        for i, c in enumerate(subdirs):
            got = _image_files(self.path / c, self.extensions)
            if not got:
                raise SourceError(f"image folder {name!r}: class folder {c!r} holds no images (files ending in "
                                  f"{', '.join(self.extensions)})")
            files += got
            labels += [i] * len(got)
        return subdirs, files, np.array(labels, np.int64)

    def _open_checked(self, file, use):
        """``use(image)`` on ``file`` opened by Pillow (header read, pixels not yet decoded)
        after the pixel limit is checked; any failure is a SourceError naming the file."""
        Image = _pillow()
        try:
            with Image.open(file, formats=self._formats) as im:
                w, h = im.size
                if w * h > self.max_pixels:
                    raise SourceError(f"image {str(file)!r} is {w}x{h} = {w * h} pixels, above max_pixels="
                                      f"{self.max_pixels} (a decompression bomb? pass a larger max_pixels= to read it)")
                return use(im)
        except SourceError:
            raise
        except Image.DecompressionBombError as e:
            raise SourceError(f"image {str(file)!r} is refused by Pillow's own pixel limit ({e})") from None
        except Exception as e:  # noqa: BLE001 - Pillow's decoders raise many types for a corrupt file
            raise SourceError(f"image {str(file)!r} cannot be read ({type(e).__name__}: {e})") from None

    def _pixels_of(self, im):
        """An image as uint8 (H, W, C) at the source's size."""
        im = im.convert(self.mode)
        if self.size is not None:
            im = im.resize(self.size[::-1], _pillow().Resampling.BILINEAR)
        a = np.asarray(im)
        return a[..., None] if a.ndim == 2 else a

    def describe(self):
        listing = "\n".join(f.relative_to(self.path).as_posix() for f in self.files)
        return {"kind": "image folder", "path": str(self.path.resolve()), "n": self.n, "shape": list(self.shape),
                "dtype": str(self.dtype), "labels": self.labels is not None, "classes": list(self.classes),
                "files_sha256": hashlib.sha256(listing.encode()).hexdigest(),
                "size": None if self.size is None else list(self.size), "mode": self.mode, "layout": self.layout,
                "extensions": list(self.extensions), **self.pixels.describe()}

    def read(self, start, stop):
        """Images ``start:stop`` converted (float32, ``shape`` each) and their labels or None."""
        hwc = self.shape if self.layout == "HWC" else self.shape[1:] + self.shape[:1]
        raw = np.empty((stop - start,) + hwc, np.uint8)
        for i, file in enumerate(self.files[start:stop]):
            a = self._open_checked(file, self._pixels_of)
            if a.shape != hwc:
                raise SourceError(f"image {str(file)!r} is {a.shape[0]}x{a.shape[1]} (height x width), the first image "
                                  f"{str(self.files[0])!r} is {hwc[0]}x{hwc[1]}: pass size= to resize them all")
            raw[i] = a
        x = self.pixels(raw, self.dtype)
        if self.layout == "CHW":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        y = None if self.labels is None else self.labels[start:stop].copy()
        return x, y
