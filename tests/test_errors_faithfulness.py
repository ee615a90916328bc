"""Bad parameters of ``relprop.evaluate.faithfulness`` give clear errors: what was received and
what was expected."""
from __future__ import annotations

import numpy as np
import pytest

import relprop as rp
from relprop.evaluate import faithfulness as F

RNG = np.random.default_rng(0)
CNN = rp.Sequential(rp.Conv2d(RNG.normal(size=(3, 2, 3, 3)), np.zeros(3), padding=1), rp.ReLU(), rp.Flatten(),
                    rp.Dense(RNG.normal(size=(4, 3 * 64)), np.zeros(4)))
CNN0 = rp.Sequential(rp.Conv2d(RNG.normal(size=(3, 2, 3, 3)), np.zeros(3)), rp.ReLU(), rp.Flatten(),
                     rp.Dense(RNG.normal(size=(4, 3 * 36)), np.zeros(4)))
MLP = rp.Sequential(rp.Dense(RNG.normal(size=(5, 6)), np.zeros(5)), rp.ReLU(), rp.Dense(RNG.normal(size=(3, 5))))
ANY = rp.Sequential(rp.Flatten(), rp.Dense(RNG.normal(size=(2, 6))))
X = RNG.normal(size=(2, 2, 8, 8))
A = RNG.normal(size=X.shape)
XT = RNG.normal(size=(3, 6))
AT = RNG.normal(size=XT.shape)


def _nan(a, ix=(0, 0, 1, 1)):
    a = a.copy()
    a[ix] = np.nan
    return a


PF_CASES = [
    (dict(order="best"), ValueError, "order must be one of 'morf', 'lerf', got 'best'"),
    (dict(steps=0), ValueError, "steps must be >= 1, got 0"),
    (dict(steps=2.5), TypeError, "steps must be an int"),
    (dict(patch=3), ValueError, r"patch=3 does not divide the input's H x W = 8 x 8"),
    (dict(patch=0), ValueError, "patch must be >= 1"),
    (dict(fill="zeros"), ValueError, "fill must be one of 'mean', 'blur', 'uniform', 'black', 'white', got 'zeros'"),
    (dict(fill=np.inf), ValueError, "fill must be finite"),
    (dict(fill=np.zeros((3, 8, 8))), ValueError, r"fill array of shape \(3, 8, 8\) broadcasts neither"),
    (dict(fill=np.full((2, 8, 8), np.nan)), ValueError, "fill array contains NaN"),
    (dict(fill=[0.0]), TypeError, "fill must be a number, an array or one of"),
    (dict(blur_sigma=0.0), ValueError, "blur_sigma must be a finite number > 0"),
    (dict(seed=-1), ValueError, "seed must be >= 0"),
    (dict(max_rows=0), ValueError, "max_rows must be >= 1"),
    (dict(target=4), ValueError, "target 4 is out of range for a model with 4 outputs"),
    (dict(target=np.array([0, 1, 2])), ValueError, r"target array must have shape \(2,\)"),
    (dict(target=np.array([0.0, 1.0])), TypeError, "target must be None, an int or an int array"),
]


@pytest.mark.parametrize("kw,err,match", PF_CASES)
def test_errors_pixel_flipping_parameters(kw, err, match):
    with pytest.raises(err, match=match):
        F.pixel_flipping(CNN, X, A, **kw)


@pytest.mark.parametrize("x,a,err,match", [
    (X, A[:, :, :4], ValueError, r"attributions must have the shape of x \(2, 2, 8, 8\) or \(2, 1, 8, 8\)"),
    (X, _nan(A), ValueError, r"attributions contain NaN or Inf \(first at index \(0, 0, 1, 1\)\)"),
    (X, A.tolist(), TypeError, "attributions must be a numpy array"),
    (X, A.astype(complex), TypeError, "attributions must be a real numeric array"),
    (X.tolist(), A, TypeError, "x must be a numpy array"),
    (X.astype(np.int64), A, TypeError, "x must be a float32 or float64 array"),
    (_nan(X), A, ValueError, "x contains NaN or Inf"),
    (X[:, :1], A[:, :1], ValueError, "x must have|expects input"),
])
def test_errors_inputs_and_attributions(x, a, err, match):
    with pytest.raises(err, match=match):
        F.pixel_flipping(CNN, x, a)


