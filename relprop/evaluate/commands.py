"""``relprop sanity`` and ``relprop benchmark``: evaluation studies from the command line.

Both read a model file and a dataset as ``relprop explain`` does (``relprop.cli.load_model``,
``relprop.runner.as_source``), take the first ``--samples`` inputs from ``--start``, and write a
report folder (``relprop.evaluate.report``).
"""
from __future__ import annotations

import argparse
import shlex
import time

DEFAULT_METHODS = ("gradient", "gradient_x_input", "integrated_gradients:steps=32", "deeplift.rescale",
                   "guided_backprop", "deconvnet", "lrp.epsilon", "lrp.z_plus")

METHOD_HELP = """\
Methods (--method, repeatable): NAME[:KEY=VALUE[:KEY=VALUE...]], e.g.
  --method gradient --method integrated_gradients:steps=32 --method lrp.epsilon:epsilon=0.01
  --method lrp:composite=EpsilonPlusFlat --method lrp:composite=EpsilonGammaBox:low=-3:high=3
  --method lrp:rule=Gamma:gamma=0.25
  (for lrp, the keys after composite=/rule= are the composite's or rule's arguments).
Default: """ + " ".join(DEFAULT_METHODS)

SANITY_EPILOG = """\
Examples:
  relprop sanity model.npz images.npy --out sanity/
  relprop sanity model.onnx images.npy --samples 8 --seeds 0,1 --randomization cascading \\
      --method gradient --method guided_backprop --method lrp:composite=EpsilonPlusFlat --out sanity/

Writes OUT/report.md, OUT/report.html, the numbers as CSV/JSON and PNG figures (similarity vs
randomized layer, heatmap grids). Measures: ssim, spearman, spearman_abs, pearson, hog_pearson,
topk_intersection. Re-initialization (--init): torch (PyTorch's reset_parameters distributions,
the default), he_normal, glorot_uniform.

""" + METHOD_HELP

BENCHMARK_EPILOG = """\
Examples:
  relprop benchmark model.npz images.npy --out bench/
  relprop benchmark tabular.npz rows.npy --samples 64 --metrics aopc_morf,completeness \\
      --method gradient --method lrp.epsilon --method lrp:composite=EpsilonPlusFlat --out bench/

Metrics: aopc_morf, aopc_lerf (pixel flipping, Samek et al. 2017), sensitivity_n (Ancona et al.
2018), completeness, randomization (cascading, Adebayo et al. 2018). Writes OUT/report.md,
OUT/report.html, benchmark.csv, ranking.csv and the pixel-flipping curves as PNG.

""" + METHOD_HELP


