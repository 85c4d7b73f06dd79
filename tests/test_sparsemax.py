"""heads.sparsemax, losses.sparsemax_loss / bce against numpy references written here: the
sort-based algorithm, an independent root search for the threshold, closed forms."""
import keras
import numpy as np
import pytest
import tensorflow as tf  # GradientTape and tf.function(jit_compile=True): what the step uses
from scipy.optimize import brentq

import heads
import losses


def _np(t):
    return np.asarray(keras.ops.convert_to_numpy(t), np.float64)


def _sparsemax_sort(z):
    """Martins & Astudillo Algorithm 1 on one vector: sort, support size, threshold."""
    zs = np.sort(z)[::-1]
    k = np.arange(1, z.size + 1)
    k_z = k[1 + k * zs > np.cumsum(zs)].max()
    tau = (zs[:k_z].sum() - 1) / k_z
    return np.maximum(z - tau, 0), tau


def _tau_root(z):
    """The threshold as the root of sum_j max(z_j - tau, 0) = 1, found by Brent's method
    (no sorting); the root lies in [max z - 1, max z]."""
    return brentq(lambda t: np.maximum(z - t, 0).sum() - 1, z.max() - 1, z.max(), xtol=1e-13)


def _logits(seed, shape, scale=2.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype('float32')


def _loss_ref(z, q):
    """He et al. Eq. 9 with tau from the root search."""
    tau = _tau_root(z)
    support = z > tau
    return -q @ z + 0.5 * np.sum(z[support] ** 2 - tau ** 2) + 0.5 * q @ q


def _multi_hot(seed, b, k):
    rng = np.random.default_rng(seed)
    y = (rng.random((b, k)) < 0.3).astype('float32')
    y[np.arange(b), rng.integers(0, k, b)] = 1  # at least one label
    return y


# ----------------------------------------------------------------------------- sparsemax

@pytest.mark.parametrize('scale', [0.1, 1.0, 5.0])
def test_sparsemax_matches_sort_algorithm_and_root_search(scale):
    z = _logits(0, (16, 9), scale).astype(np.float64)
    p = _np(heads.sparsemax(z.astype('float32')))
    for zi, pi in zip(z, p):
        ref, tau = _sparsemax_sort(zi)
        assert tau == pytest.approx(_tau_root(zi), abs=1e-9)
        np.testing.assert_allclose(pi, ref, atol=2e-6)
        np.testing.assert_allclose(pi, np.maximum(zi - _tau_root(zi), 0), atol=2e-6)


def test_sparsemax_is_a_sparse_order_keeping_distribution():
    z = _logits(1, (32, 10), 3.0)
    p = _np(heads.sparsemax(z))
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert np.mean(p == 0) > 0.3  # logits spread by 3: most classes fall below tau
    for zi, pi in zip(z, p):
        order = np.argsort(-zi)
        assert np.all(np.diff(pi[order]) <= 1e-7)  # same ranking as the logits
        soft = np.exp(zi - zi.max())
        support = pi > 0
        np.testing.assert_array_equal(np.argsort(-soft[support]), np.argsort(-pi[support]))
    np.testing.assert_allclose(_np(heads.sparsemax(z + 7.5)), p, atol=1e-5)  # shift-invariant


def test_sparsemax_closed_forms():
    # Two classes: sparsemax([t, 0]) = [clip((1 + t) / 2, 0, 1), 1 - that].
    t = np.linspace(-3, 3, 13, dtype='float32')
    p = _np(heads.sparsemax(np.stack([t, np.zeros_like(t)], axis=1)))
    first = np.clip((1 + t) / 2, 0, 1)
    np.testing.assert_allclose(p, np.stack([first, 1 - first], axis=1), atol=1e-6)
    # Equal logits: uniform; one logit ahead by more than 1: one-hot.
    np.testing.assert_allclose(_np(heads.sparsemax(np.zeros((1, 4), 'float32'))), 0.25)
    np.testing.assert_array_equal(_np(heads.sparsemax(np.array([[0.0, 3.0, 1.5]], 'float32'))),
                                  [[0, 1, 0]])


def test_sparsemax_works_on_the_last_axis_of_any_rank_and_in_float16():
    z = _logits(2, (3, 4, 6))
    p = _np(heads.sparsemax(z))
    flat = _np(heads.sparsemax(z.reshape(12, 6))).reshape(3, 4, 6)
    np.testing.assert_allclose(p, flat, atol=1e-7)
    half = heads.sparsemax(z.astype('float16'))
    assert keras.backend.standardize_dtype(half.dtype) == 'float32'
    np.testing.assert_allclose(_np(half), p, atol=2e-3)


def test_sparsemax_vector_jacobian_product():
    # d sparsemax / dz = diag(s) - s s^T / |S| (s: the support indicator), so the gradient
    # of v . sparsemax(z) is s * (v - sum_S v / |S|).
    z = tf.constant(_logits(3, (8, 7)))
    v = _logits(4, (8, 7))
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = tf.reduce_sum(v * heads.sparsemax(z))
    grad = _np(tape.gradient(out, z))
    s = (_np(heads.sparsemax(z)) > 0).astype(np.float64)
    expected = s * (v - (s * v).sum(axis=1, keepdims=True) / s.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(grad, expected, atol=1e-5)


# ----------------------------------------------------------------------------- loss

def test_sparsemax_loss_matches_eq9_and_is_nonnegative():
    z = _logits(5, (20, 8))
    y = _multi_hot(6, 20, 8)
    loss = _np(losses.sparsemax_loss(y, z))
    q = y / y.sum(axis=1, keepdims=True)
    ref = np.array([_loss_ref(zi.astype(np.float64), qi) for zi, qi in zip(z, q)])
    np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-5)
    assert loss.shape == (20,) and np.all(loss >= -1e-6) and np.all(ref > 0)
    # Fenchel-Young form of the same loss: (p - q).z - |p|^2 / 2 + |q|^2 / 2.
    p = np.maximum(z - np.array([[_tau_root(zi.astype(np.float64))] for zi in z]), 0)
    fy = np.sum((p - q) * z, axis=1) - 0.5 * np.sum(p * p, axis=1) + 0.5 * np.sum(q * q, axis=1)
    np.testing.assert_allclose(loss, fy, rtol=1e-5, atol=1e-5)


def test_sparsemax_loss_is_zero_when_target_is_the_sparsemax():
    # One-hot saturated: the true logit leads by more than 1, so sparsemax(z) = e_0.
    z = np.array([[4.0, 1.0, 0.5, -2.0], [0.3, 2.2, 0.1, 0.0]], 'float32')
    y = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], 'float32')
    np.testing.assert_allclose(_np(losses.sparsemax_loss(y, z)), 0.0, atol=1e-6)
    # Two labels and logits whose sparsemax is (1/2, 1/2, 0): zero too.
    z2 = np.array([[1.0, 1.0, -1.0]], 'float32')
    np.testing.assert_allclose(_np(losses.sparsemax_loss(np.array([[1, 1, 0]], 'float32'), z2)),
                               0.0, atol=1e-6)
    # Any other target costs something.
    assert _np(losses.sparsemax_loss(np.array([[0, 0, 1, 0]], 'float32'), z[:1]))[0] > 1


