"""architectures.py: the original networks rebuilt here, parameter counts by hand, dtypes,
errors, learning."""
import keras
import numpy as np
import pytest

import architectures
import config
from config import ConfigError

SHAPE = (100, 96, 1)  # patch_len x n_mels x 1, the paper's patches
LEARN = config.load_config(None, [])['learn']  # the defaults: softmax head, 3 DenSE modules


def _of_type(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


def _conv(k, cin, cout):
    return k * k * cin * cout + cout


def _bn(channels):
    return 4 * channels  # gamma, beta, moving mean, moving variance


def test_baseline_scores_are_the_softmax_of_its_last_dense_layer():
    """In inference the dropout after the embedding is the identity: the scores are numpy's
    softmax of the output layer's kernel and bias applied to the embedding."""
    model = architectures.build('baseline', SHAPE, 20, LEARN)
    assert model.name == 'baseline'
    assert model.output['scores'].shape == (None, 20)
    x = np.random.default_rng(0).normal(size=(3,) + SHAPE).astype('float32')
    out = model(x, training=False)
    w, b = (np.asarray(v, np.float64) for v in _of_type(model, keras.layers.Dense)[-1].weights)
    z = np.asarray(out['embedding'], np.float64) @ w + b
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out['scores'], expected, rtol=1e-4, atol=1e-6)


# Reference networks written out here from the lists of issue 7 (the original code's
# get_model_baseline and get_model_DenSE), independently of architectures.py.

def _reference_baseline(shape, n_classes):
    L, he, l2 = keras.layers, 'he_normal', keras.regularizers.L2(1e-3)
    x = inp = keras.Input(shape)
    for filters, pool in [(24, True), (48, True), (48, False)]:
        x = L.Activation('relu')(L.BatchNormalization()(x))   # pre-activation
        x = L.Conv2D(filters, 5, padding='same', kernel_initializer=he)(x)
        x = L.Activation('relu')(L.BatchNormalization()(x))
        if pool:
            x = L.MaxPooling2D((4, 2))(x)
    x = L.Dropout(0.5)(L.Flatten()(x))
    x = L.Dense(64, activation='relu', kernel_initializer=he, kernel_regularizer=l2)(x)
    x = L.Dropout(0.5)(x)
    out = L.Dense(n_classes, activation='softmax', kernel_initializer=he,
                  kernel_regularizer=l2)(x)
    return keras.Model(inp, out)


