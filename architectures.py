"""Models by name (config key `learn.model`).

baseline and DenSE come from Fonseca, Font & Serra, "Model-agnostic approaches to handling
noisy labels when training sound event classifiers", IEEE WASPAA 2019. Inputs are log-mel
patches of shape (patch_len, n_mels, 1): time x mel bands x 1 channel (channels_last).
The tagging models cnn_gru and vgg_gap (below) take any number of frames: (None, n_mels, 1).

Every model is a trunk (inputs -> its penultimate representation, the layer named
'embedding') and the head of learn.head (heads.head_outputs) on it, and returns a dict of
named outputs: the head's (always 'scores', the prediction [B, K], and its branches, all
float32 so that losses and metrics stay float32 under a mixed_float16 policy) and the
trunk's 'embedding' (in the compute dtype), which losses such as adaptive_lq read.
"""
import keras
import numpy as np
from keras import layers

import trunks
from config import ConfigError, lookup
from heads import HEADS, head_outputs


def _too_small(input_shape, pools):
    """True if the pools in turn shrink time or mel below 1 (valid pooling floors)."""
    time, mel = input_shape[0], input_shape[1]
    for pool_time, pool_mel in pools:
        time, mel = time // pool_time, mel // pool_mel
    return time < 1 or mel < 1


def _model(inputs, embedding, outputs, name):
    """The keras.Model of a trunk and its head: the head's named outputs and 'embedding'."""
    return keras.Model(inputs, {**outputs, 'embedding': embedding}, name=name)


def _bn_relu(x):
    return layers.Activation('relu')(layers.BatchNormalization()(x))


# ----------------------------------------------------------------------------- baseline

def baseline(input_shape, n_classes, cfg_learn):
    """The baseline CNN of the original code (get_model_baseline): three pre-activation
    blocks BN-ReLU, Conv 5x5 (24, 48, 48 filters), BN-ReLU, max-pool (4, 2) after the
    first two; then a 64-unit dense embedding; he_normal and L2 1e-3 on both dense
    kernels. The first block's pre-activation normalises the log-mel input."""
    pools = [(4, 2), (4, 2)]
    if _too_small(input_shape, pools):
        raise ConfigError(f'input patch {tuple(input_shape[:2])} (extract.patch_len, '
                          f'extract.n_mels) is too small for the baseline model, which '
                          f'pools it by 16 in time and 4 in mel')
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for filters, pool in zip([24, 48, 48], pools + [None]):
        x = layers.Conv2D(filters, (5, 5), padding='same',
                          kernel_initializer='he_normal')(_bn_relu(x))
        x = _bn_relu(x)
        if pool:
            x = layers.MaxPooling2D(pool)(x)
    x = layers.Dropout(0.5)(layers.Flatten()(x))
    embedding = layers.Dense(64, activation='relu', kernel_initializer='he_normal',
                             kernel_regularizer=keras.regularizers.L2(1e-3),
                             name='embedding')(x)
    outputs = head_outputs(layers.Dropout(0.5)(embedding), n_classes, cfg_learn,
                           kernel_initializer='he_normal',
                           kernel_regularizer=keras.regularizers.L2(1e-3))
    return _model(inputs, embedding, outputs, 'baseline')


# ----------------------------------------------------------------------------- DenSE

