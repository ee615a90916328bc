"""``relprop demo``: real explanations of the shipped models, as pictures and a web page.

Explains shipped MNIST test digits (:func:`relprop.data.mnist`, a small trained CNN) with eight
methods and LRP rules, runs a quick cascading model-randomization sanity check on them (Adebayo
et al. 2018), explains a few held-out Titanic passengers (:func:`relprop.data.titanic`, a
trained MLP) and writes into one folder:

- ``heatmaps.png``: rows = the input digits then one row per method, columns = digits;
- ``heatmaps.json``: where each tile of ``heatmaps.png`` lies (pixel boxes), so that a program
  can read a tile back and compare it with ``attributions.npz``;
- ``sanity.png``: SSIM between the explanation of the progressively randomized model and the
  original one, per method, with a band over the randomization seeds;
- ``titanic.png``: one bar chart per passenger and method (feature names with raw values);
- ``attributions.npz``: every attribution drawn (plain arrays, ``allow_pickle=False``);
- ``index.html``: the pictures, a paragraph each on how to read them, and the timings.

It needs Pillow and matplotlib (``pip install 'relprop[demo]'``), no PyTorch and no download.

References
----------
.. [1] Bach, S., Binder, A., Montavon, G., Klauschen, F., Mueller, K.-R. & Samek, W. (2015).
   On pixel-wise explanations for non-linear classifier decisions by layer-wise relevance
   propagation. *PLoS ONE* 10(7), e0130140 (LRP; Fig. 1: red positive, blue negative relevance).
.. [2] Adebayo, J., Gilmer, J., Muelly, M., Goodfellow, I., Hardt, M. & Kim, B. (2018). Sanity
   checks for saliency maps. *NeurIPS 2018*, Sec. 3 (cascading model-parameter randomization).
.. [3] Wang, Z., Bovik, A. C., Sheikh, H. R. & Simoncelli, E. P. (2004). Image quality
   assessment: from error visibility to structural similarity. *IEEE TIP* 13(4) (SSIM).
.. [4] Sundararajan, M., Taly, A. & Yan, Q. (2017). Axiomatic attribution for deep networks.
   *ICML 2017*, Sec. 3, Prop. 1 (integrated gradients; completeness).
.. [5] Ancona, M., Ceolini, E., Oeztireli, C. & Gross, M. (2018). Towards better understanding
   of gradient-based attribution methods for deep neural networks. *ICLR 2018*, Sec. 3.1
   (epsilon-LRP equals gradient x input on ReLU networks).
.. [6] Montavon, G., Binder, A., Lapuschkin, S., Samek, W. & Mueller, K.-R. (2019). Layer-wise
   relevance propagation: an overview. In *Explainable AI*, LNCS 11700, Sec. 10.2.2 (one rule
   per layer: epsilon on top, z+ / gamma in the middle, z^B or flat at the input).
"""
from __future__ import annotations

import dataclasses
import html
import json
import os
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "DemoResult", "SCALE"]

