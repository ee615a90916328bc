"""The public one-shot entry points: ``attribute`` and ``forward``.

``attribute`` is a one-shot :class:`relprop.Explainer`: everything a user passes is checked
there, once, before any kernel runs; the message says what was received, where, and what was
expected. The model's derived weights are kept between calls (``relprop.core.plan.compiled``),
so repeated calls on one model do no compile work either.
"""
from __future__ import annotations

from .core.execute import forward, scores  # noqa: F401  (re-exported: rp.forward, rp.scores)
from .explainer import Explainer


def attribute(net, x, method, target=None, targets=None, backend=None, allow_tf32=False, batch_size=None,
              row_offset=0, **params):
    """Attribute the target score of ``net`` at ``x`` to the input features.

    Parameters
    ----------
    net : relprop model (``rp.Sequential`` / ``rp.Graph``)
    x : array (N, ...), float32 or float64: numpy (CPU), CuPy or a torch tensor (CUDA: GPU); float64 runs in
        float64 end to end
    method : str, one of ``rp.METHODS`` (``rp.METHODS[name].doc`` says what it computes, ``.params`` lists
        its parameters with their defaults); ``"smoothgrad"`` wraps any other (``base=``).
    target : None (each sample's argmax), int, or int array (N,)
    targets : None, a list of K class indices, ``"all"``, or an int array (N, K): returns (N, K, ...)
        attributions; traversal methods (gradient, DeepLIFT, LRP families, patterns), occlusion and
        the CAM family run one forward pass per batch and the K backward passes batched, the others
        once per target.
    backend : None (run where ``x`` lives: numpy -> CPU, CuPy or torch CUDA tensor -> GPU),
        ``"cpu"`` or ``"gpu"`` (copy ``x`` there; the result comes back as ``x``'s type)
    allow_tf32 : let float32 GEMMs on the GPU use TF32 tensor cores (faster; attributions
        then agree with fp32 to ~1e-3 x max|R| instead of ~1e-6). Off by default.
    batch_size : rows per internal batch (None: chosen from the memory budget); results do not
        depend on it
    row_offset : global index of x's first row (random methods draw per sample from their
        ``seed`` and this index)
    **params : the method's parameters

    Returns
    -------
    array of ``x``'s type (numpy, CuPy or torch), same shape and dtype as ``x`` ((N, K, ...) with
    ``targets=``).

    Examples
    --------
    >>> R = rp.attribute(net, x, "lrp.epsilon", epsilon=1e-3)            # doctest: +SKIP
    >>> R = rp.attribute(net, x, "lrp", rules=rp.composites.EpsilonPlusFlat())  # doctest: +SKIP
    """
    ex = Explainer(net, method, batch_size=batch_size, backend=backend, allow_tf32=allow_tf32, **params)
    return ex.attribute(x, target=target, targets=targets, row_offset=row_offset)
