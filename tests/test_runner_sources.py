"""Dataset sources for images (``relprop.runner.images``): IDX files and folders of images.

Every expected value is built independently of the reader: IDX bytes are packed here with
``struct`` and compared with the array they were packed from; PNG files are written with Pillow
and compared with ``np.asarray(Image.open(...))`` converted by hand. Hostile IDX files (sizes
that do not match, absurd headers, short or long ``.gz`` streams) must each be refused with a
SourceError naming the file. Two end-to-end jobs check ``Explainer.map`` on an IDX file and on
an image folder against ``ex(x converted by hand)``; a data test reads the real Fashion-MNIST
test set when it is installed.
"""
import gzip
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import relprop as rp
from relprop.runner import JobError, SourceError, as_source
from relprop.runner import images
from relprop.runner.stores import StoreError

RNG = np.random.default_rng(20261203)
FMT = {0x08: "B", 0x09: "b", 0x0B: "h", 0x0C: "i", 0x0D: "f", 0x0E: "d"}  # struct codes, packed big-endian


# -- IDX helpers -----------------------------------------------------------------------------
def idx_bytes(a, code):
    """The IDX encoding of ``a``, packed value by value with struct."""
    head = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + struct.pack(f">{a.size}{FMT[code]}", *a.ravel().tolist())


