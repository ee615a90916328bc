"""The command line: ``relprop explain`` (a dataset through a method into a store, the
command-line face of ``Explainer.map``), ``relprop sanity`` and ``relprop benchmark``
(evaluation reports, ``relprop.evaluate.commands``), ``relprop info`` (what relprop runs on
here) and ``relprop demo``.

Exit status: 0 done; 1 the job failed (a missing or unreadable file, a model or dataset that
does not fit, another job's store, a full disk); 2 the command line is wrong (its syntax, an
unknown method, parameter, rule or composite, a value the method refuses); 130 interrupted.
A failure is one line on stderr, ``relprop: error: ...``; ``--debug`` (or ``RELPROP_DEBUG=1``)
shows the traceback instead.
"""
from __future__ import annotations

import argparse
import difflib
import errno
import inspect
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

MODEL_SUFFIXES = {".npz": "relprop", ".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript",
                  ".ts": "torchscript", ".jit": "torchscript", ".pt2": "export"}

EPILOG = """\
Example:
  relprop explain model.npz images.npy --composite EpsilonPlusFlat --out attr/
  relprop sanity model.npz images.npy --out sanity/
  relprop benchmark model.npz images.npy --out bench/
  relprop info

Run 'relprop explain --help' for the methods, parameters and model formats.
"""

EXPLAIN_EPILOG = """\
Examples:
  relprop explain model.npz images.npy --composite EpsilonPlusFlat --out attr/
  relprop explain model.onnx images.npy --method integrated_gradients --param steps=32 \\
      --targets 0,3,5 --out ig/
  relprop explain model.npz images.npy --composite EpsilonGammaBox \\
      --composite-param low=-3 --composite-param high=3 --target label --labels labels.npy --out attr/
  relprop explain model.npz images.npy --rule Epsilon --rule-param epsilon=0.25 --out eps/

  Reopen the result in Python: rp.open_attributions("attr/").attributions (memory-mapped).

Parameters:
  --param KEY=VALUE           a parameter of the method (rp.METHODS[method].params lists them);
                              for smoothgrad also its base method's (--param base=lrp.epsilon
                              --param epsilon=0.1)
  --composite NAME            LRP with a composite of rp.composites (method lrp, rules=NAME(...)):
                              {composites}
  --composite-param KEY=VALUE an argument of the composite (EpsilonGammaBox: low=, high=, ...)
  --rule NAME                 LRP with one rule of rp.rules on every Dense/Conv2d layer:
                              {rules}
  --rule-param KEY=VALUE      an argument of the rule (Epsilon: epsilon=, Gamma: gamma=, ...)
  VALUE is read as: true/false, none, an int, a float (1e-3, inf), a list when it has a comma
  (3,3 or [3,3]; 3, is a one-element list), @FILE.npy for an array stored in FILE.npy, and a
  string otherwise (quote it, '3', to keep digits a string).

Methods:
  {methods}

Model files:
  .npz             relprop's native file (rp.save); read without executing code
  .onnx            ONNX (needs the onnx package); read without executing code
  .pt .pth .ts     TorchScript (torch.jit.save), loaded with torch.jit.load: the archive holds
                   code that PyTorch runs
  .pt2             torch.export (torch.export.save), loaded with torch.export.load
  Torch files are loaded by PyTorch itself: trust them as you would trust torch with them.
  (Pickled modules and state dicts are not read.) The model is traced on the dataset's
  first sample(s).

Output: a folder of .npy files (memory-mappable), or a zarr group when OUT ends in .zarr.
A rerun of the same command resumes where an interrupted one stopped; another job's store
is refused unless --overwrite.

Exit status: 0 done, 1 the job failed, 2 a usage error, 130 interrupted.
"""


