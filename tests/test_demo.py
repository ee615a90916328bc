"""``relprop demo`` as a new user runs it: the command in a clean folder writes real, non-blank
pictures whose colours follow the attributions it saved, a page that shows them all, and says
where it wrote and how long each step took.

The colour check is independent of ``relprop.viz``: it reads ``attributions.npz`` and decides
from the sign of R alone (``|R| > 0.2 max|R|``) which pixels must be red-ish (r > b + 40) or
blue-ish (b > r + 40), then reads those pixels back from ``heatmaps.png`` at the tile boxes of
``heatmaps.json``.
"""
from __future__ import annotations

import contextlib
import html.parser
import io
import json
import os
import re

import numpy as np
import pytest

from relprop import cli

PIL = pytest.importorskip("PIL")
pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

PNGS = ("heatmaps.png", "sanity.png", "titanic.png")


def _run(argv, cwd):
    """``cli.run(argv)`` in ``cwd``; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.run(argv)
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One full demo run in an empty folder: (folder it ran in, its --out, status, stdout, stderr)."""
    cwd = tmp_path_factory.mktemp("new-user")
    code, out, err = _run(["demo", "--out", "relprop-demo"], cwd)
    return cwd, cwd / "relprop-demo", code, out, err


def _rgb(path):
    with Image.open(path) as im:
        assert im.format == "PNG", (path, im.format)
        return np.asarray(im.convert("RGB")).astype(np.int64)


def test_demo_exits_0_and_writes_only_its_folder(demo):
    cwd, out, code, _, err = demo
    assert code == 0, err
    assert sorted(p.name for p in cwd.iterdir()) == ["relprop-demo"]
    assert {"heatmaps.png", "heatmaps.json", "sanity.png", "titanic.png", "attributions.npz",
            "index.html"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("name", PNGS)
def test_demo_pngs_are_real_non_blank_images(demo, name):
    path = demo[1] / name
    with Image.open(path) as im:
        im.verify()  # a truncated or corrupt PNG raises here
    a = _rgb(path)
    assert a.shape[0] >= 200 and a.shape[1] >= 300, a.shape
    # not blank: many pixels differ from the most common colour (the background), and both
    # red-ish and blue-ish pixels appear (every picture here shows signed values)
    flat = a.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    bg = colours[counts.argmax()]
    assert (np.abs(flat - bg).sum(1) > 30).mean() > 0.02, name
    assert len(colours) > 50, name
    assert ((flat[:, 0] > flat[:, 2] + 40).mean() > 0.001) and ((flat[:, 2] > flat[:, 0] + 40).mean() > 0.001), name


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def test_demo_index_html_references_every_png_and_nothing_missing(demo):
    out = demo[1]
    parser = _Links()
    parser.feed((out / "index.html").read_text(encoding="utf-8"))
    relative = [u for u in parser.links if not re.match(r"^[a-z][a-z0-9+.-]*:", u) and not u.startswith("#")]
    assert set(PNGS) <= set(relative), relative
    for u in relative:
        assert (out / u).is_file(), f"index.html links {u!r}, which the demo did not write"


def test_demo_heatmap_colours_follow_the_sign_of_R(demo):
    out = demo[1]
    geo = json.loads((out / "heatmaps.json").read_text())
    a = _rgb(out / geo["image"])
    with np.load(out / "attributions.npz", allow_pickle=False) as z:
        R, x, names = z["R"], z["x"], [str(n) for n in z["method_names"]]
    assert geo["rows"] == ["input"] + names
    s = geo["scale"]
    checked = {"red": 0, "blue": 0}

    def block(box, i, j):
        x0, y0 = box[0] + j * s, box[1] + i * s
        return a[y0:y0 + s, x0:x0 + s].reshape(-1, 3)

    for col in range(len(geo["columns"])):
        # the input row: the digit drawn dark on white, 255 (1 - x), where the ink is solid
        box = geo["boxes"][0][col]
        assert box[2] - box[0] == 28 * s and box[3] - box[1] == 28 * s
        img = x[col, 0]
        for i, j in zip(*np.nonzero(img > 0.9)):
            assert (block(box, i, j) < 40).all()
        for i, j in zip(*np.nonzero(img == 0)):
            assert (block(box, i, j) == 255).all()
        for k, name in enumerate(names):
            r = R[k, col].sum(0)  # one value per pixel (a single grey channel)
            thr = 0.2 * np.abs(r).max()
            box = geo["boxes"][k + 1][col]
            for i, j in zip(*np.nonzero(r > thr)):
                b = block(box, i, j)
                assert (b[:, 0] > b[:, 2] + 40).all(), (name, col, i, j, b[0])
                checked["red"] += 1
            for i, j in zip(*np.nonzero(r < -thr)):
                b = block(box, i, j)
                assert (b[:, 2] > b[:, 0] + 40).all(), (name, col, i, j, b[0])
                checked["blue"] += 1
    # both signs were actually seen (a map of one sign only would not test the other)
    assert checked["red"] > 500 and checked["blue"] > 50, checked


def test_demo_attributions_npz_holds_the_explained_samples(demo):
    import relprop as rp
    from relprop import data

    with np.load(demo[1] / "attributions.npz", allow_pickle=False) as z:
        x, targets, R, names = z["x"], z["targets"], z["R"], [str(n) for n in z["method_names"]]
        tR, tx, tt = z["titanic_R"], z["titanic_x"], z["titanic_targets"]
    d = data.mnist()
    n = len(x)
    np.testing.assert_array_equal(x, d.x[:n])
    np.testing.assert_array_equal(targets, rp.scores(d.net, x).argmax(1))
    assert R.shape == (len(names), n, 1, 28, 28) and len(names) == 8
    # the saved maps are the library's attributions of those targets (float32 tolerance)
    k = names.index("gradient x input")
    ref = np.asarray(rp.attribute(d.net, x, "gradient_x_input", target=targets))
    np.testing.assert_allclose(R[k], ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    assert tR.shape == (2, len(tx), tx.shape[1]) and len(tt) == len(tx)


def test_demo_prints_the_folder_and_the_timings(demo):
    _, out, _, stdout, _ = demo
    assert str(out.resolve()) in stdout
    steps = re.findall(r"^\s+(\d+\.\d\d) s  (.+)$", stdout, flags=re.M)
    labels = [label for _, label in steps]
    assert labels[-1] == "total", stdout
    assert any(l.startswith("explain 8 digits") for l in labels), labels
    assert any(l.startswith("sanity check") for l in labels), labels
    assert any("Titanic" in l for l in labels), labels
    seconds = [float(t) for t, _ in steps]
    assert abs(sum(seconds[:-1]) - seconds[-1]) < 0.05 * len(seconds), stdout


def test_demo_quick_explains_fewer_samples(tmp_path):
    code, stdout, err = _run(["demo", "--out", str(tmp_path / "q"), "--quick"], tmp_path)
    assert code == 0, err
    geo = json.loads((tmp_path / "q" / "heatmaps.json").read_text())
    assert len(geo["columns"]) == 4 and "explain 4 digits" in stdout


def test_errors_demo_out_is_a_file(tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    code, _, err = _run(["demo", "--out", str(f)], tmp_path)
    assert code == 1
    assert "taken" in err and "is a file" in err, err


def test_errors_demo_main_parameters():
    from relprop.demo import main

    with pytest.raises(TypeError, match="out_dir must be a folder path"):
        main(3)
    with pytest.raises(TypeError, match="quick must be True or False"):
        main("somewhere", quick="yes")
