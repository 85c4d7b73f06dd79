"""losses.py: values against numpy references written here, the epoch switch, SNN, registry."""
import keras
import numpy as np
import pytest
import tensorflow as tf  # tf.function(jit_compile=True) and GradientTape: what the step uses
from scipy.special import logsumexp

import config
import data
import losses
from config import ConfigError


def _config(*overrides):
    return config.load_config(None, list(overrides))


def _probs(rng, b, k):
    z = rng.normal(size=(b, k)) * 2
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).astype('float32')


def _onehot(labels, k):
    return np.eye(k, dtype='float32')[labels]


def _np(t):
    return np.asarray(keras.ops.convert_to_numpy(t))


def _lq_ref(y, p, q, target='max'):
    """(1 - s^q)/q with s = max_k y_k p_k (the original code's form) or sum_k y_k p_k."""
    prod = y.astype(np.float64) * p
    s = prod.max(axis=1) if target == 'max' else prod.sum(axis=1)
    return (1 - np.clip(s, losses.P_MIN, 1) ** q) / q


# ----------------------------------------------------------------------------- cce, lq

def test_cce_and_lq_match_numpy_with_soft_targets():
    rng = np.random.default_rng(0)
    p = _probs(rng, 8, 5)
    y = _probs(rng, 8, 5)  # soft targets (smoothed / mixed)
    cce_ref = -np.sum(y * np.log(np.clip(p.astype(np.float64), losses.P_MIN, 1)), axis=1)
    np.testing.assert_allclose(_np(losses.cce(y, p)), cce_ref, rtol=1e-5)
    for q in (0.3, 0.7):
        np.testing.assert_allclose(_np(losses.lq_loss(y, p, q)), _lq_ref(y, p, q), rtol=1e-5)
        np.testing.assert_allclose(_np(losses.lq_loss(y, p, q, target='dot')),
                                   _lq_ref(y, p, q, 'dot'), rtol=1e-5)


def test_lq_max_and_dot_differ_under_smoothing_and_mixup():
    """A label-smoothed target mixed with another: max picks the largest y_k p_k only."""
    p = np.array([[0.6, 0.3, 0.1]], 'float32')
    y = 0.7 * np.array([[0.9, 0.05, 0.05]]) + 0.3 * np.array([[0.05, 0.9, 0.05]])
    y = y.astype('float32')
    s_max, s_dot = max(y[0] * p[0]), float(np.dot(y[0], p[0]))
    assert s_max < s_dot
    np.testing.assert_allclose(_np(losses.lq_loss(y, p, 0.5)), (1 - s_max ** 0.5) / 0.5,
                               rtol=1e-5)
    np.testing.assert_allclose(_np(losses.lq_loss(y, p, 0.5, 'dot')), (1 - s_dot ** 0.5) / 0.5,
                               rtol=1e-5)


@pytest.mark.parametrize('loss_type', ['lq_loss', 'lq_lqperc_time_sudden', 'adaptive_lq'])
@pytest.mark.parametrize('target', ['max', 'dot'])
def test_every_lq_loss_follows_loss_lq_target(loss_type, target):
    rng = np.random.default_rng(3)
    p = _probs(rng, 6, 4)
    # Soft targets whose argmax is class 0 for every example: adaptive Lq's batch is all
    # one class, SNN = 1 and its q is q_min, the q the others use.
    y = 0.6 * _onehot(np.zeros(6, int), 4) + 0.4 * _probs(rng, 6, 4)
    x = rng.normal(size=(6, 3)).astype('float32')
    cfg = _config(f'loss.type={loss_type}', f'loss.lq_target={target}', 'loss.q_loss=0.4',
                  'loss.q_min=0.4')
    got = _np(losses.get(cfg).per_example(y, {'softmax': p}, x))
    np.testing.assert_allclose(got, _lq_ref(y, p, 0.4, target), rtol=1e-5)
    scorer = losses.per_example_by_name('lq_loss', 0.4, target)
    np.testing.assert_allclose(_np(scorer(y, p)), _lq_ref(y, p, 0.4, target), rtol=1e-5)