def _reference_dense_se(shape, n_classes, n_modules):
    L = keras.layers
    inp = keras.Input(shape)
    x = L.BatchNormalization()(inp)
    x = L.Concatenate()([x, L.Conv2D(15, 3, padding='same')(x)])
    for i in range(n_modules):
        f = min(512, 16 * 2 ** i)
        y = L.Activation('relu')(L.BatchNormalization()(x))
        y = L.Conv2D(f, 1, padding='same')(y)
        y = L.Activation('relu')(L.BatchNormalization()(y))
        y = L.Conv2D(f, 3, padding='same')(y)
        se = L.GlobalAveragePooling2D(keepdims=True)(y)
        se = L.Dense(f, activation='sigmoid')(L.Dense(f // 2, activation='relu')(se))
        x = L.MaxPooling2D(2, padding='same')(L.Concatenate()([L.Multiply()([y, se]), x]))
    x = L.Flatten()(L.Activation('relu')(L.BatchNormalization()(x)))
    out = L.Dense(n_classes, activation='softmax', kernel_initializer='he_normal',
                  kernel_regularizer=keras.regularizers.L2(1e-3))(L.Dropout(0.5)(x))
    return keras.Model(inp, out)


def _describe(model):
    """Per layer: type, parameter count, output shape and the settings that matter."""
    rows = []
    for layer in model.layers:
        c = layer.get_config()
        keys = ('filters', 'kernel_size', 'padding', 'pool_size', 'units', 'activation',
                'rate', 'axis')
        row = [type(layer).__name__, layer.count_params(), tuple(layer.output.shape)]
        row += [(k, c[k]) for k in keys if k in c]
        if 'kernel_initializer' in c:
            row.append(c['kernel_initializer']['class_name'])
            reg = c.get('kernel_regularizer')
            row.append(None if reg is None else reg['config'])
        rows.append(row)
    return rows


@pytest.mark.parametrize('shape, n_classes', [(SHAPE, 20), ((64, 40, 1), 7)])
def test_baseline_is_the_original_network(shape, n_classes):
    model = architectures.build('baseline', shape, n_classes, LEARN)
    reference = _reference_baseline(shape, n_classes)
    assert _describe(model) == _describe(reference)
    assert model.count_params() == reference.count_params()
    assert model.get_layer('embedding').units == 64


def test_baseline_parameter_count_by_hand():
    flat = (100 // 4 // 4) * (96 // 2 // 2) * 48  # 6 frames x 24 bands x 48 channels
    expected = (_bn(1) + _conv(5, 1, 24) + _bn(24)
                + _bn(24) + _conv(5, 24, 48) + _bn(48)
                + _bn(48) + _conv(5, 48, 48) + _bn(48)
                + flat * 64 + 64 + 64 * 20 + 20)
    assert architectures.build('baseline', SHAPE, 20, LEARN).count_params() == expected


@pytest.mark.parametrize('n_modules, shape', [(3, SHAPE), (2, (30, 20, 1)), (7, (9, 5, 1))])
def test_dense_se_is_the_original_network(n_modules, shape):
    model = architectures.build('DenSE', shape, 20, {**LEARN, 'densenet_modules': n_modules})
    reference = _reference_dense_se(shape, 20, n_modules)
    assert _describe(model) == _describe(reference)
    assert model.count_params() == reference.count_params()


def test_dense_se_shapes():
    model = architectures.build('DenSE', SHAPE, 20, LEARN)
    assert model.name == 'DenSE'
    assert model.output['scores'].shape == (None, 20)
    channels = 16 + 16 + 32 + 64  # input + stem, then each module's growth
    # 'same' pooling rounds up: 100 -> 50 -> 25 -> 13, 96 -> 48 -> 24 -> 12.
    assert model.get_layer('embedding').output.shape == (None, 13 * 12 * channels)
    assert [c.output.shape[-1] for c in _of_type(model, keras.layers.Concatenate)] == [
        16, 32, 64, 128]
    se_hidden = [d.units for d in _of_type(model, keras.layers.Dense)][:-1]
    assert se_hidden == [8, 16, 16, 32, 32, 64]  # filters // 2 then filters, per module


def test_dense_se_filters_capped_at_512():
    model = architectures.build('DenSE', (256, 256, 1), 4, {**LEARN, 'densenet_modules': 7})
    widths = [c.filters for c in _of_type(model, keras.layers.Conv2D)][1::2]
    assert widths == [16, 32, 64, 128, 256, 512, 512]


@pytest.mark.parametrize('name, width', [('baseline', 64), ('DenSE', 13 * 12 * 128)])
def test_embedding_output_is_the_embedding_layer(name, width):
    model = architectures.build(name, SHAPE, 20, LEARN)
    assert model.output['embedding'] is model.get_layer('embedding').output
    out = model(np.zeros((2,) + SHAPE, 'float32'), training=False)
    assert out['scores'].shape == (2, 20) and out['embedding'].shape == (2, width)


# The tagging models (cnn_gru, vgg_gap) need other inputs: test_architectures_tagging.py.
@pytest.mark.parametrize('name', ['baseline', 'DenSE'])
def test_output_float32_under_mixed_precision(name, mixed_float16):
    model = architectures.build(name, SHAPE, 20, LEARN)
    conv = _of_type(model, keras.layers.Conv2D)[0]
    assert conv.compute_dtype == 'float16'  # the policy took effect
    assert model.output['scores'].dtype == 'float32'
    probs = model(np.zeros((2,) + SHAPE, 'float32'), training=False)['scores']
    assert keras.backend.standardize_dtype(probs.dtype) == 'float32'


def test_unknown_model():
    with pytest.raises(ConfigError, match=r"learn.model 'resnet' is unknown; valid: "
                                          r"baseline, DenSE"):
        architectures.build('resnet', SHAPE, 20, LEARN)


def test_baseline_input_too_small():
    with pytest.raises(ConfigError, match='extract.patch_len'):
        architectures.build('baseline', (15, 96, 1), 20, LEARN)  # 15 // 16 = 0 frames


def test_baseline_learns_two_blobs():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    shape = (20, 16, 1)
    centres = rng.normal(size=(2,) + shape)
    labels = rng.integers(0, 2, size=256)
    x = (centres[labels] + 0.5 * rng.normal(size=(256,) + shape)).astype('float32')
    y = keras.utils.to_categorical(labels, 2)
    built = architectures.build('baseline', shape, 2, LEARN)
    model = keras.Model(built.input, built.output['scores'])  # plain Keras: one output
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss='categorical_crossentropy',
                  metrics=['accuracy'])
    history = model.fit(x, y, batch_size=32, epochs=5, verbose=0)
    assert history.history['accuracy'][-1] > 0.9


def _all_batch_norms(model):
    """Every BatchNormalization layer, nested models included (walked here, not by the
    code under test)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += _all_batch_norms(layer)
    return found


@pytest.mark.parametrize('name, shape, more', [
    ('baseline', SHAPE, {}), ('DenSE', SHAPE, {}), ('cnn_gru', (None, 64, 1), {}),
    ('vgg_gap', (None, 64, 1), {}), ('vgg_gap', (None, 64, 1), {'multitask': True}),
    ('cnn_gru', (None, 64, 1), {'head': 'sigmoid_sparsemax'})])
def test_every_batch_norm_takes_learn_bn_momentum_and_epsilon(name, shape, more):
    model = architectures.build(name, shape, 5, {**LEARN, **more, 'bn_momentum': 0.9,
                                                 'bn_epsilon': 1e-4})
    norms = _all_batch_norms(model)
    assert norms and all((bn.momentum, bn.epsilon) == (0.9, 1e-4) for bn in norms)
    default = _all_batch_norms(architectures.build(name, shape, 5, {**LEARN, **more}))
    assert len(default) == len(norms)
    assert all((bn.momentum, bn.epsilon) == (0.99, 1e-3) for bn in default)  # Keras's


def test_batch_norm_constants_act_in_training_and_inference():
    """DenSE's first layer normalises the input itself: after one training call its
    moving statistics are momentum * initial + (1 - momentum) * the batch's (numpy), and
    inference divides by sqrt(moving variance + epsilon)."""
    model = architectures.build('DenSE', SHAPE, 4, {**LEARN, 'bn_momentum': 0.9,
                                                    'bn_epsilon': 1e-4})
    bn = _all_batch_norms(model)[0]
    x = np.random.default_rng(0).normal(2.0, 3.0, (3,) + SHAPE).astype('float32')
    model(x, training=True)
    mean, var = x.mean(), x.var()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), [0.1 * mean],
                               rtol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance),
                               [0.9 + 0.1 * var], rtol=1e-4)
    probe = keras.Model(model.input, bn.output)
    got = keras.ops.convert_to_numpy(probe(x[:1], training=False))
    mm, mv = 0.1 * mean, 0.9 + 0.1 * var
    np.testing.assert_allclose(got, (x[:1] - mm) / np.sqrt(mv + 1e-4), rtol=1e-4, atol=1e-5)
