"""Models by name (config key `learn.model`).

baseline and DenSE come from Fonseca, Font & Serra, "Model-agnostic approaches to handling
noisy labels when training sound event classifiers", IEEE WASPAA 2019. Inputs are log-mel
patches of shape (patch_len, n_mels, 1): time x mel bands x 1 channel (channels_last).
The tagging models cnn_gru and vgg_gap (below) take any number of frames: (None, n_mels, 1).

Every model ends in float32 outputs (a softmax, or the layers of learn.head), so that
losses and metrics stay in float32 under a mixed_float16 policy, and names its penultimate representation 'embedding', so that a
caller can read it with
    keras.Model(model.input, [model.output, model.get_layer('embedding').output])
(model.input, not the list model.inputs, so that calling it on one array raises no
input-structure warning).

Heads by name (config key `learn.head`, registry HEADS): every model ends in
head_outputs(), which puts the head's output layer(s) on the features of its classifier.
"""
import keras
from keras import layers

import losses
from config import ConfigError, lookup


def _too_small(input_shape, pools):
    """True if the pools in turn shrink time or mel below 1 (valid pooling floors)."""
    time, mel = input_shape[0], input_shape[1]
    for pool_time, pool_mel in pools:
        time, mel = time // pool_time, mel // pool_mel
    return time < 1 or mel < 1


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
    x = layers.Dense(64, activation='relu', kernel_initializer='he_normal',
                     kernel_regularizer=keras.regularizers.L2(1e-3), name='embedding')(x)
    outputs = head_outputs(layers.Dropout(0.5)(x), n_classes, cfg_learn,
                           kernel_initializer='he_normal',
                           kernel_regularizer=keras.regularizers.L2(1e-3))
    return keras.Model(inputs, outputs, name='baseline')


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
    dropout 0.5 and a softmax with he_normal kernel and L2 1e-3. `same` pooling never
    shrinks a side below 1, so any number of modules fits any patch."""
    inputs = keras.Input(shape=input_shape)
    x = layers.BatchNormalization()(inputs)
    x = layers.Concatenate()([x, layers.Conv2D(15, (3, 3), padding='same')(x)])
    for i in range(cfg_learn['densenet_modules']):
        x = _dense_se_module(x, min(512, 16 * 2 ** i))
    x = layers.Flatten(name='embedding')(_bn_relu(x))
    outputs = head_outputs(layers.Dropout(0.5)(x), n_classes, cfg_learn,
                           kernel_initializer='he_normal',
                           kernel_regularizer=keras.regularizers.L2(1e-3))
    return keras.Model(inputs, outputs, name='DenSE')


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
    """CNN-GRU with a softmax output (see cnn_gru_trunk)."""
    _check_mels(input_shape, 2 ** len(CNN_GRU_FILTERS), 'cnn_gru')
    inputs = keras.Input(shape=(None,) + tuple(input_shape[1:]))
    outputs = head_outputs(cnn_gru_trunk(inputs, cfg_learn), n_classes, cfg_learn)
    return keras.Model(inputs, outputs, name='cnn_gru')


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
    """Dorfer & Widmer's VGG with global average pooling and a softmax output; it needs at
    least VGG_GAP_MIN_FRAMES frames (they train on 384) and VGG_GAP_MIN_MELS mel bands."""
    _check_mels(input_shape, VGG_GAP_MIN_MELS, 'vgg_gap')
    inputs = keras.Input(shape=(None,) + tuple(input_shape[1:]))
    x = layers.Dropout(0.5)(vgg_gap_trunk(inputs, cfg_learn))
    outputs = head_outputs(x, n_classes, cfg_learn, logits=class_map_logits)
    return keras.Model(inputs, outputs, name='vgg_gap')


MODELS = {'baseline': baseline, 'DenSE': dense_se, 'cnn_gru': cnn_gru, 'vgg_gap': vgg_gap}
# The fewest input frames a model that takes any length accepts (others: 1).
MIN_FRAMES = {'vgg_gap': VGG_GAP_MIN_FRAMES}


# ----------------------------------------------------------------------------- heads
# Every model ends in head_outputs(features, n_classes, cfg_learn, ...), which builds the
# output layer(s) of learn.head on the features that feed the classifier. The softmax head
# is the model's own softmax layer, exactly as before heads existed. Every other head
# returns a dict of named outputs: 'scores' (the clip-level prediction, [B, K] in [0, 1])
# and one entry per branch, named after what its loss (losses.BRANCH_LOSSES) reads:
# 'sigmoid' and 'softmax' probabilities, 'sparsemax_logits' (the sparsemax loss needs the
# logits z themselves: its threshold and support are functions of z, not of sparsemax(z)).
# Each branch has its own classifier layer(s) (He et al.: "two dense layers"). All output
# layers are float32, so that losses stay float32 under mixed_float16.

@keras.saving.register_keras_serializable(package='noisy_sed')
class Sparsemax(layers.Layer):
    """sparsemax over the last axis (Martins & Astudillo, ICML 2016): losses.sparsemax."""

    def call(self, z):
        return losses.sparsemax(z)


def _branch(z, activation, prefix=''):
    """Float32 output of one branch from its logits z, named after what its loss reads
    (prefix: that of a multitask head's layers, see multitask_outputs)."""
    if activation == 'sparsemax':
        z = layers.Activation('linear', dtype='float32', name=f'{prefix}sparsemax_logits')(z)
        return ({'sparsemax_logits': z},
                Sparsemax(dtype='float32', name=f'{prefix}sparsemax')(z))
    p = layers.Activation(activation, dtype='float32', name=f'{prefix}{activation}')(z)
    return {activation: p}, p


# learn.head -> the activations of its branches (He et al., Sec. 3.2: the multi-activation
# heads put a sigmoid layer trained with BCE beside a softmax or sparsemax layer; the
# branches' outputs are averaged for prediction).
HEADS = {
    'softmax': ('softmax',),
    'sigmoid': ('sigmoid',),
    'sparsemax': ('sparsemax',),
    'sigmoid_softmax': ('sigmoid', 'softmax'),
    'sigmoid_sparsemax': ('sigmoid', 'sparsemax'),
}


def head_outputs(x, n_classes, cfg_learn, logits=None, prefix='', **dense):
    """The output layer(s) of learn.head on features x.

    logits(x, n_classes) -> [B, K] builds one classifier (default: a dense layer with the
    `dense` keyword arguments, e.g. the baseline's L2 regulariser); it is called once
    per branch, so that each branch has its own weights. With learn.multitask: the two
    heads of multitask_outputs. prefix names the layers of one multitask head.
    """
    head = cfg_learn.get('head', 'softmax')
    if cfg_learn.get('multitask') and not prefix:
        return multitask_outputs(x, n_classes, cfg_learn, **dense)
    if head == 'softmax' and logits is None and not prefix:
        # dtype float32: the probabilities stay float32 under a mixed_float16 policy.
        return layers.Dense(n_classes, activation='softmax', dtype='float32', **dense)(x)
    outputs, probs = {}, []
    for activation in lookup(HEADS, head, 'learn.head'):
        z = (logits(x, n_classes) if logits is not None else layers.Dense(
            n_classes, dtype='float32', name=f'{prefix}{activation}_dense', **dense)(x))
        named, p = _branch(z, activation, prefix)
        outputs.update(named)
        probs.append(p)
    if head in ('softmax', 'sigmoid'):
        return probs[0]  # one layer whose probabilities are the prediction
    outputs['scores'] = (probs[0] if len(probs) == 1 else
                         layers.Average(dtype='float32', name=f'{prefix}scores')(probs))
    return outputs


# learn.multitask (Akiyama & Sato, "Multitask learning and semi-supervised learning with
# noisy data for audio tagging", DCASE 2019 task 2, Sec. 2.1 and 3.4.3): the trunk's
# features feed two identical heads, FC 1024 - ReLU - dropout 0.2 - FC 1024 - ReLU -
# dropout 0.1 - the output layer(s) of learn.head; one head learns the verified (curated)
# clips, the other the unverified (noisy) ones. The paper puts them after global max
# pooling: a trunk whose features are still a map (vgg_gap) is max-pooled over time and
# frequency first, and the heads end in dense layers (not the trunk's own classifier).
# The paper's FC 1024 layers are plain (PyTorch's defaults, no weight decay): here Keras's
# defaults (Glorot uniform, no regulariser), whatever the trunk; each head's output layer is
# built as the model's single output layer is (baseline and DenSE: he_normal, L2 1e-3).
MULTITASK_HEADS = ('verified', 'unverified')
MULTITASK_FC = ((1024, 0.2), (1024, 0.1))


def multitask_outputs(x, n_classes, cfg_learn, **dense):
    """Named outputs of the two multitask heads: 'scores' is the verified head's prediction
    (what every caller predicts with); head_branches(outputs, name) gives each head's
    branches for its loss. Layers are named '<head>_...'. `dense` (the trunk's output
    layer settings) goes to the output layers only, not to the FC 1024 layers."""
    if len(x.shape) == 4:
        x = layers.GlobalMaxPooling2D()(x)
    head, outputs, predictions = cfg_learn['head'], {}, {}
    for name in MULTITASK_HEADS:
        h = x
        for i, (units, rate) in enumerate(MULTITASK_FC):
            h = layers.Dense(units, activation='relu', name=f'{name}_fc{i + 1}')(h)
            h = layers.Dropout(rate)(h)
        named = head_outputs(h, n_classes, cfg_learn, prefix=f'{name}_', **dense)
        predictions[name] = scores(named)
        named = named if isinstance(named, dict) else {head: named}
        outputs.update({f'{name}_{key}': value for key, value in named.items()
                        if key != 'scores'})
    # A layer of its own: one tensor may not be two outputs of a model.
    outputs['scores'] = layers.Identity(dtype='float32', name='scores')(predictions['verified'])
    return outputs


def head_branches(outputs, name, head):
    """One multitask head's outputs as its loss reads them: the probabilities of a one-
    layer head (softmax, sigmoid), else its branches by their unprefixed names."""
    prefix = f'{name}_'
    if head in ('softmax', 'sigmoid'):
        return outputs[prefix + head]
    return {key[len(prefix):]: value for key, value in outputs.items()
            if key.startswith(prefix)}


def scores(outputs):
    """The prediction [B, K] of a model's output: the tensor itself, or its 'scores'."""
    return outputs['scores'] if isinstance(outputs, dict) else outputs


def check(cfg):
    """Refuse an unknown learn.model or learn.head, a model that cannot take the inputs of
    extract.crop, or inputs shorter than the model accepts, before any heavy work."""
    learn = cfg['learn']
    lookup(MODELS, learn['model'], 'learn.model')
    lookup(HEADS, learn['head'], 'learn.head')
    check_crop(cfg)
    minimum = MIN_FRAMES.get(learn['model'], 1)
    keys = (('crop_frames', 'clip_frames') if cfg['extract']['crop'] == 'random_crop'
            else ('patch_len',))
    for key in keys:
        if cfg['extract'][key] < minimum:
            raise ConfigError(f'extract.{key} = {cfg["extract"][key]} frames is shorter than '
                              f'learn.model {learn["model"]} accepts (at least {minimum} '
                              f'frames: its last valid 3x3 conv needs 3 positions)')


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
    random_crop (crops of crop_frames in training, whole clips of clip_frames to predict)."""
    ext = cfg['extract']
    frames = ext['patch_len'] if ext['crop'] == 'patches' else None
    return (frames, ext['n_mels'], 1)


def lengths(cfg):
    """(training input frames, evaluated input frames): patches of patch_len for both, or
    random crops of crop_frames and whole clips of clip_frames (He et al., DCASE 2019)."""
    ext = cfg['extract']
    if ext['crop'] == 'random_crop':
        return ext['crop_frames'], ext['clip_frames']
    return ext['patch_len'], ext['patch_len']


def build(name, input_shape, n_classes, cfg_learn):
    """learn.model name -> uncompiled keras.Model mapping input_shape to n_classes
    probabilities (softmax head) or to the named outputs of learn.head."""
    return lookup(MODELS, name, 'learn.model')(tuple(input_shape), n_classes, cfg_learn)
