"""A small column table for evaluation results: numpy structured rows, pandas when asked.

Every evaluation function returns its numbers as a :class:`Table`; reports write the same
table as CSV, JSON, Markdown and HTML, with one number formatter (:func:`fmt`) so that the
figures in every format are the same strings.
"""
from __future__ import annotations

import csv
import html
import io
import json

import numpy as np


def fmt(v):
    """The one text form of a cell: floats with 6 significant digits, the rest as ``str``."""
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return "nan" if np.isnan(v) else f"{v:.6g}"
    return str(v)


def nan_stats(v):
    """(mean, std, count) of the defined (non-NaN) entries of ``v``; (nan, nan, 0) when none is
    (an undefined value -- e.g. a correlation with a constant map -- is left out, not averaged)."""
    v = np.asarray(v, np.float64).ravel()
    ok = v[~np.isnan(v)]
    if ok.size == 0:
        return float("nan"), float("nan"), 0
    return float(ok.mean()), float(ok.std()), int(ok.size)


class Table:
    """Rows with named columns, held as a numpy structured array (``.rows``).

    Parameters
    ----------
    columns : dict name -> sequence (all of one length); strings become unicode columns,
        integers int64, the rest float64

    Examples
    --------
    >>> t = Table({"method": ["gradient", "lrp.epsilon"], "value": [0.2, 0.9]})
    >>> t["value"].tolist()
    [0.2, 0.9]
    >>> t.where(method="gradient")["value"].tolist()
    [0.2]
    """

    def __init__(self, columns):
        if isinstance(columns, np.ndarray) and columns.dtype.names:
            self.rows = columns
            return
        lens = {len(v) for v in columns.values()}
        if len(lens) > 1:
            raise ValueError(f"table columns must have one length, got {sorted(lens)}")
        fields = []
        for name, vals in columns.items():
            arr = np.asarray(vals)
            if arr.dtype.kind in "US" or arr.dtype == object:
                arr = arr.astype(str)
                fields.append((name, f"U{max(1, max((len(s) for s in arr), default=1))}"))
            elif arr.dtype.kind in "iub":
                fields.append((name, np.int64))
            else:
                fields.append((name, np.float64))
        n = lens.pop() if lens else 0
        self.rows = np.empty(n, dtype=fields)
        for name, vals in columns.items():
            self.rows[name] = np.asarray(vals)

    @property
    def columns(self):
        return list(self.rows.dtype.names)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, name):
        return self.rows[name]

    def __iter__(self):
        return iter(self.rows)

    def __repr__(self):
        return f"Table({len(self)} rows: {', '.join(self.columns)})"

    def where(self, **equal):
        """The rows whose columns equal the given values."""
        mask = np.ones(len(self.rows), bool)
        for k, v in equal.items():
            if k not in self.columns:
                raise KeyError(f"no column {k!r}; columns: {self.columns}")
            mask &= self.rows[k] == v
        return Table(self.rows[mask])

    def unique(self, name):
        """The distinct values of a column, in order of first appearance."""
        vals = self.rows[name]
        _, first = np.unique(vals, return_index=True)
        return [vals[i].item() for i in sorted(first)]

    def to_pandas(self):
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("Table.to_pandas needs pandas (pip install pandas); .rows is the numpy form") from e
        return pd.DataFrame({c: self.rows[c] for c in self.columns})

    def records(self):
        """The rows as a list of dicts of Python scalars."""
        return [{c: r[c].item() for c in self.columns} for r in self.rows]

    # -- text forms (one formatter: the numbers are the same strings everywhere) ---------
    def to_csv(self, path=None):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        for r in self.rows:
            w.writerow([fmt(r[c]) for c in self.columns])
        return _write(buf.getvalue(), path)

    def to_json(self, path=None):
        text = json.dumps([{c: _json_value(r[c]) for c in self.columns} for r in self.rows], indent=1)
        return _write(text + "\n", path)

    def to_markdown(self):
        head = "| " + " | ".join(self.columns) + " |"
        rule = "|" + "|".join("---" for _ in self.columns) + "|"
        body = ["| " + " | ".join(fmt(r[c]) for c in self.columns) + " |" for r in self.rows]
        return "\n".join([head, rule] + body) + "\n"

    def to_html(self):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r[c]))}</td>" for c in self.columns) + "</tr>\n"
                       for r in self.rows)
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


def _json_value(v):
    v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _write(text, path):
    if path is None:
        return text
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
