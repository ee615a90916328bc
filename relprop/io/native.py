"""relprop's native model file: one ``.npz`` archive, versioned, loaded without executing code.

Layout (format ``relprop-model`` version 1):

* ``__graph__``: a 0-d unicode array holding JSON ``{"format": "relprop-model", "version": 1,
  "nodes": [{"name", "kind", "inputs", "hyper": {...}, "arrays": [...]}, ...],
  "input_shape": [per-sample dims] or null}``;
* ``{i}.{array}``: the arrays of node ``i`` (``weight``, ``bias``, BatchNorm statistics) in
  their stored dtype, so a round trip is bit-exact.

Reading trusts nothing in the file (:class:`Archive`): no pickle; the zip directory and every
``.npy`` header are read first; each array's declared shape and dtype is checked against what
its layer needs and against a total size limit (``max_bytes``, default :data:`MAX_BYTES`)
before anything is decompressed; at most the declared number of bytes is decompressed per
entry; the JSON header is bounded in length (:data:`MAX_HEADER_CHARS`) and nesting depth
(:data:`MAX_JSON_DEPTH`). Hyper-parameters come only from the JSON, through the layer
constructors' checks. A damaged or hostile file raises ``ValueError`` naming the file and the
problem.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
import tokenize
import zipfile
import zlib

import numpy as np

from ..core import graph as G

FORMAT, VERSION = "relprop-model", 1
_KINDS = {cls.kind: cls for cls in (
    G.Dense, G.Conv2d, G.MaxPool2d, G.AvgPool2d, G.Flatten, G.ReLU, G.Tanh, G.Sigmoid, G.Identity, G.Softmax,
    G.LeakyReLU, G.Softplus, G.Dropout, G.BatchNorm2d, G.GlobalAvgPool2d, G.Reshape, G.Add, G.Concat,
    G.ELU, G.GELU, G.SiLU, G.Hardswish, G.Hardsigmoid, G.ReLU6, G.Mish, G.Pad)}
_KINDS.update({cls.kind: cls for cls in (G.AdaptiveAvgPool2d, G.AdaptiveMaxPool2d, G.Upsample, G.LayerNorm,
                                         G.GroupNorm, G.Mul, G.ZeroInsert2d, G.ConvTranspose2d)})

#: default limit on the bytes of all arrays one archive may declare (``load(..., max_bytes=)``)
MAX_BYTES = 4 * 2**30
#: longest JSON header, in characters (a node takes about 150)
MAX_HEADER_CHARS = 2**22
#: deepest nesting of JSON arrays/objects in a header (relprop writes 5)
MAX_JSON_DEPTH = 32
_NPY_HEADER_MAX = 10000  # numpy's own limit on a .npy header dict
_CHUNK = 2**24  # bytes decompressed per read
# what a damaged zip or .npy entry raises inside zipfile/zlib/numpy (its header parser included)
_DAMAGED = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, NotImplementedError,
            RuntimeError, struct.error, UnicodeError, OverflowError, SyntaxError, tokenize.TokenError, ValueError,
            KeyError, TypeError, IndexError)


def save(model, path):
    """Write ``model`` (a relprop graph) to ``path`` (exactly that name; ``.npz`` is customary)."""
    if not isinstance(model, G.Graph):
        raise TypeError(f"save: expected a relprop model, got {type(model).__name__}")
    nodes, arrays = [], {}
    for i, node in enumerate(model.nodes):
        layer = node.layer
        hyper = {}
        for h in layer.hyper:
            v = getattr(layer, h)
            hyper[h] = list(v) if isinstance(v, tuple) else v
        for a in layer.arrays:
            arrays[f"{i}.{a}"] = getattr(layer, a)
        nodes.append({"name": node.name, "kind": layer.kind, "inputs": list(node.inputs), "hyper": hyper,
                      "arrays": list(layer.arrays)})
    write_archive(path, "__graph__", {"format": FORMAT, "version": VERSION, "nodes": nodes,
                                      "input_shape": None if model.input_shape is None else list(model.input_shape)},
                  arrays)


def write_archive(path, header_key, header, arrays):
    """One npz file at exactly ``path``: ``arrays`` plus the JSON ``header`` under ``header_key``
    (the house format for models and patterns; read back with :class:`Archive`)."""
    with open(path, "wb") as f:  # a file object: numpy must not append ".npz" to the name
        np.savez(f, **{header_key: np.array(json.dumps(header))}, **arrays)


def check_archive(path, who, what):
    """The checks before opening an archive: ``path`` exists and is an npz (zip) file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{who}: no such file: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{who}: {path} is not a {what} (not an npz archive)")


