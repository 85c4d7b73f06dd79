"""trunks.py (Akiyama & Sato's ResNet34 and EnvNet-v2), optimizers.py (learn.optim) and the
model line of the run (n_trainable_params).

The layer lists and parameter counts are computed here from the published block lists
(torchvision's resnet34; Tokozume et al.'s EnvNet-v2 as the released models.py of Akiyama &
Sato changes it), and the paper's reported counts are explained by a decomposition of them.
"""
import keras
import numpy as np
import pytest
from keras import layers

import architectures
import config
import learn
import optimizers
import trunks
from config import ConfigError
from results import Results

MULTITASK = config.load_config(None, ['learn.multitask=true', 'learn.head=sigmoid'])['learn']
SINGLE = config.load_config(None, [])['learn']  # softmax head
K = 80  # FSDKaggle2019's classes, as in the paper

# torchvision's resnet34: (width, blocks, stride of the first block) per stage
RESNET34 = [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]


def _conv(k_h, k_w, c_in, c_out):  # no bias in either trunk
    return k_h * k_w * c_in * c_out


def _bn(c):  # trainable: gamma and beta (the moving statistics are not trainable)
    return 2 * c


def _dense(n_in, n_out):
    return n_in * n_out + n_out


def _multitask_head(n_in, n_classes):
    """FC 1024 - FC 1024 - FC K (Akiyama & Sato, Sec. 3.4.3)."""
    return _dense(n_in, 1024) + _dense(1024, 1024) + _dense(1024, n_classes)


def _resnet34_trunk_params(in_channels=1):
    total = _conv(7, 7, in_channels, 64) + _bn(64)
    c_in = 64
    for width, blocks, stride in RESNET34:
        for b in range(blocks):
            s = stride if b == 0 else 1
            total += _conv(3, 3, c_in, width) + _bn(width) + _conv(3, 3, width, width) + _bn(width)
            if s != 1 or c_in != width:
                total += _conv(1, 1, c_in, width) + _bn(width)
            c_in = width
    return total


# Tokozume, Ushiku & Harada (ICLR 2018), Table of EnvNet-v2: (filters, kernel) of conv1-10;
# conv1-2 see one input channel / 32, conv3 sees one channel (the swapped axis).
ENVNET_V2 = [(32, (1, 64)), (64, (1, 16)), (32, (8, 8)), (32, (8, 8)), (64, (1, 4)),
             (64, (1, 4)), (128, (1, 2)), (128, (1, 2)), (256, (1, 2)), (256, (1, 2))]
ENVNET_IN = [1, 32, 1, 32, 32, 64, 64, 128, 128, 256]


def _envnet_trunk_params():
    return sum(_conv(*kernel, c_in, c_out) + _bn(c_out)
               for (c_out, kernel), c_in in zip(ENVNET_V2, ENVNET_IN))


@pytest.fixture(scope='module')
def resnet():
    return architectures.build('resnet34', (None, 32, 1), K, MULTITASK)


@pytest.fixture(scope='module')
def envnet():
    return architectures.build('envnet_v2', (None,), K, MULTITASK)


def _kinds(model, names):
    return [type(model.get_layer(n)).__name__ for n in names]


# ----------------------------------------------------------------------------- ResNet34

def test_resnet34_layer_list_is_the_block_list(resnet):
    convs = [layer for layer in resnet.layers if isinstance(layer, layers.Conv2D)]
    expected = [(64, (7, 7), (2, 2))]
    c_in = 64
    for width, blocks, stride in RESNET34:
        for b in range(blocks):
            s = stride if b == 0 else 1
            expected += [(width, (3, 3), (s, s))]
            if s != 1 or c_in != width:
                expected += [(width, (1, 1), (s, s))]  # the shortcut (built after conv1)
            expected += [(width, (3, 3), (1, 1))]
            c_in = width
    got = [(c.filters, c.kernel_size, c.strides) for c in convs]
    # per block: conv1, [shortcut], conv2 in the order the model lists them
    assert sorted(got) == sorted(expected) and len(got) == 1 + 2 * 16 + 3
    assert not any(c.use_bias for c in convs)
    assert sum(isinstance(layer, layers.BatchNormalization) for layer in resnet.layers) == len(convs)
    assert sum(isinstance(layer, layers.Add) for layer in resnet.layers) == 16
    pool = resnet.get_layer('stem_pool')
    assert pool.pool_size == (3, 3) and pool.strides == (2, 2)
    assert resnet.get_layer('stem_pool_pad').padding == ((1, 1), (1, 1))
    assert resnet.get_layer('stem_conv_pad').padding == ((3, 3), (3, 3))
    assert isinstance(resnet.get_layer('embedding'), layers.GlobalMaxPooling2D)
    assert _kinds(resnet, ['layer2_1_conv1', 'layer2_1_bn1', 'layer2_1_relu1', 'layer2_1_conv2',
                           'layer2_1_bn2', 'layer2_1_down_conv', 'layer2_1_down_bn',
                           'layer2_1_add', 'layer2_1_out']) == [
        'Conv2D', 'BatchNormalization', 'Activation', 'Conv2D', 'BatchNormalization',
        'Conv2D', 'BatchNormalization', 'Add', 'Activation']


