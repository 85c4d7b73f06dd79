"""Losses by name (config section `loss`, key `type`).

A loss here is a StepLoss, which the training step calls one way for every loss:
loss(batch, outputs) with the data.Batch and the model's named outputs. It computes the
per-example losses; keep() turns the detached losses into the loss's own per-example keep
weights and the figures it logs per epoch; the mode's loss masking (a masker given to get())
multiplies its weights into them; reduce() gives the one scalar for the optimiser. What a
loss reads from the batch beyond x and y is declared by its class (needs). All maths is in
keras.ops.

Adaptive Lq (Deng et al.): the paper's SNN equation is garbled in print; snn_ratio uses the
soft-nearest-neighbour ratio, the reading under which q_a = 1 - SNN (snn_q) lies in [0, 1]
and grows with label noise, as the paper intends.
"""
import keras
from keras import ops

from config import ConfigError, lookup
from heads import _sparsemax_threshold
from multitask_loss import Multitask

P_MIN = 1e-7  # probabilities are clipped here before a log or a power


def cce(y_true, y_pred):
    """Categorical cross-entropy per example: -sum_k y_k log p_k."""
    p = ops.clip(y_pred, P_MIN, 1.0)
    return -ops.sum(y_true * ops.log(p), axis=-1)


def lq_loss(y_true, y_pred, q, target='max'):
    """Lq loss per example (Zhang & Sabuncu, NeurIPS 2018): (1 - s^q) / q.

    target 'max' (loss.lq_target, the default): s = max_k(y_k p_k), as the original code of
    Fonseca et al. (WASPAA 2019) computes it; 'dot': s = sum_k y_k p_k. Both equal p_y for
    one-hot targets; they differ under label smoothing and mixup. Written as
    -expm1(q log s) / q, which equals the formula and stays finite and accurate as q -> 0
    (where it tends to -log s). q may be a scalar or a per-batch tensor.
    """
    reduce = {'max': ops.max, 'dot': ops.sum}[target]
    s = ops.clip(reduce(y_true * y_pred, axis=-1), P_MIN, 1.0)
    return -ops.expm1(q * ops.log(s)) / q


def bce(y_true, y_pred):
    """Binary cross-entropy per example, the mean over the K classes of
    -[y_k log p_k + (1 - y_k) log(1 - p_k)], for sigmoid outputs p (multi-label)."""
    p = ops.clip(y_pred, P_MIN, 1.0 - P_MIN)
    return -ops.mean(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p), axis=-1)


