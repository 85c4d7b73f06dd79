"""Output heads by name (config key `learn.head`, registry HEADS; `learn.multitask`) and the
sparsemax they use.

Every model (architectures.MODELS) ends in head_outputs(), which builds the output layer(s)
of learn.head on the features that feed the classifier and returns them as named outputs:
'scores', the clip-level prediction [B, K] in [0, 1] (what every caller predicts with), and
one entry per branch, named after what its loss (losses.BRANCH_LOSSES) reads: 'sigmoid' and
'softmax' probabilities, 'sparsemax_logits' (the sparsemax loss needs the logits z
themselves: its threshold and support are functions of z, not of sparsemax(z)). A head of
one layer (softmax, sigmoid) has one branch whose probabilities are its scores: both names
hold the same tensor (as 'scores' and the verified head's prediction do under
learn.multitask). The model adds the trunk's 'embedding'. All head outputs are float32, so
that losses stay float32 under mixed_float16.
"""
import keras
from keras import layers, ops

from config import lookup

# ----------------------------------------------------------------------------- sparsemax
# Martins & Astudillo, "From softmax to sparsemax: a sparse model of attention and
# multi-label classification", ICML 2016; as used by He, Shen, Zhang & Liu, "Staged
# training strategy and multi-activation for audio tagging with noisy and sparse
# multi-label data" (Eq. 5-9).


def _sparsemax_threshold(z):
    """tau(z) [..., 1] over the last axis (He et al. Eq. 6-8): sort descending, find the
    support size k(z) = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}, tau = (sum_{j<=k(z)} z_(j)
    - 1) / k(z). The gradient flows through the sorted sum to the support's logits."""
    z_sorted = ops.flip(ops.sort(z, axis=-1), axis=-1)
    k = ops.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    cumsum = ops.cumsum(z_sorted, axis=-1)
    k_z = ops.max(ops.where(1.0 + k * z_sorted > cumsum, k, 0.0), axis=-1, keepdims=True)
    top_sum = ops.take_along_axis(cumsum, ops.cast(k_z, 'int32') - 1, axis=-1)
    return (top_sum - 1.0) / k_z


def sparsemax(logits):
    """Euclidean projection of the logits onto the probability simplex, over the last axis:
    max(z - tau(z), 0). Like softmax it keeps the order of the logits, but it gives exactly 0
    to the classes below tau, so a peaked input yields a sparse (even one-hot) output.
    Computed in float32 (a float16 sort and cumulative sum would lose the threshold)."""
    z = ops.cast(logits, 'float32')
    return ops.maximum(z - _sparsemax_threshold(z), 0.0)


# Registered under the package and name it was saved with before heads.py existed
# ('noisy_sed>Sparsemax'), so that saved models still load.
@keras.saving.register_keras_serializable(package='noisy_sed')
class Sparsemax(layers.Layer):
    """sparsemax over the last axis as a layer."""

    def call(self, z):
        return sparsemax(z)


# ----------------------------------------------------------------------------- heads

def _branch(z, activation, prefix=''):
    """(named outputs, probabilities) of one branch from its logits z, in float32, named
    after what its loss reads (prefix: that of a multitask head's layers)."""
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


def _head(x, n_classes, head, logits, prefix, dense):
    """(branch outputs by name, prediction [B, K]) of the head named `head` on features x;
    see head_outputs for logits, prefix and dense."""
    if head == 'softmax' and logits is None and not prefix:
        # The model's own softmax layer, exactly as before heads existed; dtype float32:
        # the probabilities stay float32 under a mixed_float16 policy.
        p = layers.Dense(n_classes, activation='softmax', dtype='float32', **dense)(x)
        return {'softmax': p}, p
    branches, probs = {}, []
    for activation in lookup(HEADS, head, 'learn.head'):
        z = (logits(x, n_classes) if logits is not None else layers.Dense(
            n_classes, dtype='float32', name=f'{prefix}{activation}_dense', **dense)(x))
        named, p = _branch(z, activation, prefix)
        branches.update(named)
        probs.append(p)
    prediction = (probs[0] if len(probs) == 1 else
                  layers.Average(dtype='float32', name=f'{prefix}scores')(probs))
    return branches, prediction


def head_outputs(x, n_classes, cfg_learn, logits=None, **dense):
    """The named outputs of learn.head on features x: 'scores' and the branches.

    logits(x, n_classes) -> [B, K] builds one classifier (default: a dense layer with the
    `dense` keyword arguments, e.g. the baseline's L2 regulariser); it is called once per
    branch, so that each branch has its own weights. With learn.multitask: the two heads
    of multitask_outputs.
    """
    if cfg_learn['multitask']:
        return multitask_outputs(x, n_classes, cfg_learn, **dense)
    branches, prediction = _head(x, n_classes, cfg_learn['head'], logits, '', dense)
    return {'scores': prediction, **branches}


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
    """Named outputs of the two multitask heads: each head's branches as '<head>_<branch>'
    (head_branches(outputs, head) gives them back by their own names), and 'scores', the
    verified head's prediction (what every caller predicts with). Layers are named
    '<head>_...'. `dense` (the trunk's output layer settings) goes to the output layers
    only, not to the FC 1024 layers."""
    if len(x.shape) == 4:
        x = layers.GlobalMaxPooling2D()(x)
    outputs, predictions = {}, {}
    for name in MULTITASK_HEADS:
        h = x
        for i, (units, rate) in enumerate(MULTITASK_FC):
            h = layers.Dense(units, activation='relu', name=f'{name}_fc{i + 1}')(h)
            h = layers.Dropout(rate)(h)
        branches, predictions[name] = _head(h, n_classes, cfg_learn['head'], None,
                                            f'{name}_', dense)
        outputs.update({f'{name}_{key}': value for key, value in branches.items()})
    outputs['scores'] = predictions['verified']
    return outputs


def head_branches(outputs, name):
    """One multitask head's branches by their own names ('sigmoid', 'softmax',
    'sparsemax_logits'), as a loss reads the branches of a single head."""
    prefix = f'{name}_'
    return {key[len(prefix):]: value for key, value in outputs.items()
            if key.startswith(prefix)}
