"""Smaller training sets drawn from the training subset (ctrl.n_noisy, ctrl.n_clean).

Deng, Gao, Feng, Xu & Chen, "Adaptive generalized cross-entropy loss for sound event
classification with noisy labels" (Sec. 3.1, Table 1) train on parts of FSDnoisy18k's
training set: 500 / 1,003 / 5,000 / 10,000 of the noisy clips with all 1,772 clean ones,
and 10,000 noisy clips with 443 / 886 / 1,329 clean ones. ctrl.n_noisy and ctrl.n_clean
draw that many clips from the unverified and the verified part of the training subset
(ctrl.train_data), stratified by class, with ctrl.seed. The draw comes before the
train/validation split and the folds: the paper names no validation set of its own (it
takes "the learning strategy configuration" of Fonseca et al., ICASSP 2019, whose
validation clips, as in the waspaa19 code, are held out of the training data), and its
Table 1 counts the clips a subset has, so the validation clips are part of the drawn
counts, as they are part of a whole subset's.

Per part (the n clips of one part, C classes present in it, n_c clips of class c), the
rounding rule: when n >= C every class keeps one clip and the other n - C clips are
shared in proportion to each class's remaining clips (n_c - 1), by the largest-remainder
rule (each class gets the floor of its share, the clips left over go to the largest
fractional parts, ties to the class listed first); when n < C the n clips are shared in
proportion to n_c by the same rule (so some classes get none). A class never gets more
clips than it has. Multi-label clips are stratified by their rarest label (splits.strata).
"""
import logging

import numpy as np

from config import ConfigError

logger = logging.getLogger(__name__)

# The parts drawn from: key, whether the clips are verified, what the log calls them.
PARTS = (('n_noisy', 0, 'unverified'), ('n_clean', 1, 'verified'))


def quotas(counts, n):
    """Clips to draw per class [C] from per-class counts [C] (all > 0) so that they sum to
    n <= counts.sum(): one per class when n >= C, the rest in proportion to counts - 1,
    by the largest-remainder rule (ties: the first class)."""
    counts = np.asarray(counts, np.int64)
    base = np.ones_like(counts) if n >= counts.size else np.zeros_like(counts)
    pool, left = counts - base, n - int(base.sum())
    if left == 0 or pool.sum() == 0:
        return base
    share = left * pool / pool.sum()
    got = np.floor(share).astype(np.int64)
    extra = left - int(got.sum())
    order = np.argsort(-(share - got), kind='stable')
    got[order[:extra]] += 1
    return base + got


def draw(rows, verified, strata, n_noisy, n_clean, seed):
    """(the drawn rows, sorted; {'n_noisy': k, 'n_clean': m} drawn, or {} when both keys
    are null). rows: the training rows; verified [len(rows)] 0/1; strata [len(rows)] one
    class per clip. A null count keeps that part whole."""
    if n_noisy is None and n_clean is None:
        return rows, {}
    rng = np.random.default_rng([seed, 16])  # its own stream of ctrl.seed
    kept, drawn = [], {}
    for (key, flag, name), n in zip(PARTS, (n_noisy, n_clean)):
        part = verified == flag
        if n is None:
            kept.append(rows[part])
            drawn[key] = int(part.sum())
            continue
        if n > part.sum():
            raise ConfigError(f'ctrl.{key} = {n} exceeds the {int(part.sum())} readable '
                              f'{name} clips of the training subset (ctrl.train_data)')
        classes, counts = np.unique(strata[part], return_counts=True)
        for c, k in zip(classes, quotas(counts, n)):
            members = rows[part][strata[part] == c]
            kept.append(rng.choice(members, size=k, replace=False))
        drawn[key] = int(n)
    return np.sort(np.concatenate(kept)).astype(np.int64), drawn


def log_drawn(drawn, n_before):
    if drawn:
        logger.info('training subset drawn (ctrl.n_noisy, ctrl.n_clean, stratified by class): '
                    '%d unverified + %d verified clips of %d', drawn['n_noisy'],
                    drawn['n_clean'], n_before)