SCALE = 4  # heatmap tiles are 28 * 4 = 112 pixels: readable next to their labels
FILES = ("heatmaps.png", "heatmaps.json", "sanity.png", "titanic.png", "attributions.npz", "index.html")


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What :func:`main` wrote and how long it took.

    Attributes
    ----------
    out : pathlib.Path
        The folder.
    files : dict of str to pathlib.Path
        Every file written, by name (``FILES``).
    timings : list of (str, float)
        Each step and its wall time in seconds, in order.
    total_seconds : float
        The whole run.
    tiles : dict
        The geometry of ``heatmaps.png`` (also in ``heatmaps.json``): ``rows`` (row labels,
        ``"input"`` first, then the methods in the order of ``attributions.npz``'s ``R``),
        ``columns``, ``scale`` and ``boxes[row][column] = [x0, y0, x1, y1]`` (pixels, ``x1``
        and ``y1`` exclusive).
    """

    out: Path
    files: dict
    timings: list
    total_seconds: float
    tiles: dict


def _methods(rp):
    """(label, method, params) of the heatmap rows: gradients, paths, DeepLIFT, LRP rules."""
    return [
        ("gradient", "gradient", {}),
        ("gradient x input", "gradient_x_input", {}),
        ("integrated gradients", "integrated_gradients", {"steps": 32}),
        ("guided backprop", "guided_backprop", {}),
        ("DeepLIFT rescale", "deeplift.rescale", {}),
        ("LRP-epsilon", "lrp.epsilon", {}),
        ("LRP EpsilonPlusFlat", "lrp", {"rules": rp.composites.EpsilonPlusFlat()}),
        # the pixels lie in [0, 1]: those are the z^B rule's bounds (Montavon et al. 2017)
        ("LRP EpsilonGammaBox", "lrp", {"rules": rp.composites.EpsilonGammaBox(low=0.0, high=1.0)}),
    ]


_SANITY = ("gradient", "guided backprop", "integrated gradients", "LRP-epsilon", "LRP EpsilonPlusFlat")
_SANITY_QUICK = ("gradient", "guided backprop", "LRP EpsilonPlusFlat")


def _spec(method, params):
    """A one-line description of a method call, e.g. ``lrp rules=EpsilonPlusFlat(...)``."""
    return method + "".join(f" {k}={v!r}" for k, v in params.items())


def _requirements():
    """Pillow and matplotlib, or an ImportError that says how to get them (before any work)."""
    missing = []
    for mod, pkg in (("PIL", "pillow"), ("matplotlib", "matplotlib")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(pkg)
    if missing:
        raise ImportError(f"relprop demo draws pictures and needs {' and '.join(missing)}: "
                          f"pip install 'relprop[demo]'")


def _font_size():
    """A font size a little larger than Pillow's default (10) where Pillow can scale its built-in
    font (>= 10.1), else None (the default)."""
    from PIL import ImageFont

    try:
        ImageFont.load_default(size=13)
    except TypeError:
        return None
    return 13


def _softmax(s):
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _layer_names(net):
    """Node name -> a readable name (``"conv 16"``, ``"dense 10"``) for the sanity curve's axis."""
    names = {}
    for node in net.nodes:
        w = getattr(node.layer, "weight", None)
        if w is None:
            continue
        kind = {"Conv2d": "conv", "Dense": "dense"}.get(node.layer.kind, node.layer.kind.lower())
        names[node.name] = f"{kind} {w.shape[0]}"
    return names


def _fmt(v):
    """A raw feature value as a short label: integers without a decimal point."""
    v = float(v)
    return str(int(v)) if v == int(v) else f"{v:.4g}"


def _tile_boxes(viz, rows, cols, h, w, grid_kw):
    """Pixel boxes of every tile of ``viz.grid(..., **grid_kw)`` for a rows x cols grid of h x w
    tiles.

    Measured rather than recomputed: the same grid (same labels, so the same margins) is drawn
    once more with each tile a solid colour of its own, ``(row, column, 200)`` (text is grey,
    r = g = b, so it never matches), and each tile is found where its colour is.
    """
    probe = [[np.broadcast_to(np.array([i, j, 200], np.uint8), (h, w, 3)) for j in range(cols)]
             for i in range(rows)]
    img = viz.grid(probe, **grid_kw).astype(np.int64)
    # one pass over the picture: every pixel of a probe colour, keyed by its tile's index
    ys, xs = np.nonzero((img[..., 2] == 200) & (img[..., 0] < rows) & (img[..., 1] < cols))
    key = img[ys, xs, 0] * cols + img[ys, xs, 1]
    n = rows * cols
    x0, y0 = np.full(n, img.shape[1]), np.full(n, img.shape[0])
    x1, y1 = np.full(n, -1), np.full(n, -1)
    np.minimum.at(x0, key, xs)
    np.minimum.at(y0, key, ys)
    np.maximum.at(x1, key, xs + 1)
    np.maximum.at(y1, key, ys + 1)
    count = np.bincount(key, minlength=n)
    th, tw = h * grid_kw["scale"], w * grid_kw["scale"]
    boxes = []
    for i in range(rows):
        row = []
        for j in range(cols):
            k = i * cols + j
            box = [int(x0[k]), int(y0[k]), int(x1[k]), int(y1[k])]
            if (box[2] - box[0], box[3] - box[1]) != (tw, th) or count[k] != th * tw:
                raise RuntimeError(f"tile ({i}, {j}) of the heatmap grid is not a {tw}x{th} block (found {box})")
            row.append(box)
        boxes.append(row)
    return boxes


def _pad_to(img, h, w):
    """``img`` on a white canvas h x w (bar charts of one grid must have one size)."""
    out = np.full((h, w, 3), 255, np.uint8)
    out[:img.shape[0], :img.shape[1]] = img
    return out


class _Clock:
    """Step timings, printed as each step ends."""

    def __init__(self):
        self.steps = []
        self.start = time.perf_counter()
        self._t = self.start

    def done(self, what, detail=""):
        now = time.perf_counter()
        self.steps.append((what, now - self._t))
        print(f"  {now - self._t:6.2f} s  {what}{detail}", flush=True)
        self._t = now

    def total(self):
        return time.perf_counter() - self.start


def main(out_dir="relprop-demo", quick=False):
    """Run the demo and write its folder (module docstring).

    Parameters
    ----------
    out_dir : str or os.PathLike
        The folder to write (created if missing; the demo's own files in it are replaced,
        nothing else is touched).
    quick : bool
        Fewer samples: 4 digits instead of 8, 1 randomization seed instead of 2 and 3 methods
        in the sanity check instead of 5, 2 passengers instead of 4.

    Returns
    -------
    DemoResult
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a folder path (str or os.PathLike); got {type(out_dir).__name__}")
    if not isinstance(quick, (bool, np.bool_)):
        raise TypeError(f"quick must be True or False; got {quick!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file; give a folder for the demo's pictures")
    _requirements()
    out.mkdir(parents=True, exist_ok=True)

    import relprop as rp
    from . import data, evaluate, viz

    n_img, seeds, n_pass = (4, (0,), 2) if quick else (8, (0, 1), 4)
    font = _font_size()
    clock = _Clock()
    print(f"relprop demo: writing to {out.resolve()}", flush=True)

    mnist, titanic = data.mnist(), data.titanic()
    clock.done("load the shipped models", f" (MNIST CNN, Titanic MLP; {len(mnist.x)} digits, "
                                          f"{len(titanic.x)} passengers)")

    # -- MNIST heatmaps -------------------------------------------------------------------
    x, y = mnist.x[:n_img], mnist.y[:n_img]
    scores = rp.scores(mnist.net, x)
    pred = scores.argmax(1)
    prob = _softmax(scores.astype(np.float64))[np.arange(n_img), pred]
    methods = _methods(rp)
    R, method_seconds = [], {}
    for label, method, params in methods:
        t = time.perf_counter()
        # explain the predicted class: red is evidence for what the model decided
        R.append(np.asarray(rp.attribute(mnist.net, x, method, target=pred, **params), np.float32))
        method_seconds[label] = time.perf_counter() - t
    R = np.stack(R)
    rows = ["input"] + [m[0] for m in methods]
    cols = [f"digit {mnist.classes[t]}\npred {mnist.classes[p]} ({q:.0%})" for t, p, q in zip(y, pred, prob)]
    ink = np.rint((1.0 - x[:, 0]) * 255).astype(np.uint8)  # dark digits on white, like the maps' zero
    tiles = [[ink[j] for j in range(n_img)]] + [list(viz.heatmap(r)) for r in R]
    grid_kw = dict(row_labels=rows, col_labels=cols, pad=4, scale=SCALE, font_size=font)
    viz.save_png(viz.grid(tiles, **grid_kw), out / "heatmaps.png")
    geometry = {"image": "heatmaps.png", "rows": rows, "columns": cols, "scale": SCALE,
                "sample_index": list(range(n_img)),
                "boxes": _tile_boxes(viz, len(rows), n_img, 28, 28, grid_kw)}
    (out / "heatmaps.json").write_text(json.dumps(geometry, indent=1))
    clock.done(f"explain {n_img} digits with {len(methods)} methods", " -> heatmaps.png ("
               + ", ".join(f"{k} {v:.2f} s" for k, v in method_seconds.items()) + ")")

    # -- sanity check -----------------------------------------------------------------------
    chosen = _SANITY_QUICK if quick else _SANITY
    spec = {label: (method, params) for label, method, params in methods if label in chosen}
    n_san = 4
    res = evaluate.model_randomization(mnist.net, mnist.x[:n_san], spec, mode="cascading", seeds=seeds,
                                       measures=("ssim",), keep_maps=0)
    curves = [res.curve(m, "ssim") for m in res.methods]
    mean, std = np.stack([c[0] for c in curves]), np.stack([c[1] for c in curves])
    names = _layer_names(mnist.net)
    ticks = ["original"] + [("" if k == 1 else "+ ") + names.get(l, l) for k, l in enumerate(res.layers[1:], 1)]
    viz.curves(np.arange(len(res.layers)), mean, band=std if len(seeds) > 1 else None, labels=list(res.methods),
               xlabel="cascading randomization: layers re-initialized, from the top",
               ylabel="SSIM to the original explanation",
               title=f"Model randomization (Adebayo et al. 2018): {n_san} digits, "
                     f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}",
               xticklabels=ticks, figsize=(7.5, 4.5), path=out / "sanity.png")
    clock.done(f"sanity check ({len(spec)} methods, {n_san} digits, {len(seeds)} seed(s), "
               f"{len(res.layers) - 1} layers)", " -> sanity.png")

    # -- Titanic bar charts -----------------------------------------------------------------
    t_scores = rp.scores(titanic.net, titanic.x)
    t_pred = t_scores.argmax(1)
    # half predicted survivors, half predicted deaths, the first of each in the held-out order
    picks = np.sort(np.concatenate([np.flatnonzero(t_pred == c)[:n_pass // 2] for c in (1, 0)]))
    tx, tpred = titanic.x[picks], t_pred[picks]
    t_methods = [("LRP-epsilon", "lrp.epsilon", {}),
                 ("integrated gradients", "integrated_gradients", {"steps": 32})]
    TR = np.stack([np.asarray(rp.attribute(titanic.net, tx, m, target=tpred, **p), np.float64)
                   for _, m, p in t_methods])
    s_pick = t_scores[picks, tpred].astype(np.float64)
    base = rp.scores(titanic.net, np.zeros_like(tx[:1]))[0, tpred].astype(np.float64)
    t_prob = _softmax(t_scores[picks].astype(np.float64))[np.arange(len(picks)), tpred]
    raw = np.stack([titanic.raw[f][picks] for f in titanic.feature_names], 1)
    charts = []
    for i, row in enumerate(picks):
        labels = [f"{f}={_fmt(v)}" for f, v in zip(titanic.feature_names, raw[i])]
        order = np.argsort(-np.abs(TR[0, i]), kind="stable")  # both charts in LRP-epsilon's order
        who = (f"passenger {row}: predicted {titanic.classes[tpred[i]]} ({t_prob[i]:.0%}), "
               f"truly {titanic.classes[titanic.y[row]]}")
        sums = (f"bars sum {TR[0, i].sum():+.3f}; score {s_pick[i]:+.3f}",
                f"bars sum {TR[1, i].sum():+.3f}; score - baseline score {s_pick[i] - base[i]:+.3f}")
        charts.append([viz.bars(TR[k, i, order], [labels[j] for j in order], sort=False, width=520,
                                title=f"{who}\n{t_methods[k][0]}: {sums[k]}", font_size=font)
                       for k in range(len(t_methods))])
    h = max(c.shape[0] for r in charts for c in r)
    w = max(c.shape[1] for r in charts for c in r)
    viz.save_png(viz.grid([[_pad_to(c, h, w) for c in r] for r in charts], pad=6, font_size=font),
                 out / "titanic.png")
    clock.done(f"explain {len(picks)} Titanic passengers with {len(t_methods)} methods", " -> titanic.png")

    # -- raw numbers and the page -------------------------------------------------------------
    np.savez_compressed(
        out / "attributions.npz",
        x=x, labels=y, targets=pred, scores=scores.astype(np.float32), R=R,
        method_names=np.array([m[0] for m in methods]), method_calls=np.array([_spec(m, p) for _, m, p in methods]),
        sanity_methods=np.array(list(res.methods)), sanity_layers=np.array(list(res.layers)),
        sanity_seeds=np.array(list(seeds)), sanity_ssim_mean=mean, sanity_ssim_std=std,
        sanity_ssim=res.values[:, :, :, 0],
        titanic_rows=picks, titanic_x=tx, titanic_raw=raw, titanic_feature_names=np.array(titanic.feature_names),
        titanic_targets=tpred, titanic_scores=s_pick, titanic_baseline_scores=base, titanic_R=TR,
        titanic_method_names=np.array([m[0] for m in t_methods]),
        titanic_method_calls=np.array([_spec(m, p) for _, m, p in t_methods]))
    clock.done("save attributions.npz")
    timings = list(clock.steps)
    total = clock.total()
    _write_html(out, timings, total, method_seconds, res, mean, n_img, n_san, seeds, len(picks))
    clock.done("write index.html")
    timings = list(clock.steps)
    total = clock.total()
    print(f"  {total:6.2f} s  total", flush=True)
    files = {name: out / name for name in FILES}
    print(f"relprop demo: wrote {', '.join(FILES)} to {out.resolve()}\n"
          f"  open {(out / 'index.html').resolve()} in a browser", flush=True)
    return DemoResult(out=out, files=files, timings=timings, total_seconds=total, tiles=geometry)


def _readme_link():
    """A link to the README when relprop runs from a checkout (``pip install -e``), else None."""
    p = Path(__file__).resolve().parents[1] / "README.md"
    return p.as_uri() if p.is_file() else None


def _write_html(out, timings, total, method_seconds, res, mean, n_img, n_san, seeds, n_pass):
    """``index.html``: the pictures, how to read each, the timings (up to the page itself) and a
    pointer to using one's own model."""
    e = html.escape
    after_top = ", ".join(f"{m} {mean[k, 1]:.2f}" for k, m in enumerate(res.methods))
    at_end = ", ".join(f"{m} {mean[k, -1]:.2f}" for k, m in enumerate(res.methods))
    rows = ""
    for step, t in timings:
        rows += f"<tr><td>{e(step)}</td><td>{t:.2f}</td></tr>"
        if step.startswith("explain") and "digits" in step:  # that step's time per method, beneath it
            rows += "".join(f"<tr class='sub'><td>&nbsp;&nbsp;{e(k)}</td><td>{v:.2f}</td></tr>"
                            for k, v in method_seconds.items())
    band = f", with a band of one standard deviation over {len(seeds)} random seeds" if len(seeds) > 1 else ""
    readme = _readme_link()
    readme_ref = (f"<a href='{e(readme)}'>README</a>" if readme else "README (on the project page)")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>relprop demo</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;line-height:1.45}}