def check_max_bytes(max_bytes, who):
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
        raise TypeError(f"{who}: max_bytes must be an int >= 0, got {max_bytes!r}")
    return int(max_bytes)


# -- reading an untrusted archive ---------------------------------------------------------------
class Declared:
    """An array entry before its data is read: what its ``.npy`` header declares."""

    __slots__ = ("shape", "dtype", "fortran", "offset", "nbytes")

    def __init__(self, shape, dtype, fortran, offset):
        self.shape, self.dtype, self.fortran, self.offset = shape, dtype, fortran, offset
        self.nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no wrap-around

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"{self.shape} {self.dtype}"


class Archive:
    """An npz archive opened without trusting it (a read-only, bounded ``np.load``).

    ``Archive(path, header_key, max_bytes)`` reads the zip directory only: every entry must be a
    stored or deflated, unencrypted ``.npy`` file named once. :meth:`declared` reads one entry's
    ``.npy`` header (no data) and charges its size against ``max_bytes``; ``archive[key]`` then
    decompresses exactly that many bytes (and checks the CRC). ``archive[header_key]`` must be
    a 0-d unicode array of at most :data:`MAX_HEADER_CHARS` characters whose JSON nests at most
    :data:`MAX_JSON_DEPTH` deep; :attr:`header` is it parsed. Errors are ``ValueError`` naming
    the entry; callers prefix the file.
    """

    def __init__(self, path, header_key, max_bytes=MAX_BYTES):
        self.path, self.header_key, self.budget = path, header_key, max_bytes
        self.max_bytes = max_bytes
        try:
            self._zip = zipfile.ZipFile(path)
            infos = self._zip.infolist()
        except _DAMAGED as e:
            raise ValueError(f"not a readable zip (npz) archive ({type(e).__name__}: {e})") from None
        self._info, self._declared = {}, {}
        for info in infos:
            name = info.filename
            if not name.endswith(".npy"):
                self.close()
                raise ValueError(f"entry {name!r} is not a .npy array")
            if name[:-4] in self._info:
                self.close()
                raise ValueError(f"entry {name!r} appears twice")
            if info.flag_bits & 0x1:
                self.close()
                raise ValueError(f"entry {name!r} is marked encrypted (npz archives never are)")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                self.close()
                raise ValueError(f"entry {name!r} uses zip compression method {info.compress_type}; "
                                 "npz archives are stored (0) or deflated (8)")
            self._info[name[:-4]] = info

    # NpzFile's interface, as far as the loaders use it
    @property
    def files(self):
        return list(self._info)

    def __contains__(self, key):
        return key in self._info

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._zip.close()

    def _open(self, key):
        if key not in self._info:
            raise KeyError(f"{key} is not in this archive")
        return self._zip.open(self._info[key])

    def declared(self, key):
        """The shape and dtype entry ``key`` declares, checked against the size limits."""
        got = self._declared.get(key)
        if got is not None:
            return got
        name = f"{key}.npy"
        try:
            with self._open(key) as fp:
                version = np.lib.format.read_magic(fp)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=_NPY_HEADER_MAX)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=_NPY_HEADER_MAX)
                else:
                    raise ValueError(f".npy format version {version} is not supported (1.0 and 2.0 are)")
                offset = fp.tell()
        except _DAMAGED as e:
            raise ValueError(f"entry {name!r} is damaged or not a .npy array ({type(e).__name__}: {e})") from None
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufU":
            raise ValueError(f"entry {name!r} has dtype {dtype}; relprop archives hold plain numeric arrays "
                             "(and a unicode header)")
        if any(not isinstance(d, int) or d < 0 for d in shape):
            raise ValueError(f"entry {name!r} declares the invalid shape {shape}")
        d = Declared(tuple(shape), dtype, bool(fortran), offset)
        if d.nbytes > self.budget:
            raise ValueError(f"entry {name!r} declares a {d.shape} {dtype} array ({_size(d.nbytes)}); with the "
                             f"arrays before it that is more than max_bytes={self.max_bytes} "
                             f"({_size(self.max_bytes)}); pass a larger max_bytes to load a model this large")
        if self._info[key].file_size != offset + d.nbytes:
            raise ValueError(f"entry {name!r} holds {self._info[key].file_size} bytes uncompressed, its .npy header "
                             f"declares {offset + d.nbytes} (a {d.shape} {dtype} array)")
        self.budget -= d.nbytes
        self._declared[key] = d
        return d

    def __getitem__(self, key):
        d = self.declared(key)
        name = f"{key}.npy"
        if key == self.header_key and (d.dtype.kind != "U" or d.shape != () or
                                       d.dtype.itemsize // 4 > MAX_HEADER_CHARS):
            raise ValueError(f"the header entry {name!r} must be a 0-d unicode array of at most {MAX_HEADER_CHARS} "
                             f"characters, got a {d.shape} {d.dtype} array")
        out = np.empty(d.shape[::-1] if d.fortran else d.shape, d.dtype)
        raw = out.reshape(-1).view(np.uint8)
        try:
            with self._open(key) as fp:
                fp.read(d.offset)
                pos = 0
                while pos < d.nbytes:
                    got = fp.readinto(raw[pos:pos + _CHUNK])
                    if not got:
                        raise EOFError(f"the data ends after {pos} of {d.nbytes} bytes")
                    pos += got
                if fp.read(1):  # also drives zipfile to its end-of-entry CRC check
                    raise ValueError("data continues after the declared array")
        except _DAMAGED as e:
            raise ValueError(f"entry {name!r} is damaged ({type(e).__name__}: {e})") from None
        out = out.T if d.fortran else out
        if key == self.header_key:
            depth = json_depth(str(out[()]))
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"the JSON header nests {depth} deep, more than the {MAX_JSON_DEPTH} allowed")
        return out

    @property
    def header(self):
        """The JSON header, parsed (bounded in length and depth)."""
        if self.header_key not in self:
            raise ValueError(f"no {self.header_key} header entry")
        try:
            return json.loads(str(self[self.header_key][()]))
        except (json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"the {self.header_key} header is not valid JSON ({type(e).__name__}: {e})") from None


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(text):
    """Deepest nesting of ``[``/``{`` in JSON ``text`` (brackets inside strings do not count)."""
    code = np.frombuffer(_JSON_STRING.sub('""', text).encode("utf-8", "surrogatepass"), np.uint8)
    step = np.isin(code, (ord("["), ord("{"))).astype(np.int8) - np.isin(code, (ord("]"), ord("}")))
    return int(np.cumsum(step, dtype=np.int32).max()) if step.size else 0


