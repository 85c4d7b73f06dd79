"""Heads (heads.HEADS), the named outputs of every model, their losses (losses.HeadLosses)
and the head x loss check.

Outputs and losses are compared with numpy computations written here.
"""
import keras
import numpy as np
import pytest
from keras import ops

import architectures
import config
import data
import heads
import learn
import losses
import trainer
from config import ConfigError

SHAPE = (16, 8, 1)  # the smallest patch the baseline takes (pools 16 x 4)


def _learn(*overrides):
    """A full learn section: the defaults with these learn.* overrides."""
    return config.load_config(None, [f'learn.{o}' for o in overrides])['learn']


def _np_sparsemax(z):
    """Projection onto the simplex by bisection on tau: sum(max(z - tau, 0)) = 1 (no sort,
    unlike the code under test)."""
    out = np.empty_like(z)
    for i, row in enumerate(z):
        lo, hi = row.min() - 1.0, row.max()
        for _ in range(200):
            tau = (lo + hi) / 2
            lo, hi = (tau, hi) if np.maximum(row - tau, 0).sum() > 1 else (lo, tau)
        out[i] = np.maximum(row - (lo + hi) / 2, 0)
    return out


def _np_sparsemax_loss(q, z):
    """Martins & Astudillo (ICML 2016), Eq. 18, with tau from the bisection above:
    -q.z + 1/2 sum_{j: z_j > tau} (z_j^2 - tau^2) + 1/2 |q|^2."""
    p = _np_sparsemax(z)
    tau = np.array([(row[pi > 0].sum() - 1) / (pi > 0).sum() for row, pi in zip(z, p)])
    support = z > tau[:, None]
    return (-(q * z).sum(1) + 0.5 * (support * (z ** 2 - tau[:, None] ** 2)).sum(1)
            + 0.5 * (q ** 2).sum(1))


def _np_bce(y, p):
    return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p), axis=1)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize('head', ['sigmoid', 'sparsemax', 'sigmoid_softmax',
                                  'sigmoid_sparsemax'])
