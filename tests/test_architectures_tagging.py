"""architectures.py, tagging models: cnn_gru (He et al.) and vgg_gap (Dorfer & Widmer).

vgg_gap is compared with a network built here from the released description, and with the
parameter count Dorfer & Widmer publish; cnn_gru's count and pooling are computed by hand.
"""
import keras
import numpy as np
import pytest
from keras import layers

import architectures
import config
from config import ConfigError

LEARN = config.load_config(None, [])['learn']  # the defaults: softmax head, max pooling


def _x(frames, mels, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, frames, mels, 1)).astype('float32')


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _numpy_scores(model, embedding):
    """numpy's softmax of the model's classifier on its embedding (in inference the
    dropout before it is the identity). cnn_gru: its last dense layer; vgg_gap: the 1x1
    class conv, BN with its moving statistics, the mean of each class map."""
    e = np.asarray(embedding, np.float64)
    if model.name == 'cnn_gru':
        dense = _of_type(model, layers.Dense)[-1]
        return _softmax(e @ np.asarray(dense.kernel) + np.asarray(dense.bias))
    conv = _of_type(model, layers.Conv2D)[-1]
    bn = _of_type(model, layers.BatchNormalization)[-1]
    maps = e @ np.asarray(conv.kernel, np.float64)[0, 0]  # [B, T, M, K]
    maps = ((maps - np.asarray(bn.moving_mean)) / np.sqrt(np.asarray(bn.moving_variance)
                                                          + bn.epsilon)
            * np.asarray(bn.gamma) + np.asarray(bn.beta))
    return _softmax(maps.mean(axis=(1, 2)))


def _probs(model, x):
    """The model's scores on x, checked against _numpy_scores."""
    out = model(x, training=False)
    p = np.asarray(out['scores'])
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, _numpy_scores(model, out['embedding']), rtol=1e-4,
                               atol=1e-6)
    return p