class UsageError(Exception):
    """The command line is wrong (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as :class:`UsageError` (one line, no usage block)."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser():
    from . import METHODS

    parser = _Parser(prog="relprop", description="relprop: compiled-kernel relevance engine",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="cmd", metavar="{explain,sanity,benchmark,info,demo}")

    e = sub.add_parser("explain", help="explain a dataset with a method and write the attributions to a store",
                       description="Explain every sample of DATA with a method and write the attributions,\n"
                                   "targets, scores (and the conservation error) to the store OUT.",
                       epilog=EXPLAIN_EPILOG.format(composites=_wrap(", ".join(_composites()), 60, " " * 30),
                                                    rules=_wrap(", ".join(_rules()), 60, " " * 30),
                                                    methods=_wrap(", ".join(METHODS), 90, "  ")),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("model", metavar="MODEL", help="model file: .npz, .onnx, .pt/.pth/.ts (TorchScript), .pt2")
    e.add_argument("data", metavar="DATA", help="dataset: a .npy file, a .zarr array, IDX files or a folder of "
                                                "images (one sub-folder per class)")
    e.add_argument("--method", "-m", metavar="M", help="attribution method (default: lrp with --composite/--rule)")
    e.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                   help="a method parameter (repeatable)")
    rules = e.add_mutually_exclusive_group()
    rules.add_argument("--composite", metavar="NAME", help="LRP composite, e.g. EpsilonPlusFlat")
    rules.add_argument("--rule", metavar="NAME", help="one LRP rule for every layer, e.g. Epsilon, ZPlus")
    e.add_argument("--composite-param", action="append", default=[], metavar="KEY=VALUE",
                   help="a composite argument (repeatable)")
    e.add_argument("--rule-param", action="append", default=[], metavar="KEY=VALUE",
                   help="a rule argument (repeatable)")
    e.add_argument("--out", "-o", required=True, metavar="OUT", help="output folder (.npy files) or a .zarr path")
    t = e.add_mutually_exclusive_group()
    t.add_argument("--target", metavar="pred|label|N", help="one class per sample: each sample's argmax (pred, "
                                                              "the default), its label, or class N")
    t.add_argument("--targets", metavar="0,3,5|all", help="several classes per sample (attributions (n, K, ...))")
    e.add_argument("--batch-size", default="auto", metavar="N|auto", help="samples per chunk (default: auto, "
                                                                            "from --max-memory)")
    e.add_argument("--max-memory", default="2GB", metavar="SIZE", help="memory the job may hold (default: 2GB)")
    e.add_argument("--dtype", choices=("float32", "float64"), help="compute dtype (default: float32; float64 for "
                                                                   "a float64 dataset)")
    e.add_argument("--labels", metavar="FILE", help="labels for --target label: .npy, .txt/.csv (one int per "
                                                    "line) or an IDX labels file")
    e.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler (tcp://host:port): run the chunks "
                                                          "on its workers, which must all see OUT")
    e.add_argument("--overwrite", action="store_true", help="replace whatever OUT holds")
    e.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    e.add_argument("--size", metavar="H,W", help="image sources: resize to H x W")
    e.add_argument("--mean", metavar="M[,M,M]", help="image sources: subtract this (per channel)")
    e.add_argument("--std", metavar="S[,S,S]", help="image sources: divide by this (per channel)")
    e.add_argument("--mode", choices=("RGB", "L"), help="image folders: colour (RGB, 3 channels, the default) or "
                                                        "grey (L, 1 channel)")
    e.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    e.set_defaults(func=explain)

    i = sub.add_parser("info", help="versions, threads, BLAS, GPU, Numba cache and optional extras",
                       description="Print what relprop runs on here: versions, the CPU kernels' threads "
                                   "(RELPROP_NUM_THREADS), BLAS, the GPU (CuPy), the Numba cache and the optional "
                                   "extras.",
                       epilog="Example:\n  relprop info", formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    i.set_defaults(func=info)

    from .evaluate.commands import add_parsers

    add_parsers(sub, lambda p: p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                              help="show the traceback of an error"))

    d = sub.add_parser("demo", help="explain the shipped MNIST CNN and Titanic MLP: pictures and a web page",
                       description="Explain shipped MNIST test digits with 8 methods and LRP rules, run a quick\n"
                                   "sanity check (cascading model randomization, Adebayo et al. 2018), explain a\n"
                                   "few Titanic passengers, and write heatmaps.png, sanity.png, titanic.png,\n"
                                   "attributions.npz and index.html into OUT: about 10 s on 2 cores, most of it\n"
                                   "compiling the kernels on a first run. Needs Pillow and matplotlib\n"
                                   "(pip install 'relprop[demo]'); no PyTorch, no download.",
                       epilog="Examples:\n  relprop demo\n  relprop demo --out relprop-demo --quick\n\n"
                              "Then open relprop-demo/index.html in a browser.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--out", default="relprop-demo", metavar="OUT",
                   help="folder to write the pictures, attributions.npz and index.html into (default: relprop-demo)")
    d.add_argument("--quick", action="store_true", help="fewer samples: 4 digits, 1 randomization seed, "
                                                        "2 passengers")
    d.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    d.set_defaults(func=demo)
    return parser


def main(argv=None):
    """Run the command line ``argv`` (default ``sys.argv[1:]``); exits with the status
    (module docstring) when it is not 0."""
    code = run(argv)
    if code:
        raise SystemExit(code)
    return 0


def run(argv=None):
    """Run ``argv`` and return the exit status; errors become one line on stderr."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("RELPROP_DEBUG", "") not in ("", "0") or "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if args.cmd is None:
            raise UsageError("choose a command: explain, sanity, benchmark, info or demo (see 'relprop --help')")
        return args.func(args) or 0
    except KeyboardInterrupt:
        if debug:
            raise
        _error("interrupted" + _INTERRUPTED.get("hint", ""))
        return 130
    except UsageError as e:
        if debug:
            raise
        _error(str(e))
        return 2
    except Exception as e:  # noqa: BLE001 - every failure is reported as one line
        if debug:
            raise
        _error(describe(e))
        return 1
    finally:
        _INTERRUPTED.clear()


