"""architectures.py: shapes, parameter counts computed by hand, dtypes, errors, learning."""
import keras
import numpy as np
import pytest

import architectures
from config import ConfigError

SHAPE = (100, 96, 1)  # patch_len x n_mels x 1, the paper's patches
LEARN = {'densenet_modules': 3}


def _of_type(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


def _conv(k, cin, cout):
    return k * k * cin * cout + cout


def _bn(channels):
    return 4 * channels  # gamma, beta, moving mean, moving variance


def test_baseline_shape_and_softmax():
    model = architectures.build('baseline', SHAPE, 20, LEARN)
    assert model.name == 'baseline'
    assert model.output.shape == (None, 20)
    x = np.random.default_rng(0).normal(size=(3,) + SHAPE).astype('float32')
    probs = np.asarray(model(x, training=False))
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_baseline_parameter_count():
    model = architectures.build('baseline', SHAPE, 20, LEARN)
    flat = (100 // 4 // 4) * (96 // 2 // 2) * 48  # 6 frames x 24 bands x 48 channels
    expected = (_bn(1)
                + _conv(5, 1, 24) + _bn(24)
                + _conv(5, 24, 48) + _bn(48)
                + _conv(5, 48, 48) + _bn(48)
                + flat * 64 + 64
                + 64 * 20 + 20)
    assert flat == 6912
    assert model.count_params() == expected


def test_baseline_layer_order_pools_and_l2():
    model = architectures.build('baseline', SHAPE, 20, LEARN)
    kinds = [type(layer).__name__ for layer in model.layers]
    block = ['Conv2D', 'BatchNormalization', 'Activation']
    assert kinds == (['InputLayer', 'BatchNormalization', 'Activation']
                     + block + ['MaxPooling2D'] + block + ['MaxPooling2D'] + block
                     + ['Flatten', 'Dropout', 'Dense', 'Dropout', 'Dense'])
    assert [p.pool_size for p in _of_type(model, keras.layers.MaxPooling2D)] == [(4, 2)] * 2
    convs = _of_type(model, keras.layers.Conv2D)
    assert [c.filters for c in convs] == [24, 48, 48]
    assert all(c.kernel_size == (5, 5) and c.padding == 'same' for c in convs)
    assert all(isinstance(c.kernel_initializer, keras.initializers.HeNormal) for c in convs)
    dense = _of_type(model, keras.layers.Dense)
    assert [d.units for d in dense] == [64, 20]
    for d in dense:
        assert isinstance(d.kernel_regularizer, keras.regularizers.L2)
        assert d.kernel_regularizer.l2 == pytest.approx(1e-3)
    assert all(d.rate == 0.5 for d in _of_type(model, keras.layers.Dropout))


def test_dense_se_shapes_and_se():
    model = architectures.build('DenSE', SHAPE, 20, LEARN)
    assert model.name == 'DenSE'
    assert model.output.shape == (None, 20)
    channels = 16 + 16 + 32 + 64  # stem + each module's growth (dense connectivity)
    time, mel = 100 // 2 // 2 // 2, 96 // 2 // 2 // 2
    assert (time, mel, channels) == (12, 12, 128)
    last_pool = _of_type(model, keras.layers.MaxPooling2D)[-1]
    assert last_pool.output.shape == (None, time, mel, channels)
    assert model.get_layer('embedding').output.shape == (None, time * mel * channels)
    assert len(_of_type(model, keras.layers.Multiply)) == 3
    assert [c.output.shape[-1] for c in _of_type(model, keras.layers.Concatenate)] == [32, 64,
                                                                                      128]
    se_hidden = [d.units for d in _of_type(model, keras.layers.Dense)][:-1]
    assert se_hidden == [8, 16, 16, 32, 32, 64]  # filters // 2 then filters, per module


def test_dense_se_filters_capped_at_512():
    model = architectures.build('DenSE', (256, 256, 1), 4, {'densenet_modules': 7})
    widths = [c.filters for c in _of_type(model, keras.layers.Conv2D)][1::2]
    assert widths == [16, 32, 64, 128, 256, 512, 512]


@pytest.mark.parametrize('name, width', [('baseline', 64), ('DenSE', 12 * 12 * 128)])
def test_embedding_layer(name, width):
    model = architectures.build(name, SHAPE, 20, LEARN)
    both = keras.Model(model.input, [model.output, model.get_layer('embedding').output])
    probs, emb = both(np.zeros((2,) + SHAPE, 'float32'), training=False)
    assert probs.shape == (2, 20) and emb.shape == (2, width)


# The tagging models (cnn_gru, vgg_gap) need other inputs: test_architectures_tagging.py.
@pytest.mark.parametrize('name', ['baseline', 'DenSE'])
def test_output_float32_under_mixed_precision(name, mixed_float16):
    model = architectures.build(name, SHAPE, 20, LEARN)
    conv = _of_type(model, keras.layers.Conv2D)[0]
    assert conv.compute_dtype == 'float16'  # the policy took effect
    assert model.output.dtype == 'float32'
    probs = model(np.zeros((2,) + SHAPE, 'float32'), training=False)
    assert keras.backend.standardize_dtype(probs.dtype) == 'float32'


def test_unknown_model():
    with pytest.raises(ConfigError, match=r"learn.model 'resnet' is unknown; valid: "
                                          r"baseline, DenSE"):
        architectures.build('resnet', SHAPE, 20, LEARN)


def test_too_many_densenet_modules():
    with pytest.raises(ConfigError, match='learn.densenet_modules'):
        architectures.build('DenSE', SHAPE, 20, {'densenet_modules': 7})  # 96 / 2**7 < 1


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
    model = architectures.build('baseline', shape, 2, LEARN)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss='categorical_crossentropy',
                  metrics=['accuracy'])
    history = model.fit(x, y, batch_size=32, epochs=5, verbose=0)
    assert history.history['accuracy'][-1] > 0.9