def normalise_targets(y_true):
    """Multi-hot targets -> distributions (each row / its sum; a row of zeros stays zero).

    He et al. (DCASE 2019 task 2) treat a clip's several labels "as uniformly distributed"
    for the single-distribution branches: softmax-CE (cce on these targets) and sparsemax.
    """
    return y_true / ops.maximum(ops.sum(y_true, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- sparsemax
# Martins & Astudillo, "From softmax to sparsemax: a sparse model of attention and
# multi-label classification", ICML 2016; as used by He, Shen, Zhang & Liu, "Staged
# training strategy and multi-activation for audio tagging with noisy and sparse
# multi-label data" (Eq. 9). sparsemax itself and its threshold are in heads.py.

def sparsemax_loss(y_true, logits):
    """Sparsemax loss per example (He et al. Eq. 9; Martins & Astudillo Prop. 3):
    L(z; q) = -q.z + 1/2 sum_{j in S(z)} (z_j^2 - tau(z)^2) + 1/2 |q|^2,
    with q = y_true normalised to sum 1 and S(z) the support of sparsemax(z). L >= 0, with
    0 exactly when sparsemax(z) = q; its gradient with respect to z is sparsemax(z) - q.
    Takes the logits (pre-activation), not probabilities: tau and S need z itself."""
    z = ops.cast(logits, 'float32')
    q = normalise_targets(ops.cast(y_true, 'float32'))
    tau = _sparsemax_threshold(z)
    # The support mask is piecewise constant: no gradient is lost by its cast.
    support = ops.cast(ops.greater(z, tau), 'float32')
    return (-ops.sum(q * z, axis=-1)
            + 0.5 * ops.sum(support * (z * z - tau * tau), axis=-1)
            + 0.5 * ops.sum(q * q, axis=-1))


def weighted_mean(losses, weights):
    """sum(w l) / sum(w): the mean over the examples that are kept (weight 1)."""
    return ops.sum(weights * losses) / ops.maximum(ops.sum(weights), 1e-12)


class StepLoss:
    """Base: per-example loss, keeps every example, mean over the weighted ones.

    Subclasses define per_example(y_true, y_pred, x, emb) -> [B] losses (validation calls
    it too); y_pred is the model's named outputs (heads.py), of which a loss reads the
    branch it trains.
    """

    needs_embedding = False  # measured on embeddings of the batch before mixup, not inputs
    masker = None            # the mode's loss masking (masking.Masker), given to get()
    heads = ('softmax',)     # the learn.head values whose outputs this loss can train
    time_dependent = False   # switches at learn.stage1_epoch (what learn.mode 2 needs)
    per_batch = False        # decides per batch what to keep or which q to use (no multitask)
    log_names = ()           # names of the extra per-epoch figures this loss reports
    reads = frozenset()      # what it reads from the batch beyond x, y, verified (needs)

    @classmethod
    def needs(cls, cfg):
        """What the loss configured by cfg reads from the batch beyond x, y and verified:
        'clean' (the inputs and given labels before mixup), 'members' (each mixed pair's
        members), 'pseudo' (their soft pseudo labels). Declared by the class, so that
        the batch source is built to carry them before any loss is."""
        return cls.reads

    def __call__(self, batch, outputs):
        """One training step's loss -> (scalar loss, per-example weights, figures to log).

        batch: the data.Batch; outputs: the model's named outputs ('scores', the head's
        branches, 'embedding'; the step adds 'clean_embedding' for a loss with
        needs_embedding). Per-example losses (batch_losses); the loss's own keep weights
        (and figures) from the detached losses; times the masker's weights (loss masking
        of the batch's unverified examples) when the mode gave one; then the weighted
        mean. A weight of 0 marks an example as dropped.
        """
        losses = self.batch_losses(batch, outputs)
        detached = ops.stop_gradient(losses)
        weights, figures = self.keep(detached)
        if self.masker is not None:
            masked, more = self.masker(detached, batch.verified)
            weights, figures = weights * masked, {**figures, **more}
        return self.reduce(losses, weights), weights, figures

    def batch_losses(self, batch, outputs):
        """Per-example losses [B] of a training batch: per_example on its targets."""
        return self.per_example(batch.y, outputs)

    @property
    def figure_names(self):
        """Every figure the step logs for this loss: its own and the masker's."""
        return self.log_names + (() if self.masker is None else self.masker.log_names)

    @property
    def variables(self):
        """The variables a run's checkpoint keeps for it: the masker's threshold state."""
        return [] if self.masker is None else self.masker.variables

    def keep(self, losses):
        """Detached per-example losses [B] -> (keep weights [B], figures to log)."""
        return ops.ones_like(losses), {}

    def reduce(self, losses, weights):
        """Per-example losses [B] and weights [B] -> the scalar loss."""
        return weighted_mean(losses, weights)

    def callbacks(self):
        """Keras callbacks that drive the loss's state (epoch counters, ...)."""
        return []


class CCE(StepLoss):
    def __init__(self, cfg):
        pass

    def per_example(self, y_true, y_pred, x=None, emb=None):
        return cce(y_true, y_pred['softmax'])


class Lq(StepLoss):
    def __init__(self, cfg):
        self.q, self.target = cfg['loss']['q_loss'], cfg['loss']['lq_target']

    def per_example(self, y_true, y_pred, x=None, emb=None):
        return lq_loss(y_true, y_pred['softmax'], self.q, self.target)


class EpochCounter(keras.callbacks.Callback):
    """Writes the absolute epoch index (Keras counts it across stages) into a variable."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(epoch)


class TimeDependentLq(StepLoss):
    """Time-dependent loss (Fonseca, Font & Serra, WASPAA 2019; learn.mode 2).

    Before epoch learn.stage1_epoch: Lq with loss.q_loss on every example. From then on:
    Lq with loss.q_loss2, and the examples of the batch whose loss is above threshold()
    are discarded (assumed to carry wrong labels). Subclasses define threshold().
    """

    log_names = ('discarded',)  # fraction of the batch over the threshold; 0 before
    time_dependent = per_batch = True

    def __init__(self, cfg):
        self.q_early, self.q_late = cfg['loss']['q_loss'], cfg['loss']['q_loss2']
        self.target = cfg['loss']['lq_target']
        self.switch_epoch = cfg['learn']['stage1_epoch']
        # A variable, not a Python int, so the compiled (XLA) step sees the switch
        # without retracing.
        self.epoch = keras.Variable(0, dtype='int32', trainable=False, name='loss_epoch')

    def late(self):
        return ops.greater_equal(self.epoch, self.switch_epoch)

    def per_example(self, y_true, y_pred, x=None, emb=None):
        q = ops.where(self.late(), self.q_late, self.q_early)
        return lq_loss(y_true, y_pred['softmax'], q, self.target)

    def keep(self, losses):
        # 0 for the dropped examples: reduce() then averages over the number kept (the
        # original divided by a fixed batch size), and the step counts them as flagged.
        over = ops.logical_and(self.late(), ops.greater(losses, self.threshold(losses)))
        over = ops.cast(over, losses.dtype)
        return 1.0 - over, {'discarded': ops.mean(over)}

    def callbacks(self):
        return [EpochCounter(self.epoch)]


class LqMaxTimeSudden(TimeDependentLq):
    """Discards the examples whose loss exceeds loss.m_loss2 times the batch maximum."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.m = cfg['loss']['m_loss2']

    def threshold(self, losses):
        return self.m * ops.max(losses)


class LqPercTimeSudden(TimeDependentLq):
    """Discards the examples above the loss.perc_loss2 percentile of the batch's losses."""

    def __init__(self, cfg):
        super().__init__(cfg)
        # float64: quantile picks index floor((B - 1) q); a float32 q (0.7 -> 0.6999999)
        # would pick one below numpy's percentile at some batch sizes.
        self.fraction = ops.convert_to_tensor(cfg['loss']['perc_loss2'] / 100, 'float64')

    def threshold(self, losses):
        return ops.quantile(losses, self.fraction, method='lower')


def snn_ratio(x, labels, temperature):
    """Soft nearest neighbour ratio of a batch (Deng et al.): a scalar in [0, 1].

    x [B, ...] is flattened to [B, D]. Per example i: the share of its neighbour weights
    exp(-|x_i - x_j|^2 / T), j != i, that falls on examples of its own class; 0 when the
    batch holds no other example of its class. The paper's equation is garbled in print;
    this ratio is the reading under which 1 - SNN lies in [0, 1] and grows with label
    noise, as the paper intends. Computed in log space: large distances or a small T
    would underflow every exp to 0 and give 0/0.
    """
    x = ops.cast(ops.reshape(x, (ops.shape(x)[0], -1)), 'float32')
    sq = ops.sum(x * x, axis=1)
    # |a|^2 + |b|^2 - 2ab costs one matmul; rounding can make it slightly negative.
    dist2 = ops.maximum(sq[:, None] + sq[None, :] - 2.0 * ops.matmul(x, ops.transpose(x)), 0.0)
    logits = -dist2 / temperature
    others = ops.logical_not(ops.eye(ops.shape(x)[0], dtype='bool'))
    same = ops.logical_and(others, ops.equal(labels[:, None], labels[None, :]))
    log_num = ops.logsumexp(ops.where(same, logits, -float('inf')), axis=1)
    log_den = ops.logsumexp(ops.where(others, logits, -float('inf')), axis=1)
    # Rows without a same-class partner are -inf - (-inf) (or -inf when B = 1): replace
    # both terms there so that no nan is computed, even in a branch where() drops.
    paired = ops.any(same, axis=1)
    log_ratio = ops.where(paired, log_num, 0.0) - ops.where(paired, log_den, 0.0)
    return ops.mean(ops.where(paired, ops.exp(log_ratio), 0.0))


def snn_q(x, labels, temperature):
    """The adaptive q of a batch before clipping: q_a = 1 - SNN (Deng et al.)."""
    return 1.0 - snn_ratio(x, labels, temperature)


class AdaptiveLq(StepLoss):
    """Lq whose q is set per batch to 1 - SNN (Deng et al., adaptive GCE).

    A noisier batch has fewer same-label neighbours, a lower SNN and a higher q, the more
    robust end of Lq. SNN is measured on the standardised input patches (loss.snn_space
    input, the paper's setting) or on the penultimate-layer output (embedding), with the
    given labels, on the batch before mixup (the batch's x_clean and labels, or the
    embeddings of x_clean the step adds to the outputs), since a mixed batch labelled by
    its argmax would measure the mixing, not the label noise.
    """

    log_names = ('q_a',)
    per_batch = True
    reads = frozenset({'clean'})

    def __init__(self, cfg):
        loss = cfg['loss']
        self.temperature, self.q_min = loss['snn_temperature'], loss['q_min']
        self.needs_embedding = loss['snn_space'] == 'embedding'
        self.target = loss['lq_target']
        # per_example sets it and keep reports it; a variable (not a Python attribute
        # holding a tensor) so it is valid across traced functions.
        self.q_a = keras.Variable(1.0, dtype='float32', trainable=False, name='loss_q_a')

    def per_example(self, y_true, y_pred, x=None, emb=None, clean=None):
        """clean: (inputs or embeddings, label indices) before mixup; without it (no
        mixup: validation, direct calls) x or emb with the argmax of y_true."""
        if clean is None:
            clean = (emb if self.needs_embedding else x), ops.argmax(y_true, axis=-1)
        q = snn_q(*clean, self.temperature)
        # q is a setting chosen from the batch, not a quantity to optimise: no gradient.
        q = ops.clip(ops.stop_gradient(q), self.q_min, 1.0)
        self.q_a.assign(q)
        return lq_loss(y_true, y_pred['softmax'], q, self.target)

    def batch_losses(self, batch, outputs):
        space = outputs['clean_embedding'] if self.needs_embedding else batch.x_clean
        return self.per_example(batch.y, outputs, clean=(space, batch.labels))

    def keep(self, losses):
        return ops.ones_like(losses), {'q_a': ops.convert_to_tensor(self.q_a)}


def softmax_cce(y_true, y_pred):
    """CCE of a softmax branch on targets normalised to sum 1: a clip's several labels as
    a uniform distribution (He et al., DCASE 2019, Sec. 3.2)."""
    return cce(normalise_targets(y_true), y_pred)


# Each branch of a head (heads.HEADS) is trained by its own loss, found by the
# name of the branch's output: sigmoid probabilities -> BCE, softmax probabilities ->
# softmax-CE, sparsemax logits -> the sparsemax loss (which normalises its targets).
BRANCH_LOSSES = {'sigmoid': bce, 'softmax': softmax_cce, 'sparsemax_logits': sparsemax_loss}
# The branches trained on one distribution per example (targets normalised to sum 1).
DISTRIBUTION_BRANCHES = ('softmax', 'sparsemax_logits')


class HeadLosses(StepLoss):
    """loss.type bce: each branch of the head trained with its own classification loss
    (BRANCH_LOSSES); the per-example loss is the sum over the branches, so that a mode's
    masking (staged training) weighs each example's whole loss."""

    heads = ('sigmoid', 'sparsemax', 'sigmoid_softmax', 'sigmoid_sparsemax')

    @classmethod
    def needs(cls, cfg):
        """A head with a distribution branch reads the members of each mixed pair."""
        return frozenset() if cfg['learn']['head'] == 'sigmoid' else frozenset({'members'})

    def __init__(self, cfg):
        pass

    def batch_losses(self, batch, outputs):
        """With the batch's members (which a head with a distribution branch declares it
        reads), the distribution branches learn the mix of the two members'
        distributions, lam * y_a / |y_a| + (1 - lam) * y_b / |y_b|: a mixup of He et al.'s
        uniform label distributions. Normalising the mixed multi-hot target instead would
        weigh a 2-label clip mixed with a 1-label clip at lam 0.5 as 1/3 each rather than
        1/4, 1/4, 1/2. The sigmoid branch's BCE is linear in the target and learns the
        mixed multi-hot target itself."""
        y_true = batch.y
        if batch.lam is not None:
            lam = ops.reshape(batch.lam, (-1, 1))
            y_true = (y_true, lam * normalise_targets(batch.y_a)
                      + (1.0 - lam) * normalise_targets(batch.y_b))
        return self.per_example(y_true, outputs)

    def per_example(self, y_true, y_pred, x=None, emb=None):
        """y_true: targets [B, K], or (targets, distributions) from batch_losses."""
        y, y_dist = y_true if isinstance(y_true, tuple) else (y_true, y_true)
        return sum(BRANCH_LOSSES[name](y_dist if name in DISTRIBUTION_BRANCHES else y, out)
                   for name, out in y_pred.items() if name in BRANCH_LOSSES)


LOSSES = {
    'CCE': CCE,
    'lq_loss': Lq,
    'lq_lqmax_time_sudden': LqMaxTimeSudden,
    'lq_lqperc_time_sudden': LqPercTimeSudden,
    'adaptive_lq': AdaptiveLq,
    'bce': HeadLosses,
}


def check(cfg):
    """Refuse an unknown loss.type, or one that cannot train learn.head, before heavy work.

    CCE, Lq and the noise-robust losses are written for softmax probabilities; bce is the
    heads' own losses, and a softmax head's own loss is CCE (loss.type CCE), so bce with
    learn.head softmax is refused rather than silently meaning CCE.
    """
    name, head = cfg['loss']['type'], cfg['learn']['head']
    heads = lookup(LOSSES, name, 'loss.type').heads
    if head not in heads:
        raise ConfigError(f'loss.type {name!r} does not work with learn.head {head!r}; heads '
                          f'it supports: {", ".join(heads)}'
                          + ('; a softmax head is trained with loss.type CCE or an Lq loss'
                             if head == 'softmax' else ''))


def get(cfg, masker=None):
    """The StepLoss named by loss.type, with the mode's loss masking when it has one (the
    staged mode's masking.Masker); with learn.multitask, that loss on both heads
    (multitask_loss.Multitask)."""
    loss = lookup(LOSSES, cfg['loss']['type'], 'loss.type')(cfg)
    loss.masker = masker
    return Multitask(loss, cfg) if cfg['learn']['multitask'] else loss


def needs(cfg):
    """What the configured step loss (get(cfg)) reads from the batch (StepLoss.needs)."""
    loss = lookup(LOSSES, cfg['loss']['type'], 'loss.type')
    return loss.needs(cfg) | (Multitask.needs(cfg) if cfg['learn']['multitask'] else set())


def per_example_by_name(name, q, target='max'):
    """Per-example loss used to score clips (pruning): 'lq_loss' with q and loss.lq_target,
    or 'CCE'."""
    if name == 'CCE':
        return cce
    return lambda y_true, y_pred: lq_loss(y_true, y_pred, q, target)
