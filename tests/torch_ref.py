"""Reference values from torch for the model-family tests (tests/test_models_blocks.py,
tests/test_import_convnext.py): a quiet import, the forward under ``no_grad``, autograd input
gradients of chosen logits, the TorchScript exporter's ONNX bytes, and the per-sample closeness
they are compared with."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import torch

import relprop as rp
from tolerance import assert_close_per_sample


def assert_close(actual, expected, rtol, what=""):
    """Per sample: max |actual - expected| <= rtol * max |expected|."""
    assert_close_per_sample(actual, expected, rtol, what, floor=1e-300)


def import_torch(m, x):
    """``rp.from_torch`` with its import notices silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rp.from_torch(m, x)


def torch_out(m, x):
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def torch_grad(m, x, target):
    """d logit[n, target[n]] / dx by torch autograd."""
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    m(xt)[torch.arange(len(x)), torch.as_tensor(np.asarray(target))].sum().backward()
    return xt.grad.numpy()


def export(m, x, opset):
    """ONNX bytes from torch's TorchScript exporter (batch axis dynamic), its chatter silenced."""
    f = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.from_numpy(x),), f, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return f.getvalue()


def zennit_relevance(model, xt, composite, attr_output):
    """Zennit's input relevance of ``model`` at ``xt`` under ``composite``, starting from
    ``attr_output`` (a one-hot tensor, or a function of the output), warnings silenced."""
    from zennit.attribution import Gradient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Gradient(model=model, composite=composite) as attributor:
            _, relevance = attributor(xt, attr_output)
    return relevance.detach().numpy()
