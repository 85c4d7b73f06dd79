"""Multitask heads and soft pseudo labels (Akiyama & Sato, DCASE 2019 task 2)."""
import numpy as np
import pandas as pd
import pytest
from keras import layers, ops

import architectures
import data
import learn
import losses
import sampling
from config import ConfigError

K, B = 5, 6


def test_multitask_heads_are_two_identical_fc_stacks(make_cfg):
    cfg = make_cfg('learn.multitask=true', 'learn.head=sigmoid')
    model = architectures.build('baseline', (32, 32, 1), K, cfg['learn'])
    assert set(model.output) == {'scores', 'embedding', 'verified_sigmoid',
                                 'unverified_sigmoid'}
    for head in ('verified', 'unverified'):
        fc1, fc2 = model.get_layer(f'{head}_fc1'), model.get_layer(f'{head}_fc2')
        assert fc1.units == fc2.units == 1024 and fc1.activation.__name__ == 'relu'
        out = model.get_layer(f'{head}_sigmoid_dense')
        assert out.units == K
    rates = sorted(l.rate for l in model.layers if isinstance(l, layers.Dropout)
                   and l.rate < 0.5)
    assert rates == [0.1, 0.1, 0.2, 0.2]
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 1)).astype('float32')
    out = model(x)
    np.testing.assert_allclose(out['scores'], out['verified_sigmoid'])
    assert not np.allclose(out['scores'], out['unverified_sigmoid'])


@pytest.mark.parametrize('model_name', ['baseline', 'DenSE'])
def test_multitask_fc_layers_are_plain_and_output_layers_as_the_single_heads(make_cfg,
                                                                             model_name):
    """The paper's FC 1024 layers carry no weight decay: only the output layers keep the
    single head's he_normal + L2 1e-3. Parameter count and L2 penalty against a head pair
    built here and numpy."""
    import keras
    single = architectures.build(model_name, (32, 32, 1), K,
                                 make_cfg('learn.head=sigmoid')['learn'])
    multi = architectures.build(model_name, (32, 32, 1), K,
                                make_cfg('learn.multitask=true', 'learn.head=sigmoid')['learn'])
    d = int(np.prod(single.get_layer('embedding').output.shape[1:]))  # features the heads read
    feats = keras.Input((d,))

    def head():
        h = keras.layers.Dropout(0.2)(keras.layers.Dense(1024, activation='relu')(feats))
        h = keras.layers.Dropout(0.1)(keras.layers.Dense(1024, activation='relu')(h))
        return keras.layers.Dense(K, activation='sigmoid', kernel_initializer='he_normal',
                                  kernel_regularizer=keras.regularizers.L2(1e-3))(h)
    pair = keras.Model(feats, [head(), head()])
    assert pair.count_params() == 2 * (d * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * K + K)
    # the trunk is the single-head model without its output layer (d * K + K parameters)
    assert multi.count_params() == single.count_params() - (d * K + K) + pair.count_params()

    one = single.get_layer('sigmoid_dense')
    for name in ('verified', 'unverified'):
        for i in (1, 2):
            fc = multi.get_layer(f'{name}_fc{i}')
            assert fc.kernel_regularizer is None and fc.bias_regularizer is None
            assert isinstance(fc.kernel_initializer, keras.initializers.GlorotUniform)
        out = multi.get_layer(f'{name}_sigmoid_dense')
        assert out.kernel_regularizer.get_config() == one.kernel_regularizer.get_config()
        assert type(out.kernel_initializer) is type(one.kernel_initializer)
    # The L2 penalty: 1e-3 * squared kernels of the two output layers (and of baseline's
    # embedding layer, its only other L2 layer; DenSE has none), nothing from the FC layers.
    l2 = ['verified_sigmoid_dense', 'unverified_sigmoid_dense']
    l2 += ['embedding'] if model_name == 'baseline' else []
    expected = sum(1e-3 * np.sum(np.square(multi.get_layer(n).get_weights()[0])) for n in l2)
    got = sum(float(ops.convert_to_numpy(loss)) for loss in multi.losses)
    assert got == pytest.approx(expected, rel=1e-5)


def _batch(rng, pseudo):
    onehot = np.eye(K, dtype='float32')
    batch = {'lam': rng.uniform(size=B).astype('float32'),
             'verified': np.array([1, 1, 1, 0, 0, 0], 'float32'),
             'verified_b': np.array([0, 1, 0, 1, 0, 0], 'float32'),
             'y_a': onehot[rng.integers(0, K, B)], 'y_b': onehot[rng.integers(0, K, B)]}
    if pseudo:
        batch['pseudo_a'] = rng.dirichlet(np.ones(K), B).astype('float32')
        batch['pseudo_b'] = rng.dirichlet(np.ones(K), B).astype('float32')
    return batch


@pytest.mark.parametrize('pseudo, batches', [(False, 'split'), (True, 'split'),
                                            (False, 'paper')])
