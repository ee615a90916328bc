"""Report folders: what ``relprop sanity`` and ``relprop benchmark`` write.

A report is a folder with ``report.md`` and ``report.html`` (the same sections: how the study
was set up, tables, figures, a paragraph on how to read each), the raw numbers (``*.csv`` and
``*.json``: every row the Python API returns) and PNG figures. Tables in the Markdown and HTML
are written from the same :class:`~relprop.evaluate.table.Table` as the CSV, with one number
formatter, so the figures agree to the digit.

Pictures need Pillow (heatmap grids, ``relprop.viz``) and matplotlib (curves):
``pip install relprop[report]``.
"""
from __future__ import annotations

import html
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from .ranking import METRICS
from .table import Table, nan_stats


class Document:
    """Sections rendered to Markdown and HTML alike: headings, paragraphs, tables, images."""

    def __init__(self, title):
        self.title = title
        self.parts = []

    def heading(self, text, level=2):
        self.parts.append(("h", level, text))

    def para(self, text):
        self.parts.append(("p", text))

    def table(self, table, caption=None):
        self.parts.append(("t", table, caption))

    def image(self, name, alt):
        self.parts.append(("i", name, alt))

    def code(self, text):
        self.parts.append(("c", text))

    def markdown(self):
        out = [f"# {self.title}\n"]
        for p in self.parts:
            if p[0] == "h":
                out.append(f"{'#' * p[1]} {p[2]}\n")
            elif p[0] == "p":
                out.append(p[1] + "\n")
            elif p[0] == "t":
                if p[2]:
                    out.append(f"*{p[2]}*\n")
                out.append(p[1].to_markdown())
            elif p[0] == "i":
                out.append(f"![{p[2]}]({p[1]})\n")
            else:
                out.append("```\n" + p[1] + "\n```\n")
        return "\n".join(out)

    def html(self):
        e = html.escape
        out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">", f"<title>{e(self.title)}</title>",
               "<style>body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;line-height:1.4}"
               "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:.2em .5em;"
               "text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}"
               "img{max-width:100%;border:1px solid #ddd}code,pre{background:#f4f4f4}</style></head><body>",
               f"<h1>{e(self.title)}</h1>"]
        for p in self.parts:
            if p[0] == "h":
                out.append(f"<h{p[1]}>{e(p[2])}</h{p[1]}>")
            elif p[0] == "p":
                out.append(f"<p>{e(p[1])}</p>")
            elif p[0] == "t":
                if p[2]:
                    out.append(f"<p><em>{e(p[2])}</em></p>")
                out.append(p[1].to_html())
            elif p[0] == "i":
                out.append(f"<p><img src=\"{e(p[1])}\" alt=\"{e(p[2])}\"></p>")
            else:
                out.append(f"<pre><code>{e(p[1])}</code></pre>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"

    def write(self, folder):
        folder = Path(folder)
        (folder / "report.md").write_text(self.markdown(), encoding="utf-8")
        (folder / "report.html").write_text(self.html(), encoding="utf-8")
        return folder / "report.md", folder / "report.html"


def prepare_folder(out, overwrite=False):
    """Create the report folder; an existing non-empty folder that is not a relprop report is
    refused (nothing is deleted), a report is replaced only with ``overwrite=True``."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"report folder {str(out)!r} exists and is not a folder")
        entries = list(out.iterdir())
        if entries:
            if not (out / "report.json").is_file():
                raise FileExistsError(f"report folder {str(out)!r} is not empty and holds no relprop report; choose "
                                      f"another folder")
            if not overwrite:
                raise FileExistsError(f"report folder {str(out)!r} holds a report; pass overwrite=True (--overwrite) "
                                      f"to replace it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _environment():
    import numpy
    from .. import __version__

    return {"relprop": __version__, "numpy": numpy.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": _cpu_model(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _write_meta(out, kind, meta, files):
    record = {"kind": kind, "environment": _environment(), **meta, "files": sorted(files)}
    (Path(out) / "report.json").write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")


def _tile_scale(h):
    return max(1, 96 // max(int(h), 1))


# -- sanity checks -------------------------------------------------------------------------------
def summary_table(results):
    """Per (mode, method, measure): the similarity after the top layer is randomized (step 1), the
    mean over all randomization steps, and at the last step (all layers for cascading), each the
    mean over seeds of the mean over samples, with the standard deviation over seeds."""
    cols = {k: [] for k in ("mode", "method", "measure", "top_layer", "top_layer_std", "mean_over_steps", "last_step")}
    for res in results:
        for m in res.methods:
            for meas in res.measures:
                mean, std = res.curve(m, meas)
                for k, v in zip(cols, (res.mode, m, meas, mean[1], std[1], _nanmean(mean[1:]), mean[-1])):
                    cols[k].append(v)
    return Table(cols)


def sanity_report(out, results, *, class_sensitivity=None, title="Sanity checks: model-parameter randomization",
                  description=None, command=None, overwrite=False):
    """Write the sanity-check report folder ``out`` for one or more :class:`RandomizationResult`
    (e.g. a cascading and an independent study) and an optional :func:`class_sensitivity` table.

    Files: ``report.md``, ``report.html``, ``report.json`` (set-up, environment, file list),
    ``randomization.csv``/``.json`` (every row of every study, with its mode), ``summary.csv``,
    ``class_sensitivity.csv`` (when given), ``curves-<mode>-<measure>.png`` (similarity vs
    randomized layer, a band of one standard deviation over seeds), ``grid-<mode>.png`` (heatmaps:
    methods x randomization steps, first sample, first seed). Returns {name: path}.
    """
    from .. import viz

    if not isinstance(results, (list, tuple)):
        results = [results]
    if not results:
        raise ValueError("sanity_report needs at least one randomization result")
    out = prepare_folder(out, overwrite)
    files = {}
    rows = _concat([_with_column(r.table, "mode", r.mode) for r in results])
    files["randomization.csv"] = rows.to_csv(out / "randomization.csv")
    files["randomization.json"] = rows.to_json(out / "randomization.json")
    summary = summary_table(results)
    files["summary.csv"] = summary.to_csv(out / "summary.csv")
    doc = Document(title)
    r0 = results[0]
    setup = (f"{r0.params.get('n', '?')} inputs, seeds {', '.join(map(str, r0.seeds))}, "
             f"re-initialization {r0.params.get('init')!r}, maps: channels reduced by {r0.params.get('reduce')!r}, "
             f"normalized by {r0.params.get('normalize')!r}. Randomized layers, top first: "
             f"{', '.join(r0.layers[1:])}.")
    doc.para((description + " " if description else "") + setup)
    doc.para("Model-parameter randomization (Adebayo et al. 2018): the weights are re-initialized from the top layer "
             "down (cascading: each step adds one more randomized layer) or one layer at a time (independent), and the "
             "explanation of the randomized model is compared with the original one. An explanation that depends on "
             "what the model learned changes: its similarity falls towards 0 as layers are randomized. A curve that "
             "stays near 1 means the method mostly reproduces the input (e.g. guided backprop: Nie et al. 2018).")
    if command:
        doc.code(command)
    doc.heading("Summary")
    doc.para("top_layer: mean similarity after the top layer alone is randomized (lower: more sensitive to the "
             "model); mean_over_steps: averaged over all steps; last_step: the last step. Means over seeds of the "
             "mean over inputs (summary.csv).")
    doc.table(summary)
    for res in results:
        doc.heading(f"{res.mode.capitalize()} randomization")
        steps = np.arange(len(res.layers))
        for meas in res.measures:
            curves = [res.curve(m, meas) for m in res.methods]
            name = f"curves-{res.mode}-{meas}.png"
            viz.curves(steps, np.stack([c[0] for c in curves]), band=np.stack([c[1] for c in curves]),
                       labels=res.methods, xticklabels=res.layers, xlabel="randomized layer (top first)",
                       ylabel=f"mean {meas}", title=f"{res.mode} randomization: {meas}", path=out / name,
                       figsize=(7.0, 4.5))
            files[name] = out / name
            doc.image(name, f"{meas} vs randomized layer, {res.mode}")
        if res.maps is not None and res.maps.shape[3] > 0 and res.maps.ndim in (6, 7):
            name = f"grid-{res.mode}.png"
            red = "none" if res.maps.ndim == 6 else "sum"
            tiles = [[viz.heatmap(res.maps[i, s, 0, 0], reduce=red) for s in range(len(res.layers))]
                     for i in range(len(res.methods))]
            img = viz.grid(tiles, row_labels=res.methods, col_labels=res.layers, scale=_tile_scale(res.maps.shape[-2]))
            viz.save_png(img, out / name)
            files[name] = out / name
            doc.image(name, f"heatmaps after {res.mode} randomization")
            doc.para("Heatmaps of the first input (first seed): one row per method, one column per step. Red: "
                     "positive relevance, blue: negative, white: zero; each map scaled to its own max |R|.")
        doc.para(f"Computed in {res.seconds:.2f} s; forward-pass nodes reused from the original model: {res.reuse[0]} "
                 f"of {res.reuse[0] + res.reuse[1]}.")
    if class_sensitivity is not None:
        files["class_sensitivity.csv"] = class_sensitivity.to_csv(out / "class_sensitivity.csv")
        doc.heading("Class sensitivity")
        pairs = getattr(class_sensitivity, "pairs", "top2")
        which = {"top2": "each input's two highest-scoring classes",
                 "random": "each input's explained class and a random other class (the random-logit test)"}.get(
            pairs, "the given pairs of classes of each input")
        doc.para(f"Similarity between the explanations of {which} (Gu et al. 2018; Sixt et al. 2020). A "
                 "class-sensitive method explains each class differently (low value); values near 1 mean the method "
                 "shows the same map whatever class is asked for.")
        doc.table(class_sensitivity)
    doc.heading("Files")
    doc.para("Raw numbers: randomization.csv / .json (one row per method, step, layer, seed and measure), "
             "summary.csv" + (", class_sensitivity.csv" if class_sensitivity is not None else "") + "; set-up and "
             "environment: report.json.")
    md, htm = doc.write(out)
    files["report.md"], files["report.html"] = md, htm
    _write_meta(out, "sanity", {"title": title, "command": command, "modes": [r.mode for r in results],
                                "methods": r0.methods, "measures": r0.measures, "seeds": r0.seeds,
                                "layers": r0.layers, "params": r0.params,
                                "seconds": [r.seconds for r in results]}, list(files) + ["report.json"])
    files["report.json"] = out / "report.json"
    return {k: Path(v) for k, v in files.items()}


def _with_column(t, name, value):
    cols = {name: [value] * len(t)}
    cols.update({c: t[c] for c in t.columns})
    return Table(cols)


def _concat(tables):
    cols = {}
    for t in tables:
        for c in t.columns:
            cols.setdefault(c, []).extend(t[c].tolist())
    return Table(cols)


# -- benchmark -----------------------------------------------------------------------------------
def benchmark_report(out, result, *, title="Benchmark: faithfulness and sanity of attribution methods",
                     description=None, command=None, overwrite=False):
    """Write the benchmark report folder ``out`` for a :class:`BenchmarkResult`.

    Files: ``report.md``, ``report.html``, ``report.json``, ``benchmark.csv``/``.json`` (method,
    metric, value, std), ``ranking.csv``, ``aopc-morf.png`` and ``aopc-lerf.png`` (mean
    pixel-flipping curves, a band of one standard deviation over inputs). Returns {name: path}.
    """
    from .. import viz

    out = prepare_folder(out, overwrite)
    files = {}
    table, ranking = result.table, result.ranking()
    files["benchmark.csv"] = table.to_csv(out / "benchmark.csv")
    files["benchmark.json"] = table.to_json(out / "benchmark.json")
    files["ranking.csv"] = ranking.to_csv(out / "ranking.csv")
    doc = Document(title)
    p = result.params
    doc.para((description + " " if description else "") +
             f"{p['n']} inputs; pixel flipping with {p['patch']}x{p['patch']} patches, {p['steps']} steps, removed "
             f"patches set to {p['fill']!r}; sensitivity-n subset sizes {p['n_sizes']} with {p['subsets']} subsets "
             f"each. Computed in {result.seconds:.2f} s.")
    if command:
        doc.code(command)
    doc.heading("Ranking")
    doc.para("Rank of each method by each metric (1 = best in the metric's direction) and the mean rank "
             "(ranking.csv).")
    doc.table(ranking)
    doc.heading("Metrics")
    for met in result.metrics:
        doc.para(f"{met}: {METRICS[met][1]}.")
    doc.table(table)
    for order in ("morf", "lerf"):
        got = [m for m in result.methods if (m, order) in result.curves]
        if not got:
            continue
        c = [result.curves[(m, order)] for m in got]
        s = np.arange(c[0].shape[1]) / (c[0].shape[1] - 1)
        name = f"aopc-{order}.png"
        viz.curves(s, np.stack([v.mean(axis=0) for v in c]), band=np.stack([v.std(axis=0) for v in c]), labels=got,
                   xlabel="fraction of patches removed", ylabel="target score",
                   title=f"pixel flipping, {'most' if order == 'morf' else 'least'} relevant first", path=out / name,
                   figsize=(7.0, 4.5))
        files[name] = out / name
        doc.image(name, f"pixel-flipping curves ({order.upper()})")
        doc.para("Mean target score over the inputs as patches are removed in the method's order (band: one "
                 "standard deviation over inputs). A faithful method makes the MoRF curve fall fast and the LeRF "
                 "curve stay high; AOPC is the mean drop from the first point (Samek et al. 2017).")
    md, htm = doc.write(out)
    files["report.md"], files["report.html"] = md, htm
    _write_meta(out, "benchmark", {"title": title, "command": command, "methods": result.methods,
                                   "metrics": result.metrics, "params": p, "seconds": result.seconds},
                list(files) + ["report.json"])
    files["report.json"] = out / "report.json"
    return {k: Path(v) for k, v in files.items()}


def _nanmean(v):
    return nan_stats(v)[0]
