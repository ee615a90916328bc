"""Report folders of ``relprop sanity`` / ``relprop benchmark`` (and their Python API): the PNGs
are real, non-blank images of the expected size, the numbers in the Markdown and HTML are the
CSV's, and the commands run end to end (exit status 0, usage errors 2, failures 1)."""
from __future__ import annotations

import csv
import html
import json
import re

import numpy as np
import pytest

import relprop as rp
from relprop import evaluate as ev
from relprop.cli import run

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")


def _cnn(seed=0):
    rng = np.random.default_rng(seed)
    he = lambda *s: rng.normal(0, np.sqrt(2 / np.prod(s[1:])), s)  # noqa: E731
    return rp.Sequential(rp.Conv2d(he(4, 1, 3, 3), rng.normal(0, .1, 4), padding=1), rp.ReLU(), rp.MaxPool2d(2),
                         rp.Conv2d(he(6, 4, 3, 3), rng.normal(0, .1, 6), padding=1), rp.ReLU(), rp.Flatten(),
                         rp.Dense(he(12, 6 * 6 * 6), rng.normal(0, .1, 12)), rp.ReLU(), rp.Dense(he(5, 12), np.zeros(5)))


METHODS = {"gradient": "gradient", "guided_backprop": "guided_backprop", "lrp.epsilon": ("lrp.epsilon", {})}


@pytest.fixture(scope="module")
def data():
    x = np.random.default_rng(1).normal(size=(6, 1, 12, 12))
    return _cnn(), x


def _png(path):
    img = np.asarray(PIL.open(path).convert("RGB"))
    return img


def _non_blank(img):
    # more than one colour, and not almost all background
    flat = img.reshape(-1, 3)
    return len(np.unique(flat, axis=0)) > 10 and (flat != flat[0]).any(axis=1).mean() > 0.02


def _md_tables(text):
    """Every Markdown table as a list of rows of cell strings (header first)."""
    tables, cur = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            if re.fullmatch(r"\|(---\|)+", line):
                continue
            cur.append([c.strip() for c in line.strip("|").split("|")])
        elif cur:
            tables.append(cur)
            cur = []
    if cur:
        tables.append(cur)
    return tables


