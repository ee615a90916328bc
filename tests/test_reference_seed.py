"""Seed 000's solved problems P9.1-P9.4, exactly, in float64.

The XOR-type network of P9.1:  W1 = [[1,-1],[-1,1]], b1 = [-.5,-.5], ReLU, W2 = [[1,1],[-1,-1]], b2 = [-1,1],
Softmax.  The book numbers classes from 1; relprop from 0 (book c = 1 -> target 0, c = 2 -> target 1).
Every expected value below is the book's hand computation.  Each problem is checked against relprop and,
to show the independent reference is right, against ``reference_numpy`` too.
"""
import numpy as np
import pytest

import reference_numpy as ref

W1 = np.array([[1.0, -1.0], [-1.0, 1.0]])
B1 = np.array([-0.5, -0.5])
W2 = np.array([[1.0, 1.0], [-1.0, -1.0]])
B2 = np.array([-1.0, 1.0])
SPEC = [ref.dense(W1, B1), ref.relu(), ref.dense(W2, B2), ref.softmax()]

P_A = np.array([[0.0, 3.0]])    # book part i
P_B = np.array([[3.0, 3.0]])    # book part ii

EXACT = 1e-12


@pytest.fixture(scope="module")
def rp():
    import relprop
    return relprop


@pytest.fixture(scope="module")
def net(rp):
    return ref.to_relprop(SPEC, rp)


def _lib(rp, net):
    """Return attribute(x, method, target, **params) for relprop."""
    def attribute(x, method, target=None, **params):
        R = rp.attribute(net, x, method, target=target, **params)
        assert isinstance(R, np.ndarray)
        assert R.shape == x.shape and R.dtype == np.float64
        return R
    return attribute


def _ref_attribute(x, method, target=None, **params):
    if method == "gradient":
        return ref.gradient(SPEC, x, target)
    if method == "gradient_x_input":
        return ref.gradient_x_input(SPEC, x, target)
    if method == "saliency":
        return ref.saliency(SPEC, x, target)
    if method == "integrated_gradients":
        return ref.integrated_gradients(SPEC, x, target, **params)
    if method == "deeplift.rescale":
        return ref.deeplift_rescale(SPEC, x, target, **params)
    if method in ("lrp.z", "lrp.epsilon"):
        name = method.split(".")[1]
        return ref.lrp(SPEC, x, [ref.rule(name, **params)] * 2, target=target)
    raise ValueError(method)


@pytest.fixture(params=["relprop", "reference"])
def attribute(request):
    if request.param == "reference":
        return _ref_attribute
    rp = request.getfixturevalue("rp")
    return _lib(rp, request.getfixturevalue("net"))


# ---- forward pass (P9.1 i and ii) -------------------------------------------------------------------


def test_forward_matches_book(net):
    y = net(np.vstack([P_A, P_B]))
    assert y.shape == (2, 2)
    # a^2 = softmax([1.5, -1.5]) = [0.9526, 0.0474];  softmax([-1, 1]) = [0.1192, 0.8808]
    np.testing.assert_allclose(y[0], [0.9526, 0.0474], atol=5e-5)
    np.testing.assert_allclose(y[1], [0.1192, 0.8808], atol=5e-5)
    np.testing.assert_allclose(y[0], np.exp([1.5, -1.5]) / np.exp([1.5, -1.5]).sum(), rtol=1e-14)


def test_reference_forward_matches_book():
    np.testing.assert_allclose(ref.scores(SPEC, P_A)[0], [1.5, -1.5], rtol=0, atol=EXACT)
    np.testing.assert_allclose(ref.scores(SPEC, P_B)[0], [-1.0, 1.0], rtol=0, atol=EXACT)


# ---- P9.1: gradient and saliency contribution --------------------------------------------------------


def test_p9_1_gradient_at_0_3(attribute):
    # s^2 = e_1, s^1 = [0, 1], gradient (W^1)^T s^1 = [-1, 1]
    np.testing.assert_allclose(attribute(P_A, "gradient", target=0), [[-1.0, 1.0]], rtol=0, atol=EXACT)