_INTERRUPTED = {}  # what to tell on Ctrl-C (set once the store exists)


def _error(message):
    print(f"relprop: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


# API wording -> command-line wording, in the messages of the runner
_CLI_WORDS = (("overwrite=True", "--overwrite"), ("pass labels=", "pass --labels"), ("max_memory=", "--max-memory "))


def describe(e):
    """One line naming the problem in ``e``."""
    if isinstance(e, OSError) and e.strerror:
        msg = e.strerror
        if e.filename is not None:
            msg += f": {str(e.filename)!r}" + (f" -> {str(e.filename2)!r}" if e.filename2 is not None else "")
        if e.errno == errno.ENOSPC:
            msg += " (the disk is full: free space or choose another --out)"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            msg += " (no permission to write there: choose another --out)"
        return msg
    if isinstance(e, MemoryError):
        return "out of memory; lower --max-memory or --batch-size"
    msg = str(e) or type(e).__name__
    if not isinstance(e, (ValueError, TypeError, ImportError, OSError, LookupError)):
        msg = f"{type(e).__name__}: {msg} (run with --debug for the traceback)"
    for api, cli in _CLI_WORDS:
        msg = msg.replace(api, cli)
    return msg


# -- relprop explain ---------------------------------------------------------------------------
def explain(args):
    """``relprop explain``: check the command line, open the dataset, load the model, build the
    Explainer, run the job, print one summary line."""
    from . import Explainer
    from .runner import as_source, parse_memory
    from .runner.stores import META

    # 1. the command line alone (usage errors, exit 2)
    method, params = method_and_params(args)
    target, targets = parse_targets(args.target, args.targets)
    batch_size = parse_batch_size(args.batch_size)
    try:
        parse_memory(args.max_memory)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--max-memory: {e}") from None
    options = source_options(args)

    # 2. the files (runtime errors, exit 1)
    labels = read_labels(args.labels)
    try:
        source = as_source(args.data, labels=labels, **options)
    except TypeError as e:  # source options that do not apply to this kind of dataset
        raise UsageError(str(e)) from None
    net = load_model(args.model, source)

    # 3. what the method makes of them (usage errors: a parameter the method or model refuses)
    if args.composite or args.rule:
        params["rules"] = build_rules(args, net, params)
    try:
        ex = Explainer(net, method, **params)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None

    # 4. the job (runtime errors, exit 1)
    out = Path(args.out)
    before = finished_rows(out) if not args.overwrite else 0
    existed = out.exists()
    # what a failed run may clear (below): a folder that was empty, or a store --overwrite replaces
    may_clear = existed and out.is_dir() and (not any(out.iterdir()) or (args.overwrite and (out / META).is_file()))
    t0 = time.perf_counter()
    _INTERRUPTED["hint"] = (f"; rerun the same command to resume: the chunks recorded in {str(out)!r} are kept "
                            f"(the others are computed again)")
    try:
        res = ex.map(source, out=out, target=target, targets=targets, batch_size=batch_size,
                     max_memory=args.max_memory, progress=not args.no_progress, overwrite=args.overwrite,
                     dtype=args.dtype, scheduler=args.scheduler)
    except BaseException:
        discard_unstarted(out, existed, may_clear)
        raise
    seconds = time.perf_counter() - t0
    computed = res.n - before
    a = res.attributions
    if computed:
        resumed = f", {before} from an earlier run" if before else ""
        done = (f"{res.n} samples ({computed} computed{resumed}) in {seconds:.2f} s, "
                f"{computed / max(seconds, 1e-9):.1f} samples/s")
    else:
        done = f"{res.n} samples, all finished by an earlier run (nothing computed)"
    print(f"relprop: {done}, {res.method} -> {str(out)!r} (attributions {tuple(a.shape)} {a.dtype})", flush=True)
    return 0


def method_and_params(args):
    """(method name, parameters) from ``--method`` and ``--param``; ``--composite``/``--rule``
    imply the method ``lrp`` (or a smoothgrad around it)."""
    from . import METHODS

    params = parse_assignments(args.param, "--param")
    lrp_rules = args.composite or args.rule
    flag = "--composite" if args.composite else "--rule"
    method = args.method
    if method is None:
        if not lrp_rules:
            raise UsageError(f"give --method (one of: {', '.join(METHODS)}), or --composite / --rule for LRP")
        method = "lrp"
    if method not in METHODS:
        close = difflib.get_close_matches(method, list(METHODS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown method {method!r}{hint} (available: {', '.join(METHODS)})")
    if "rules" in params:
        raise UsageError("give the LRP rules with --composite NAME or --rule NAME, not --param rules=")
    if lrp_rules:
        if method == "smoothgrad":
            params.setdefault("base", "lrp")
            if params["base"] != "lrp":
                raise UsageError(f"{flag} sets the rules of method 'lrp', but smoothgrad's base is "
                                 f"{params['base']!r}; use --param base=lrp")
        elif method != "lrp":
            raise UsageError(f"{flag} sets the rules of method 'lrp', not of {method!r}; leave out --method (or "
                             f"give --method lrp)")
    elif method == "lrp":
        raise UsageError("method 'lrp' needs its rules: --composite NAME (e.g. EpsilonPlusFlat) or --rule NAME "
                         "(e.g. Epsilon)")
    if args.composite_param and not args.composite:
        raise UsageError("--composite-param needs --composite NAME")
    if args.rule_param and not args.rule:
        raise UsageError("--rule-param needs --rule NAME")
    return method, params


def build_rules(args, net, params):
    """The ``rules=`` of method lrp: the composite ``--composite`` with ``--composite-param``,
    or the rule ``--rule`` with ``--rule-param`` on every Dense/Conv2d layer. ``params`` (the
    method's, from ``--param``) is checked for arguments meant for the composite or rule."""
    if args.composite:
        cls = _lookup(args.composite, _composites(), "composite", "--composite")
        flag, given = "--composite-param", args.composite_param
    else:
        cls = _lookup(args.rule, _rules(), "rule", "--rule")
        flag, given = "--rule-param", args.rule_param
    if args.method in (None, "lrp"):  # lrp's only parameter is rules=
        for k, v in params.items():
            if k in inspect.signature(cls.__init__).parameters:
                raise UsageError(f"method 'lrp' has no parameter {k!r}; {cls.__name__} takes it: {flag} {k}=...")
    made = _construct(cls, parse_assignments(given, flag), flag)
    return made if args.composite else [made] * len(net.linear_nodes())


def _composites():
    from .core import composites as C

    return {n: getattr(C, n) for n in C.__all__ if n != "Composite"}


def _rules():
    from .core import rules as R

    return {n: getattr(R, n) for n in R.__all__ if n != "Rule"}


def _norm(name):
    return name.lower().replace("_", "").replace("-", "")


def _lookup(name, table, what, flag):
    """The class called ``name`` in ``table`` (case, ``_`` and ``-`` ignored: ZPlus, z_plus)."""
    by = {_norm(k): v for k, v in table.items()}
    if _norm(name) in by:
        return by[_norm(name)]
    close = difflib.get_close_matches(name, list(table), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UsageError(f"{flag}: unknown {what} {name!r}{hint} (available: {', '.join(table)})")


def _construct(cls, kwargs, flag):
    """``cls(**kwargs)``, with unknown and missing arguments named."""
    sig = inspect.signature(cls.__init__)
    known = [p for p in list(sig.parameters.values())[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    names = [p.name for p in known]
    for k in kwargs:
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"{flag}: {cls.__name__} has no argument {k!r}{hint} (its arguments: "
                             f"{', '.join(names) or 'none'})")
    missing = [p.name for p in known if p.default is p.empty and p.name not in kwargs]
    if missing:
        need = " ".join(f"{flag} {m}=..." for m in missing)
        raise UsageError(f"{cls.__name__} needs {need}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{flag}: {e}") from None


def parse_assignments(items, flag):
    """``{key: value}`` from ``["key=value", ...]`` (values through :func:`parse_value`)."""
    out = {}
    for text in items:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"{flag} {text!r}: expected KEY=VALUE, e.g. {flag} epsilon=1e-3")
        if key in out:
            raise UsageError(f"{flag} {key}= is given twice")
        out[key] = parse_value(value, f"{flag} {key}")
    return out


def parse_value(text, where="a value"):
    """A parameter value from its text: ``true``/``false``, ``none``, an int, a float, a list
    (``3,3``, ``[3,3]``, ``3,``), ``@file.npy`` (the array in that file), else a string
    (``'3'`` or ``"3"`` keeps the digits a string)."""
    s = text.strip()
    if s.startswith("@"):
        return _load_npy(s[1:], where)
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    if s.startswith("[") and s.endswith("]"):
        inner = s[1:-1].strip()
        return [] if not inner else [_scalar(p) for p in inner.split(",")]
    if "," in s:
        parts = s.split(",")
        if parts[-1].strip() == "":
            parts = parts[:-1]
        return [_scalar(p) for p in parts]
    return _scalar(s)


def _scalar(text):
    s = text.strip()
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    return s


def _load_npy(path, where):
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(errno.ENOENT, f"{where}=@{path}: no such file", str(p))
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{where}=@{path}: not a readable .npy array ({e})") from None


def parse_targets(target, targets):
    """``(target, targets)`` for ``Explainer.map`` from ``--target`` / ``--targets``."""
    if target is not None:
        if target in ("pred", "label"):
            return target, None
        try:
            return int(target), None
        except ValueError:
            raise UsageError(f"--target must be pred, label or a class index, got {target!r}") from None
    if targets is not None:
        if targets.strip() == "all":
            return None, "all"
        try:
            ks = [int(k) for k in targets.split(",") if k.strip()]
        except ValueError:
            raise UsageError(f"--targets must be a comma-separated list of class indices (0,3,5) or all, got "
                             f"{targets!r}") from None
        if not ks:
            raise UsageError("--targets lists no class")
        return None, ks
    return None, None


def parse_batch_size(text):
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"--batch-size must be auto or an int >= 1 (samples per chunk), got {text!r}")
    return n


def source_options(args):
    """``size=``, ``mean=``, ``std=``, ``mode=`` for image sources (only those given)."""
    opts = {} if args.mode is None else {"mode": args.mode}
    if args.size is not None:
        try:
            hw = tuple(int(v) for v in args.size.replace("x", ",").split(","))
        except ValueError:
            hw = ()
        if len(hw) != 2 or min(hw) < 1:
            raise UsageError(f"--size must be H,W (two positive ints), got {args.size!r}")
        opts["size"] = hw
    for name in ("mean", "std"):
        text = getattr(args, name)
        if text is None:
            continue
        try:
            vals = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise UsageError(f"--{name} must be a number or one number per channel (0.5,0.5,0.5), got "
                             f"{text!r}") from None
        opts[name] = vals[0] if len(vals) == 1 else vals
    return opts


def read_labels(path):
    """``--labels``: a .txt/.csv file (one int per line) read here; other files (.npy, IDX)
    go to the dataset reader as a path (``relprop.runner.images.read_labels``)."""
    if path is None:
        return None
    import numpy as np

    p = Path(path)
    if p.suffix.lower() not in (".txt", ".csv"):
        return str(p)
    if not p.is_file():
        raise FileNotFoundError(errno.ENOENT, "labels file not found", str(p))
    try:
        return np.loadtxt(p, dtype=np.int64, delimiter="," if p.suffix.lower() == ".csv" else None, ndmin=1)
    except (ValueError, OSError) as e:
        raise ValueError(f"labels file {str(p)!r} is not one int per line ({e})") from None


# -- models ------------------------------------------------------------------------------------
def load_model(path, source=None):
    """A relprop model from a file: ``.npz`` (``rp.load``), ``.onnx`` (``rp.from_onnx``), a
    TorchScript or torch.export file (``rp.from_torch``, traced on ``source``'s first samples)."""
    from . import from_onnx, load

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, "model file not found", str(p))
    if p.is_dir():
        raise ValueError(f"model {str(p)!r} is a folder, not a model file")
    kind = MODEL_SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise ValueError(f"model {str(p)!r}: unknown format {p.suffix or '(no suffix)'!r} (expected .npz, .onnx, "
                         f".pt/.pth/.ts (TorchScript) or .pt2 (torch.export))")
    try:
        if kind == "relprop":
            return load(p)
        if kind == "onnx":
            return from_onnx(str(p))
        return _load_torch(p, kind, source)
    except ImportError:
        raise
    except (ValueError, TypeError, OSError, RuntimeError, NotImplementedError) as e:
        msg = str(e)
        if msg.startswith("load: "):
            msg = msg[len("load: "):]
        if kind in ("torchscript", "export") and "does not keep the batch axis" in msg:
            msg += (" (a TorchScript or torch.export file fixes the batch size, so x.view(x.size(0), -1) reads as a "
                    "constant there: use torch.flatten(x, 1) or nn.Flatten in the model)")
        raise ValueError(f"cannot load model {str(p)!r}: {msg}") from e


def _load_torch(p, kind, source):
    try:
        import torch
    except ImportError:
        raise ImportError(f"model {str(p)!r} is a torch file; loading it needs PyTorch "
                          f"(pip install 'relprop[torch]')") from None
    from . import from_torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecations on load
        warnings.simplefilter("ignore", DeprecationWarning)
        if kind == "export":
            try:
                ep = torch.export.load(str(p))
            except Exception as e:  # noqa: BLE001 - torch raises many types for a foreign file
                raise ValueError(f"not a torch.export (.pt2) archive ({type(e).__name__}: {e})") from None
            shape, dtype = _exported_input(ep)
            example = _example_input(torch, source, shape, dtype)
        else:
            save_as = ("save the model with torch.jit.save(torch.jit.script(model), 'model.pt') or "
                       "torch.export.save(torch.export.export(model, (x,)), 'model.pt2')")
            if _is_pickle_archive(p):
                raise ValueError(f"a torch.save file (a pickled module or state dict); relprop does not unpickle "
                                 f"files (unpickling runs code): {save_as}")
            try:
                ts = torch.jit.load(str(p), map_location="cpu")
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"not a TorchScript archive ({type(e).__name__}: {str(e).split('. ')[0]}); "
                                 f"{save_as}") from None
            dtype = next((q.dtype for q in ts.parameters() if q.is_floating_point()), torch.float32)
            example = _example_input(torch, source, None, dtype)
            try:
                from torch._export.converter import TS2EPConverter
            except ImportError:
                raise ImportError(f"this PyTorch ({torch.__version__}) cannot convert TorchScript to an exported "
                                  f"program; save the model with torch.export.save (.pt2) instead") from None
            quiet = logging.getLogger("torch._export")  # its notes on specialized input sizes
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            try:
                ep = TS2EPConverter(ts, (example,)).convert()
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"the TorchScript model does not run on the dataset's first sample, shaped "
                                 f"{tuple(example.shape[1:])} ({type(e).__name__}: {e})") from None
            finally:
                quiet.setLevel(level)
        try:
            gm = ep.module(check_guards=False)
        except TypeError:  # PyTorch without check_guards
            gm = ep.module()
        # a plain fx module of the exported graph: the exported one refuses .eval()
        gm = torch.fx.GraphModule(gm, gm.graph)
        return from_torch(gm, example)