def test_lq_limits():
    rng = np.random.default_rng(1)
    p = _probs(rng, 8, 5)
    labels = rng.integers(0, 5, 8)
    y = _onehot(labels, 5)
    p_y = p[np.arange(8), labels].astype(np.float64)
    np.testing.assert_allclose(_np(losses.lq_loss(y, p, 1e-6)), -np.log(p_y), rtol=1e-4)
    assert np.all(np.isfinite(_np(losses.lq_loss(y, p, 1e-8))))
    np.testing.assert_allclose(_np(losses.lq_loss(y, p, 1.0)), 1 - p_y, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- time-dependent

SWITCH = 3


class _Masker:
    """A mode's loss masking that gives fixed weights (the masker's call signature)."""
    log_names = ()

    def __init__(self, weights):
        self.weights = weights

    def __call__(self, losses, verified):
        return self.weights, {}


def _time_loss(kind, **loss_keys):
    keys = {'q_loss': 0.7, 'q_loss2': 0.4, 'perc_loss2': 70, 'm_loss2': 0.9, **loss_keys}
    cfg = _config(f'loss.type=lq_{kind}_time_sudden', f'learn.stage1_epoch={SWITCH}',
                  *(f'loss.{k}={v}' for k, v in keys.items()))
    loss = losses.get(cfg)
    (cb,) = loss.callbacks()
    return loss, cb, cfg['loss']


def _threshold_ref(kind, l, lc):
    if kind == 'lqperc':
        return np.percentile(l, lc['perc_loss2'], method='lower')
    return lc['m_loss2'] * l.max()


@pytest.mark.parametrize('kind', ['lqperc', 'lqmax'])
@pytest.mark.parametrize('batch', [10, 11])  # 11: 0.7 * 10 must give index 7, as numpy
def test_time_dependent_before_and_after_switch(kind, batch):
    rng = np.random.default_rng(batch)
    loss, cb, lc = _time_loss(kind)
    p = _probs(rng, batch, 4)
    y = _onehot(rng.integers(0, 4, batch), 4)
    mask = (rng.random(batch) > 0.3).astype('float32')  # a mode's masker weights

    def masked(loss):  # the loss with a masker that gives these weights
        loss.masker = _Masker(mask)
        return loss

    cb.on_epoch_begin(SWITCH - 1)  # the last epoch of stage 1: Lq(q_loss), nothing dropped
    l = _np(loss.per_example(y, {'softmax': p}))
    np.testing.assert_allclose(l, _lq_ref(y, p, lc['q_loss']), rtol=1e-5)
    keep, figures = loss.keep(l)
    np.testing.assert_array_equal(_np(keep), np.ones(batch))
    assert _np(figures['discarded']) == 0
    np.testing.assert_allclose(_np(loss.reduce(l, keep)), l.mean(), rtol=1e-5)
    value, _, _ = masked(loss)(data.Batch(y=y, verified=np.zeros(batch, 'float32')),
                               {'softmax': p})
    np.testing.assert_allclose(_np(value), (mask * l).sum() / mask.sum(), rtol=1e-5)

    cb.on_epoch_begin(SWITCH)  # stage 2: Lq(q_loss2) and the batch's high losses dropped
    l = _np(loss.per_example(y, {'softmax': p}))
    np.testing.assert_allclose(l, _lq_ref(y, p, lc['q_loss2']), rtol=1e-5)
    kept = l <= _threshold_ref(kind, l, lc)
    assert 0 < kept.sum() < batch
    keep, figures = loss.keep(l)
    np.testing.assert_array_equal(_np(keep), kept)
    np.testing.assert_allclose(_np(figures['discarded']), 1 - kept.mean(), rtol=1e-6)
    value = _np(loss.reduce(l, keep))
    np.testing.assert_allclose(value, l[kept].sum() / kept.sum(), rtol=1e-5)
    assert not np.isclose(value, l[kept].sum() / 64)
    # the masker's weights multiply the keep mask
    value, weights, figures = masked(loss)(
        data.Batch(y=y, verified=np.zeros(batch, 'float32')), {'softmax': p})
    np.testing.assert_array_equal(_np(weights), mask * kept)
    both = mask * kept
    np.testing.assert_allclose(_np(value), (both * l).sum() / both.sum(), rtol=1e-5)
    np.testing.assert_allclose(_np(figures['discarded']), 1 - kept.mean(), rtol=1e-6)


def test_percentile_threshold_on_known_losses():
    loss, cb, _ = _time_loss('lqperc', perc_loss2=50)
    cb.on_epoch_begin(SWITCH + 5)
    l = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2], 'float32')  # lower 50th percentile: 0.3
    keep, figures = loss.keep(l)
    np.testing.assert_array_equal(_np(keep), [0, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(_np(loss.reduce(l, keep)), (0.1 + 0.3 + 0.2) / 3, rtol=1e-6)
    np.testing.assert_allclose(_np(figures['discarded']), 0.5)


@pytest.mark.parametrize('kind', ['lqperc', 'lqmax'])
def test_time_dependent_switch_inside_xla_without_retracing(kind):
    rng = np.random.default_rng(5)
    loss, cb, lc = _time_loss(kind)
    p = _probs(rng, 10, 4)
    y = _onehot(rng.integers(0, 4, 10), 4)
    traces = []

    @tf.function(jit_compile=True)
    def step(y, p):
        traces.append(1)
        value, _, figures = loss(data.Batch(y=y), {'softmax': p})
        return value, figures

    cb.on_epoch_begin(0)
    value, figures = step(y, p)
    np.testing.assert_allclose(_np(value), _lq_ref(y, p, lc['q_loss']).mean(), rtol=1e-5)
    assert _np(figures['discarded']) == 0
    cb.on_epoch_begin(SWITCH)
    value, figures = step(y, p)
    l = _lq_ref(y, p, lc['q_loss2'])
    kept = l <= _threshold_ref(kind, l, lc)
    np.testing.assert_allclose(_np(value), l[kept].sum() / kept.sum(), rtol=1e-5)
    np.testing.assert_allclose(_np(figures['discarded']), 1 - kept.mean(), rtol=1e-6)
    assert len(traces) == 1


def test_epoch_counter_gets_the_absolute_epoch_from_fit():
    loss, cb, _ = _time_loss('lqmax')
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seen.append(int(_np(loss.epoch))))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer='sgd', loss='mse')
    x = np.zeros((4, 2), 'float32')
    model.fit(x, x[:, :1], epochs=5, initial_epoch=3, callbacks=[cb, probe], verbose=0)
    assert seen == [3, 4]


