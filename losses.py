"""Losses by name (config section `loss`, key `type`).

A loss here is a StepLoss: the training step hands it the batch targets, the predictions
and (for the losses that need them) the inputs or embeddings, plus optional per-example
weights set by the learning mode (loss masking). It returns one scalar for the optimiser
and a dict of figures to log per epoch. All maths is in keras.ops.
"""
from keras import ops

from utils import ConfigError

P_MIN = 1e-7  # probabilities are clipped here before a log or a power


def cce(y_true, y_pred):
    """Categorical cross-entropy per example: -sum_k y_k log p_k."""
    p = ops.clip(y_pred, P_MIN, 1.0)
    return -ops.sum(y_true * ops.log(p), axis=-1)


def lq_loss(y_true, y_pred, q):
    """Lq loss per example (Zhang & Sabuncu, NeurIPS 2018): (1 - (sum_k y_k p_k)^q) / q.

    Written as -expm1(q log s) / q, which equals the formula and stays finite and accurate
    as q -> 0 (where it tends to CCE). q may be a scalar or a per-batch tensor.
    """
    s = ops.clip(ops.sum(y_true * y_pred, axis=-1), P_MIN, 1.0)
    return -ops.expm1(q * ops.log(s)) / q


def weighted_mean(losses, weights):
    """sum(w l) / sum(w): the mean over the examples that are kept (weight 1)."""
    return ops.sum(weights * losses) / ops.maximum(ops.sum(weights), 1e-12)


class StepLoss:
    """Base: per-example loss, optional weights from the mode, mean over the kept ones.

    Subclasses define per_example(y_true, y_pred, x, emb) -> [B] losses.
    """

    needs_x = False          # the step passes the (mixed, standardised) inputs
    needs_embedding = False  # the step passes the penultimate-layer output
    log_names = ()           # names of the extra per-epoch figures this loss reports

    def __call__(self, y_true, y_pred, x=None, emb=None, weights=None):
        losses = self.per_example(y_true, y_pred, x, emb)
        if weights is None:
            weights = ops.ones_like(losses)
        return self.reduce(losses, weights)

    def reduce(self, losses, weights):
        """Per-example losses [B] and weights [B] -> (scalar loss, figures to log)."""
        return weighted_mean(losses, weights), {}

    def callbacks(self):
        """Keras callbacks that drive the loss's state (epoch counters, ...)."""
        return []


class CCE(StepLoss):
    def __init__(self, cfg):
        pass

    def per_example(self, y_true, y_pred, x=None, emb=None):
        return cce(y_true, y_pred)


class Lq(StepLoss):
    def __init__(self, cfg):
        self.q = cfg['loss']['q_loss']

    def per_example(self, y_true, y_pred, x=None, emb=None):
        return lq_loss(y_true, y_pred, self.q)


LOSSES = {
    'CCE': CCE,
    'lq_loss': Lq,
}


def check(cfg):
    """Refuse an unknown loss.type before any heavy work."""
    name = cfg['loss']['type']
    if name not in LOSSES:
        raise ConfigError(f'loss.type {name!r} is unknown; valid losses: {", ".join(LOSSES)}')


def get(cfg):
    """The StepLoss named by loss.type."""
    check(cfg)
    return LOSSES[cfg['loss']['type']](cfg)


def per_example_by_name(name, q):
    """Per-example loss used to score clips (pruning): 'lq_loss' with q, or 'CCE'."""
    if name == 'CCE':
        return cce
    return lambda y_true, y_pred: lq_loss(y_true, y_pred, q)