def _size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "bytes" else f"{n} bytes"
        n /= 1024


# -- load ------------------------------------------------------------------------------------
def load(path, max_bytes=MAX_BYTES):
    """Read a model written by :func:`save`.

    ``max_bytes`` bounds the total size of the arrays the file declares (default
    :data:`MAX_BYTES`, 4 GiB); every declared shape is checked against the graph before any
    array is decompressed. A damaged, foreign or hostile file raises ``ValueError`` naming the
    file and the problem; loading never runs code from the file.
    """
    check_archive(path, "load", "readable relprop model file")
    max_bytes = check_max_bytes(max_bytes, "load")
    try:
        with Archive(path, "__graph__", max_bytes) as ar:
            if "__graph__" not in ar:
                raise ValueError(f"not a readable relprop model file (no __graph__ entry; it holds {ar.files[:5]})")
            specs, input_shape = _check_header(ar.header)
            wanted = {f"{i}.{a}": (i, a) for i, spec in enumerate(specs) for a in spec["arrays"]}
            for key in ar.files:
                if key != "__graph__" and key not in wanted:
                    raise ValueError(f"entry {key + '.npy'!r} is not an array of any node (the header lists "
                                     f"{len(wanted)} arrays: {', '.join(sorted(wanted)[:6]) or 'none'}"
                                     f"{', ...' if len(wanted) > 6 else ''})")
            for key, (i, a) in wanted.items():
                if key not in ar:
                    raise ValueError(f"node {i} {specs[i]['name']!r}: array {a!r} (entry {key + '.npy'!r}) is missing")
            declared = {key: ar.declared(key) for key in wanted}  # all sizes charged before any data is read
            _check_shapes(specs, declared, input_shape)
            nodes = []
            for i, spec in enumerate(specs):
                args = {a: ar[f"{i}.{a}"] for a in spec["arrays"]}
                nodes.append(G.Node(spec["name"], _layer(i, spec, args), tuple(spec["inputs"])))
            try:
                return G.Graph(nodes, input_shape=input_shape)
            except TypeError as e:
                raise ValueError(str(e)) from None
    except ValueError as e:
        raise ValueError(f"load: {path}: {e}") from None
    except (KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:  # a check missed: still no crash
        raise ValueError(f"load: {path} is not a readable relprop model file ({type(e).__name__}: {e})") from None


def _layer(i, spec, arrays):
    """The layer of node ``i`` from its (checked) spec, through the constructor's validation."""
    hyper = {h: tuple(v) if isinstance(v, list) else v for h, v in spec["hyper"].items()}
    try:
        return _KINDS[spec["kind"]](**arrays, **hyper)
    except (TypeError, ValueError) as e:
        raise ValueError(f"node {i} {spec['name']!r} ({spec['kind']}): {e}") from None


def _check_header(header):
    """The header's JSON types, checked; returns (node specs, input_shape or None)."""
    if not isinstance(header, dict) or not isinstance(header.get("nodes"), list):
        raise ValueError("the graph header is not a relprop model description")
    if header.get("format") != FORMAT:
        raise ValueError(f"not a relprop model (format {header.get('format')!r})")
    if header.get("version") != VERSION or isinstance(header.get("version"), bool):
        raise ValueError(f"format version {header.get('version')!r} is not supported (this relprop reads {VERSION})")
    for i, spec in enumerate(header["nodes"]):
        where = f"node {i}"
        if not isinstance(spec, dict):
            raise ValueError(f"{where} is a JSON {type(spec).__name__}, expected an object")
        for key, typ in (("name", str), ("kind", str), ("inputs", list), ("hyper", dict), ("arrays", list)):
            if not isinstance(spec.get(key), typ):
                raise ValueError(f"{where}: {key!r} must be a JSON {typ.__name__.replace('str', 'string')}, "
                                 f"got {spec.get(key)!r:.80}")
        where = f"node {i} {spec['name']!r}"
        cls = _KINDS.get(spec["kind"])
        if cls is None:
            raise ValueError(f"{where} has unknown kind {spec['kind']!r}")
        if not all(isinstance(s, str) for s in spec["inputs"]):
            raise ValueError(f"{where}: inputs must be node names (strings), got {spec['inputs']!r:.80}")
        extra = sorted(set(spec["hyper"]) - set(cls.hyper))
        if extra:
            raise ValueError(f"{where} ({cls.kind}): unknown hyper-parameter(s) {extra}; {cls.kind} takes "
                             f"{list(cls.hyper) or 'none'}")
        arrays = spec["arrays"]
        if not all(isinstance(a, str) and a in cls.arrays for a in arrays) or len(set(arrays)) != len(arrays):
            raise ValueError(f"{where} ({cls.kind}): arrays must be distinct names among {list(cls.arrays)}, "
                             f"got {arrays!r:.80}")
    shape = header.get("input_shape")
    if shape is not None:
        if not isinstance(shape, list) or not 1 <= len(shape) <= 8 or not all(
                type(s) is int and 1 <= s <= G.MAX_INDEX for s in shape):
            raise ValueError(f"input_shape must be null or a list of 1 to 8 positive ints, got {shape!r:.80}")
        shape = tuple(shape)
    return header["nodes"], shape


def _check_shapes(specs, declared, input_shape):
    """Every declared array against what its node needs, before any array is read.

    Each layer is built on one-element placeholders of the declared ranks and dtypes (so its
    constructor checks those and the hyper-parameters); its arrays are then swapped for the
    declared shapes and the per-sample shapes are inferred through the graph, from
    ``input_shape`` when the file records it (a Dense layer fixes its output either way)."""
    shapes = {"input": input_shape}
    for i, spec in enumerate(specs):
        where = f"node {i} {spec['name']!r} ({spec['kind']})"
        decl = {a: declared[f"{i}.{a}"] for a in spec["arrays"]}
        if any(d.dtype.kind not in "iuf" for d in decl.values()):
            raise ValueError(f"{where}: arrays must be float or int, got {decl}")
        structure = {}
        if spec["kind"] == "Conv2d":  # groups / dilation constrain the weight's shape: checked on the
            # one-element placeholder alone, then set; out_shape checks them against the declared shape
            structure = {h: v for h, v in spec["hyper"].items() if h in ("groups", "dilation")}
            try:
                checked = {"groups": G._int(structure.get("groups", 1), "groups", "Conv2d"),
                           "dilation": G._pair(structure.get("dilation", 1), "dilation", "Conv2d")}
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: {e}") from None
            if checked["groups"] < 1 or min(checked["dilation"]) < 1:
                raise ValueError(f"{where}: groups and dilation must be >= 1, got {structure}")
        placeholder = dict(spec, hyper={h: v for h, v in spec["hyper"].items() if h not in structure})
        layer = _layer(i, placeholder, {a: np.ones((1,) * d.ndim, d.dtype) for a, d in decl.items()})
        if structure:
            for h, v in checked.items():
                object.__setattr__(layer, h, v)
        for a, d in decl.items():  # shape descriptors, not weights: past the layer's checked setter
            object.__setattr__(layer, a, d)
        if "weight" in decl and spec["kind"] != "LayerNorm":  # Dense, Conv2d, BatchNorm2d, GroupNorm: each
            # other array is one value per output/channel (LayerNorm's match normalized_shape: out_shape checks)
            n_out = decl["weight"].shape[0]
            bad = {a: d.shape for a, d in decl.items() if a != "weight" and d.shape != (n_out,)}
            if bad:
                raise ValueError(f"{where}: weight {decl['weight'].shape} needs {list(bad)} of shape ({n_out},), "
                                 f"the file declares {bad}")
        if spec["name"] in shapes:
            raise ValueError(f"node name {spec['name']!r} is used twice")
        missing = [s for s in spec["inputs"] if s not in shapes]
        if missing:
            raise ValueError(f"{where} reads {missing[0]!r}, which is not defined before it")
        ins = [shapes[s] for s in spec["inputs"]]
        if all(s is not None for s in ins):
            try:
                shapes[spec["name"]] = tuple(layer.out_shape(*ins))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where} with declared arrays {decl or 'none'}: {e}") from None
        else:
            shapes[spec["name"]] = (decl["weight"].shape[0],) if spec["kind"] == "Dense" else None
