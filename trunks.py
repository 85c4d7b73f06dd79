"""The trunks of Akiyama & Sato's system (config key `learn.model`: resnet34, envnet_v2).

Akiyama & Sato, "Multitask learning and semi-supervised learning with noisy data for audio
tagging", DCASE 2019 task 2 (4th place), Sec. 3.4: a ResNet34 on log-mel spectrograms and
an EnvNet-v2 on raw waveforms, each with global max pooling (GMP) after its convolutions so
that any input length is accepted, then the heads of learn.head / learn.multitask
(heads.head_outputs). Their released models.py builds both in PyTorch; the layer sequence
here follows it, with PyTorch's padding written out (ZeroPadding2D + 'valid') where Keras's
'same' would pad otherwise (strided convs and the stem's max-pool).

Trainable parameters for 80 classes with learn.multitask (two heads of FC 1024 - FC 1024 -
FC 80): resnet34 24,592,224 (trunk 21,278,400 + 2 x 1,656,912), envnet_v2 7,882,976 (trunk
374,848 + 2 x 3,754,064). The paper reports 44,210,576 and 4,128,912; README says why.
"""
import keras
from keras import layers

from config import ConfigError
from heads import head_outputs

# PyTorch's default init of a conv (kaiming_uniform with a = sqrt(5)): U(+-1/sqrt(fan_in)),
# which is Keras's VarianceScaling(1/3, fan_in, uniform): limit sqrt(3 * scale / fan_in).
TORCH_CONV_DEFAULT = {'scale': 1 / 3, 'mode': 'fan_in', 'distribution': 'uniform'}
# torchvision's ResNet init of its convs: kaiming_normal_(mode='fan_out', relu), untruncated.
TORCHVISION_RESNET_CONV = {'scale': 2.0, 'mode': 'fan_out',
                           'distribution': 'untruncated_normal'}


def _init(spec):
    return keras.initializers.VarianceScaling(**spec)


def batch_norm(name):
    """Every BatchNormalization of these trunks; architectures.build then sets
    learn.bn_momentum / learn.bn_epsilon on it, as on every model's."""
    return layers.BatchNormalization(name=name)


def _model(inputs, embedding, outputs, name):
    return keras.Model(inputs, {**outputs, 'embedding': embedding}, name=name)


# ----------------------------------------------------------------------------- ResNet34
# torchvision's resnet34 (He, Zhang, Ren & Sun, "Deep residual learning for image
# recognition", CVPR 2016), as the released models.py uses it (pretrainedmodels' resnet34,
# not pretrained): a 7x7 stride-2 stem conv with one input channel (the released code
# replaces the RGB stem), BN, ReLU, 3x3 stride-2 max-pool (padding 1), four stages of basic
# blocks, 3-4-6-3 blocks of 64-128-256-512 channels, the first block of stages 2-4 with
# stride 2 and a 1x1 conv + BN shortcut, then GMP over time and frequency. No conv bias.
# The input is (time, mel, 1) where the released code's is (1, mel, time): every kernel is
# square, so this is the same network on the transposed spectrogram.

RESNET34_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # width, blocks, stride


def _torch_conv(x, filters, kernel, stride, name, init=TORCHVISION_RESNET_CONV):
    """A PyTorch Conv2d(kernel, stride, padding=kernel // 2, bias=False): 'same' for stride
    1 (PyTorch's symmetric padding); for stride 2 the padding written out, since Keras's
    'same' would put it all after the input."""
    if stride > 1 and kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f'{name}_pad')(x)
    padding = 'same' if stride == 1 else 'valid'
    return layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                         kernel_initializer=_init(init), name=name)(x)


def _basic_block(x, filters, stride, name):
    """conv3x3(stride) - BN - ReLU - conv3x3 - BN, plus the shortcut (1x1 conv(stride) + BN
    where the shape changes), then ReLU."""
    y = _torch_conv(x, filters, 3, stride, f'{name}_conv1')
    y = layers.Activation('relu', name=f'{name}_relu1')(batch_norm(f'{name}_bn1')(y))
    y = batch_norm(f'{name}_bn2')(_torch_conv(y, filters, 3, 1, f'{name}_conv2'))
    if stride != 1 or x.shape[-1] != filters:
        x = batch_norm(f'{name}_down_bn')(_torch_conv(x, filters, 1, stride,
                                                      f'{name}_down_conv'))
    return layers.Activation('relu', name=f'{name}_out')(layers.Add(name=f'{name}_add')([x, y]))


def resnet34_trunk(inputs):
    """(batch, time, mel, 1) -> the 'embedding' (batch, 512): GMP of the last stage."""
    x = _torch_conv(inputs, 64, 7, 2, 'stem_conv', init=TORCH_CONV_DEFAULT)
    x = layers.Activation('relu', name='stem_relu')(batch_norm('stem_bn')(x))
    # Zero padding equals PyTorch's -inf padding of the max-pool here: its input is a ReLU's.
    x = layers.ZeroPadding2D(1, name='stem_pool_pad')(x)
    x = layers.MaxPooling2D(3, strides=2, name='stem_pool')(x)
    for stage, (width, blocks, stride) in enumerate(RESNET34_STAGES, 1):
        for block in range(1, blocks + 1):
            x = _basic_block(x, width, stride if block == 1 else 1, f'layer{stage}_{block}')
    return layers.GlobalMaxPooling2D(name='embedding')(x)