def test_each_member_trains_its_own_head_and_the_pseudo_mse_weight(make_cfg, pseudo, batches):
    """split: the mean over the batch; paper (two streams of B / 2 here): the sum of each
    stream's mean, i.e. the sum over B / 2."""
    rng = np.random.default_rng(1)
    over = ['learn.multitask=true', 'loss.type=CCE', 'loss.multitask_weights=[1.0, 0.5]',
            f'learn.multitask_batches={batches}']
    if pseudo:
        over.append('learn.pseudo_labels=p.csv')
    loss = losses.get(make_cfg(*over))
    pv, pu = (rng.dirichlet(np.ones(K), B).astype('float32') for _ in range(2))
    y_pred = {'verified_softmax': pv, 'unverified_softmax': pu, 'scores': pv}
    batch = _batch(rng, pseudo)
    total, _, figures = loss(data.Batch(**batch), y_pred)

    def cce(y, p):
        return -(y * np.log(p)).sum(axis=1)
    expected = {'verified': 0.0, 'unverified': 0.0, 'pseudo': 0.0}
    for m, share in (('a', batch['lam']), ('b', 1 - batch['lam'])):
        v, y = batch['verified' if m == 'a' else 'verified_b'], batch[f'y_{m}']
        expected['verified'] += share * v * 1.0 * cce(y, pv)
        expected['unverified'] += share * (1 - v) * 0.5 * cce(y, pu)
        if pseudo:
            expected['pseudo'] += (share * (1 - v) * 20.0
                                   * ((batch[f'pseudo_{m}'] - pv) ** 2).mean(axis=1))
    size = B if batches == 'split' else B / 2
    for name in ('verified', 'unverified') + (('pseudo',) if pseudo else ()):
        assert float(figures[f'loss_{name}']) == pytest.approx(expected[name].sum() / size,
                                                               rel=1e-5)
    assert float(total) == pytest.approx(sum(np.sum(e) for e in expected.values()) / size,
                                         rel=1e-5)


def test_paper_streams_loss_is_bce_plus_bce_noisy_plus_20_semi_mse(make_cfg):
    """learn.multitask_batches paper with pseudo labels, against the released train_model2.py
    written in numpy: bce(verified head, curated stream) + bce(unverified head, noisy
    stream) + 20 * mse(verified head, mixed semi targets), each a mean over its stream;
    a semi member's target is its label (verified) or its pseudo label (unverified)."""
    rng = np.random.default_rng(3)
    n = 4  # examples per stream: [curated | noisy | semi]
    loss = losses.get(make_cfg('learn.multitask=true', 'learn.head=sigmoid', 'loss.type=bce',
                               'learn.pseudo_labels=p.csv'))
    assert loss.needs(make_cfg('learn.multitask=true', 'learn.pseudo_labels=p.csv')) == {
        'members', 'pseudo', 'semi'}
    y_a, y_b = ((rng.random((3 * n, K)) > 0.6).astype('float32') for _ in range(2))
    pseudo_a, pseudo_b = rng.uniform(size=(2, 3 * n, K)).astype('float32')
    ver_a = np.r_[np.ones(n), np.zeros(n), rng.integers(0, 2, n)].astype('float32')
    ver_b = np.r_[np.ones(n), np.zeros(n), rng.integers(0, 2, n)].astype('float32')
    lam = rng.uniform(size=3 * n).astype('float32')
    semi = np.r_[np.zeros(2 * n), np.ones(n)].astype('float32')
    pv, pu = rng.uniform(0.05, 0.95, (2, 3 * n, K)).astype('float32')
    batch = data.Batch(y_a=y_a, y_b=y_b, lam=lam, verified=ver_a, verified_b=ver_b,
                       pseudo_a=pseudo_a, pseudo_b=pseudo_b, semi=semi)
    total, _, figures = loss(batch, {'verified_sigmoid': pv, 'unverified_sigmoid': pu,
                                     'scores': pv})

    def bce(y, p):
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)
    mixed = lam[:, None] * y_a + (1 - lam[:, None]) * y_b
    cur, noisy, s = slice(0, n), slice(n, 2 * n), slice(2 * n, 3 * n)
    t_a = np.where(ver_a[:, None] == 1, y_a, pseudo_a)
    t_b = np.where(ver_b[:, None] == 1, y_b, pseudo_b)
    target = lam[:, None] * t_a + (1 - lam[:, None]) * t_b
    expected = {'verified': bce(mixed[cur], pv[cur]).mean(),
                'unverified': bce(mixed[noisy], pu[noisy]).mean(),
                'pseudo': 20.0 * ((target[s] - pv[s]) ** 2).mean()}
    for name, value in expected.items():
        assert float(figures[f'loss_{name}']) == pytest.approx(value, rel=1e-5), name
    assert float(total) == pytest.approx(sum(expected.values()), rel=1e-5)


def test_validation_loss_is_the_verified_heads(make_cfg):
    loss = losses.get(make_cfg('learn.multitask=true', 'learn.head=sigmoid', 'loss.type=bce'))
    rng = np.random.default_rng(2)
    y = (rng.random((B, K)) > 0.5).astype('float32')
    pv, pu = rng.uniform(0.05, 0.95, (2, B, K)).astype('float32')
    got = loss.per_example(y, {'verified_sigmoid': pv, 'unverified_sigmoid': pu, 'scores': pv})
    expected = -(y * np.log(pv) + (1 - y) * np.log(1 - pv)).mean(axis=1)
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, rtol=1e-5)