def _squeeze_excite(x, filters, ratio=2):
    """Rescale each channel by a gate computed from the channel means (SE, ratio 2)."""
    gate = layers.GlobalAveragePooling2D(keepdims=True)(x)  # (batch, 1, 1, filters)
    gate = layers.Dense(filters // ratio, activation='relu')(gate)
    gate = layers.Dense(filters, activation='sigmoid')(gate)
    return layers.Multiply()([x, gate])


def _dense_se_module(x, filters):
    """Pre-activation bottleneck (1x1 then 3x3, default initialiser as in the original)
    + SE; its output is concatenated with its input (dense connectivity), so channels
    grow by `filters`; then 2x2 max-pool with `same` padding."""
    y = layers.Conv2D(filters, (1, 1), padding='same')(_bn_relu(x))
    y = layers.Conv2D(filters, (3, 3), padding='same')(_bn_relu(y))
    y = layers.Concatenate()([_squeeze_excite(y, filters), x])
    return layers.MaxPooling2D((2, 2), padding='same')(y)


def dense_se(input_shape, n_classes, cfg_learn):
    """DenSE of the original code (get_model_DenSE): BN on the input; a linear 15-filter
    3x3 stem concatenated with the normalised input (16 channels); `learn.densenet_modules`
    DenseNet+SE modules with min(512, 16 * 2**i) filters; BN-ReLU, a flattened embedding,
    dropout 0.5 and the head (the original's softmax) with he_normal kernel and L2 1e-3.
    `same` pooling never shrinks a side below 1, so any number of modules fits any patch."""
    inputs = keras.Input(shape=input_shape)
    x = layers.BatchNormalization()(inputs)
    x = layers.Concatenate()([x, layers.Conv2D(15, (3, 3), padding='same')(x)])
    for i in range(cfg_learn['densenet_modules']):
        x = _dense_se_module(x, min(512, 16 * 2 ** i))
    embedding = layers.Flatten(name='embedding')(_bn_relu(x))
    outputs = head_outputs(layers.Dropout(0.5)(embedding), n_classes, cfg_learn,
                           kernel_initializer='he_normal',
                           kernel_regularizer=keras.regularizers.L2(1e-3))
    return _model(inputs, embedding, outputs, 'DenSE')


# ----------------------------------------------------------------------------- tagging models
# Both take log-mel inputs of any number of frames, (None, n_mels, 1), and are split into a
# trunk (inputs -> the 'embedding' tensor) and an output part, so that other output heads
# (sigmoid, sparsemax, multi-activation) can be put on the same trunk.

def _conv_bn_relu(x, filters, kernel, strides=1, padding='same', name=None):
    # No conv bias: the BN that follows subtracts the mean and adds its own offset.
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False,
                      kernel_initializer='he_normal')(x)
    return layers.Activation('relu', name=name)(layers.BatchNormalization()(x))


def _check_mels(input_shape, minimum, model):
    if input_shape[1] < minimum:
        raise ConfigError(f'{model} needs at least {minimum} mel bands (extract.n_mels), '
                          f'got {input_shape[1]}')


# ----------------------------------------------------------------------------- CNN-GRU
# He, Shen, Zhang & Liu, "Staged training strategy and multi-activation for audio tagging
# with noisy and sparse multi-label data" (DCASE 2019 task 2, 2nd place), section 2.2: four
# conv blocks, a bidirectional GRU, pooling over time, two dense layers. The sizes are in
# their Fig. 1, which our copy of the paper lacks. The blocks (2 x [3x3 conv, BN, ReLU]) are
# those of Kong et al.'s 9-layer CNN ("Cross-task learning for audio tagging, sound event
# detection and spatial localization: DCASE 2019 baseline systems"), the CNN family He et al.
# cite for CNN-GRU taggers, so we take its widths, 64-128-256-512, and its average pooling,
# here over frequency only: the time axis is kept whole for the GRU, and He et al. pool over
# time only after it. The frequency bins left after four halvings are averaged (as Kong et
# al. do), which makes the GRU's input 512 wide whatever extract.n_mels is. 256 GRU units
# per direction keep the GRU's output as wide as the last conv block; the embedding has
# 256 units. Choices, not the paper's numbers.

CNN_GRU_FILTERS = (64, 128, 256, 512)
CNN_GRU_UNITS = 256  # per direction
CNN_GRU_EMBEDDING = 256
TIME_POOLING = {'max': layers.GlobalMaxPooling1D, 'mean': layers.GlobalAveragePooling1D}