def resnet34(input_shape, n_classes, cfg_learn):
    """ResNet34 with GMP (resnet34_trunk) and the head of learn.head (the paper's:
    learn.multitask with sigmoid heads). Any number of frames and mel bands (every stride
    rounds up, as PyTorch's padded convs do)."""
    if len(input_shape) != 3:
        raise ConfigError(f'learn.model resnet34 takes log-mel inputs (frames, n_mels, 1), '
                          f'not inputs of shape {tuple(input_shape)}')
    inputs = keras.Input(shape=(None,) + tuple(input_shape[1:]))
    embedding = resnet34_trunk(inputs)
    return _model(inputs, embedding, head_outputs(embedding, n_classes, cfg_learn), 'resnet34')


# ----------------------------------------------------------------------------- EnvNet-v2
# Tokozume, Ushiku & Harada, "Learning from between-class examples for deep sound
# recognition" (ICLR 2018), EnvNet-v2, as the released models.py of Akiyama & Sato builds
# it: every conv is conv (no bias, no padding) - BN - ReLU. Two convs over time on the
# waveform, (1, 64) and (1, 16), both stride 2, a (1, 64) max-pool; then the 64 channels
# become a frequency-like axis of one channel (PyTorch's transpose(1, 2)), and 2-D convs
# (8, 8) x 2, max-pool (5, 3), (1, 4) x 2, pool (1, 2), (1, 2) x 2, pool (1, 2), (1, 2) x 2.
# Tokozume et al. end in a max-pool and FC 4096 - FC 4096 - FC K on a fixed input of
# 66,650 samples; the released code (and here) replaces these by a max over time only
# (PyTorch's AdaptiveMaxPool2d((10, 1)) on a map of height 10): the embedding is
# 10 x 256 = 2560 wide and any length from ENVNET_MIN_SAMPLES on is accepted.

# (name, filters, kernel, stride) of the convs, and ('pool', size) in between.
ENVNET_V2_LAYERS = [
    ('conv1', 32, (1, 64), (1, 2)), ('conv2', 64, (1, 16), (1, 2)), ('pool', (1, 64)),
    ('swap',),
    ('conv3', 32, (8, 8), 1), ('conv4', 32, (8, 8), 1), ('pool', (5, 3)),
    ('conv5', 64, (1, 4), 1), ('conv6', 64, (1, 4), 1), ('pool', (1, 2)),
    ('conv7', 128, (1, 2), 1), ('conv8', 128, (1, 2), 1), ('pool', (1, 2)),
    ('conv9', 256, (1, 2), 1), ('conv10', 256, (1, 2), 1),
]


def _envnet_time_left(samples):
    """Time positions left after the last conv for an input of `samples` samples."""
    t = samples
    for kind, *args in ENVNET_V2_LAYERS:
        if kind == 'pool':
            t //= args[0][1]
        elif kind != 'swap':
            _, kernel, stride = args
            stride = stride[1] if isinstance(stride, tuple) else stride
            t = (t - kernel[1]) // stride + 1
    return t


# The shortest waveform the valid convs and pools leave at least one position of.
ENVNET_MIN_SAMPLES = next(n for n in range(1, 10 ** 6) if _envnet_time_left(n) >= 1)


def envnet_v2_trunk(inputs):
    """(batch, samples) float32 waveform -> the 'embedding' (batch, 2560): the max over
    time of the last conv's (10 rows x 256 channels)."""
    x = layers.Reshape((1, -1, 1), name='waveform')(inputs)  # (batch, 1, samples, 1)
    pools = 0
    for kind, *args in ENVNET_V2_LAYERS:
        if kind == 'pool':
            pools += 1
            x = layers.MaxPooling2D(args[0], name=f'pool{pools}')(x)
        elif kind == 'swap':
            # (batch, 1, time, 64 channels) -> (batch, 64 rows, time, 1 channel)
            x = layers.Permute((3, 2, 1), name='swap')(x)
        else:
            filters, kernel, stride = args
            x = layers.Conv2D(filters, kernel, strides=stride, padding='valid', use_bias=False,
                              kernel_initializer=_init(TORCH_CONV_DEFAULT), name=kind)(x)
            x = layers.Activation('relu', name=f'{kind}_relu')(batch_norm(f'{kind}_bn')(x))
    # (batch, 10, time, 256) -> (batch, time, 10 * 256) -> max over time
    rows, channels = x.shape[1], x.shape[3]
    x = layers.Permute((2, 1, 3), name='time_first')(x)
    x = layers.Reshape((-1, rows * channels), name='rows_channels')(x)
    return layers.GlobalMaxPooling1D(name='embedding')(x)


def envnet_v2(input_shape, n_classes, cfg_learn):
    """EnvNet-v2 with the released code's max over time (envnet_v2_trunk) and the head of
    learn.head on its 2560-wide embedding. Its input is a waveform (batch, samples) of any
    length from ENVNET_MIN_SAMPLES on; input_shape must be (samples,) or (None,)."""
    if len(input_shape) != 1:
        raise ConfigError(f'learn.model envnet_v2 takes waveforms (batch, samples), not '
                          f'log-mel inputs of shape {tuple(input_shape)}')
    inputs = keras.Input(shape=(None,))
    embedding = envnet_v2_trunk(inputs)
    return _model(inputs, embedding, head_outputs(embedding, n_classes, cfg_learn),
                  'envnet_v2')


TRUNKS = {'resnet34': resnet34, 'envnet_v2': envnet_v2}
# Models whose input is a waveform, not log-mel frames.
WAVEFORM_MODELS = ('envnet_v2',)