@pytest.mark.parametrize('overrides, message', [
    (['learn.multitask=true', 'ctrl.train_data=noisy'], 'ctrl.train_data all'),
    (['learn.multitask=true', 'ctrl.train_data=all', 'learn.mode=staged'], 'learn.mode'),
    (['learn.multitask=true', 'ctrl.train_data=all', 'loss.type=adaptive_lq'], 'loss.type'),
    (['learn.pseudo_labels=p.csv', 'ctrl.train_data=all'], 'set learn.multitask true'),
    (['learn.multitask=true', 'ctrl.train_data=all', 'learn.pseudo_labels=/no/p.csv'],
     'learn.pseudo_labels: no file /no/p.csv'),
])
def test_multitask_config_errors(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        learn.check(make_cfg('learn.mode=1', *overrides))


def test_multitask_weights_must_be_two_numbers(make_cfg):
    with pytest.raises(ConfigError, match='loss.multitask_weights'):
        make_cfg('loss.multitask_weights=[1.0]')


def test_sharpening_against_numpy():
    """Akiyama & Sato's sharpening (their code: scores ** T, normalised per row)."""
    p = np.array([[0.6, 0.3, 0.1, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2],
                  [0.05, 0.9, 0.02, 0.02, 0.01], [0.8, 0.2, 0.0, 0.0, 0.0]])
    for t in (1.0, 1.5, 2.0):
        q = p ** t
        np.testing.assert_allclose(data.sharpen(p, t), q / q.sum(axis=1, keepdims=True),
                                   rtol=1e-6)
    np.testing.assert_allclose(data.sharpen(p, 1.0), p, rtol=1e-6)  # T = 1: unchanged
    # T = 2 sharpens: every row not uniform gets a larger maximum; [0.8, 0.2] -> [16, 1] / 17
    sharp = data.sharpen(p, 2.0)
    assert (sharp.max(axis=1)[[0, 2, 3]] > p.max(axis=1)[[0, 2, 3]]).all()
    np.testing.assert_allclose(sharp[1], p[1], rtol=1e-6)
    np.testing.assert_allclose(sharp[3, :2], [16 / 17, 1 / 17], rtol=1e-6)
    assert sharp[0, 0] == pytest.approx(0.36 / (0.36 + 0.09 + 0.01), rel=1e-6)


def test_cross_pairs_mix_each_half_with_the_other():
    rng = np.random.default_rng(0)
    ver, unv = np.arange(0, 10), np.arange(100, 130)
    plan = sampling.cross_pairs(rng, sampling.plan_halves(rng, ver, unv, 8), alpha=1.0)
    assert np.isin(plan.idx[:, :4], ver).all() and np.isin(plan.partner[:, :4], unv).all()
    assert np.isin(plan.idx[:, 4:], unv).all() and np.isin(plan.partner[:, 4:], ver).all()
    assert ((plan.lam > 0) & (plan.lam < 1)).all()


@pytest.fixture
def pseudo_table():
    table = pd.DataFrame({'fname': ['a.wav', 'b.wav', 'c.wav'], 'verified': [1, 0, 0]})
    return table, ['dog', 'cat']


def test_pseudo_labels_are_read_for_the_given_rows(tmp_path, pseudo_table):
    table, classes = pseudo_table
    path = tmp_path / 'p.csv'
    pd.DataFrame({'fname': ['c.wav', 'b.wav', 'z.wav'], 'predicted': ['cat', 'dog', 'dog'],
                  'cat': [0.7, 0.1, 0.5], 'dog': [0.3, 0.9, 0.5]}).to_csv(path, index=False)
    scores = data.read_pseudo_labels(path, table, np.array([1, 2]), classes)
    np.testing.assert_allclose(scores, [[0, 0], [0.9, 0.1], [0.3, 0.7]])


@pytest.mark.parametrize('frame, message', [
    (None, 'no file'),
    (pd.DataFrame({'fname': ['b.wav', 'c.wav'], 'dog': [1, 0], 'bird': [0, 1]}),
     'missing: cat'),
    (pd.DataFrame({'fname': ['b.wav'], 'dog': [1], 'cat': [0]}), 'lacks 1 of the 2'),
])
def test_pseudo_label_file_errors(tmp_path, pseudo_table, frame, message):
    table, classes = pseudo_table
    path = tmp_path / 'p.csv'
    if frame is not None:
        frame.to_csv(path, index=False)
    with pytest.raises(ConfigError, match=f'learn.pseudo_labels.*{message}'):
        data.read_pseudo_labels(path, table, np.array([1, 2]), classes)


def test_predict_refuses_a_folder_without_a_trained_run(tmp_path, capsys):
    import predict
    assert predict.main([str(tmp_path), '--out', str(tmp_path / 'p.csv')]) == 2
    assert 'has no config.yaml' in capsys.readouterr().err