# ----------------------------------------------------------------------------- SNN

def _pairs(labels):
    b = len(labels)
    return [[j for j in range(b) if j != i] for i in range(b)]


def _snn_terms(x, labels, t):
    """Each example's ratio written out with exp, one pair at a time; 0 without partner."""
    x = x.reshape(len(x), -1).astype(np.float64)
    terms = []
    for i, others in enumerate(_pairs(labels)):
        w = {j: np.exp(-np.sum((x[i] - x[j]) ** 2) / t) for j in others}
        same = [j for j in others if labels[j] == labels[i]]
        terms.append(sum(w[j] for j in same) / sum(w.values()) if same else 0.0)
    return np.array(terms)


def _snn_naive(x, labels, t):
    return _snn_terms(x, labels, t).mean()


def _snn_log_space(x, labels, t):
    x = x.reshape(len(x), -1).astype(np.float64)
    total = 0.0
    for i, others in enumerate(_pairs(labels)):
        logits = {j: -np.sum((x[i] - x[j]) ** 2) / t for j in others}
        same = [logits[j] for j in others if labels[j] == labels[i]]
        if same:
            total += np.exp(logsumexp(same) - logsumexp(list(logits.values())))
    return total / len(x)


def _snn(x, labels, t):
    return float(_np(losses.snn_ratio(x.astype('float32'), np.asarray(labels), t)))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_snn_matches_naive_double_loop(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(7, 2, 3))  # flattened to [7, 6]
    labels = rng.integers(0, 3, 7)
    np.testing.assert_allclose(_snn(x, labels, 4.0), _snn_naive(x, labels, 4.0), rtol=1e-5)


def test_snn_hand_made_batch():
    # Two tight clusters, labelled by cluster except one example in the wrong one.
    x = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    labels = [0, 0, 1, 1, 1, 0]
    np.testing.assert_allclose(_snn(x, labels, 1.0), _snn_naive(x, labels, 1.0), rtol=1e-5)
    clean = [0, 0, 0, 1, 1, 1]
    assert _snn(x, clean, 1.0) > _snn(x, labels, 1.0)  # noise lowers SNN, raises q_a