def test_resnet34_trainable_parameters_for_80_classes(resnet):
    trunk = _resnet34_trunk_params()
    assert trunk == 21_278_400
    assert architectures.n_trainable_params(resnet) == trunk + 2 * _multitask_head(512, K)
    assert architectures.n_trainable_params(resnet) == 24_592_224
    # The paper's 44,210,576 is the stem once, bn1 and the four stages twice (the released
    # model holds them as its own attributes and inside its pretrainedmodels base model),
    # and one of the two heads.
    stem = _conv(7, 7, 1, 64)
    assert stem + 2 * (trunk - stem) + _multitask_head(512, K) == 44_210_576
    single = architectures.build('resnet34', (None, 32, 1), K, SINGLE)
    assert architectures.n_trainable_params(single) == trunk + _dense(512, K)


def test_resnet34_takes_any_length_and_pools_the_maximum(resnet):
    last = keras.Model(resnet.input, resnet.get_layer('layer4_3_out').output)
    for frames in (1, 37):
        x = np.random.default_rng(frames).normal(size=(2, frames, 32, 1)).astype('float32')
        out = resnet(x, training=False)
        assert out['scores'].shape == (2, K) and out['embedding'].shape == (2, 512)
        np.testing.assert_allclose(np.asarray(out['embedding']),
                                   np.asarray(last(x)).max(axis=(1, 2)), rtol=1e-6)
    # stride-2 sizes round up as PyTorch's padded convs: 37 -> 19 -> 10 -> 5 -> 3 -> 2
    size = keras.Model(resnet.input, resnet.get_layer('layer4_1_conv1').output)
    assert size(np.zeros((1, 37, 32, 1), 'float32')).shape[1:3] == (2, 1)


def test_resnet34_stem_pads_as_pytorch(resnet):
    """The stem conv (7x7, stride 2, padding 3 on every side) against a numpy convolution."""
    x = np.random.default_rng(0).normal(size=(1, 9, 32, 1)).astype('float32')
    stem = keras.Model(resnet.input, resnet.get_layer('stem_conv').output)
    kernel = np.asarray(resnet.get_layer('stem_conv').kernel)  # (7, 7, 1, 64)
    padded = np.pad(x[0, :, :, 0], 3)
    rows, cols = (9 + 6 - 7) // 2 + 1, (32 + 6 - 7) // 2 + 1
    expected = np.array([[np.einsum('ij,ijc->c', padded[2 * r:2 * r + 7, 2 * c:2 * c + 7],
                                    kernel[:, :, 0]) for c in range(cols)]
                         for r in range(rows)])
    np.testing.assert_allclose(np.asarray(stem(x))[0], expected, rtol=1e-4, atol=1e-5)


def test_resnet34_refuses_waveforms():
    with pytest.raises(ConfigError, match='resnet34 takes log-mel inputs'):
        architectures.build('resnet34', (None,), K, SINGLE)


# ----------------------------------------------------------------------------- EnvNet-v2

def test_envnet_v2_layer_list_is_the_published_one(envnet):
    convs = [layer for layer in envnet.layers if isinstance(layer, layers.Conv2D)]
    assert [(c.filters, c.kernel_size) for c in convs] == ENVNET_V2
    assert [c.strides for c in convs[:2]] == [(1, 2), (1, 2)]
    assert all(c.strides == (1, 1) for c in convs[2:])
    assert all(c.padding == 'valid' and not c.use_bias for c in convs)
    pools = [layer.pool_size for layer in envnet.layers if isinstance(layer, layers.MaxPooling2D)]
    assert pools == [(1, 64), (5, 3), (1, 2), (1, 2)]
    kinds = [type(layer).__name__ for layer in envnet.layers]
    start = kinds.index('Conv2D')
    assert kinds[start:start + 3] == ['Conv2D', 'BatchNormalization', 'Activation']
    assert envnet.get_layer('embedding').output.shape == (None, 2560)  # 10 rows x 256


def test_envnet_v2_trainable_parameters_for_80_classes(envnet):
    trunk = _envnet_trunk_params()
    assert trunk == 374_848
    assert architectures.n_trainable_params(envnet) == trunk + 2 * _multitask_head(2560, K)
    assert architectures.n_trainable_params(envnet) == 7_882_976
    # The paper's 4,128,912 is the trunk and one of the two heads.
    assert trunk + _multitask_head(2560, K) == 4_128_912


