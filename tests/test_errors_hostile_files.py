"""Hostile files: crafted model, patterns and ONNX files get a ValueError that names the file (or
node) and the problem, never a crash, a hang, a raw zlib/Memory/Recursion error or a huge
allocation. Every hostile file is built here, in ``tmp_path``."""
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import numpy as np
import pytest

import relprop as rp
from relprop.io import native

RNG = np.random.default_rng(5)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mlp():
    return rp.Sequential(rp.Dense(RNG.normal(size=(5, 4)), np.zeros(5)), rp.ReLU(), rp.Dense(RNG.normal(size=(3, 5))))


def _conv():
    return rp.Sequential(rp.Conv2d(RNG.normal(size=(2, 1, 3, 3))), rp.ReLU(), rp.Flatten())


def _npy(a):
    b = io.BytesIO()
    np.lib.format.write_array(b, np.asarray(a), allow_pickle=False)
    return b.getvalue()


def _npy_header(shape, descr="<f4"):
    """A .npy 1.0 header alone (the data is left to the caller)."""
    d = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    d += b" " * (63 - (len(d) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d


def _entries(model):
    """The array entries rp.save writes for ``model``: name -> .npy bytes."""
    return {f"{i}.{a}.npy": _npy(getattr(node.layer, a)) for i, node in enumerate(model.nodes)
            for a in node.layer.arrays}


def _header(model):
    """The JSON header rp.save writes for ``model``."""
    nodes = [{"name": n.name, "kind": n.layer.kind, "inputs": list(n.inputs),
              "hyper": {h: list(v) if isinstance(v, tuple) else v for h, v in
                        ((h, getattr(n.layer, h)) for h in n.layer.hyper)},
              "arrays": list(n.layer.arrays)} for n in model.nodes]
    return {"format": "relprop-model", "version": 1, "nodes": nodes, "input_shape": None}


def _write(path, header, entries, method=zipfile.ZIP_STORED, header_key="__graph__"):
    with zipfile.ZipFile(path, "w", compression=method) as z:
        z.writestr(header_key + ".npy", _npy(np.array(header if isinstance(header, str) else json.dumps(header))))
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def _patch_entry_fields(path, entry, flag_or=0, method=None):
    """Set zip flag bits / the compression method of ``entry`` in its local and central headers."""
    buf = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as z:
        off = z.getinfo(entry).header_offset
    flag_at = [(off + 6, off + 8)]
    i = buf.find(b"PK\x01\x02")
    while i >= 0:
        n = struct.unpack("<H", buf[i + 28:i + 30])[0]
        if bytes(buf[i + 46:i + 46 + n]) == entry.encode():
            flag_at.append((i + 8, i + 10))
        i = buf.find(b"PK\x01\x02", i + 4)
    for f, m in flag_at:
        buf[f] |= flag_or
        if method is not None:
            buf[m:m + 2] = struct.pack("<H", method)
    open(path, "wb").write(bytes(buf))


# ---------------------------------------------------------------------------------------
# item 5: arrays never replace hyper-parameters; hyper-parameters are checked; kernels are safe

def test_load_refuses_an_array_posing_as_a_hyper_parameter(tmp_path):
    """The crafted file: Conv2d padding as an int32 array listed among the node's arrays (it used
    to replace the checked padding, the shapes wrapped around and im2col wrote out of bounds)."""
    net = _conv()
    h = _header(net)
    del h["nodes"][0]["hyper"]["padding"]
    h["nodes"][0]["arrays"].append("padding")
    e = _entries(net)
    e["0.padding.npy"] = _npy(np.array([2**31 - 1, 2**31 - 1], np.int32))
    p = _write(tmp_path / "conv.npz", h, e)
    with pytest.raises(ValueError, match=r"conv\.npz.*node 0 '0' \(Conv2d\).*arrays must be .*\['weight', 'bias'\]"):
        rp.load(p)


def test_load_refuses_entries_that_belong_to_no_node(tmp_path):
    net = _conv()
    e = _entries(net)
    e["0.padding.npy"] = _npy(np.array([2**31 - 1, 2**31 - 1], np.int32))
    p = _write(tmp_path / "stray.npz", _header(net), e)
    with pytest.raises(ValueError, match=r"stray\.npz.*entry '0\.padding\.npy' is not an array of any node"):
        rp.load(p)


@pytest.mark.parametrize("padding, match", [
    ("2", "padding must be an int"), (2.5, "padding must be an int"), (True, "padding must be an int"),
    ([1, [2]], "padding must be an int"), (10**30, "at most 2147483647"), ([2**40, 0], "at most 2147483647"),
    (-1, "padding >= 0"), ({"a": 1, "b": 2}, "padding must be an int"),
])
def test_load_hyper_parameters_go_through_the_constructor(tmp_path, padding, match):
    net = _conv()
    h = _header(net)
    h["nodes"][0]["hyper"]["padding"] = padding
    p = _write(tmp_path / "hyper.npz", h, _entries(net))
    with pytest.raises(ValueError, match=rf"hyper\.npz.*node 0 '0' \(Conv2d\).*{match}"):
        rp.load(p)


def test_layer_hyper_parameters_are_python_ints_and_bounded():
    w = np.ones((1, 1, 3, 3))
    for pad in (np.int32(1), np.array([1, 1], np.int32), (np.int64(1), 1)):
        layer = rp.Conv2d(w, padding=pad)
        assert layer.padding == (1, 1) and all(type(v) is int for v in layer.padding)
    assert all(type(v) is int for v in rp.MaxPool2d(np.int32(2)).kernel_size)
    assert all(type(v) is int for v in rp.Reshape((np.int32(2), -1)).shape)
    for bad, err in ((1.5, TypeError), (True, TypeError), ("1", TypeError), (2**40, ValueError)):
        with pytest.raises(err, match="Conv2d: padding"):
            rp.Conv2d(w, padding=bad)
    with pytest.raises(TypeError, match="Reshape: shape"):
        rp.Reshape(("2", -1))
    with pytest.raises(ValueError, match="Concat: axis"):
        rp.Concat(axis=True)
    with pytest.raises(TypeError, match="LeakyReLU: negative_slope"):
        rp.LeakyReLU(10**400)
    with pytest.raises(ValueError, match="Softplus: beta"):
        rp.Softplus(beta=True)


def test_shapes_computed_in_python_do_not_wrap_around():
    assert rp.Flatten().out_shape((2**40, 2**40)) == (2**80,)
    assert rp.Reshape((-1,)).out_shape((2**40, 2**40)) == (2**80,)
    conv = rp.Conv2d(np.ones((1, 1, 3, 3)), padding=2**31 - 1)
    assert conv.out_shape((1, 8, 8)) == (1, 2**32 + 4, 2**32 + 4)


_KERNEL_SCRIPT = textwrap.dedent("""
    import numpy as np
    from relprop.kernels import cpu as k
    x = np.ones((1, 1, 8, 8)); big = np.int32(2**31 - 1)
    ho, wo = (int(v) for v in k.conv_out_shape(8, 8, 3, 3, 1, 1, big, big))  # wraps to 4x4 in int32
    cases = {
        "im2col wrapped geometry": ("im2col", (x, 3, 3, 1, 1, big, big, np.empty((9, ho * wo)))),
        "im2col stride 0": ("im2col", (x, 3, 3, 0, 1, 0, 0, np.empty((9, 36)))),
        "im2col small cols": ("im2col", (x, 3, 3, 1, 1, 0, 0, np.empty((9, 35)))),
        "col2im wrapped geometry": ("col2im_gather", (np.ones((9, 4)), 3, 3, 1, 1, big, big, np.empty((1, 1, 8, 8)), x, 0)),
        "col2im channels": ("col2im_gather", (np.ones((18, 36)), 3, 3, 1, 1, 0, 0, np.empty((1, 1, 8, 8)), x, 0)),
        "col2im xs": ("col2im_gather", (np.ones((18, 36)), 3, 3, 1, 1, 0, 0, np.empty((1, 1, 8, 8)), x, 2)),
        "maxpool padding >= kernel": ("maxpool_forward", (x, 2, 2, 1, 1, 2, 2, np.empty((1, 1, 11, 11)),
                                                          np.empty((1, 1, 11, 11), np.int64))),
        "maxpool out too large": ("maxpool_forward", (x, 2, 2, 2, 2, 0, 0, np.empty((1, 1, 9, 9)),
                                                      np.empty((1, 1, 9, 9), np.int64))),
        "maxpool idx": ("maxpool_forward", (x, 2, 2, 2, 2, 0, 0, np.empty((1, 1, 4, 4)), np.empty((1, 1, 4, 3), np.int64))),
        "avgpool channels": ("avgpool_forward", (x, 2, 2, 2, 2, 0, 0, np.empty((1, 3, 4, 4)))),
        "avgpool_backward x": ("avgpool_backward", (np.ones((1, 1, 4, 4)), 2, 2, 2, 2, 0, 0, np.ones((1, 1, 3, 3)),
                                                    True, np.empty((1, 1, 8, 8)))),
        "avgpool_backward g": ("avgpool_backward", (np.ones((1, 1, 9, 9)), 2, 2, 2, 2, 0, 0, x, False,
                                                    np.empty((1, 1, 8, 8)))),
        "maxpool_backward batch": ("maxpool_backward", (np.ones((2, 1, 4, 4)), np.zeros((2, 1, 4, 4), np.int64),
                                                        np.empty((1, 1, 8, 8)))),
        "rescale x0": ("maxpool_rescale_backward", (np.ones((1, 1, 4, 4)), x, np.ones((1, 1, 4, 4)), *[np.ones((1, 1, 4, 4))] * 2,
                                                    *[np.zeros((1, 1, 4, 4), np.int64)] * 2, 1e-6, np.empty((1, 1, 8, 8)))),
    }
    for what, (f, args) in cases.items():
        try:
            getattr(k, f)(*args)
            print(what, "-> ran", flush=True)
        except ValueError as e:
            print(what, "-> ValueError", e, flush=True)
""")


def test_cpu_kernels_check_their_buffers_instead_of_writing_out_of_bounds():
    """Run in a subprocess: before the fix the first case wrote 4e9 elements past cols."""
    r = subprocess.run([sys.executable, "-c", _KERNEL_SCRIPT], capture_output=True, text=True, timeout=600, cwd=REPO)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    assert len(lines) == 14 and all("-> ValueError" in ln for ln in lines), r.stdout


@pytest.fixture(scope="module")
def gpu_emulated():
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("the host emulation of the CUDA kernels needs g++")
    from cuda_host import emulated_cupy

    with emulated_cupy() as (cp, k):
        yield k


def test_gpu_launch_wrappers_check_geometry_and_buffers(gpu_emulated):
    k = gpu_emulated
    x = np.ones((1, 1, 8, 8))
    cases = [
        (k.im2col, (x, 3, 3, 0, 1, 0, 0, np.empty((9, 36))), "stride"),
        (k.im2col, (x, 9, 9, 1, 1, 0, 0, np.empty((81, 0))), "does not fit"),
        (k.col2im_gather, (np.ones((9, 36)), 3, 3, 1, 1, -1, 0, np.empty((1, 1, 8, 8)), x, 0), "padding"),
        (k.maxpool_forward, (x, 2, 2, 1, 1, 2, 2, np.empty((1, 1, 11, 11)), np.empty((1, 1, 11, 11), np.int64)),
         "must be < kernel"),
        (k.maxpool_forward, (x, 2, 2, 2, 2, 0, 0, np.empty((1, 1, 9, 9)), np.empty((1, 1, 9, 9), np.int64)),
         "window sweep"),
        (k.avgpool_forward, (x, 2, 2, 2, 2, 0, 0, np.empty((1, 1, 5, 4))), "window sweep"),
        (k.avgpool_backward, (np.ones((1, 1, 9, 9)), 2, 2, 2, 2, 0, 0, x, False, np.empty((1, 1, 8, 8))),
         "window sweep"),
        (k.avgpool_backward, (np.ones((1, 1, 4, 4)), 2, 2, 2, 2, 0, 0, np.ones((1, 1, 4, 16)), True,
                              np.empty((1, 1, 8, 8))), "avgpool_backward: x"),
    ]
    for f, args, match in cases:
        with pytest.raises(ValueError, match=match):
            f(*args)


# ---------------------------------------------------------------------------------------
# item 6: sizes checked before decompressing, bounded reads, every damage a ValueError

def _bomb(path, net, entry, shape, header=None):
    """``net``'s file with ``entry`` replaced by deflated zeros of ``shape`` (float32)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("__graph__.npy", _npy(np.array(json.dumps(header or _header(net)))))
        for name, data in _entries(net).items():
            if name != entry:
                z.writestr(name, data)
        with z.open(entry, "w", force_zip64=True) as f:
            f.write(_npy_header(shape))
            left, chunk = int(np.prod(shape)) * 4, bytes(1 << 24)
            while left:
                f.write(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
    return path


def test_load_rejects_a_deflate_bomb_before_decompressing_it(tmp_path):
    # 256 MiB of zeros in a ~260 kB file, as the second Dense weight: (3, 2**24) cannot read the
    # first Dense layer's 5 outputs, which the graph shows before any data is read
    p = _bomb(tmp_path / "bomb.npz", _mlp(), "2.weight.npy", (3, 2**24))
    assert p.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"bomb\.npz: node 2 '2' \(Dense\) with declared arrays .*"
                                             r"\(3, 16777216\).*expects input features \(16777216,\), got .*\(5,\)"):
            rp.load(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MiB while rejecting a bomb"


def test_load_checks_the_declared_sizes_against_max_bytes(tmp_path):
    net = _mlp()
    e = _entries(net)
    e["0.weight.npy"] = _npy_header((2**20, 2**20))  # 4 TiB declared, nothing behind it
    p = _write(tmp_path / "tb.npz", _header(net), e)
    with pytest.raises(ValueError, match=r"tb\.npz: entry '0\.weight\.npy' declares a \(1048576, 1048576\) float32 "
                                         r"array \(4 TiB\).*more than max_bytes=4294967296"):
        rp.load(p)
    # a consistent bomb within the graph's shapes: bounded by max_bytes, and read exactly
    wide = rp.Sequential(rp.Flatten(), rp.Dense(np.ones((2, 4))), rp.ReLU())
    p = _bomb(tmp_path / "wide.npz", wide, "1.weight.npy", (2, 2**22))
    with pytest.raises(ValueError, match=r"wide\.npz: entry '1\.weight\.npy' declares a \(2, 4194304\) float32 "
                                         r"array \(32 MiB\).*max_bytes=1048576"):
        rp.load(p, max_bytes=2**20)
    assert rp.load(p).nodes[1].layer.weight.shape == (2, 2**22)
    with pytest.raises(TypeError, match="max_bytes"):
        rp.load(p, max_bytes="1G")


def _hostile_archives(tmp_path):
    net = _mlp()
    h, e = _header(net), _entries(net)
    out = {}
    out["encrypted"] = (_write(tmp_path / "enc.npz", h, e), dict(flag_or=1), "'0.weight.npy' is marked encrypted")
    out["method"] = (_write(tmp_path / "method.npz", h, e), dict(method=99), "'0.weight.npy' uses zip compression "
                                                                             "method 99")
    p = _write(tmp_path / "zlib.npz", h, e, method=zipfile.ZIP_DEFLATED)
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("0.weight.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for j in range(start + 2, start + info.compress_size - 2):
        raw[j] ^= 0x5A
    p.write_bytes(bytes(raw))
    out["corrupt deflate"] = (p, None, r"'0\.weight\.npy' is damaged or not a \.npy array \(error: Error -3")
    p = _write(tmp_path / "crc.npz", h, e)
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("0.weight.npy")
    raw[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 1] ^= 0xFF
    p.write_bytes(bytes(raw))
    out["bad crc"] = (p, None, r"'0\.weight\.npy' is damaged.*\(BadZipFile: Bad CRC-32")
    e2 = dict(e, **{"0.weight.npy": _npy_header((5, 400)) + bytes(80)})
    out["short data"] = (_write(tmp_path / "short.npz", h, e2), None, "holds 208 bytes uncompressed, its .npy header "
                                                                     "declares 8128")
    e2 = dict(e, **{"0.weight.npy": _npy_header((5, 4), "|O") + bytes(160)})
    out["object dtype"] = (_write(tmp_path / "obj.npz", h, e2), None, "has dtype object")
    e2 = dict(e, **{"0.weight.npy": b"\x93NUMPY\x01\x00" + struct.pack("<H", 9000) + b"(" * 9000})
    out["npy header"] = (_write(tmp_path / "npyhdr.npz", h, e2), None, r"'0\.weight\.npy' is damaged or not a \.npy array \((ValueError|TokenError)")
    e2 = dict(e, **{"notes.txt": b"hello"})
    out["foreign entry"] = (_write(tmp_path / "txt.npz", h, e2), None, "'notes.txt' is not a .npy array")
    e2 = dict(e, **{"0.weight.npy": _npy(np.ones((5, 4), np.complex64))})
    out["complex weights"] = (_write(tmp_path / "cplx.npz", h, e2), None, "'0.weight.npy' has dtype complex64")
    return out


@pytest.mark.parametrize("case", ["encrypted", "method", "corrupt deflate", "bad crc", "short data", "object dtype",
                                  "npy header", "foreign entry", "complex weights"])
def test_damaged_archives_are_value_errors_naming_file_and_entry(tmp_path, case):
    p, patch, match = _hostile_archives(tmp_path)[case]
    if patch:
        _patch_entry_fields(p, "0.weight.npy", **patch)
    with pytest.raises(ValueError, match=rf"load: .*{p.name}: .*{match}"):
        rp.load(p)


def test_duplicate_entries_are_refused(tmp_path):
    net = _mlp()
    p = _write(tmp_path / "dup.npz", _header(net), _entries(net))
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(p, "a") as z:
        z.writestr("0.weight.npy", _npy(np.zeros((5, 4))))
    with pytest.raises(ValueError, match=r"dup\.npz: entry '0\.weight\.npy' appears twice"):
        rp.load(p)


def test_json_header_is_bounded_in_depth_and_length(tmp_path, monkeypatch):
    net = _mlp()
    p = _write(tmp_path / "deep.npz", "[" * 100000 + "]" * 100000, _entries(net))
    with pytest.raises(ValueError, match=r"deep\.npz: the JSON header nests 100000 deep, more than the 32 allowed"):
        rp.load(p)
    h = _header(net)
    h["nodes"][0]["name"] = "[{" * 400  # brackets inside strings do not count
    h["nodes"][1]["inputs"] = [h["nodes"][0]["name"]]
    _write(tmp_path / "ok.npz", h, _entries(net))
    assert rp.load(tmp_path / "ok.npz").nodes[0].name == "[{" * 400
    monkeypatch.setattr(native, "MAX_HEADER_CHARS", 1000)
    with pytest.raises(ValueError, match=r"ok\.npz: the header entry '__graph__\.npy' must be a 0-d unicode array "
                                         r"of at most 1000 characters"):
        rp.load(tmp_path / "ok.npz")


def _mutate(h, path, value):
    *keys, last = path
    for k in keys:
        h = h[k]
    h[last] = value


@pytest.mark.parametrize("path, value, match", [
    (("nodes",), {"a": 1}, "not a relprop model description"),
    (("nodes", 0), [1, 2], "node 0 is a JSON list, expected an object"),
    (("nodes", 0, "name"), 7, "node 0: 'name' must be a JSON string, got 7"),
    (("nodes", 0, "kind"), "Lambda", "node 0 '0' has unknown kind 'Lambda'"),
    (("nodes", 0, "inputs"), 5, "node 0: 'inputs' must be a JSON list, got 5"),
    (("nodes", 0, "inputs"), [["input"]], r"node 0 '0': inputs must be node names"),
    (("nodes", 0, "hyper"), [], "node 0: 'hyper' must be a JSON dict"),
    (("nodes", 0, "hyper"), {"weight": [1]}, r"node 0 '0' \(Dense\): unknown hyper-parameter\(s\) \['weight'\]"),
    (("nodes", 0, "arrays"), "weight", "node 0: 'arrays' must be a JSON list"),
    (("nodes", 0, "arrays"), ["weight", "weight"], r"arrays must be distinct names among \['weight', 'bias'\]"),
    (("nodes", 1, "inputs"), ["nowhere"], r"node 1 '1' \(ReLU\) reads 'nowhere', which is not defined"),
    (("nodes", 1, "name"), "0", "node name '0' is used twice"),
    (("input_shape",), ["4"], "input_shape must be null or a list of 1 to 8 positive ints"),
    (("input_shape",), [3], r"node 0 '0' \(Dense\) with declared arrays .*expects input features \(4,\), got .*\(3,\)"),
    (("version",), True, "format version True is not supported"),
    (("nodes", 0, "hyper"), {}, None),  # Dense has none: loads
])
def test_malformed_json_types_name_file_and_node(tmp_path, path, value, match):
    net = _mlp()
    h = _header(net)
    _mutate(h, path, value)
    p = _write(tmp_path / "types.npz", h, _entries(net))
    if match is None:
        assert np.array_equal(rp.load(p)(np.ones((1, 4))), net(np.ones((1, 4))))
        return
    with pytest.raises(ValueError, match=rf"load: .*types\.npz: .*{match}"):
        rp.load(p)


def test_round_trip_still_bit_exact_with_declared_input_shape(tmp_path):
    net = rp.Sequential(rp.Conv2d(RNG.normal(size=(2, 3, 3, 3)).astype(np.float32), stride=2, padding=1),
                        rp.BatchNorm2d(*(np.abs(RNG.normal(size=2)) + 0.5 for _ in range(4))), rp.ReLU(),
                        rp.MaxPool2d(2), rp.Flatten(), rp.Dense(RNG.normal(size=(3, 8))))
    net.input_shape = (3, 8, 8)
    rp.save(net, tmp_path / "m.npz")
    back = rp.load(tmp_path / "m.npz")
    assert back.input_shape == (3, 8, 8)
    for a, b in zip(net.nodes, back.nodes):
        for name in a.layer.arrays:
            x, y = getattr(a.layer, name), getattr(b.layer, name)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    x = RNG.normal(size=(2, 3, 8, 8))
    assert np.array_equal(back(x), net(x))


def _patterns_file(tmp_path):
    P = rp.methods.patterns.Patterns({"0": np.ones((5, 4))}, {"0": "relu"}, {"0": np.ones(5, np.int64)}, 10, "f" * 64)
    P.save(tmp_path / "p.npz")
    with zipfile.ZipFile(tmp_path / "p.npz") as z:
        return {n: z.read(n) for n in z.namelist()}


def test_patterns_files_get_the_same_protection(tmp_path):
    e = _patterns_file(tmp_path)
    assert rp.load_patterns(tmp_path / "p.npz")["0"].shape == (5, 4)
    header = json.loads(str(np.load(io.BytesIO(e["__patterns__.npy"]))[()]))
    big = dict(e, **{"0.pattern.npy": _npy_header((2**20, 2**20), "<f8")})
    header_big = dict(header, layers=[dict(header["layers"][0], shape=[2**20, 2**20])])
    p = _write(tmp_path / "pbig.npz", header_big, {k: v for k, v in big.items() if k != "__patterns__.npy"},
               header_key="__patterns__")
    with pytest.raises(ValueError, match=r"load_patterns: .*pbig\.npz: entry '0\.pattern\.npy' declares a "
                                         r"\(1048576, 1048576\) float64 array \(8 TiB\).*max_bytes"):
        rp.load_patterns(p)
    p = _write(tmp_path / "pdeep.npz", "[" * 100000 + "]" * 100000,
               {k: v for k, v in e.items() if k != "__patterns__.npy"}, header_key="__patterns__")
    with pytest.raises(ValueError, match=r"load_patterns: .*pdeep\.npz: the JSON header nests 100000 deep"):
        rp.load_patterns(p)
    p = _write(tmp_path / "penc.npz", header, {k: v for k, v in e.items() if k != "__patterns__.npy"},
               header_key="__patterns__")
    _patch_entry_fields(p, "0.pattern.npy", flag_or=1)
    with pytest.raises(ValueError, match=r"load_patterns: .*penc\.npz: entry '0\.pattern\.npy' is marked encrypted"):
        rp.load_patterns(p)


# ---------------------------------------------------------------------------------------
# item 7: ONNX constant folding and the probe are bounded; external data is not resolved

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _onnx_model(nodes, inits, in_dims, out_dims, opset=17):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_dims])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_dims])
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", opset)])


_LOOP_SCRIPT = textwrap.dedent("""
    import numpy as np, sys
    from onnx import TensorProto, helper, numpy_helper as nh
    import relprop as rp
    V = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body", [V("i", TensorProto.INT64, []), V("cond_in", TensorProto.BOOL, []), V("v_in", TensorProto.FLOAT, [3])],
        [V("cond_out", TensorProto.BOOL, []), V("v_out", TensorProto.FLOAT, [3])],
        [nh.from_array(np.ones(3, np.float32), "one")])
    inits = [nh.from_array(np.ones((4, 3), np.float32), "W"), nh.from_array(np.array(10**12, np.int64), "M"),
             nh.from_array(np.array(True), "c"), nh.from_array(np.zeros(3, np.float32), "v0")]
    for bias in ("b", "v0"):  # the Loop's output as the bias, or a dead branch nothing reads
        nodes = [helper.make_node("Loop", ["M", "c", "v0"], ["b"], name="loop", body=body),
                 helper.make_node("Gemm", ["x", "W", bias], ["y"], name="fc")]
        g = helper.make_graph(nodes, "g", [V("x", TensorProto.FLOAT, ["N", 4])], [V("y", TensorProto.FLOAT, ["N", 3])],
                              inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        try:
            net = rp.from_onnx(m)
            print(bias, "imported", [n.layer.kind for n in net.nodes], flush=True)
        except ValueError as e:
            print(bias, "ValueError", e, flush=True)
""")


def test_onnx_static_loop_is_never_run():
    """A 1 KB model with a constant Loop of 1e12 iterations used to hang (subprocess, timeout)."""
    r = subprocess.run([sys.executable, "-c", _LOOP_SCRIPT], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    live, dead = r.stdout.strip().splitlines()
    assert live.startswith("b ValueError ONNX node 'loop' (Loop): op 'Loop' on constant inputs is not evaluated"), live
    assert "Loop, If or Scan never runs" in live
    assert dead == "v0 imported ['Dense']", dead  # the verification runs only the nodes the output needs


def _weight_from(nodes, inits):
    """x (N, 4) @ W with W computed by ``nodes`` from constants (the node named 'big')."""
    return _onnx_model(nodes + [helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], inits, [4], [65536])


@pytest.mark.parametrize("case, op", [("ConstantOfShape", "ConstantOfShape"), ("Expand", "Expand"),
                                      ("broadcast Mul", "Mul"), ("Tile", "Tile"), ("Range", "Range")])
def test_onnx_folded_tensors_are_size_checked_before_they_run(case, op):
    shape = np.array([4, 65536], np.int64)
    big = {"ConstantOfShape": ([helper.make_node("ConstantOfShape", ["s"], ["W"], name="big",
                                                 value=numpy_helper.from_array(np.ones(1, np.float32)))],
                               {"s": np.array([2**16, 2**16], np.int64)}),
           "Expand": ([helper.make_node("Expand", ["one", "s"], ["W"], name="big")],
                      {"one": np.ones((1, 1), np.float32), "s": np.array([2**16, 2**16], np.int64)}),
           "broadcast Mul": ([helper.make_node("Mul", ["col", "row"], ["W"], name="big")],
                             {"col": np.ones((2**16, 1), np.float32), "row": np.ones((1, 2**16), np.float32)}),
           "Tile": ([helper.make_node("Tile", ["one", "s"], ["W"], name="big")],
                    {"one": np.ones((1, 1), np.float32), "s": np.array([2**16, 2**16], np.int64)}),
           "Range": ([helper.make_node("Range", ["a", "b", "d"], ["r"], name="big"),
                      helper.make_node("Reshape", ["r", "s"], ["W"])],
                     {"a": np.float32(0), "b": np.float32(2**32), "d": np.float32(1), "s": shape})}[case]
    model = _weight_from(*big)
    with pytest.raises(ValueError, match=rf"ONNX node 'big' \({op}\): folding this {op} on constant inputs would make "
                                         r"a tensor of 4294967296 elements \(.*\), more than the limits "
                                         r"max_elements=268435456"):
        rp.from_onnx(model)


def test_onnx_fold_limits_are_keywords():
    nodes = [helper.make_node("Expand", ["one", "s"], ["W"], name="grow")]
    model = _onnx_model(nodes + [helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")],
                        {"one": np.ones((1, 1), np.float32), "s": np.array([4, 8], np.int64)}, [4], [8])
    assert rp.from_onnx(model).nodes[0].layer.weight.shape == (8, 4)
    with pytest.raises(ValueError, match=r"ONNX node 'grow' \(Expand\): .* 32 elements .*max_elements=16"):
        rp.from_onnx(model, max_elements=16)
    with pytest.raises(ValueError, match=r"ONNX node 'grow' \(Expand\): .* 32 elements \(128 bytes\).*max_bytes=100"):
        rp.from_onnx(model, max_bytes=100)
    with pytest.raises(TypeError, match="max_elements"):
        rp.from_onnx(model, max_elements=1.5)


def test_onnx_other_ops_on_constants_are_not_evaluated():
    nodes = [helper.make_node("Erf", ["c"], ["W"], name="erf"), helper.make_node("MatMul", ["x", "W"], ["y"])]
    with pytest.raises(ValueError, match=r"ONNX node 'erf' \(Erf\): op 'Erf' on constant inputs is not evaluated"):
        rp.from_onnx(_onnx_model(nodes, {"c": np.ones((4, 3), np.float32)}, [4], [3]))


def test_onnx_probe_input_and_activations_are_size_checked():
    # a declared (N, 1, 2^20, 2^20) input: the probe would be 8 TiB
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    with pytest.raises(ValueError, match=r"model input 'x': the verification probe of shape \(2, 1, 1048576, 1048576\) "
                                         r"would hold 2199023255552 elements \(8 TiB\)"):
        rp.from_onnx(_onnx_model(nodes, {}, [1, 2**20, 2**20], [1]))
    # a small input a 1x1 conv widens to 2 x 4096 x 512 x 512 values (8 GiB at the probe's batch of 2)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="wide"), helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    with pytest.raises(ValueError, match=r"ONNX node 'wide' \(Conv\): its output at the probe's batch size of shape "
                                         r"\(2, 4096, 512, 512\) would hold 2147483648 elements"):
        rp.from_onnx(_onnx_model(nodes, {"W": np.ones((4096, 1, 1, 1), np.float32)}, [1, 512, 512], [4096]))


def _external_model(tmp_path):
    w = RNG.normal(size=(4, 3)).astype(np.float32)
    (tmp_path / "weights.bin").write_bytes(w.tobytes())
    model = _onnx_model([helper.make_node("MatMul", ["x", "W"], ["y"])], {"W": w}, [4], [3])
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", str(w.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return model, w


def test_onnx_external_data_is_not_resolved_against_the_current_directory(tmp_path, monkeypatch):
    model, w = _external_model(tmp_path)
    monkeypatch.chdir(tmp_path)  # weights.bin lies right here
    for src, where in ((model, "the given ModelProto"), (model.SerializeToString(), "the given bytes")):
        with pytest.raises(ValueError, match=rf"{where} references external data \(tensor 'W'\); relprop does not "
                                             "resolve it against the current directory"):
            rp.from_onnx(src)
    # a model file resolves its external data next to itself
    sub = tmp_path / "m"
    sub.mkdir()
    full = _onnx_model([helper.make_node("MatMul", ["x", "W"], ["y"])], {"W": w}, [4], [3])
    onnx.save_model(full, str(sub / "m.onnx"), save_as_external_data=True, location="m.bin", size_threshold=0)
    assert (sub / "m.bin").exists()
    np.testing.assert_array_equal(rp.from_onnx(str(sub / "m.onnx")).nodes[0].layer.weight, w.T)


def test_elementwise_kernels_check_their_buffers():
    """A bias shorter than the layer (e.g. forced past the layer's checks) is refused by the
    epilogue kernels instead of read past its end."""
    from relprop.kernels import cpu as k

    z = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match="bias_act_rows"):
        k.bias_act_rows(z, np.zeros(3, np.float32), 1, z, False)
    a = np.zeros((2, 4, 5), np.float32)
    with pytest.raises(ValueError, match="bias_act_from_gemm"):
        k.bias_act_from_gemm(np.zeros((4, 10), np.float32), np.zeros(2, np.float32), 1, a, a, False)
    g = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="act_backward"):
        k.act_backward(g, np.zeros(5, np.float32), g, 1, g)
    with pytest.raises(ValueError, match="stacked_mul_sum"):
        k.stacked_mul_sum(np.zeros((2, 6), np.float32), np.zeros((2, 6), np.float32), 2, np.zeros((2, 4), np.float32))
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="stack_input_mods"):
        k.stack_input_mods(x, np.array([0, 1], np.int64), x, x, np.zeros((2, 5), np.float32))