def test_errors_models_and_layouts():
    with pytest.raises(TypeError, match="net must be a relprop model"):
        F.pixel_flipping(object(), X, A)
    with pytest.raises(ValueError, match=r"tabular inputs \(N, F\) take patch=1"):
        F.pixel_flipping(MLP, XT, AT, patch=2)
    with pytest.raises(ValueError, match=r"expects images \(N, C, H, W\) or tabular inputs \(N, F\)"):
        F.pixel_flipping(ANY, np.zeros((2, 2, 3)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match=r"fill='blur' needs images"):
        F.pixel_flipping(MLP, XT, AT, fill="blur")


def test_errors_region_perturbation():
    with pytest.raises(ValueError, match="regions=5 exceeds the 4 patches of 4x4"):
        F.region_perturbation(CNN, X, A, patch=4, regions=5)
    with pytest.raises(ValueError, match="regions must be >= 1"):
        F.region_perturbation(CNN, X, A, patch=4, regions=0)
    with pytest.raises(ValueError, match="region_perturbation: patch=5 does not divide the input.s H x W = 8 x 8"):
        F.region_perturbation(CNN, X, A, patch=5, regions=1)
    with pytest.raises(ValueError, match="order must be one of"):
        F.region_perturbation(CNN, X, A, patch=4, regions=2, order="random")


@pytest.mark.parametrize("curves,err,match", [
    (np.zeros(4), ValueError, r"non-empty 2-D array \(N, steps \+ 1\), got shape \(4,\)"),
    (np.zeros((2, 0)), ValueError, "non-empty 2-D"),
    (np.array([[1.0, np.nan]]), ValueError, "curves contain NaN or Inf"),
    ([[1.0, 2.0]], TypeError, "curves must be a real numeric numpy array"),
])
def test_errors_aopc(curves, err, match):
    with pytest.raises(err, match=match):
        F.aopc(curves)


@pytest.mark.parametrize("kw,err,match", [
    (dict(n=129), ValueError, "n=129 is larger than the 128 features"),
    (dict(n=65), ValueError, r"n=65 is larger than the 64 features \(pixels\)"),
    (dict(n=0), ValueError, "n must be >= 1"),
    (dict(n=3, subsets=1), ValueError, "subsets must be >= 2"),
    (dict(n=3, features="channels"), ValueError, "features must be one of 'pixels', 'elements'"),
    (dict(n=3, seed=1.5), TypeError, "seed must be an int"),
    (dict(n=3, fill="noise"), ValueError, "fill must be one of"),
])
def test_errors_sensitivity_n(kw, err, match):
    if kw.get("n") == 129:
        kw["features"] = "elements"
    with pytest.raises(err, match=match):
        F.sensitivity_n(CNN, X, A, **kw)


def test_errors_sensitivity_n_shapes():
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'n'"):
        F.sensitivity_n(CNN, X, A)
    with pytest.raises(ValueError, match="features='elements' needs attributions shaped as x"):
        F.sensitivity_n(CNN, X, A[:, :1], n=3, features="elements")
    with pytest.raises(ValueError, match="features='pixels' needs images"):
        F.sensitivity_n(ANY, np.zeros((2, 2, 3)), np.zeros((2, 2, 3)), n=2)


def test_errors_completeness():
    with pytest.raises(ValueError, match="baseline must be None, a number, an array, 'black', 'white' or 'mean'"):
        F.completeness(CNN, X, A, baseline="uniform")
    with pytest.raises(ValueError, match=r"baseline array of shape \(5,\) broadcasts neither"):
        F.completeness(CNN, X, A, baseline=np.zeros(5))
    with pytest.raises(ValueError, match="attributions must have the shape of x"):
        F.completeness(MLP, XT, AT[:, :3])


def test_errors_input_invariance():
    with pytest.raises(ValueError, match="method must be a name in rp.METHODS or a callable"):
        F.input_invariance(CNN0, X, "grad")
    with pytest.raises(ValueError, match="shift must be a finite number"):
        F.input_invariance(CNN0, X, "gradient", shift=np.nan)
    with pytest.raises(ValueError, match=r"shift array of shape \(3,\) does not broadcast to one sample"):
        F.input_invariance(CNN0, X, "gradient", shift=np.zeros(3))
    with pytest.raises(ValueError, match="differs across the output positions of the first Conv2d"):
        F.input_invariance(CNN, X, "gradient", shift=-1.0)  # zero padding sees 0, not the shift
    with pytest.raises(TypeError, match="parameters \\['epsilon'\\] are for methods given by name"):
        F.input_invariance(CNN0, X, lambda n, x, t: x, epsilon=0.1)
    bn = rp.Sequential(rp.BatchNorm2d(np.ones(2), np.zeros(2), np.zeros(2), np.ones(2)), rp.Flatten(),
                       rp.Dense(RNG.normal(size=(3, 128))))
    with pytest.raises(ValueError, match="the input reaches BatchNorm2d"):
        F.input_invariance(bn, X, "gradient")
    d1, d2 = rp.Dense(RNG.normal(size=(2, 6))), rp.Dense(RNG.normal(size=(2, 6)))
    two = rp.Graph([rp.Node("a", d1, ("input",)), rp.Node("b", d2, ("input",)), rp.Node("s", rp.Add(), ("a", "b"))])
    with pytest.raises(ValueError, match="'input' feeds 2 layers"):
        F.input_invariance(two, XT, "gradient")
    with pytest.raises(ValueError, match="target 9 is out of range"):
        F.input_invariance(CNN0, X, "gradient", target=9)


def test_errors_continuity():
    with pytest.raises(ValueError, match="pairs must be one of 'consecutive', 'first', 'all', got 'next'"):
        F.continuity(CNN, X, "gradient", path=2, pairs="next")
    with pytest.raises(ValueError, match="input_norm must be 1 or 2, got 3"):
        F.continuity(CNN, X, "gradient", path=2, input_norm=3)
    with pytest.raises(ValueError, match="path must be <= 7, got 8"):
        F.continuity(CNN, X, "gradient", path=8)
    with pytest.raises(ValueError, match="path must be >= 1"):
        F.continuity(CNN, X, "gradient", path=0)
    with pytest.raises(ValueError, match=r"path=int translates images"):
        F.continuity(MLP, XT, "gradient", path=2)
    with pytest.raises(ValueError, match=r"path must have shape \(N, T, \.\.\.\) = \(2, T\) \+ \(2, 8, 8\)"):
        F.continuity(CNN, X, "gradient", path=X)
    with pytest.raises(ValueError, match="path contains NaN or Inf"):
        F.continuity(CNN, X, "gradient", path=_nan(X[:, None], (0, 0, 0, 1, 1)))
    with pytest.raises(TypeError, match="path must be an int, a numeric numpy array"):
        F.continuity(CNN, X, "gradient", path="translate")
    with pytest.raises(ValueError, match="method must be a name in rp.METHODS"):
        F.continuity(CNN, X, 3, path=2)