def test_p9_1_gradient_x_input_at_0_3(attribute):
    # c^sal = [-1, 1] o [0, 3] = [0, 3]
    np.testing.assert_allclose(attribute(P_A, "gradient_x_input", target=0), [[0.0, 3.0]], rtol=0, atol=EXACT)


def test_p9_1_default_target_is_the_predicted_class(attribute):
    # target=None -> argmax: class 1 (book) = index 0 at [0,3]; class 2 = index 1 at [3,3]
    x = np.vstack([P_A, P_B])
    np.testing.assert_allclose(attribute(x, "gradient"), [[-1.0, 1.0], [0.0, 0.0]], rtol=0, atol=EXACT)


def test_p9_1_zero_gradient_at_3_3(attribute):
    # the trough: n^1 = [-0.5, -0.5], both ReLUs off, s^1 = 0
    np.testing.assert_array_equal(attribute(P_B, "gradient", target=1), [[0.0, 0.0]])
    np.testing.assert_array_equal(attribute(P_B, "gradient_x_input", target=1), [[0.0, 0.0]])
    np.testing.assert_array_equal(attribute(P_B, "saliency", target=1), [[0.0, 0.0]])


def test_p9_1_saliency_at_0_3(attribute):
    np.testing.assert_allclose(attribute(P_A, "saliency", target=0), [[1.0, 1.0]], rtol=0, atol=EXACT)


# ---- P9.2: integrated gradients, textbook uniform rule, T = 3 ------------------------------------------


def test_p9_2_ig_zero_baseline(attribute):
    # p^t = 0, [0,1.5], [0,3]; gradients 0, [-1,1], [-1,1]; mean [-2/3, 2/3] o [0,3] = [0, 2]
    R = attribute(P_A, "integrated_gradients", target=0, baseline=0.0, steps=3, scheme="uniform")
    np.testing.assert_allclose(R, [[0.0, 2.0]], rtol=0, atol=EXACT)


def test_p9_2_ig_baseline_across_the_boundary(attribute):
    # baseline [0,3]: p^t = [0,3], [1.5,3], [3,3]; gradients [1,-1], [1,-1], 0 (class 2); [2/3,-2/3] o [3,0]
    R = attribute(P_B, "integrated_gradients", target=1, baseline=np.array([[0.0, 3.0]]), steps=3,
                  scheme="uniform")
    np.testing.assert_allclose(R, [[2.0, 0.0]], rtol=0, atol=EXACT)


def test_p9_2_ig_baseline_as_1d_array_broadcasts(attribute):
    R = attribute(P_B, "integrated_gradients", target=1, baseline=np.array([0.0, 3.0]), steps=3,
                  scheme="uniform")
    np.testing.assert_allclose(R, [[2.0, 0.0]], rtol=0, atol=EXACT)


def test_p9_2_ig_zero_baseline_at_3_3_is_zero(attribute):
    # "if we use the origin as a baseline, the gradient will be zero along the entire line"
    R = attribute(P_B, "integrated_gradients", target=1, baseline=0.0, steps=3, scheme="uniform")
    np.testing.assert_allclose(R, [[0.0, 0.0]], rtol=0, atol=EXACT)


# ---- P9.3: LRP-0 / LRP-epsilon, bias not in the denominator (the book's form) -------------------------


def test_p9_3_lrp_z_at_0_3(attribute):
    # C(a^1|a^2) = [[0,0],[1,1]], c(a^2) = [1.5, 0] -> c(a^1) = [0, 1.5]; C(p|a^1) = [[0,0],[1,1]] -> [0, 1.5]
    R = attribute(P_A, "lrp.z", target=0, include_bias=False)
    np.testing.assert_allclose(R, [[0.0, 1.5]], rtol=0, atol=EXACT)