def add_parsers(sub, common):
    """Add ``sanity`` and ``benchmark`` to the ``relprop`` parser's subcommands ``sub``;
    ``common(parser)`` adds the options every command has (--debug)."""
    from .randomization import INITS, NORMALIZE, REDUCE

    s = sub.add_parser("sanity", help="model-parameter randomization sanity checks -> a report folder",
                       description="Model-parameter randomization (Adebayo et al. 2018), cascading and/or independent, "
                                   "and class sensitivity, for a set of methods; writes a report folder.",
                       epilog=SANITY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _data_args(s)
    s.add_argument("--randomization", choices=("cascading", "independent", "both"), default="both",
                   help="which studies (default: both)")
    s.add_argument("--seeds", default="0,1,2", metavar="0,1,2", help="randomization seeds (default: 0,1,2)")
    s.add_argument("--measures", metavar="M,M",
                   help="similarity measures (default: ssim,spearman_abs,spearman for images, spearman_abs,spearman "
                        "otherwise)")
    s.add_argument("--layers", metavar="NAME,NAME", help="weight layers to randomize (default: all)")
    s.add_argument("--classes", choices=("top2", "random"), default="top2",
                   help="class sensitivity: the top-2 classes, or the explained class vs a random other (default top2)")
    s.add_argument("--max-memory", default="auto", metavar="SIZE|auto",
                   help="what the forward reuse may hold (default: auto, half the available memory)")
    s.add_argument("--init", choices=INITS, default="torch", help="how layers are re-initialized (default: torch)")
    s.add_argument("--reduce", choices=REDUCE, default="sum", help="channels of image maps (default: sum)")
    s.add_argument("--normalize", choices=NORMALIZE, default="max", help="per-map scaling (default: max)")
    s.add_argument("--no-class-sensitivity", action="store_true", help="skip the class-sensitivity table")
    common(s)
    s.set_defaults(func=sanity)

    b = sub.add_parser("benchmark", help="rank methods and rules by faithfulness metrics -> a report folder",
                       description="Pixel flipping (AOPC, MoRF and LeRF), sensitivity-n, completeness and "
                                   "randomization for a set of methods on the same inputs; writes a report folder "
                                   "with a ranking.",
                       epilog=BENCHMARK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _data_args(b)
    b.add_argument("--metrics", default="aopc_morf,aopc_lerf,sensitivity_n,completeness", metavar="M,M",
                   help="metrics (default: aopc_morf,aopc_lerf,sensitivity_n,completeness)")
    b.add_argument("--patch", type=int, metavar="P", help="pixel-flipping patch side (default: 4, 2 or 1)")
    b.add_argument("--steps", type=int, default=20, metavar="K", help="pixel-flipping steps (default: 20)")
    b.add_argument("--fill", default="0", metavar="V|mean|blur|uniform",
                   help="what removed patches become (default: 0)")
    b.add_argument("--subsets", type=int, default=50, metavar="K", help="sensitivity-n subsets per size (default 50)")
    b.add_argument("--seed", type=int, default=0, help="seed of the random subsets and fills")
    b.add_argument("--seeds", default="0", metavar="0,1", help="randomization seeds (metric randomization; default 0)")
    b.add_argument("--n-sizes", metavar="N,N", help="sensitivity-n subset sizes (default: 1, 5, 10, 25%% of features)")
    common(b)
    b.set_defaults(func=benchmark_command)


def _data_args(p):
    p.add_argument("model", metavar="MODEL", help="model file: .npz, .onnx, .pt/.pth/.ts (TorchScript), .pt2")
    p.add_argument("data", metavar="DATA", help="dataset: a .npy file, a .zarr array, IDX files or a folder of images")
    p.add_argument("--method", "-m", action="append", default=[], metavar="SPEC",
                   help="a method NAME[:KEY=VALUE...] (repeatable; default: 8 common methods, see below)")
    p.add_argument("--out", "-o", required=True, metavar="OUT", help="report folder")
    p.add_argument("--samples", "-n", type=int, default=16, metavar="N", help="inputs to use (default: 16)")
    p.add_argument("--start", type=int, default=0, metavar="I", help="first input (default: 0)")
    p.add_argument("--target", metavar="pred|label|N", help="class explained (default: pred, the argmax)")
    p.add_argument("--labels", metavar="FILE", help="labels for --target label")
    p.add_argument("--dtype", choices=("float32", "float64"), help="compute dtype (default: the data's float dtype)")
    p.add_argument("--size", metavar="H,W", help="image sources: resize to H x W")
    p.add_argument("--mean", metavar="M[,M,M]", help="image sources: subtract this (per channel)")
    p.add_argument("--std", metavar="S[,S,S]", help="image sources: divide by this (per channel)")
    p.add_argument("--mode", choices=("RGB", "L"), help="image folders: RGB (default) or L (greyscale)")
    p.add_argument("--backend", choices=("cpu", "gpu"), help="where to compute (default: cpu)")
    p.add_argument("--batch-size", type=int, metavar="N", help="rows per internal batch (default: from the memory "
                                                               "budget)")
    p.add_argument("--overwrite", action="store_true", help="replace the report in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def parse_methods(specs, net):
    """{label: (method, params)} from ``--method`` specs (module docstring of the CLI help)."""
    from .. import METHODS
    from ..cli import UsageError, _composites, _construct, _lookup, _rules, parse_value

    out = {}
    for spec in specs or DEFAULT_METHODS:
        name, *kvs = spec.split(":")
        name = name.strip()
        if name not in METHODS:
            import difflib

            close = difflib.get_close_matches(name, list(METHODS), n=1)
            raise UsageError(f"--method {spec!r}: unknown method {name!r}" + (f"; did you mean {close[0]!r}?" if close
                                                                               else ""))
        params, rule_args, rule_kind = {}, {}, None
        for kv in kvs:
            k, sep, v = kv.partition("=")
            k = k.strip()
            if not sep or not k.isidentifier():
                raise UsageError(f"--method {spec!r}: expected NAME:KEY=VALUE, got {kv!r}")
            if name == "lrp" and k in ("composite", "rule") and rule_kind is None:
                rule_kind = (k, v.strip())
                continue
            (rule_args if rule_kind else params)[k] = parse_value(v, f"--method {spec!r} {k}")
        if name == "lrp":
            if rule_kind is None:
                raise UsageError(f"--method {spec!r}: lrp needs its rules: lrp:composite=NAME or lrp:rule=NAME")
            kind, rname = rule_kind
            table = _composites() if kind == "composite" else _rules()
            cls = _lookup(rname, table, kind, f"--method {spec!r}")
            made = _construct(cls, rule_args, f"--method {spec!r}")
            params["rules"] = made if kind == "composite" else [made] * len(net.linear_nodes())
        if spec in out:
            raise UsageError(f"--method {spec!r} is given twice")
        out[spec] = (name, params)
    return out


def _ints(text, flag):
    from ..cli import UsageError

    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals:
        raise UsageError(f"{flag} must be a comma-separated list of ints, got {text!r}")
    return vals


def _inputs(args):
    """(net, x, target or None) from the command line: model, dataset rows, --target."""
    import numpy as np

    from ..cli import UsageError, load_model, read_labels, source_options
    from ..runner import as_source

    if args.samples < 1 or args.start < 0:
        raise UsageError(f"--samples must be >= 1 and --start >= 0, got {args.samples} and {args.start}")
    target = args.target
    if target not in (None, "pred", "label"):
        try:
            target = int(target)
        except ValueError:
            raise UsageError(f"--target must be pred, label or a class index, got {target!r}") from None
    labels = read_labels(args.labels)
    try:
        source = as_source(args.data, labels=labels, **source_options(args))
    except TypeError as e:
        raise UsageError(str(e)) from None
    if getattr(source, "random_access", False):
        if args.start >= source.n:
            raise ValueError(f"--start {args.start} is past the dataset's {source.n} samples")
        x, y = source.read(args.start, min(source.n, args.start + args.samples))
    else:
        xs, ys, seen = [], [], 0
        for xb, yb in source.batches():
            lo = max(0, args.start - seen)
            seen += len(xb)
            if lo < len(xb):
                xs.append(np.asarray(xb[lo:]))
                ys.append(None if yb is None else np.asarray(yb[lo:]))
            if sum(len(a) for a in xs) >= args.samples:
                break
        if not xs:
            raise ValueError(f"--start {args.start} is past the dataset's {seen} samples")
        x = np.concatenate(xs)[:args.samples]
        y = None if ys[0] is None else np.concatenate(ys)[:args.samples]
    dtype = np.dtype(args.dtype) if args.dtype else (x.dtype if x.dtype in (np.float32, np.float64) else np.float32)
    x = np.ascontiguousarray(x, dtype=dtype)
    if target == "label":
        if y is None:
            raise ValueError("--target label needs labels: the dataset has none; pass --labels FILE")
        target = np.asarray(y, np.int64)
    elif target == "pred":
        target = None
    net = load_model(args.model, source)
    return net, x, target


def _command_line(argv_name, args):
    import sys

    return " ".join(shlex.quote(a) for a in ["relprop"] + sys.argv[1:]) if sys.argv[1:] else f"relprop {argv_name}"


def sanity(args):
    """``relprop sanity``: randomization studies and class sensitivity -> report folder."""
    from ..cli import UsageError
    from ..explainer import Explainer
    from . import report
    from ..runner.job import parse_memory
    from .randomization import (_check_layers, _check_measures, _check_measures_fit, _check_seeds, class_sensitivity,
                                model_randomization)

    seeds = _ints(args.seeds, "--seeds")
    net, x, target = _inputs(args)
    if args.measures is None:
        measures = ["ssim", "spearman_abs", "spearman"] if x.ndim >= 3 and min(x.shape[-2:]) >= 7 else \
            ["spearman_abs", "spearman"]
    else:
        measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    layers = None if args.layers is None else [v.strip() for v in args.layers.split(",") if v.strip()]
    methods = parse_methods(args.method, net)
    report.prepare_folder(args.out, args.overwrite)  # refuse before computing
    modes = ("cascading", "independent") if args.randomization == "both" else (args.randomization,)
    common = dict(backend=args.backend, batch_size=args.batch_size)
    try:  # what the study refuses in the command line itself: a usage error (exit 2)
        _check_measures(measures)
        _check_measures_fit(measures, x)
        _check_seeds(seeds)
        _check_layers(net, layers)
        if args.max_memory != "auto":
            parse_memory(args.max_memory)
        for label, (m, p) in methods.items():
            Explainer(net, m, **common, **p)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None
    t0 = time.perf_counter()
    results = []
    for mode in modes:
        results.append(model_randomization(net, x, methods, mode=mode, seeds=seeds, measures=measures,
                                           target=target, layers=layers, init=args.init, reduce=args.reduce,
                                           normalize=args.normalize, max_memory=args.max_memory,
                                           progress=not args.no_progress, **common))
        print(f"relprop: {mode} randomization, {len(methods)} methods x {len(results[-1].layers) - 1} layers x "
              f"{len(seeds)} seeds in {results[-1].seconds:.1f} s", flush=True)
    cs = None
    if not args.no_class_sensitivity:
        try:
            cs = class_sensitivity(net, x, methods, measures=[m for m in measures if m != "hog_pearson"] or measures,
                                   classes=args.classes, target=target if args.classes == "random" else None,
                                   reduce=args.reduce, normalize=args.normalize, **common)
        except ValueError as e:
            print(f"relprop: class sensitivity skipped: {e}", flush=True)
    files = report.sanity_report(args.out, results, class_sensitivity=cs, command=_command_line("sanity", args),
                                 description=f"Model {args.model!r}, data {args.data!r} (inputs {args.start}.."
                                             f"{args.start + len(x) - 1}).", overwrite=args.overwrite)
    print(f"relprop: sanity report in {time.perf_counter() - t0:.1f} s -> {str(files['report.html'])!r} "
          f"({len(files)} files)", flush=True)
    return 0


def benchmark_command(args):
    """``relprop benchmark``: faithfulness metrics and a ranking -> report folder."""
    from ..cli import UsageError, parse_value
    from ..explainer import Explainer
    from . import report
    from .ranking import METRICS, benchmark

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise UsageError(f"--metrics must name metrics among {', '.join(METRICS)}, got {args.metrics!r}")
    fill = parse_value(args.fill, "--fill")
    net, x, target = _inputs(args)
    methods = parse_methods(args.method, net)
    report.prepare_folder(args.out, args.overwrite)
    seeds = _ints(args.seeds, "--seeds")
    n_sizes = None if args.n_sizes is None else _ints(args.n_sizes, "--n-sizes")
    common = dict(backend=args.backend, batch_size=args.batch_size)
    try:
        for label, (m, p) in methods.items():
            Explainer(net, m, **common, **p)
        benchmark(net, x, methods, target=target, metrics=metrics, patch=args.patch, steps=args.steps, fill=fill,
                  subsets=args.subsets, seed=args.seed, seeds=seeds, n_sizes=n_sizes, check_only=True, **common)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None
    t0 = time.perf_counter()
    res = benchmark(net, x, methods, target=target, metrics=metrics, patch=args.patch, steps=args.steps,
                    fill=fill, subsets=args.subsets, seed=args.seed, seeds=seeds, n_sizes=n_sizes,
                    progress=not args.no_progress, **common)
    files = report.benchmark_report(args.out, res, command=_command_line("benchmark", args),
                                    description=f"Model {args.model!r}, data {args.data!r} (inputs {args.start}.."
                                                f"{args.start + len(x) - 1}).", overwrite=args.overwrite)
    best = res.ranking()["method"][0]
    print(f"relprop: benchmark of {len(methods)} methods in {time.perf_counter() - t0:.1f} s (best mean rank: "
          f"{best}) -> {str(files['report.html'])!r}", flush=True)
    return 0