def write(path, data, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def mnist_pair(tmp_path, n=7, h=4, w=3, gz=False, prefix="train"):
    x = RNG.integers(0, 256, (n, h, w)).astype(np.uint8)
    y = RNG.integers(0, 10, n).astype(np.uint8)
    ext = ".gz" if gz else ""
    xp = write(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", idx_bytes(x, 0x08), gz)
    write(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", idx_bytes(y, 0x08), gz)
    return xp, x, y


# -- IDX: values -----------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_uint8_with_auto_labels(tmp_path, gz):
    xp, x, y = mnist_pair(tmp_path, gz=gz)
    src = as_source(xp)
    assert (src.n, src.shape, src.dtype) == (7, (4, 3), np.float32)
    xs, ys = src.read(2, 6)
    np.testing.assert_array_equal(xs, (x[2:6] / 255.0).astype(np.float32))  # x / 255, rounded once
    assert xs.dtype == np.float32 and xs.shape == (4, 4, 3)
    np.testing.assert_array_equal(ys, y[2:6])
    assert ys.dtype == np.int64
    d = src.describe()
    assert d["kind"] == "idx" and d["labels_file"] == f"train-labels-idx1-ubyte{'.gz' if gz else ''}"
    assert d["path"] == str(xp.resolve()) and d["scale"] == pytest.approx(1 / 255) and d["stored_dtype"] == "uint8"
    if not gz:
        assert isinstance(src.data, np.memmap)  # mapped, not copied


@pytest.mark.parametrize("gz", [False, True])
def test_idx_source_pickles_as_its_file(tmp_path, gz):
    xp, x, y = mnist_pair(tmp_path, n=500, h=28, w=28, gz=gz)
    src = as_source(xp, mean=0.5)
    blob = pickle.dumps(src)
    assert len(blob) < 2000  # the path and options, not the 392 kB of pixels
    back = pickle.loads(blob)
    assert back.describe() == src.describe() and isinstance(back.data, np.memmap) != gz
    np.testing.assert_array_equal(back.read(3, 9)[0], src.read(3, 9)[0])
    np.testing.assert_array_equal(back.labels, y)
    write(tmp_path / xp.name, idx_bytes(x[:, :27], 0x08), gz)  # the file changed since
    with pytest.raises(SourceError, match="changed"):
        pickle.loads(blob)


@pytest.mark.parametrize("code", sorted(FMT))
@pytest.mark.parametrize("gz", [False, True])
def test_idx_every_type_code(tmp_path, code, gz):
    kind = np.dtype(FMT[code])
    if kind.kind == "f":
        a = RNG.normal(0, 3, (5, 2, 3)).astype(kind)
    else:
        info = np.iinfo(kind)
        a = RNG.integers(info.min, int(info.max) + 1, (5, 2, 3)).astype(kind)
    p = write(tmp_path / f"d-ubyte{'.gz' if gz else ''}", idx_bytes(a, code), gz)
    src = images.idx_source(p)
    assert src.labels is None and src.shape == (2, 3)
    xs, _ = src.read(0, 5)
    want = a.astype(np.float64) / 255.0 if code == 0x08 else a.astype(np.float64)  # default scale: uint8 only
    assert xs.dtype == (np.float64 if code == 0x0E else np.float32)
    np.testing.assert_allclose(xs, want, rtol=1e-6)


def test_idx_scale_mean_std(tmp_path):
    xp, x, _ = mnist_pair(tmp_path)
    xs, _ = as_source(xp, mean=0.25, std=0.5).read(0, 7)
    np.testing.assert_allclose(xs, (x / 255.0 - 0.25) / 0.5, rtol=1e-5, atol=1e-6)
    xs, _ = as_source(xp, scale=2.0, mean=[1.0], std=(4.0,)).read(0, 7)  # one channel: a 1-list works
    np.testing.assert_allclose(xs, (x * 2.0 - 1.0) / 4.0, rtol=1e-6)
    # samples (C, H, W): per-channel statistics along their first axis
    a = RNG.integers(0, 256, (3, 2, 4, 4)).astype(np.uint8)
    p = write(tmp_path / "c-ubyte", idx_bytes(a, 0x08))
    xs, _ = images.idx_source(p, mean=[0.1, 0.9], std=[0.5, 2.0]).read(0, 3)
    want = (a / 255.0 - np.array([0.1, 0.9])[:, None, None]) / np.array([0.5, 2.0])[:, None, None]
    np.testing.assert_allclose(xs, want, rtol=1e-5, atol=1e-6)
    for bad in ({"std": 0.0}, {"std": [1.0, -1.0]}, {"mean": [0.1, 0.2, 0.3]}, {"mean": "a"}, {"scale": 0},
                {"scale": float("nan")}, {"mean": [0.1, True]}):
        with pytest.raises(ValueError):
            images.idx_source(p, **bad)


def test_idx_options_change_the_description(tmp_path):
    xp, _, _ = mnist_pair(tmp_path)
    base = as_source(xp).describe()
    for opts in ({"scale": 1.0}, {"mean": 0.5}, {"std": 2.0}):
        assert as_source(xp, **opts).describe() != base


def test_idx_explicit_labels(tmp_path):
    xp, x, y = mnist_pair(tmp_path)
    other = RNG.integers(0, 5, 7)
    assert np.array_equal(as_source(xp, labels=other).labels, other)  # given labels win over the sibling file
    np.save(tmp_path / "y.npy", other.astype(np.int16))
    assert np.array_equal(as_source(xp, labels=tmp_path / "y.npy").labels, other)
    assert np.array_equal(images.read_labels(tmp_path / "train-labels-idx1-ubyte"), y)
    write(tmp_path / "short-labels-idx1-ubyte", idx_bytes(y[:5], 0x08))
    with pytest.raises(SourceError, match="short-labels-idx1-ubyte"):
        images.idx_source(xp, labels=tmp_path / "short-labels-idx1-ubyte")
    with pytest.raises(SourceError, match="labels"):
        as_source(xp, labels=other[:3])
    np.save(tmp_path / "f.npy", other.astype(np.float32))
    with pytest.raises(SourceError, match="f.npy"):
        images.read_labels(tmp_path / "f.npy")


def test_idx_wrong_sibling_label_count(tmp_path):
    xp, _, y = mnist_pair(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(y[:6], 0x08))
    with pytest.raises(SourceError, match="train-labels-idx1-ubyte.*7 images"):
        as_source(xp)


def test_idx_detected_by_magic_and_kaggle_names(tmp_path):
    x = RNG.integers(0, 256, (3, 2, 2)).astype(np.uint8)
    p = write(tmp_path / "anything.bin", idx_bytes(x, 0x08))
    assert images.is_idx(p) and not images.is_idx(tmp_path)
    np.testing.assert_allclose(as_source(p).read(0, 3)[0], x / 255.0, rtol=1e-6)
    write(tmp_path / "t-images.idx3-ubyte", idx_bytes(x, 0x08))
    write(tmp_path / "t-labels.idx1-ubyte", idx_bytes(np.array([1, 2, 3], np.uint8), 0x08))
    assert np.array_equal(as_source(tmp_path / "t-images.idx3-ubyte").labels, [1, 2, 3])
    (tmp_path / "notes.txt").write_bytes(b"hello")
    assert not images.is_idx(tmp_path / "notes.txt")
    with pytest.raises(SourceError, match="unknown format"):
        as_source(tmp_path / "notes.txt")


# -- IDX: hostile files ------------------------------------------------------------------------
def _header(code, dims):
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def _data_of(n):
    return bytes(range(256)) * (n // 256) + bytes(range(n % 256))


HOSTILE = {
    "truncated": (_header(0x08, (3, 4, 4)) + _data_of(47), "truncated"),
    "too_long": (_header(0x08, (3, 4, 4)) + _data_of(49), "trailing data"),
    "float_truncated": (_header(0x0D, (2, 2, 2)) + _data_of(31), "truncated"),
    "huge_header": (_header(0x08, (2**20, 2**20)) + _data_of(64), r"1048576, 1048576|max_bytes"),
    "huge_header_4d": (_header(0x0E, (2**16, 2**16, 2**16, 2**16)), r"65536|max_bytes"),
    "bad_magic": (b"\x01\x02\x08\x03" + _data_of(60), "magic"),
    "unknown_type": (b"\x00\x00\x07\x01" + struct.pack(">I", 4) + _data_of(4), "type code 0x07"),
    "ndim_0": (b"\x00\x00\x08\x00" + _data_of(16), "0 dimensions"),
    "ndim_200": (b"\x00\x00\x08\xc8" + _data_of(800), "200 dimensions"),
    "dim_0": (_header(0x08, (3, 0, 4)), "empty dimension"),
    "header_cut": (b"\x00\x00\x08\x03" + struct.pack(">2I", 3, 4), "inside its header"),
    "too_short": (b"\x00\x00", "too short"),
    "empty": (b"", "too short"),
    "one_dimensional": (_header(0x08, (5,)) + _data_of(5), "1-D"),
}


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_idx_hostile_files_are_refused(tmp_path, case, gz):
    data, why = HOSTILE[case]
    name = f"evil-{case}-images-idx3-ubyte" + (".gz" if gz else "")
    p = write(tmp_path / name, data, gz)
    with pytest.raises(SourceError, match=why) as err:
        as_source(p)
    assert name in str(err.value)


def test_idx_gz_stream_shorter_or_longer_than_declared(tmp_path):
    a = RNG.integers(0, 256, (4, 5, 5)).astype(np.uint8)
    good = idx_bytes(a, 0x08)
    for name, data, why in (("short-ubyte.gz", good[:-1], "ends after 99 of the 100"),
                            ("long-ubyte.gz", good + b"\x00" * 1000, "more than the 100")):
        p = write(tmp_path / name, data, gz=True)
        with pytest.raises(SourceError, match=why) as err:
            as_source(p)
        assert name in str(err.value)


def test_idx_gz_corrupt_streams(tmp_path):
    a = RNG.integers(0, 256, (4, 5, 5)).astype(np.uint8)
    z = gzip.compress(idx_bytes(a, 0x08))
    bad_crc = z[:-8] + bytes([z[-8] ^ 0xFF]) + z[-7:]
    for name, data in (("cut-ubyte.gz", z[:len(z) // 2]), ("crc-ubyte.gz", bad_crc),
                       ("garbage-ubyte.gz", b"\x1f\x8b\x08\x00" + b"\xff" * 40)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SourceError) as err:
            as_source(tmp_path / name)
        assert name in str(err.value)


def test_idx_gz_declared_size_limit(tmp_path):
    a = RNG.integers(0, 256, (4, 5, 5)).astype(np.uint8)
    p = write(tmp_path / "x-ubyte.gz", idx_bytes(a, 0x08), gz=True)
    with pytest.raises(SourceError, match="max_bytes=99") as err:
        images.idx_source(p, max_bytes=99)
    assert "x-ubyte.gz" in str(err.value)
    assert images.idx_source(p, max_bytes=100).n == 4
    with pytest.raises(ValueError, match="max_bytes"):
        images.idx_source(p, max_bytes=0)


# -- image folders -----------------------------------------------------------------------------
def png(path, a):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def rgb(h=5, w=6):
    return RNG.integers(0, 256, (h, w, 3)).astype(np.uint8)


def by_hand(files, mode="RGB", size=None):
    """uint8 (n, H, W, C) read with Pillow directly."""
    out = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert(mode)
            if size is not None:
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            a = np.asarray(im)
        out.append(a[..., None] if a.ndim == 2 else a)
    return np.stack(out)


def classes_folder(tmp_path):
    root = tmp_path / "data"
    files = [png(root / "b_dog" / "2.png", rgb()), png(root / "a_cat" / "z.png", rgb()),
             png(root / "b_dog" / "1.png", rgb()), png(root / "a_cat" / "deeper" / "y.png", rgb()),
             png(root / "a_cat" / "a.png", rgb())]
    (root / "a_cat" / "README.txt").write_text("not an image")
    png(root / ".hidden" / "h.png", rgb())
    png(root / "a_cat" / ".h.png", rgb())
    order = [files[4], files[1], files[3], files[2], files[0]]  # folder by folder, then by name
    return root, order, [0, 0, 0, 1, 1]


def test_image_folder_with_classes(tmp_path):
    root, order, labels = classes_folder(tmp_path)
    src = as_source(root)
    assert src.classes == ["a_cat", "b_dog"] and src.files == order
    assert (src.n, src.shape, src.dtype) == (5, (3, 5, 6), np.float32)
    x, y = src.read(1, 5)
    np.testing.assert_array_equal(x, (by_hand(order[1:5]).transpose(0, 3, 1, 2) / 255.0).astype(np.float32))
    np.testing.assert_array_equal(y, labels[1:5])
    d = src.describe()
    assert d["kind"] == "image folder" and d["classes"] == ["a_cat", "b_dog"] and d["layout"] == "CHW"
    with pytest.raises(SourceError, match="label the images already"):
        as_source(root, labels=np.arange(5))


def test_flat_folder(tmp_path):
    files = [png(tmp_path / f"{i:02d}.png", rgb()) for i in (3, 1, 2)]
    src = as_source(tmp_path)
    assert src.labels is None and src.classes == [] and src.files == sorted(files)
    x, y = src.read(0, 3)
    assert y is None
    np.testing.assert_allclose(x, by_hand(sorted(files)).transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    src = as_source(tmp_path, labels=np.array([4, 5, 6]))
    assert np.array_equal(src.read(1, 3)[1], [5, 6])


def test_resize(tmp_path):
    files = [png(tmp_path / "a.png", rgb(9, 4)), png(tmp_path / "b.png", rgb(5, 11))]
    src = images.ImageFolder(tmp_path, size=(6, 7))
    assert src.shape == (3, 6, 7)
    x, _ = src.read(0, 2)
    np.testing.assert_allclose(x, by_hand(files, size=(6, 7)).transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    assert images.ImageFolder(tmp_path, size=4).shape == (3, 4, 4)
    # resizing to the image's own size leaves it unchanged
    png(tmp_path / "same" / "c.png", a := rgb(5, 6))
    np.testing.assert_allclose(images.ImageFolder(tmp_path / "same", size=(5, 6)).read(0, 1)[0][0],
                               a.transpose(2, 0, 1) / 255.0, rtol=1e-6)
    for bad in (0, (3,), (2, 0), "4", (2.5, 3), True):
        with pytest.raises(ValueError, match="size"):
            images.ImageFolder(tmp_path, size=bad)


def test_grey_and_rgb_modes(tmp_path):
    a = rgb()
    png(tmp_path / "c.png", a)
    grey = RNG.integers(0, 256, (5, 6)).astype(np.uint8)
    png(tmp_path / "g.png", grey)
    src = images.ImageFolder(tmp_path, mode="L")
    assert src.shape == (1, 5, 6)
    x, _ = src.read(0, 2)
    # ITU-R 601-2 luma, as Pillow documents for convert("L"), to within its rounding
    r, g, b = a.astype(np.int64).transpose(2, 0, 1)
    luma = (r * 299 + g * 587 + b * 114) / 1000
    assert np.abs(x[0, 0] * 255 - luma).max() <= 0.51
    np.testing.assert_allclose(x[1, 0], grey / 255.0, rtol=1e-6)
    x, _ = images.ImageFolder(tmp_path, mode="RGB").read(0, 2)
    np.testing.assert_allclose(x[0], a.transpose(2, 0, 1) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x[1], np.repeat(grey[None], 3, 0) / 255.0, rtol=1e-6)  # grey -> 3 equal channels
    with pytest.raises(ValueError, match="mode"):
        images.ImageFolder(tmp_path, mode="RGBA")


def test_layouts(tmp_path):
    png(tmp_path / "a.png", rgb())
    png(tmp_path / "b.png", rgb())
    chw = images.ImageFolder(tmp_path)
    hwc = images.ImageFolder(tmp_path, layout="HWC")
    assert chw.shape == (3, 5, 6) and hwc.shape == (5, 6, 3)
    xc, xh = chw.read(0, 2)[0], hwc.read(0, 2)[0]
    assert xc.flags.c_contiguous and np.array_equal(xc, xh.transpose(0, 3, 1, 2))
    assert chw.describe() != hwc.describe()
    with pytest.raises(ValueError, match="layout"):
        images.ImageFolder(tmp_path, layout="NCHW")


def test_mean_std_per_channel(tmp_path):
    a = rgb()
    png(tmp_path / "a.png", a)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for layout in ("CHW", "HWC"):
        x, _ = images.ImageFolder(tmp_path, mean=mean, std=std, layout=layout).read(0, 1)
        want = (a / 255.0 - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(x[0], want.transpose(2, 0, 1) if layout == "CHW" else want, rtol=1e-5, atol=1e-6)
    x, _ = images.ImageFolder(tmp_path, scale=1.0, mean=128, std=64).read(0, 1)
    np.testing.assert_allclose(x[0], (a.transpose(2, 0, 1) - 128.0) / 64.0, rtol=1e-6)
    base = images.ImageFolder(tmp_path).describe()
    assert images.ImageFolder(tmp_path, mean=mean).describe() != base
    assert images.ImageFolder(tmp_path, std=std).describe() != base
    for bad in ({"mean": (0.1, 0.2)}, {"std": (1.0, 0.0, 1.0)}, {"std": -1}, {"mean": [[0.1, 0.2, 0.3]]},
                {"mean": [0.1], "mode": "RGB"}, {"std": (1, 1), "mode": "L"}):
        with pytest.raises(ValueError):
            images.ImageFolder(tmp_path, **bad)


def test_mismatched_sizes_are_refused(tmp_path):
    png(tmp_path / "a.png", rgb(5, 6))
    png(tmp_path / "b.png", rgb(6, 5))
    src = images.ImageFolder(tmp_path)
    assert src.shape == (3, 5, 6)  # from the first image, up front
    assert src.read(0, 1)[0].shape == (1, 3, 5, 6)
    with pytest.raises(SourceError, match=r"b\.png.*6x5.*size=") as err:
        src.read(0, 2)
    assert "a.png" in str(err.value)


def test_corrupt_images_are_refused(tmp_path):
    png(tmp_path / "a.png", rgb())
    good = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(b"this is no image")
    (tmp_path / "c.png").write_bytes(good[:len(good) // 2])
    # an EPS file named .png: never handed to the EPS plugin (which runs Ghostscript)
    (tmp_path / "d.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 5 6\n")
    src = images.ImageFolder(tmp_path)
    for i, name in ((1, "b.png"), (2, "c.png"), (3, "d.png")):
        with pytest.raises(SourceError, match="cannot be read") as err:
            src.read(i, i + 1)
        assert name in str(err.value)
    (tmp_path / "0.png").write_bytes(b"")
    with pytest.raises(SourceError, match="0.png"):  # the first image, read for the shape
        images.ImageFolder(tmp_path)


def test_empty_folders_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="empty.*holds no images"):
        as_source(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(SourceError, match="holds no images"):
        as_source(tmp_path / "text")
    png(tmp_path / "cls" / "a" / "1.png", rgb())
    (tmp_path / "cls" / "b").mkdir()
    with pytest.raises(SourceError, match="class folder 'b' holds no images"):
        as_source(tmp_path / "cls")
    png(tmp_path / "mixed" / "a" / "1.png", rgb())
    png(tmp_path / "mixed" / "2.png", rgb())
    with pytest.raises(SourceError, match="both images"):
        as_source(tmp_path / "mixed")
    # extensions choose the files
    png(tmp_path / "bmp" / "1.bmp", rgb())
    assert images.ImageFolder(tmp_path / "bmp").n == 1
    with pytest.raises(SourceError, match="holds no images"):
        images.ImageFolder(tmp_path / "bmp", extensions=(".png",))


def test_pixel_limit_is_per_reader(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    png(tmp_path / "a.png", rgb(10, 10))
    with pytest.raises(SourceError, match=r"a\.png.*max_pixels=99"):
        images.ImageFolder(tmp_path, max_pixels=99)
    assert images.ImageFolder(tmp_path, max_pixels=100).read(0, 1)[0].shape == (1, 3, 10, 10)
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's global limit untouched


def test_pillow_missing(tmp_path, monkeypatch):
    png(tmp_path / "a.png", rgb())
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        as_source(tmp_path)


def test_importing_relprop_leaves_pillow_alone():
    code = "import sys, relprop, relprop.runner.images; print('PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- end to end: Explainer.map -------------------------------------------------------------------
def _net(channels, h, w, classes=3):
    r = np.random.default_rng(11)
    return rp.Sequential(rp.Conv2d(r.normal(0, 0.5, (2, channels, 3, 3)), r.normal(0, 0.1, 2), stride=1, padding=1),
                         rp.ReLU(), rp.Flatten(), rp.Dense(r.normal(0, 0.3, (classes, 2 * h * w)),
                                                           r.normal(0, 0.1, classes)))


def test_map_over_idx_files(tmp_path):
    xp, x, y = mnist_pair(tmp_path, n=9, h=6, w=5, gz=True)
    y = y % 3
    write(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(y, 0x08), gz=True)
    net = _net(1, 6, 5)
    net.input_shape = (1, 6, 5)  # the model reads (1, H, W); the file holds (H, W)
    ex = rp.Explainer(net, "lrp.epsilon", epsilon=0.01)
    xh = ((x / 255.0 - 0.3) / 0.2).astype(np.float32)[:, None]
    res = ex.map(xp, target="label", batch_size=4, progress=False, mean=0.3, std=0.2)
    assert res.attributions.shape == (9, 1, 6, 5)
    np.testing.assert_array_equal(res.targets, y)
    np.testing.assert_allclose(res.attributions, ex(xh, target=y.astype(np.int64)), rtol=1e-5, atol=1e-6)
    assert res.meta["source"]["kind"] == "idx" and res.meta["source"]["mean"] == 0.3
    # a store written with some pixel options is another job than one with others
    out = tmp_path / "store"
    ex.map(xp, out=out, batch_size=4, progress=False)
    with pytest.raises(StoreError, match="another job"):
        ex.map(xp, out=out, batch_size=4, progress=False, mean=0.3)


def test_map_over_image_folder(tmp_path):
    root, order, labels = classes_folder(tmp_path)
    net = _net(3, 5, 6, classes=2)
    ex = rp.Explainer(net, "gradient_x_input")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    xh = ((by_hand(order) / 255.0 - np.array(mean)) / np.array(std)).transpose(0, 3, 1, 2).astype(np.float32)
    res = ex.map(root, out=tmp_path / "attr", target="label", batch_size=2, progress=False, mean=mean, std=std)
    np.testing.assert_array_equal(res.targets, labels)
    np.testing.assert_allclose(res.attributions, ex(xh, target=np.array(labels)), rtol=1e-4, atol=1e-6)
    assert res.meta["source"]["classes"] == ["a_cat", "b_dog"]
    with pytest.raises(JobError, match="needs labels"):  # a flat folder has none
        ex.map(png(tmp_path / "flat" / "a.png", rgb()).parent, target="label", progress=False)


# -- data: the real Fashion-MNIST test set -------------------------------------------------------
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST is not installed here")
def test_fashion_mnist_test_set():
    src = as_source(FASHION / "t10k-images-idx3-ubyte.gz")
    assert (src.n, src.shape) == (10000, (28, 28))
    assert src.labels.shape == (10000,) and src.labels.min() == 0 and src.labels.max() == 9
    assert np.array_equal(np.bincount(src.labels), [1000] * 10)  # the test set is balanced
    raw = np.frombuffer(gzip.decompress((FASHION / "t10k-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16)
    x, _ = src.read(9990, 10000)
    np.testing.assert_allclose(x, raw.reshape(10000, 28, 28)[9990:] / 255.0, rtol=1e-6)