def _envnet_positions(samples):
    """Time positions after conv10 by PyTorch's output-size rule, floor((n - k) / s) + 1."""
    n = (samples - 64) // 2 + 1
    n = (n - 16) // 2 + 1
    n //= 64
    n = n - 7 - 7
    n //= 3
    for k in (4, 4):
        n -= k - 1
    n //= 2
    n -= 2
    n //= 2
    return n - 2


def test_envnet_v2_any_length_from_its_minimum(envnet):
    minimum = next(n for n in range(1, 10 ** 5) if _envnet_positions(n) >= 1)
    assert trunks.ENVNET_MIN_SAMPLES == minimum
    for samples in (minimum, 66_650):
        x = np.random.default_rng(samples).uniform(-1, 1, (2, samples)).astype('float32')
        out = envnet(x, training=False)
        assert out['scores'].shape == (2, K) and out['embedding'].shape == (2, 2560)
    with pytest.raises(ConfigError, match='envnet_v2 takes waveforms'):
        architectures.build('envnet_v2', (100, 32, 1), K, SINGLE)


def test_envnet_v2_trains_on_waveform_batches():
    model = architectures.build('envnet_v2', (None,), 4, SINGLE)
    scores = keras.Model(model.input, model.output['scores'])
    scores.compile(optimizer=optimizers.optimizer({**SINGLE, 'optim': 'SGD', 'lr': 0.01}),
                   loss='categorical_crossentropy')
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, trunks.ENVNET_MIN_SAMPLES + 100)).astype('float32')
    y = np.eye(4, dtype='float32')[rng.integers(0, 4, 8)]
    before = [np.array(w) for w in model.trainable_weights]
    history = scores.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history['loss']).all()
    assert all(not np.array_equal(b, np.asarray(w))
               for b, w in zip(before, model.trainable_weights))


def test_waveform_models_need_waveform_inputs():
    cfg = config.load_config(None, ['learn.model=envnet_v2', 'ctrl.run_name=x'])
    with pytest.raises(ConfigError, match="envnet_v2 takes waveform inputs, but "
                                          "extract.features is 'logmel'"):
        architectures.check(cfg)


# ----------------------------------------------------------------------------- optimiser

def test_adam_stays_the_default():
    opt = optimizers.optimizer(SINGLE)
    assert isinstance(opt, keras.optimizers.Adam)
    assert float(np.asarray(opt.learning_rate)) == pytest.approx(0.001)


def test_sgd_of_the_config_is_nesterov_momentum_as_pytorch():
    cfg = config.load_config(None, ['learn.optim=SGD', 'learn.lr=0.1', 'ctrl.run_name=x'])
    opt = optimizers.optimizer(cfg['learn'])
    assert isinstance(opt, keras.optimizers.SGD)
    assert opt.momentum == 0.9 and opt.nesterov is True
    # Three steps against PyTorch's Nesterov SGD: b <- m b + g; w <- w - lr (g + m b).
    w = keras.Variable(np.array([1.0, -2.0], 'float32'))
    grads = [np.array([0.5, 1.0]), np.array([-0.25, 0.5]), np.array([1.0, -1.0])]
    ref, b = np.array([1.0, -2.0]), np.zeros(2)
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g.astype('float32')), w)])
        b = 0.9 * b + g
        ref = ref - 0.1 * (g + 0.9 * b)
    np.testing.assert_allclose(np.asarray(w), ref, rtol=1e-6)
    plain = optimizers.optimizer({**cfg['learn'], 'nesterov': False, 'momentum': 0.5})
    assert plain.nesterov is False and plain.momentum == 0.5


def test_unknown_optimiser_and_momentum_range():
    cfg = config.load_config(None, ['learn.optim=RMSprop', 'ctrl.run_name=x'])
    with pytest.raises(ConfigError, match="learn.optim 'RMSprop' is unknown; valid: Adam, SGD"):
        learn.check(cfg)
    with pytest.raises(ConfigError, match='learn.momentum = 1.0 is out of range'):
        config.load_config(None, ['learn.momentum=1.0'])


# ----------------------------------------------------------------------------- results

def test_results_name_the_model_and_its_parameter_count():
    results = Results(label_noise={'rate': 0.1})
    results.built('resnet34', np.int64(24_592_224))
    saved = results.to_json()
    assert saved['model'] == 'resnet34' and saved['n_trainable_params'] == 24_592_224
    assert type(saved['n_trainable_params']) is int
    again = Results()
    again.load_state_dict(results.state_dict())
    assert again.to_json() == saved
    results.fold_results([{'fold': 1}])  # k folds: the model stays at the top
    assert results.to_json()['n_trainable_params'] == 24_592_224
