"""Models in and out: relprop's own file format, the PyTorch and ONNX importers.

* :class:`ImportNotice`: the warning category of the importers' one-line notices (today: a final
  softmax stripped on import). Silence it with
  ``warnings.filterwarnings("ignore", category=relprop.io.ImportNotice)``.
* :func:`supported_ops`: the operations each importer maps, read from its mapping tables.
"""
from __future__ import annotations

FINAL_SOFTMAX = ("strip", "keep", "refuse")


class ImportNotice(UserWarning):
    """A notice from ``rp.from_torch`` / ``rp.from_onnx`` about what the import changed (a final
    softmax or log-softmax stripped: explanations start from the pre-softmax scores anyway).

    A ``UserWarning`` subclass, so it shows once per call site by default; silence it with
    ``warnings.filterwarnings("ignore", category=relprop.io.ImportNotice)`` or avoid it with
    ``final_softmax="keep"`` (softmax) / ``"refuse"``.
    """


def check_final_softmax(value, where):
    """Validate the importers' ``final_softmax`` option (one of :data:`FINAL_SOFTMAX`)."""
    if not isinstance(value, str) or value not in FINAL_SOFTMAX:
        raise ValueError(f"{where}: final_softmax must be one of {', '.join(map(repr, FINAL_SOFTMAX))}, "
                         f"got {value!r}")
    return value


def apply_final_softmax(z, kind):
    """``softmax`` or ``log_softmax`` (``kind``) over the last axis of logits ``z``, in float64
    and max-shifted: what a stripped final softmax would have output (the import checks)."""
    import numpy as np

    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z - lse if kind == "log_softmax" else np.exp(z - lse)


def supported_ops():
    """The operations the importers map to relprop layers, read from their mapping tables.

    Returns
    -------
    dict
        ``{"torch": [...], "onnx": [...]}``, each sorted. ``"torch"``: module classes
        (``"torch.nn.Conv2d"``), functions (``"torch.nn.functional.relu"``, ``"operator.add"``)
        and tensor methods (``"Tensor.view()"``) that ``rp.from_torch`` converts (the ``aten``
        forms of the same ops, which a ``torch.export`` fallback produces, are accepted too and
        not listed); empty when PyTorch is not installed. ``"onnx"``: the ONNX op types
        ``rp.from_onnx`` converts (default domain). An entry may still refuse some arguments
        (e.g. ``groups`` of a convolution); the error then says which and why.
    """
    from .onnx_import import _HANDLERS

    import importlib.util

    torch_ops = []
    if importlib.util.find_spec("torch") is not None:
        from .torch_import import supported_torch_ops

        torch_ops = supported_torch_ops()
    return {"torch": sorted(set(torch_ops)), "onnx": sorted(_HANDLERS)}


__all__ = ["ImportNotice", "supported_ops", "FINAL_SOFTMAX"]