def test_p9_3_lrp_epsilon_at_0_3(attribute):
    # epsilon = 1e-6 shrinks each ratio by at most 1e-6 relative
    R = attribute(P_A, "lrp.epsilon", target=0, include_bias=False)
    np.testing.assert_allclose(R, [[0.0, 1.5]], rtol=0, atol=1e-5)
    assert R[0, 0] == 0.0


def test_p9_3_lrp_epsilon_tiny_at_0_3(attribute):
    R = attribute(P_A, "lrp.epsilon", target=0, include_bias=False, epsilon=1e-12)
    np.testing.assert_allclose(R, [[0.0, 1.5]], rtol=0, atol=1e-10)


def test_p9_3_lrp_epsilon_at_3_3_is_zero(attribute):
    # a^1 = 0: every numerator is zero, the epsilon keeps the denominators away from 0
    R = attribute(P_B, "lrp.epsilon", target=1, include_bias=False)
    assert np.all(np.isfinite(R))
    np.testing.assert_array_equal(R, [[0.0, 0.0]])


def test_p9_3_lrp_z_at_3_3_is_zero_not_nan(attribute):
    # LRP-0 hits 0/0 here; the contract takes the ratio as 0 where z == 0 exactly
    R = attribute(P_B, "lrp.z", target=1, include_bias=False)
    np.testing.assert_array_equal(R, [[0.0, 0.0]])


def test_p9_3_lrp_z_with_bias_equals_gradient_x_input(attribute):
    # with the bias in the denominator, LRP-0 on a ReLU net is Gradient*Input (Ancona et al. 2018, Prop. 3 i)
    R = attribute(P_A, "lrp.z", target=0, include_bias=True)
    np.testing.assert_allclose(R, [[0.0, 3.0]], rtol=0, atol=EXACT)


# ---- P9.4: DeepLIFT rescale ----------------------------------------------------------------------------


def test_p9_4_deeplift_zero_baseline(attribute):
    # q(Delta a^1) = [1, 1]; rescale [0/-3, 2.5/3]; q(Delta p) = [-0.8333, 0.8333]; o [0, 3] -> [0, 2.5]
    R = attribute(P_A, "deeplift.rescale", target=0, baseline=0.0)
    np.testing.assert_allclose(R, [[0.0, 2.5]], rtol=0, atol=EXACT)


def test_p9_4_deeplift_baseline_0_3(attribute):
    # q(Delta a^1) = [-1, -1]; rescale [0/3, -2.5/-3]; q(Delta p) = [0.8333, -0.8333]; o [3, 0] -> [2.5, 0]
    R = attribute(P_B, "deeplift.rescale", target=1, baseline=np.array([[0.0, 3.0]]))
    np.testing.assert_allclose(R, [[2.5, 0.0]], rtol=0, atol=EXACT)


def test_p9_4_deeplift_sums_to_score_difference(attribute):
    # summation to delta: 1.5 - (-1) = 2.5 and 1 - (-1) = 2 for the two classes at [0, 3] vs 0
    for c, delta in [(0, 2.5), (1, -2.5)]:
        R = attribute(P_A, "deeplift.rescale", target=c, baseline=0.0)
        assert abs(R.sum() - delta) < EXACT


def test_seed_batch_of_both_points(attribute):
    """Both book points in one batch, with per-sample targets and per-sample baselines."""
    x = np.vstack([P_A, P_B])
    base = np.array([[0.0, 0.0], [0.0, 3.0]])
    R = attribute(x, "deeplift.rescale", target=np.array([0, 1]), baseline=base)
    np.testing.assert_allclose(R, [[0.0, 2.5], [2.5, 0.0]], rtol=0, atol=EXACT)
    R = attribute(x, "integrated_gradients", target=np.array([0, 1]), baseline=base, steps=3, scheme="uniform")
    np.testing.assert_allclose(R, [[0.0, 2.0], [2.0, 0.0]], rtol=0, atol=EXACT)