def test_head_outputs_match_numpy(head):
    keras.utils.set_random_seed(0)
    model = architectures.build('baseline', SHAPE, 5, _learn(f'head={head}'))
    x = np.random.default_rng(1).normal(size=(4,) + SHAPE).astype('float32')
    out = model(x, training=False)
    # Inference: the dropout after the embedding is the identity.
    features = np.asarray(out['embedding'])
    branches = heads.HEADS[head]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)
             and layer.name != 'embedding']
    assert len(dense) == len(branches)  # one classifier per branch
    probs = []
    for activation in branches:
        layer = model.get_layer(f'{activation}_dense')
        w, b = (np.asarray(v) for v in layer.weights)
        assert layer.kernel_regularizer is not None  # the baseline's L2 on every branch
        z = features @ w + b
        p = {'sigmoid': _sigmoid, 'softmax': _softmax, 'sparsemax': _np_sparsemax}[
            activation](z)
        probs.append(p)
        if activation == 'sparsemax':
            np.testing.assert_allclose(out['sparsemax_logits'], z, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_allclose(out[activation], p, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out['scores'], np.mean(probs, axis=0), rtol=1e-4, atol=1e-6)


def test_smoke_softmax_head_ends_in_the_models_own_softmax_layer():
    model = architectures.build('baseline', SHAPE, 5, _learn('head=softmax'))
    assert model.layers[-1].get_config()['activation'] == 'softmax'


def test_softmax_head_scores_are_numpys_softmax_of_the_dense_layer_on_the_embedding():
    keras.utils.set_random_seed(3)
    model = architectures.build('baseline', SHAPE, 5, _learn('head=softmax'))
    out = model(np.random.default_rng(2).normal(size=(6,) + SHAPE).astype('float32'),
                training=False)
    w, b = (np.asarray(v, np.float64) for v in model.layers[-1].weights)
    expected = _softmax(np.asarray(out['embedding'], np.float64) @ w + b)
    np.testing.assert_allclose(out['scores'], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(out['softmax'], out['scores'])  # its one branch


# The named outputs every model returns: 'scores' [B, K], 'embedding' (the layer of that
# name: a vector, or vgg_gap's map) and each branch of the head, by the name its loss reads
# (sparsemax: its logits); under learn.multitask each head's branches prefixed by the head.
MODEL_INPUTS = {'baseline': (16, 8, 1), 'DenSE': (16, 8, 1), 'cnn_gru': (None, 16, 1),
                'vgg_gap': (None, 47, 1)}
BRANCH_NAMES = {'sigmoid': 'sigmoid', 'softmax': 'softmax', 'sparsemax': 'sparsemax_logits'}


@pytest.mark.parametrize('model_name', list(MODEL_INPUTS))
@pytest.mark.parametrize('head', list(heads.HEADS))
@pytest.mark.parametrize('multitask', [False, True])
def test_every_model_and_head_returns_scores_embedding_and_branches(model_name, head,
                                                                    multitask):
    model = architectures.build(model_name, MODEL_INPUTS[model_name], 5,
                                _learn(f'head={head}', f'multitask={multitask}'))
    branches = [BRANCH_NAMES[b] for b in heads.HEADS[head]]
    if multitask:
        branches = [f'{h}_{b}' for h in heads.MULTITASK_HEADS for b in branches]
    assert set(model.output) == {'scores', 'embedding', *branches}
    assert model.output['scores'].shape == (None, 5)
    assert model.output['embedding'] is model.get_layer('embedding').output
    embedding = {'baseline': (None, 64), 'DenSE': (None, 2 * 1 * 128),
                 'cnn_gru': (None, 256), 'vgg_gap': (None, None, 1, 512)}[model_name]
    assert model.output['embedding'].shape == embedding
    for name in branches:
        assert model.output[name].shape == (None, 5)


def test_multitask_head_branches_are_each_heads_outputs_by_their_own_names():
    model = architectures.build('baseline', SHAPE, 5, _learn('head=sigmoid_sparsemax',
                                                             'multitask=true'))
    for name in heads.MULTITASK_HEADS:
        got = heads.head_branches(model.output, name)
        assert got == {'sigmoid': model.get_layer(f'{name}_sigmoid').output,
                       'sparsemax_logits': model.get_layer(f'{name}_sparsemax_logits').output}


def test_head_outputs_are_float32_under_mixed_precision(mixed_float16):
    model = architectures.build('baseline', SHAPE, 5, _learn('head=sigmoid_sparsemax'))
    assert {k: v.dtype for k, v in model.output.items()} == {
        'scores': 'float32', 'sigmoid': 'float32', 'sparsemax_logits': 'float32',
        'embedding': 'float16'}  # the trunk's, in the compute dtype


@pytest.mark.parametrize('head', ['sigmoid', 'sigmoid_softmax', 'sigmoid_sparsemax',
                                  'sparsemax'])
def test_head_losses_sum_each_branch_loss(head):
    rng = np.random.default_rng(2)
    y = np.zeros((6, 5), np.float32)
    for i in range(6):
        y[i, rng.choice(5, size=1 + i % 2, replace=False)] = 1
    z1, z2 = rng.normal(size=(2, 6, 5)).astype(np.float32) * 2
    sig, q = _sigmoid(z1), y / y.sum(axis=1, keepdims=True)
    outputs = {'sigmoid': sig, 'softmax': _softmax(z2), 'sparsemax_logits': z2}
    expected = {'sigmoid': _np_bce(y, sig), 'softmax': -(q * np.log(_softmax(z2))).sum(1),
                'sparsemax': _np_sparsemax_loss(q, z2)}
    branches = heads.HEADS[head]
    y_pred = {BRANCH_NAMES[b]: ops.convert_to_tensor(outputs[BRANCH_NAMES[b]])
              for b in branches}
    loss = losses.HeadLosses({'learn': {'head': head}})
    got = np.asarray(loss.per_example(ops.convert_to_tensor(y), y_pred))
    np.testing.assert_allclose(got, sum(expected[b] for b in branches), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('head', ['sigmoid_softmax', 'sigmoid_sparsemax', 'sparsemax'])
def test_mixed_pairs_learn_the_mix_of_the_members_distributions(head):
    """Under mixup the distribution branch learns lam * a/|a| + (1 - lam) * b/|b| (a 2-label
    clip mixed with a 1-label clip at 0.5: 1/4, 1/4, 1/2), the sigmoid branch the mixed
    multi-hot target; both written here in numpy."""
    rng = np.random.default_rng(4)
    y_a = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 1]], np.float32)
    y_b = np.array([[0, 0, 1, 0], [0, 1, 1, 0], [0, 1, 1, 1]], np.float32)
    lam = np.array([0.5, 0.8, 0.3], np.float32)
    y = lam[:, None] * y_a + (1 - lam[:, None]) * y_b
    dist = (lam[:, None] * y_a / y_a.sum(1, keepdims=True)
            + (1 - lam[:, None]) * y_b / y_b.sum(1, keepdims=True))
    np.testing.assert_allclose(dist[0], [0.25, 0.25, 0.5, 0])
    z1, z2 = rng.normal(size=(2, 3, 4)).astype(np.float32)
    sig = _sigmoid(z1)
    expected = {'sigmoid': _np_bce(y, sig), 'softmax': -(dist * np.log(_softmax(z2))).sum(1),
                'sparsemax': _np_sparsemax_loss(dist, z2)}
    outputs = {'sigmoid': sig, 'softmax': _softmax(z2), 'sparsemax_logits': z2}
    branches = heads.HEADS[head]
    y_pred = {BRANCH_NAMES[b]: ops.convert_to_tensor(outputs[BRANCH_NAMES[b]])
              for b in branches}
    cfg = {'learn': {'head': head}}
    loss = losses.HeadLosses(cfg)
    assert losses.HeadLosses.needs(cfg) == {'members'}
    batch = data.Batch(y=ops.convert_to_tensor(y), y_a=ops.convert_to_tensor(y_a),
                       y_b=ops.convert_to_tensor(y_b), lam=ops.convert_to_tensor(lam))
    value, weights, _ = loss(batch, y_pred)
    per_example = sum(expected[b] for b in branches)
    np.testing.assert_allclose(float(value), per_example.mean(), rtol=1e-4)