def _of_type(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


# ----------------------------------------------------------------------------- cnn_gru

def test_cnn_gru_variable_length_and_softmax_of_its_classifier():
    model = architectures.build('cnn_gru', (64, 16, 1), 5, LEARN)
    assert model.name == 'cnn_gru' and model.input.shape == (None, None, 16, 1)
    for frames in (7, 20):
        assert _probs(model, _x(frames, 16)).shape == (2, 5)


def test_cnn_gru_structure_and_parameter_count():
    model = architectures.build('cnn_gru', (None, 80, 1), 10, LEARN)
    convs = _of_type(model, layers.Conv2D)
    assert [c.filters for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == 'same' for c in convs)
    kinds = [type(layer).__name__ for layer in model.layers]
    block = ['Conv2D', 'BatchNormalization', 'Activation'] * 2 + ['AveragePooling2D']
    assert kinds[1:1 + 4 * len(block)] == block * 4
    pools = _of_type(model, layers.AveragePooling2D)
    assert [p.pool_size for p in pools] == [(1, 2)] * 4 + [(1, 5)]  # 80 mels / 16 = 5
    (bi,) = _of_type(model, layers.Bidirectional)
    assert isinstance(bi.forward_layer, layers.GRU) and bi.forward_layer.units == 256
    assert model.get_layer('embedding').units == 256
    convs_params = sum(9 * a * b + 4 * b for a, b in
                       zip([1, 64, 64, 128, 128, 256, 256, 512], [c.filters for c in convs]))
    gru = 2 * 3 * (256 * (512 + 256) + 2 * 256)  # Keras GRU, reset_after: 2 bias vectors
    dense = (512 * 256 + 256) + (256 * 10 + 10)
    assert model.count_params() == convs_params + gru + dense


@pytest.mark.parametrize('pooling, reduce', [('max', np.max), ('mean', np.mean)])
def test_cnn_gru_keeps_time_until_the_gru_then_pools_it(pooling, reduce):
    model = architectures.build('cnn_gru', (None, 32, 1), 4, {**LEARN, 'time_pooling': pooling})
    (bi,) = _of_type(model, layers.Bidirectional)
    embedding = model.get_layer('embedding')
    probe = keras.Model(model.input, [bi.input, bi.output, embedding.input])
    gru_in, gru_out, pooled = (np.asarray(t) for t in probe(_x(13, 32), training=False))
    assert gru_in.shape == (2, 13, 512) and gru_out.shape == (2, 13, 512)
    np.testing.assert_allclose(pooled, reduce(gru_out, axis=1), rtol=1e-5, atol=1e-6)


def test_cnn_gru_refuses_bad_settings():
    with pytest.raises(ConfigError, match="learn.time_pooling 'median' is unknown; valid: max, mean"):
        architectures.build('cnn_gru', (None, 32, 1), 4, {**LEARN, 'time_pooling': 'median'})
    with pytest.raises(ConfigError, match='at least 16 mel bands'):
        architectures.build('cnn_gru', (None, 15, 1), 4, LEARN)


# ----------------------------------------------------------------------------- vgg_gap

def _reference_vgg_gap(mels, n_classes, nf=64):
    """The released network, written out from its description."""
    def conv(x, width, kernel, strides=1, padding='same', relu=True):
        x = layers.Conv2D(width, kernel, strides=strides, padding=padding, use_bias=False,
                          kernel_initializer='he_normal')(x)
        x = layers.BatchNormalization()(x)
        return layers.Activation('relu')(x) if relu else x

    inputs = keras.Input((None, mels, 1))
    x = conv(inputs, nf, 5, strides=2)
    x = conv(x, nf, 3)
    x = layers.Dropout(0.3)(layers.MaxPooling2D(2)(x))
    x = conv(conv(x, 2 * nf, 3), 2 * nf, 3)
    x = layers.Dropout(0.3)(layers.MaxPooling2D(2)(x))
    x = layers.Dropout(0.3)(conv(x, 4 * nf, 3))
    x = layers.Dropout(0.3)(conv(x, 4 * nf, 3))
    x = layers.Dropout(0.3)(conv(x, 6 * nf, 3))
    x = layers.Dropout(0.3)(layers.MaxPooling2D(2)(conv(x, 6 * nf, 3)))
    for _ in range(2):  # "max-pool 1 x 2 over time": time is our first axis
        x = conv(conv(x, 8 * nf, 3), 8 * nf, 3)
        x = layers.Dropout(0.3)(layers.MaxPooling2D((2, 1))(x))
    x = layers.Dropout(0.5)(conv(x, 8 * nf, 3, padding='valid'))
    x = layers.Dropout(0.5)(conv(x, 8 * nf, 1))
    x = layers.GlobalAveragePooling2D()(conv(x, n_classes, 1, relu=False))
    return keras.Model(inputs, layers.Activation('softmax')(x))


def _signature(model):
    """Per layer: type and the settings that define the network."""
    keys = ('filters', 'kernel_size', 'strides', 'padding', 'use_bias', 'kernel_initializer',
            'pool_size', 'rate', 'activation')
    out = []
    for layer in model.layers[1:]:
        config = layer.get_config()
        out.append((type(layer).__name__,) + tuple(str(config.get(k)) for k in keys))
    return out


def test_vgg_gap_matches_the_released_network_and_its_parameter_count():
    model = architectures.build('vgg_gap', (384, 128, 1), 41, LEARN)
    reference = _reference_vgg_gap(128, 41)
    assert _signature(model) == _signature(reference)
    assert len(_of_type(model, layers.Conv2D)) == 15
    # "Overall, this model comprises 14,865,124 trainable parameters" (Dorfer & Widmer,
    # 128 bins, 41 classes): conv kernels + 4 per BN channel, as Keras counts them.
    assert model.count_params() == reference.count_params() == 14_865_124


def test_vgg_gap_variable_length_softmax_and_embedding_map():
    inputs = keras.Input((None, 48, 1))
    emb = architectures.vgg_gap_trunk(inputs, LEARN, nf=2)
    logits = architectures.class_map_logits(emb, 3)
    model = keras.Model(inputs, [layers.Activation('softmax')(logits), emb])
    for frames in (191, 384):
        probs, emb_map = (np.asarray(t) for t in model(_x(frames, 48), training=False))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        # time: ceil(T / 2) pooled by 2 five times, then a valid 3x3 conv; mel: 24 / 8 - 2
        assert emb_map.shape == (2, -(-frames // 2) // 32 - 2, 1, 16)
    assert architectures.VGG_GAP_MIN_FRAMES == 191 and architectures.VGG_GAP_MIN_MELS == 47


def test_vgg_gap_full_model_predicts_two_lengths_and_refuses_few_mels():
    model = architectures.build('vgg_gap', (None, 47, 1), 4, LEARN)
    assert model.output['embedding'].shape == (None, None, 1, 512)
    for frames in (191, 200):
        assert _probs(model, _x(frames, 47, batch=1)).shape == (1, 4)
    with pytest.raises(ConfigError, match='vgg_gap needs at least 47 mel bands'):
        architectures.build('vgg_gap', (None, 46, 1), 4, LEARN)


def test_tagging_models_output_float32_under_mixed_precision(mixed_float16):
    for name, shape, frames in [('cnn_gru', (None, 16, 1), 9), ('vgg_gap', (None, 47, 1), 191)]:
        model = architectures.build(name, shape, 3, LEARN)
        assert model.get_layer('embedding').compute_dtype == 'float16'
        out = model(_x(frames, shape[1], batch=1), training=False)
        assert keras.backend.standardize_dtype(out['scores'].dtype) == 'float32'
