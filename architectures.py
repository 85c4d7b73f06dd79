"""Models by name (config key `learn.model`).

Both models come from Fonseca, Font & Serra, "Model-agnostic approaches to handling noisy
labels when training sound event classifiers", IEEE WASPAA 2019. Inputs are log-mel
patches of shape (patch_len, n_mels, 1): time x mel bands x 1 channel (channels_last).

Every model ends in a float32 softmax, so that losses and metrics stay in float32 under a
mixed_float16 policy, and names its penultimate representation 'embedding', so that a
caller can read it with
    keras.Model(model.input, [model.output, model.get_layer('embedding').output])
(model.input, not the list model.inputs, so that calling it on one array raises no
input-structure warning).
"""
import keras
from keras import layers

from config import ConfigError, lookup


def _too_small(input_shape, pools):
    """True if the pools in turn shrink time or mel below 1 (valid pooling floors)."""
    time, mel = input_shape[0], input_shape[1]
    for pool_time, pool_mel in pools:
        time, mel = time // pool_time, mel // pool_mel
    return time < 1 or mel < 1


def _bn_relu(x):
    return layers.Activation('relu')(layers.BatchNormalization()(x))


def _softmax(x, n_classes, **kwargs):
    # dtype float32: the probabilities stay float32 under a mixed_float16 policy.
    return layers.Dense(n_classes, activation='softmax', dtype='float32', **kwargs)(x)


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
    outputs = _softmax(layers.Dropout(0.5)(x), n_classes, kernel_initializer='he_normal',
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
    outputs = _softmax(layers.Dropout(0.5)(x), n_classes, kernel_initializer='he_normal',
                       kernel_regularizer=keras.regularizers.L2(1e-3))
    return keras.Model(inputs, outputs, name='DenSE')


MODELS = {'baseline': baseline, 'DenSE': dense_se}


def check(cfg):
    """Refuse an unknown learn.model before any heavy work."""
    lookup(MODELS, cfg['learn']['model'], 'learn.model')


def build(name, input_shape, n_classes, cfg_learn):
    """learn.model name -> uncompiled keras.Model mapping input_shape to n_classes probs."""
    return lookup(MODELS, name, 'learn.model')(tuple(input_shape), n_classes, cfg_learn)
