"""relprop's native model file: one ``.npz`` archive, versioned, loaded without executing code.

Layout (format ``relprop-model`` version 1):

* ``__graph__``: a 0-d unicode array holding JSON ``{"format": "relprop-model", "version": 1,
  "nodes": [{"name", "kind", "inputs", "hyper": {...}, "arrays": [...]}, ...],
  "input_shape": [per-sample dims] or null}``;
* ``{i}.{array}``: the arrays of node ``i`` (``weight``, ``bias``, BatchNorm statistics) in
  their stored dtype, so a round trip is bit-exact.

``np.load(..., allow_pickle=False)`` never unpickles: a file cannot run code on load.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from ..core import graph as G

FORMAT, VERSION = "relprop-model", 1
_KINDS = {cls.kind: cls for cls in (
    G.Dense, G.Conv2d, G.MaxPool2d, G.AvgPool2d, G.Flatten, G.ReLU, G.Tanh, G.Sigmoid, G.Identity, G.Softmax,
    G.LeakyReLU, G.Softplus, G.Dropout, G.BatchNorm2d, G.GlobalAvgPool2d, G.Reshape, G.Add, G.Concat)}


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
    (the house format for models and patterns; read back with ``allow_pickle=False``)."""
    with open(path, "wb") as f:  # a file object: numpy must not append ".npz" to the name
        np.savez(f, **{header_key: np.array(json.dumps(header))}, **arrays)


def check_archive(path, who, what):
    """The checks before opening an archive: ``path`` exists and is an npz (zip) file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{who}: no such file: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{who}: {path} is not a {what} (not an npz archive)")


def load(path):
    """Read a model written by :func:`save`; a damaged or foreign file raises ``ValueError``."""
    check_archive(path, "load", "readable relprop model file")
    try:
        with np.load(path, allow_pickle=False) as f:
            header = json.loads(str(f["__graph__"][()]))
            if not isinstance(header, dict) or not isinstance(header.get("nodes"), list):
                raise ValueError("the graph header is not a relprop model description")
            if header.get("format") != FORMAT:
                raise ValueError(f"not a relprop model (format {header.get('format')!r})")
            if header.get("version") != VERSION:
                raise ValueError(f"format version {header.get('version')!r} is not supported (this relprop reads {VERSION})")
            nodes = []
            for i, spec in enumerate(header["nodes"]):
                cls = _KINDS.get(spec["kind"])
                if cls is None:
                    raise ValueError(f"node {spec.get('name')!r} has unknown kind {spec['kind']!r}")
                args = {a: f[f"{i}.{a}"] for a in spec["arrays"]}
                hyper = {h: tuple(v) if isinstance(v, list) else v for h, v in spec["hyper"].items()}
                layer = cls(**args, **hyper)
                for a in spec["arrays"]:  # keep the stored dtype bit-exact (constructors may cast)
                    arr = np.array(args[a], copy=True)
                    arr.setflags(write=False)
                    setattr(layer, a, arr)
                nodes.append(G.Node(spec["name"], layer, tuple(spec["inputs"])))
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, EOFError, OSError, TypeError, AttributeError) as e:
        raise ValueError(f"load: {path} is not a readable relprop model file ({type(e).__name__}: {e})") from None
    except ValueError as e:
        raise ValueError(f"load: {path}: {e}") from None
    return G.Graph(nodes, input_shape=header.get("input_shape"))