def test_snn_example_without_partner_contributes_zero():
    x = np.random.default_rng(3).normal(size=(5, 4))
    labels = [0, 0, 1, 1, 2]
    terms = _snn_terms(x, labels, 2.0)
    # the four paired examples' ratios, divided by the five of the batch
    np.testing.assert_allclose(_snn(x, labels, 2.0), terms[:4].sum() / 5, rtol=1e-5)


def test_snn_small_temperature_does_not_underflow():
    x = np.random.default_rng(4).normal(size=(6, 10)) * 10
    labels = [0, 0, 1, 1, 2, 2]
    t = 1e-2  # distances of hundreds: every exp(-d2 / t) is 0 in float64
    with np.errstate(invalid='ignore'):
        assert np.isnan(_snn_naive(x, labels, t))
    value = _snn(x, labels, t)
    assert np.isfinite(value)
    np.testing.assert_allclose(value, _snn_log_space(x, labels, t), rtol=1e-5, atol=1e-6)


def test_snn_single_example_is_zero():
    assert _snn(np.ones((1, 3)), [2], 1.0) == 0.0


# ----------------------------------------------------------------------------- adaptive Lq

def _adaptive(*overrides):
    cfg = _config('loss.type=adaptive_lq', *overrides)
    return losses.get(cfg), cfg['loss']


def test_adaptive_q_is_one_minus_snn_clipped():
    rng = np.random.default_rng(6)
    loss, lc = _adaptive('loss.snn_temperature=8.0')
    assert not loss.needs_embedding
    labels = rng.integers(0, 3, 9)
    y, p = _onehot(labels, 3), _probs(rng, 9, 3)
    x = rng.normal(size=(9, 2, 2)).astype('float32')
    q = np.clip(1 - _snn_naive(x, labels, 8.0), lc['q_min'], 1)
    np.testing.assert_allclose(_np(loss.per_example(y, {'softmax': p}, x)), _lq_ref(y, p, q),
                               rtol=1e-4)
    value, _, figures = loss(data.Batch(y=y, x_clean=x, labels=labels), {'softmax': p})
    np.testing.assert_allclose(_np(figures['q_a']), q, rtol=1e-5)
    np.testing.assert_allclose(_np(value), _lq_ref(y, p, q).mean(), rtol=1e-4)


def test_adaptive_all_same_class_gives_q_min():
    rng = np.random.default_rng(7)
    loss, lc = _adaptive('loss.q_min=0.05')
    y, p = _onehot(np.ones(6, int), 3), _probs(rng, 6, 3)
    l = loss.per_example(y, {'softmax': p}, rng.normal(size=(6, 5)).astype('float32'))
    _, figures = loss.keep(l)
    np.testing.assert_allclose(_np(figures['q_a']), 0.05, rtol=1e-6)  # 1 - SNN = 0 -> q_min
    np.testing.assert_allclose(_np(l), _lq_ref(y, p, 0.05), rtol=1e-4)


def test_adaptive_single_example_and_float16_inputs():
    rng = np.random.default_rng(8)
    loss, _ = _adaptive()
    y, p = _onehot([1], 3), _probs(rng, 1, 3)
    l = loss.per_example(y, {'softmax': p}, rng.normal(size=(1, 4)).astype('float16'))
    assert l.dtype == 'float32'
    np.testing.assert_allclose(_np(l), _lq_ref(y, p, 1.0), rtol=1e-5)  # SNN 0 -> q 1


def test_adaptive_embedding_space_uses_emb():
    rng = np.random.default_rng(9)
    loss, lc = _adaptive('loss.snn_space=embedding', 'loss.snn_temperature=3.0')
    assert loss.needs_embedding
    labels = rng.integers(0, 2, 6)
    y, p, emb = _onehot(labels, 2), _probs(rng, 6, 2), rng.normal(size=(6, 4))
    q = np.clip(1 - _snn_naive(emb, labels, 3.0), lc['q_min'], 1)
    l = loss.per_example(y, {'softmax': p}, None, emb.astype('float32'))
    np.testing.assert_allclose(_np(l), _lq_ref(y, p, q), rtol=1e-4)