def test_sparsemax_loss_gradient_is_sparsemax_minus_q():
    z = tf.constant(_logits(7, (16, 6)))
    y = _multi_hot(8, 16, 6)
    with tf.GradientTape() as tape:
        tape.watch(z)
        total = tf.reduce_sum(losses.sparsemax_loss(y, z))
    grad = _np(tape.gradient(total, z))
    q = y / y.sum(axis=1, keepdims=True)
    p = np.stack([_sparsemax_sort(zi.astype(np.float64))[0] for zi in _np(z)])
    np.testing.assert_allclose(grad, p - q, atol=1e-5)


def test_sparsemax_loss_compiles_with_xla():
    z, y = _logits(9, (4, 5)), _multi_hot(10, 4, 5)
    compiled = tf.function(losses.sparsemax_loss, jit_compile=True)
    np.testing.assert_allclose(_np(compiled(y, z)), _np(losses.sparsemax_loss(y, z)), atol=1e-6)


# ----------------------------------------------------------------------------- bce

def test_bce_and_normalised_targets():
    rng = np.random.default_rng(11)
    p = rng.random((10, 5)).astype('float32')
    p[0, :2] = [0.0, 1.0]  # clipped, not log(0)
    y = _multi_hot(12, 10, 5)
    # The upper clip bound as float32 computes it (1 - 1e-7 rounds to 1 - 1.19e-7).
    high = float(np.float32(1) - np.float32(losses.P_MIN))
    pc = np.clip(p.astype(np.float64), losses.P_MIN, high)
    ref = -np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc), axis=1)
    np.testing.assert_allclose(_np(losses.bce(y, p)), ref, rtol=1e-4)
    assert np.all(np.isfinite(_np(losses.bce(1 - y, p))))
    q = _np(losses.normalise_targets(np.array([[1, 1, 0, 1], [0, 0, 0, 0]], 'float32')))
    np.testing.assert_allclose(q, [[1 / 3, 1 / 3, 0, 1 / 3], [0, 0, 0, 0]], atol=1e-7)