img{{max-width:100%;border:1px solid #ddd}} table{{border-collapse:collapse}}
td{{padding:.15em .8em;border-bottom:1px solid #eee}} td:last-child{{text-align:right}}
tr.sub td{{color:#666}} code,pre{{background:#f5f5f5}} pre{{padding:.6em}}</style></head>
<body>
<h1>relprop demo: explanations of two small trained models</h1>
<p>Everything below was computed just now on this machine, by <code>relprop demo</code>, from the
models shipped with relprop: a CNN trained on MNIST digits and an MLP trained on the Titanic
passenger list (<code>relprop.data</code>). The numbers behind every picture are in
<a href="attributions.npz">attributions.npz</a> (<code>np.load(path)</code>; the position of
each heatmap tile is in <a href="heatmaps.json">heatmaps.json</a>).</p>

<h2>Heatmaps: which pixels made the CNN decide</h2>
<p><img src="heatmaps.png" alt="heatmaps of {n_img} MNIST digits, one row per method"></p>
<p>The first row shows {n_img} MNIST test digits (drawn dark on white) with their label and the
model's prediction; each further row explains the <em>predicted</em> class with one method.
<b>Red</b> pixels are evidence <b>for</b> the predicted class, <b>blue</b> pixels evidence
<b>against</b> it, <b>white</b> means none (the colormap is centred at zero, as in Bach et al.
2015, Fig. 1). Each map is scaled to its own largest |R|, so compare where the colour is, not how
strong it is from one tile to the next. The gradient and guided backprop rows show
<em>sensitivity</em> (how the score would change if a pixel changed), so they can light up the
black background; gradient x input, integrated gradients, DeepLIFT and LRP-epsilon show
<em>contributions</em>, which are zero where the input is zero. LRP-epsilon with a tiny epsilon
equals gradient x input on a ReLU network (Ancona et al. 2018), so those two rows match, as they
should. The composites EpsilonPlusFlat and EpsilonGammaBox use one rule per layer (Montavon et al.
2019): their maps are less noisy, and their first-layer rules (flat; z<sup>B</sup> with the pixel
bounds 0 and 1) also spread relevance onto the background around the strokes.</p>

<h2>Sanity check: do the explanations depend on what the model learned?</h2>
<p><img src="sanity.png" alt="SSIM to the original explanation versus randomized layers"></p>
<p>The cascading model-parameter randomization test of Adebayo et al. (2018, "Sanity checks for
saliency maps"): the weights of the layers are replaced by random ones, from the output layer
down, one more layer at each step along the x axis; each curve is the structural similarity (SSIM,
Wang et al. 2004) between the explanation of the randomized model and that of the trained one,
averaged over {n_san} digits{band}.
An explanation of the model must change when the model is destroyed, so a good curve drops
towards 0; a curve that stays high shows that the picture comes from the input (e.g. its edges),
not from what the model learned. Methods that multiply by the input (gradient x input, integrated
gradients, LRP-epsilon) keep the digit's outline even for a random model, so their curves level off
above 0, as Adebayo et al. observed for gradient x input and integrated gradients. Here the SSIM
after randomizing the top layer is: {e(after_top)}; after randomizing every layer: {e(at_end)}.</p>

<h2>Tabular data: why the MLP predicts that a passenger survived or died</h2>
<p><img src="titanic.png" alt="feature attributions of {n_pass} Titanic passengers"></p>
<p>Each row is one held-out passenger, each column a method. Each bar is one feature's
contribution to the score (the logit, before the softmax) of the <em>predicted</em> class, labelled
with the passenger's raw value (<code>sex_female=1</code> is a woman, <code>pclass=1</code> first
class, <code>age=22</code>, <code>fare</code> in pounds); <b>red</b> pushes towards the predicted
class, <b>blue</b> against it. For LRP-epsilon the bars sum to the score of the predicted class,
less the share the layers' biases absorb (the title gives both numbers). For integrated gradients
(Sundararajan et al. 2017) they sum to the score minus the score of the baseline, the all-zero
standardized input, i.e. the average training passenger (completeness).</p>

<h2>Timings</h2>
<table><tr><td><b>step</b></td><td><b>seconds</b></td></tr>{rows}
<tr><td><b>total</b></td><td><b>{total:.2f}</b></td></tr></table>
<p>The first run on a machine also compiles relprop's CPU kernels (Numba, cached on disk
afterwards); run <code>relprop demo</code> again to see the warm times.</p>

<h2>Your own model</h2>
<p>See the section "Use your own model" of the {readme_ref} for PyTorch, ONNX and relprop's own
format. In short:</p>
<pre>import relprop as rp
from relprop import viz

net = rp.from_torch(model.eval(), x[:1])    # or rp.from_onnx("model.onnx"), rp.load("model.npz")
R = rp.attribute(net, x, "lrp", rules=rp.composites.EpsilonPlusFlat())
viz.save_png(viz.grid(list(viz.heatmap(R)), scale=4), "my-heatmaps.png")</pre>
</body></html>
"""
    (out / "index.html").write_text(page, encoding="utf-8")


if __name__ == "__main__":
    main()