def _html_tables(text):
    tables = []
    for t in re.findall(r"<table>(.*?)</table>", text, re.S):
        rows = []
        for tr in re.findall(r"<tr>(.*?)</tr>", t, re.S):
            rows.append([html.unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", tr, re.S)])
        tables.append(rows)
    return tables


def _csv(path):
    with open(path, newline="") as f:
        return [row for row in csv.reader(f)]


def test_sanity_report_files_images_and_numbers(data, tmp_path):
    net, x = data
    res = [ev.model_randomization(net, x, METHODS, mode=m, seeds=(0, 1), measures=("ssim", "spearman_abs"))
           for m in ("cascading", "independent")]
    cs = ev.class_sensitivity(net, x, METHODS, measures=("ssim",))
    files = ev.sanity_report(tmp_path / "rep", res, class_sensitivity=cs)
    for name in ("report.md", "report.html", "report.json", "randomization.csv", "randomization.json", "summary.csv",
                 "class_sensitivity.csv", "grid-cascading.png", "grid-independent.png",
                 "curves-cascading-ssim.png", "curves-independent-spearman_abs.png"):
        assert files[name].is_file(), name
    # curves: the figure size asked for (7 x 4.5 inches at 100 dpi); grids: labels + 3 rows x 5 columns of tiles
    for mode in ("cascading", "independent"):
        for meas in ("ssim", "spearman_abs"):
            img = _png(files[f"curves-{mode}-{meas}.png"])
            assert img.shape == (450, 700, 3) and _non_blank(img)
        grid = _png(files[f"grid-{mode}.png"])
        tile = 12 * (96 // 12)
        assert grid.shape[0] > 3 * tile and grid.shape[1] > 5 * tile and _non_blank(grid)
    md = files["report.md"].read_text()
    page = files["report.html"].read_text()
    summary = _csv(files["summary.csv"])
    classes = _csv(files["class_sensitivity.csv"])
    md_tables, html_tables = _md_tables(md), _html_tables(page)
    assert summary in md_tables and summary in html_tables
    assert classes in md_tables and classes in html_tables
    # the CSV's numbers are the API's, to the printed digits
    t = ev.report.summary_table(res)
    for row, rec in zip(summary[1:], t.records()):
        assert float(row[3]) == pytest.approx(rec["top_layer"], rel=1e-5, abs=1e-12)
    rows = _csv(files["randomization.csv"])
    assert len(rows) - 1 == sum(len(r.table) for r in res)
    raw = json.loads(files["randomization.json"].read_text())
    assert [r["value"] for r in raw[:len(res[0].table)]] == pytest.approx(res[0].table["value"].tolist(), rel=1e-12)
    for img in re.findall(r'src="([^"]+)"', page):
        assert (tmp_path / "rep" / img).is_file()
    assert set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)) == set(re.findall(r'src="([^"]+)"', page))


def test_benchmark_report_ranking_matches_the_csv(data, tmp_path):
    net, x = data
    res = ev.benchmark(net, x, METHODS, metrics=("aopc_morf", "aopc_lerf", "completeness"), steps=6, patch=2)
    files = ev.benchmark_report(tmp_path / "b", res)
    ranking, bench = _csv(files["ranking.csv"]), _csv(files["benchmark.csv"])
    md_tables, html_tables = _md_tables(files["report.md"].read_text()), _html_tables(files["report.html"].read_text())
    assert ranking in md_tables and ranking in html_tables and bench in md_tables and bench in html_tables
    for order in ("morf", "lerf"):
        img = _png(files[f"aopc-{order}.png"])
        assert img.shape == (450, 700, 3) and _non_blank(img)
    # the ranks follow each metric's direction: AOPC-MoRF higher is better, completeness error lower
    t = res.table
    morf = {r["method"]: r["value"] for r in t.where(metric="aopc_morf").records()}
    best = res.ranking().where(rank_aopc_morf=1)["method"][0]
    assert morf[best] == max(morf.values())
    comp = {r["method"]: r["value"] for r in t.where(metric="completeness").records()}
    best = res.ranking().where(rank_completeness=1)["method"][0]
    assert comp[best] == np.nanmin(list(comp.values()))
    # the gradient has no conservation property: its completeness is undefined (NaN) and ranked last
    assert np.isnan(comp["gradient"]) and res.ranking().where(method="gradient")["rank_completeness"][0] >= 2
    # lrp.epsilon's value is its own conservation error |sum R - s_c(x)| / |s_c(x)|, computed here
    R = rp.attribute(net, x, "lrp.epsilon")
    s = rp.scores(net, x)
    s = s[np.arange(len(x)), np.argmax(s, 1)]
    want = np.mean(np.abs(R.reshape(len(x), -1).sum(1) - s) / np.abs(s))
    assert comp["lrp.epsilon"] == pytest.approx(want, rel=1e-9)
    # the AOPC numbers are aopc() of the stored curves (Samek et al. 2017, Eq. 12 computed here)
    c = res.curves[("gradient", "morf")]
    assert morf["gradient"] == pytest.approx(float(np.mean(np.mean(c[:, :1] - c, axis=1))), rel=1e-12)


def test_a_report_folder_is_never_mixed_with_other_files(data, tmp_path):
    net, x = data
    res = ev.model_randomization(net, x, {"gradient": "gradient"}, measures=("ssim",))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no relprop report"):
        ev.sanity_report(other, res)
    assert (other / "notes.txt").read_text() == "keep me"
    ev.sanity_report(tmp_path / "r", res)
    with pytest.raises(FileExistsError, match="overwrite"):
        ev.sanity_report(tmp_path / "r", res)
    ev.sanity_report(tmp_path / "r", res, overwrite=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("cli")
    net, x = data
    rp.save(net, d / "m.npz")
    np.save(d / "x.npy", x.astype(np.float32))
    np.save(d / "y.npy", np.arange(len(x)) % 5)
    return d


def test_cli_sanity_and_benchmark(files, capsys):
    d = files
    code = run(["sanity", str(d / "m.npz"), str(d / "x.npy"), "--samples", "4", "--seeds", "0,1", "--method",
                "gradient", "--method", "lrp:composite=EpsilonPlusFlat", "--measures", "ssim,spearman",
                "--out", str(d / "s"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "sanity report" in out
    rows = _csv(d / "s" / "randomization.csv")
    assert {r[1] for r in rows[1:]} == {"gradient", "lrp:composite=EpsilonPlusFlat"}
    assert {r[0] for r in rows[1:]} == {"cascading", "independent"}
    code = run(["benchmark", str(d / "m.npz"), str(d / "x.npy"), "--samples", "4", "--method", "gradient",
                "--method", "lrp.epsilon:epsilon=0.1", "--metrics", "aopc_morf,completeness", "--steps", "4",
                "--target", "label", "--labels", str(d / "y.npy"), "--out", str(d / "b"), "--no-progress"])
    assert code == 0 and "benchmark of 2 methods" in capsys.readouterr().out
    assert (d / "b" / "ranking.csv").is_file()


@pytest.mark.parametrize("argv, status, words", [
    (["--method", "gradiant"], 2, "did you mean 'gradient'"),
    (["--method", "lrp"], 2, "lrp needs its rules"),
    (["--method", "lrp.epsilon:epsilon"], 2, "expected NAME:KEY=VALUE"),
    (["--method", "lrp.epsilon:epsilonn=1"], 2, "epsilonn"),
    (["--seeds", "a,b"], 2, "--seeds"),
    (["--measures", "ssim,nope"], 2, "nope"),
    (["--samples", "0"], 2, "--samples"),
    (["--start", "99"], 1, "past the dataset"),
])
def test_cli_sanity_errors(files, capsys, argv, status, words):
    d = files
    code = run(["sanity", str(d / "m.npz"), str(d / "x.npy"), "--out", str(d / "err")] + argv)
    err = capsys.readouterr().err
    assert code == status and words in err, err
    assert not (d / "err" / "report.md").exists()


def test_cli_benchmark_errors(files, capsys):
    d = files
    code = run(["benchmark", str(d / "m.npz"), str(d / "x.npy"), "--metrics", "aopc", "--out", str(d / "e")])
    assert code == 2 and "--metrics" in capsys.readouterr().err


def test_benchmark_completeness_of_an_lrp_started_from_one_hot(data):
    """With start="one_hot" relevance is conserved to 1: the metric is |sum R - 1| (not divided by
    the score), computed here from rp.attribute."""
    net, x = data
    res = ev.benchmark(net, x, {"eps1": ("lrp.epsilon", {"start": "one_hot"})}, metrics=("completeness",))
    R = rp.attribute(net, x, "lrp.epsilon", start="one_hot")
    want = np.mean(np.abs(R.reshape(len(x), -1).sum(1) - 1.0))
    assert res.table["value"][0] == pytest.approx(want, rel=1e-9, abs=1e-12)