def cnn_gru_trunk(inputs, cfg_learn, filters=CNN_GRU_FILTERS, units=CNN_GRU_UNITS,
                  embedding=CNN_GRU_EMBEDDING):
    """(batch, time, mel, 1) -> the 'embedding' (batch, embedding): conv blocks pooled over
    frequency, bi-GRU over time, learn.time_pooling ('max' | 'mean') over time, dense ReLU."""
    pooling = cfg_learn['time_pooling']
    if pooling not in TIME_POOLING:
        raise ConfigError(f'learn.time_pooling {pooling!r} is unknown; valid: '
                          f'{", ".join(TIME_POOLING)}')
    x = inputs
    for width in filters:
        x = _conv_bn_relu(_conv_bn_relu(x, width, 3), width, 3)
        x = layers.AveragePooling2D((1, 2))(x)
    x = layers.AveragePooling2D((1, x.shape[2]))(x)  # (batch, time, 1, width)
    x = layers.Reshape((-1, filters[-1]))(x)          # (batch, time, width)
    x = layers.Bidirectional(layers.GRU(units, return_sequences=True))(x)
    x = TIME_POOLING[pooling]()(x)
    return layers.Dense(embedding, activation='relu', name='embedding')(x)


def cnn_gru(input_shape, n_classes, cfg_learn):
    """CNN-GRU (see cnn_gru_trunk) and the head of learn.head on its embedding."""
    _check_mels(input_shape, 2 ** len(CNN_GRU_FILTERS), 'cnn_gru')
    inputs = keras.Input(shape=(None,) + tuple(input_shape[1:]))
    embedding = cnn_gru_trunk(inputs, cfg_learn)
    return _model(inputs, embedding, head_outputs(embedding, n_classes, cfg_learn), 'cnn_gru')


# ----------------------------------------------------------------------------- VGG-GAP
# Dorfer & Widmer, "Training general-purpose audio tagging networks with noisy labels and
# iterative self-verification" (DCASE 2018 task 2, 2nd place): their released fully
# convolutional VGG, which predicts clips of any length. Every conv is conv -> BN -> ReLU,
# He-normal, 'same' unless marked; pools are max-pools. Their input is (bins, frames) and
# their last pools are 1 x 2 over frames; ours is (frames, bins), so those are (2, 1). No
# conv bias: with 128 bins and 41 classes this gives their published 14,865,124
# parameters (conv kernels + 4 per BN channel, counting BN's running statistics).

VGG_NF = 64
# Rows in multiples of nf: ('conv', width, kernel[, stride, padding]), ('pool', size),
# ('drop', rate); up to the last 3x3 conv, before the 1x1 layers.
VGG_GAP_LAYERS = [
    ('conv', 1, 5, 2), ('conv', 1, 3), ('pool', (2, 2)), ('drop', 0.3),
    ('conv', 2, 3), ('conv', 2, 3), ('pool', (2, 2)), ('drop', 0.3),
    ('conv', 4, 3), ('drop', 0.3), ('conv', 4, 3), ('drop', 0.3),
    ('conv', 6, 3), ('drop', 0.3), ('conv', 6, 3), ('pool', (2, 2)), ('drop', 0.3),
    ('conv', 8, 3), ('conv', 8, 3), ('pool', (2, 1)), ('drop', 0.3),
    ('conv', 8, 3), ('conv', 8, 3), ('pool', (2, 1)), ('drop', 0.3),
    ('conv', 8, 3, 1, 'valid'), ('drop', 0.5),
]