def _is_pickle_archive(p):
    """Whether ``p`` is a ``torch.save`` zip (``data.pkl``, no TorchScript ``constants.pkl``)."""
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            names = {n.rsplit("/", 1)[-1] for n in z.namelist()}
    except (OSError, zipfile.BadZipFile):
        return False
    return "data.pkl" in names and "constants.pkl" not in names


def _exported_input(ep):
    """(shape, dtype) of the input an exported program was exported with (None for a dynamic axis)."""
    names = set(ep.graph_signature.user_inputs)
    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in names]
    if len(vals) != 1 or vals[0] is None or not hasattr(vals[0], "shape"):
        raise ValueError(f"the exported model takes {len(vals)} inputs; relprop models take exactly one tensor")
    return tuple(int(s) if isinstance(s, int) else None for s in vals[0].shape), vals[0].dtype


def _example_input(torch, source, shape, dtype):
    """The dataset's first sample(s) in the model's ``dtype``, shaped like the exported input
    when its size matches (the batch of an export's fixed batch size, else one sample)."""
    import numpy as np

    if source is None:
        raise ValueError("a torch model file needs the dataset to trace it on")
    batch = shape[0] if shape and shape[0] else 1
    x, _ = source.read(0, min(batch, source.n)) if source.random_access else source.peek()
    x = np.asarray(x)[:batch]
    if x.shape[0] < batch:
        x = np.concatenate([x] * -(-batch // x.shape[0]))[:batch]
    if shape is not None and None not in shape[1:] and int(np.prod(shape[1:])) == int(np.prod(x.shape[1:])):
        x = x.reshape((batch,) + tuple(shape[1:]))
    elif shape is not None and None not in shape[1:]:
        raise ValueError(f"the exported model reads samples shaped {tuple(shape[1:])}, the dataset's are "
                         f"{tuple(x.shape[1:])}")
    return torch.from_numpy(np.array(x, dtype=np.float64)).to(dtype)  # a copy: the source may be read-only


# -- the store ---------------------------------------------------------------------------------
def finished_rows(out):
    """Rows an earlier run of a job left finished in ``out`` (0 when it holds no store)."""
    from .runner import open_attributions
    from .runner.stores import META

    if not (out / META).is_file():
        return 0
    try:
        return int(open_attributions(out).finished_rows().sum())
    except Exception:  # noqa: BLE001 - a damaged store: map reports it
        return 0


def discard_unstarted(out, existed, may_clear):
    """After a failed run: a store the run laid out but never described (no ``meta.json``)
    holds nothing a rerun could trust; remove it so that the rerun starts clean instead of
    refusing a non-empty folder. A folder that held something else before is left alone."""
    from .runner.stores import META

    if not out.is_dir() or (out / META).exists() or (existed and not may_clear):
        return
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


# -- relprop info, relprop demo ----------------------------------------------------------------
def info(args):
    from .info import main as show

    show()
    return 0


def demo(args):
    from .demo import main as run_demo

    run_demo(args.out, quick=args.quick)
    return 0


def _wrap(text, width, indent):
    import textwrap

    return ("\n" + indent).join(textwrap.wrap(text, width))


if __name__ == "__main__":
    main()