def test_adaptive_q_carries_no_gradient_to_x():
    rng = np.random.default_rng(10)
    loss, _ = _adaptive('loss.snn_temperature=5.0')
    labels = rng.integers(0, 3, 8)
    y, p = _onehot(labels, 3), tf.constant(_probs(rng, 8, 3))
    x = tf.Variable(rng.normal(size=(8, 4)).astype('float32'))
    with tf.GradientTape(persistent=True) as tape:
        snn = losses.snn_ratio(x, labels, 5.0)
        total = tf.reduce_sum(loss.per_example(y, {'softmax': p}, x))
    assert tape.gradient(snn, x) is not None  # SNN itself does depend on x ...
    assert tape.gradient(total, x) is None    # ... but the loss only through a constant q


def test_adaptive_inside_xla_reports_the_batch_q():
    rng = np.random.default_rng(11)
    loss, lc = _adaptive('loss.snn_temperature=6.0')

    @tf.function(jit_compile=True)
    def step(y, p, x, labels):
        value, _, figures = loss(data.Batch(y=y, x_clean=x, labels=labels), {'softmax': p})
        return value, figures

    for b in (8, 5):
        labels = rng.integers(0, 2, b)
        y, p = _onehot(labels, 2), _probs(rng, b, 2)
        x = rng.normal(size=(b, 3)).astype('float32')
        q = np.clip(1 - _snn_naive(x, labels, 6.0), lc['q_min'], 1)
        value, figures = step(y, p, x, labels)
        np.testing.assert_allclose(_np(figures['q_a']), q, rtol=1e-5)
        np.testing.assert_allclose(_np(value), _lq_ref(y, p, q).mean(), rtol=1e-4)


# ----------------------------------------------------------------------------- registry

@pytest.mark.parametrize('name, cls', [
    ('lq_lqmax_time_sudden', losses.LqMaxTimeSudden),
    ('lq_lqperc_time_sudden', losses.LqPercTimeSudden),
    ('adaptive_lq', losses.AdaptiveLq),
])
def test_smoke_registry_builds_each_new_loss(name, cls):
    """Smoke test only (the registry against itself); the check is the test below."""
    loss = losses.get(_config(f'loss.type={name}'))
    assert isinstance(loss, cls)
    assert loss.log_names


def test_each_registered_name_computes_its_formula():
    """Every loss.type, built by name, against its formula written here in numpy: CCE
    -sum y log p; Lq (1 - max(y p)^q) / q; the time-dependent losses before their switch
    Lq with q_loss; adaptive Lq on a batch of one class (SNN 1) Lq with q_min; bce on a
    sigmoid head the mean over classes of the binary cross-entropy."""
    rng = np.random.default_rng(8)
    p = _probs(rng, 6, 4)
    y = _onehot(np.zeros(6, int), 4)
    x = rng.normal(size=(6, 3)).astype('float32')
    sig = rng.uniform(0.05, 0.95, (6, 4)).astype('float32')
    lq = _lq_ref(y, p, 0.3)
    expected = {'CCE': -np.log(p[:, 0]), 'lq_loss': lq, 'lq_lqmax_time_sudden': lq,
                'lq_lqperc_time_sudden': lq, 'adaptive_lq': lq,
                'bce': -(y * np.log(sig) + (1 - y) * np.log(1 - sig)).mean(axis=1)}
    assert set(expected) == set(losses.LOSSES)
    for name, want in expected.items():
        head = 'sigmoid' if name == 'bce' else 'softmax'
        cfg = _config(f'loss.type={name}', f'learn.head={head}', 'loss.q_loss=0.3',
                      'loss.q_min=0.3')
        outputs = {'sigmoid': sig} if name == 'bce' else {'softmax': p}
        got = _np(losses.get(cfg).per_example(y, outputs, x))
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        losses.get(_config('loss.type=lq_bogus'))
    message = str(err.value)
    assert 'loss.type' in message and 'lq_bogus' in message
    for name in losses.LOSSES:
        assert name in message


def test_snn_q_is_one_minus_the_ratio():
    rng = np.random.default_rng(12)
    x, labels = rng.normal(size=(9, 5)).astype('float32'), rng.integers(0, 3, 9)
    expected = 1.0 - _snn_naive(x, labels, 7.0)
    assert float(_np(losses.snn_q(x, labels, 7.0))) == pytest.approx(expected, rel=1e-5)
    same = np.zeros(6, int)  # all one class: SNN = 1, so q = 0 before the q_min clip
    assert float(_np(losses.snn_q(x[:6], same, 7.0))) == pytest.approx(0.0, abs=1e-6)