def _vgg_gap_size(n, axis):
    """Size left on axis (0 time, 1 mel) before the 'valid' 3x3 conv, for n input bins."""
    n = -(-n // 2)  # the stride-2 'same' conv rounds up
    for kind, *args in VGG_GAP_LAYERS:
        if kind == 'pool':
            n //= args[0][axis]
    return n


# The 'valid' 3x3 conv needs 3 x 3 positions: the shortest input it accepts.
VGG_GAP_MIN_FRAMES = next(n for n in range(1, 10 ** 4) if _vgg_gap_size(n, 0) >= 3)
VGG_GAP_MIN_MELS = next(n for n in range(1, 10 ** 4) if _vgg_gap_size(n, 1) >= 3)


def vgg_gap_trunk(inputs, cfg_learn, nf=VGG_NF):
    """(batch, time, mel, 1) -> the 'embedding': the per-position output of the 1x1 conv
    with 8 nf channels, (batch, time', mel', 8 nf). It is a map, not a vector: the released
    classifier normalises its per-class maps (BN over positions) before averaging them.
    cfg_learn is unused (the released network has no settings); nf scales every width."""
    x = inputs
    for kind, *args in VGG_GAP_LAYERS:
        if kind == 'conv':
            width, kernel, *rest = args
            x = _conv_bn_relu(x, width * nf, kernel, *rest)
        elif kind == 'pool':
            x = layers.MaxPooling2D(args[0])(x)
        else:
            x = layers.Dropout(args[0])(x)
    return _conv_bn_relu(x, 8 * nf, 1, name='embedding')


def class_map_logits(x, n_classes):
    """Dorfer & Widmer's classifier: a 1x1 conv to one map per class, BN (no ReLU), and the
    average of each map over time and frequency -> logits (batch, n_classes)."""
    x = layers.Conv2D(n_classes, 1, padding='same', use_bias=False,
                      kernel_initializer='he_normal')(x)
    return layers.GlobalAveragePooling2D()(layers.BatchNormalization()(x))


def vgg_gap(input_shape, n_classes, cfg_learn):
    """Dorfer & Widmer's VGG with global average pooling (class_map_logits, one per branch
    of learn.head; theirs is the softmax head) after dropout 0.5; it needs at
    least VGG_GAP_MIN_FRAMES frames (they train on 384) and VGG_GAP_MIN_MELS mel bands."""
    _check_mels(input_shape, VGG_GAP_MIN_MELS, 'vgg_gap')
    inputs = keras.Input(shape=(None,) + tuple(input_shape[1:]))
    embedding = vgg_gap_trunk(inputs, cfg_learn)
    outputs = head_outputs(layers.Dropout(0.5)(embedding), n_classes, cfg_learn,
                           logits=class_map_logits)
    return _model(inputs, embedding, outputs, 'vgg_gap')


# resnet34 and envnet_v2 (Akiyama & Sato's trunks) live in trunks.py.
MODELS = {'baseline': baseline, 'DenSE': dense_se, 'cnn_gru': cnn_gru, 'vgg_gap': vgg_gap,
          **trunks.TRUNKS}
# The fewest input frames a model that takes any length accepts (others: 1).
MIN_FRAMES = {'vgg_gap': VGG_GAP_MIN_FRAMES}
# The fewest samples a waveform model accepts: shorter clips are zero-padded to it to be
# scored whole (waveform.clip_scorer).
MIN_SAMPLES = {'envnet_v2': trunks.ENVNET_MIN_SAMPLES}
# The fewest mel bands a model accepts, for the models that take any number (fastdev.py
# cuts a dry run's bands to them).
MIN_MELS = {'cnn_gru': 2 ** len(CNN_GRU_FILTERS), 'vgg_gap': VGG_GAP_MIN_MELS}


def check(cfg):
    """Refuse an unknown learn.model or learn.head, a model that cannot take the inputs of
    extract.crop, or inputs shorter than the model accepts, before any heavy work."""
    learn = cfg['learn']
    lookup(MODELS, learn['model'], 'learn.model')
    lookup(HEADS, learn['head'], 'learn.head')
    check_input_kind(cfg)
    if cfg['extract']['features'] == 'waveform':
        minimum = MIN_SAMPLES.get(learn['model'], 1)
        if cfg['extract']['crop_samples'] < minimum:
            raise ConfigError(f'extract.crop_samples = {cfg["extract"]["crop_samples"]} is '
                              f'shorter than learn.model {learn["model"]} accepts (at least '
                              f'{minimum} samples: its valid convs and pools need them)')
        return
    check_crop(cfg)
    minimum = MIN_FRAMES.get(learn['model'], 1)
    keys = (('crop_frames', 'clip_frames') if cfg['extract']['crop'] == 'random_crop'
            else ('patch_len',))
    for key in keys:
        if cfg['extract'][key] < minimum:
            raise ConfigError(f'extract.{key} = {cfg["extract"][key]} frames is shorter than '
                              f'learn.model {learn["model"]} accepts (at least {minimum} '
                              f'frames: its last valid 3x3 conv needs 3 positions)')


def check_input_kind(cfg):
    """A waveform model (trunks.WAVEFORM_MODELS) needs waveform inputs, a log-mel model
    log-mel frames (extract.features, default logmel)."""
    name = cfg['learn']['model']
    features = cfg['extract']['features']
    if (name in trunks.WAVEFORM_MODELS) != (features == 'waveform'):
        wants = 'waveform' if name in trunks.WAVEFORM_MODELS else 'log-mel'
        raise ConfigError(f'learn.model {name} takes {wants} inputs, but extract.features is '
                          f'{features!r}')


def check_crop(cfg):
    """extract.crop random_crop predicts each whole clip in one pass, so the model must take
    inputs of any number of frames. A model that needs a fixed length (baseline, DenSE:
    a dense layer on the flattened map) is refused rather than scored by averaging crops,
    which would be extract.crop patches under another name."""
    ext, learn = cfg['extract'], cfg['learn']
    if ext['crop'] != 'random_crop':
        return
    try:  # the model itself says whether it can be built with an unknown time axis
        build(learn['model'], input_shape(cfg), 2, learn)
    except (ValueError, TypeError) as err:
        raise ConfigError(f'learn.model {learn["model"]} needs a fixed number of input '
                          f'frames, but extract.crop random_crop predicts whole clips: use '
                          f'extract.crop patches, or a model that takes any length (such as '
                          f'cnn_gru, vgg_gap)') from err


def input_shape(cfg):
    """Model input (frames, n_mels, 1): patch_len frames for patches, any (None) for
    random_crop (crops of crop_frames in training, whole clips of clip_frames to predict);
    (None,) for waveforms (crops of crop_samples in training, whole clips to predict)."""
    ext = cfg['extract']
    if ext['features'] == 'waveform':
        return (None,)
    frames = ext['patch_len'] if ext['crop'] == 'patches' else None
    return (frames, ext['n_mels'], 1)


def lengths(cfg):
    """(training input frames, evaluated input frames): patches of patch_len for both, or
    random crops of crop_frames and whole clips of clip_frames (He et al., DCASE 2019); for
    waveforms crops of crop_samples for both (validation loss: each clip's first crop;
    clip scores are whole clips', waveform.clip_scorer)."""
    ext = cfg['extract']
    if ext['features'] == 'waveform':
        return ext['crop_samples'], ext['crop_samples']
    if ext['crop'] == 'random_crop':
        return ext['crop_frames'], ext['clip_frames']
    return ext['patch_len'], ext['patch_len']


def n_trainable_params(model):
    """The number of trainable weights of a model (BN moving statistics are not trainable)."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def build(name, input_shape, n_classes, cfg_learn):
    """learn.model name -> uncompiled keras.Model mapping input_shape to its named outputs
    ('scores' [B, n_classes], the branches of learn.head, 'embedding'), every batch
    normalisation with learn.bn_momentum and learn.bn_epsilon."""
    model = lookup(MODELS, name, 'learn.model')(tuple(input_shape), n_classes, cfg_learn)
    set_batch_norm(model, cfg_learn['bn_momentum'], cfg_learn['bn_epsilon'])
    return model


def set_batch_norm(model, momentum, epsilon):
    """Give every BatchNormalization layer of model (nested models included) these
    constants. Set once the model is built, so that every trunk and head gets them
    without each builder passing them on; Keras reads both at call time, and the saved
    model's config carries them. Keras's defaults are 0.99 and 1e-3; Dorfer & Widmer's
    Lasagne network uses alpha 0.1 (momentum 0.9) and epsilon 1e-4."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum, layer.epsilon = float(momentum), float(epsilon)
        elif isinstance(layer, keras.Model):
            set_batch_norm(layer, momentum, epsilon)