def _cfg(head, loss_type, mode=1, prune_loss_type='lq_loss'):
    return {'learn': {'head': head, 'mode': mode, 'prune_loss_type': prune_loss_type},
            'loss': {'type': loss_type}}


@pytest.mark.parametrize('head', list(heads.HEADS))
@pytest.mark.parametrize('loss_type', list(losses.LOSSES))
def test_every_head_and_loss_pair_is_allowed_or_refused(head, loss_type):
    allowed = (loss_type == 'bce') != (head == 'softmax')
    if allowed:
        losses.check(_cfg(head, loss_type))
        return
    with pytest.raises(ConfigError) as err:
        losses.check(_cfg(head, loss_type))
    message = str(err.value)
    assert f"loss.type '{loss_type}'" in message and f"learn.head '{head}'" in message
    assert '\n' not in message


@pytest.mark.parametrize('head', [h for h in heads.HEADS if h != 'softmax'])
@pytest.mark.parametrize('prune', ['lq_loss', 'CCE'])
def test_pruning_scores_clips_only_with_softmax_probabilities(head, prune):
    """Mode 3 ranks clips by CCE or Lq of the head's scores: defined for softmax
    probabilities only, so a sigmoid / sparsemax / multi-activation head is refused."""
    with pytest.raises(ConfigError, match=f"learn.prune_loss_type '{prune}' .*learn.head "
                                          f"'{head}'"):
        learn.check_loss(_cfg(head, 'bce', mode=3, prune_loss_type=prune))
    learn.check_loss(_cfg('softmax', 'CCE', mode=3, prune_loss_type=prune))


def test_top1_precision_on_multi_hot_targets():
    y = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0.05, 0.85, 0.05, 0.05], [0.6, 0.4, 0, 0]],
                 np.float32)
    p = np.array([[0.1, 0.2, 0.6, 0.1], [0.5, 0.3, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1],
                  [0.2, 0.7, 0.1, 0.0]], np.float32)
    # Row 4 (mixed 0.6 / 0.4): the second class holds over half the largest target.
    expected = [1, 0, 1, 1]
    got = np.asarray(trainer.top1_precision(ops.convert_to_tensor(y),
                                            ops.convert_to_tensor(p)))
    np.testing.assert_array_equal(got, expected)
