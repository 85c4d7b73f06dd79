"""Epoch plans: which patches each training step takes, their mixup partners and weights
(config section `learn`: batch_size, mixup, mixup_alpha, mixup_mode, mixup_p, multitask,
multitask_batches), drawn on the host from the run's rng so that a run is repeatable
whatever the order in which tf.data evaluates batches. The augmentations drawn into a plan
are augment.py's.
"""
import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from config import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class EpochPlan:
    """One epoch of training steps: patch indices, mixup partners and mixup weights, crop
    offsets, SpecAugment masks and gains (augment.py).

    Arrays have shape [steps, batch, ...]. idx are patch indices; partner[i] is the patch
    mixed into idx[i] with weight 1 - lam[i] (lam = 1: no mixup). shift / partner_shift
    are added to the patch's start frame (random crops; 0 for patches). fmask / tmask
    [steps, batch, n_masks, 2] are (first band or frame, width) of each mask (n_masks 0:
    none). gain / partner_gain multiply each member's mel energies (1: none). warp
    [steps, batch, 2]: SpecAugment's time warp (point, distance) of each (mixed) example
    ([steps, batch, 0]: none). semi [steps, batch]: 1 for an example of the
    soft-pseudo-label stream (learn.multitask_batches paper). scale [steps, batch, 2]: the
    resampling factors of a waveform's member and partner (waveform.py; [steps, batch, 0]:
    none). Every field is drawn on the host from the run's rng, so a run is repeatable
    whatever the order in which tf.data evaluates batches.
    """
    idx: np.ndarray
    partner: np.ndarray
    lam: np.ndarray
    shift: np.ndarray = None
    partner_shift: np.ndarray = None
    fmask: np.ndarray = None
    tmask: np.ndarray = None
    gain: np.ndarray = None
    partner_gain: np.ndarray = None
    warp: np.ndarray = None
    semi: np.ndarray = None
    scale: np.ndarray = None

    def __post_init__(self):
        for name in ('shift', 'partner_shift'):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.idx.shape, np.int64))
        for name in ('gain', 'partner_gain'):
            if getattr(self, name) is None:
                setattr(self, name, np.ones(self.idx.shape, np.float32))
        for name in ('fmask', 'tmask'):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.idx.shape + (0, 2), np.int64))
        if self.warp is None:  # [steps, batch, 0]: no time warp (static, like the masks)
            self.warp = np.zeros(self.idx.shape + (0,), np.int64)
        if self.semi is None:  # 1: an example of the soft-pseudo-label stream
            self.semi = np.zeros(self.idx.shape, np.float32)
        if self.scale is None:  # [steps, batch, 0]: no waveform stretch (static, likewise)
            self.scale = np.zeros(self.idx.shape + (0,), np.float32)

    def as_dict(self):
        """The arrays by field name: tf.data's element of one epoch (a step is one row of
        each, PatchSource.train_batch's keyword arguments)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def plan_epoch(rng, pool, batch_size, mixup=False, alpha=0.1, mode='intra', p=1.0):
    """Shuffle `pool` (patch indices) into fixed-size batches and draw mixup partners
    (mix_partners).

    The last batch is filled with randomly drawn extra patches so that every step has the
    same shape (one compiled step, no retracing) and every patch is seen each epoch.
    """
    pool = np.asarray(pool, np.int64)
    steps = -(-pool.size // batch_size)
    order = rng.permutation(pool)
    pad = steps * batch_size - pool.size
    if pad:
        order = np.concatenate([order, rng.choice(pool, size=pad)])
    return mix_partners(rng, order.reshape(steps, batch_size), mixup, alpha, mode, p)


def mix_partners(rng, idx, mixup=False, alpha=0.1, mode='intra', p=1.0):
    """The EpochPlan of batches idx [steps, batch] with their mixup partners.

    intra: each batch is mixed with a shuffled copy of itself; inter: each example with
    the example at the same position of the next batch (Fonseca et al., WASPAA 2019).
    lam ~ Beta(alpha, alpha) per example. p (learn.mixup_p): each example is mixed with
    probability p, else it is its own partner with lam 1 (Akiyama & Sato's released code
    mixes an example with probability 0.5); p 1 draws nothing more, so that a run mixing
    every example draws the batches it drew before learn.mixup_p existed.
    """
    if not mixup:
        return EpochPlan(idx, idx.copy(), np.ones(idx.shape, np.float32))
    if mode == 'intra':
        perm = np.argsort(rng.random(idx.shape), axis=1)
        partner = np.take_along_axis(idx, perm, axis=1)
    else:
        partner = np.roll(idx, -1, axis=0)
    lam = rng.beta(alpha, alpha, size=idx.shape).astype(np.float32)
    if p < 1.0:
        mixed = rng.random(idx.shape) < p
        partner, lam = np.where(mixed, partner, idx), np.where(mixed, lam, 1.0)
    return EpochPlan(idx, partner, lam.astype(np.float32))


def plan_halves(rng, first, second, batch_size, mixup=False, alpha=0.1, mode='intra', p=1.0):
    """Batches whose first half comes from pool `first` and second half from `second`.

    The epoch runs over `second` once; `first` is reshuffled as often as needed. mixup
    partners stay inside their half, so a mixed example keeps its pool's status.
    """
    half = max(1, batch_size // 2)
    b = plan_epoch(rng, second, batch_size - half, mixup, alpha, mode, p)
    a = repeat_pool(rng, first, half, b.idx.shape[0], mixup, alpha, mode, p)
    return join_plans([a, b])


def repeat_pool(rng, pool, batch_size, steps, mixup, alpha, mode, p):
    """`steps` batches of `batch_size` from pool, reshuffled as often as needed (a pool
    that runs beside the one an epoch passes over)."""
    parts = []
    while sum(part.idx.shape[0] for part in parts) < steps:
        parts.append(plan_epoch(rng, pool, batch_size, mixup, alpha, mode, p))
    return EpochPlan(**{f.name: np.concatenate([getattr(part, f.name) for part in parts])[:steps]
                        for f in dataclasses.fields(EpochPlan)})


def join_plans(plans):
    """Plans of the same steps side by side: each step's batch is theirs, concatenated."""
    return EpochPlan(**{f.name: np.concatenate([getattr(plan, f.name) for plan in plans], axis=1)
                        for f in dataclasses.fields(EpochPlan)})


def plan_streams(rng, ver, unv, batch_size, mixup=False, alpha=0.1, mode='intra', p=1.0,
                 semi=False):
    """learn.multitask_batches paper (Akiyama & Sato's released train_model1/2.py): every
    step takes batch_size verified patches, batch_size unverified ones and, with semi,
    batch_size of the soft-pseudo-label stream, in that order: [verified | unverified |
    semi], 2 or 3 x batch_size examples. An epoch is one pass over the verified patches
    (the released code's epoch is one pass over its curated loader); the unverified pool is
    reshuffled as often as needed. The semi stream samples with replacement, each example
    a verified patch with probability 1/2, else an unverified one (the released
    WeightedRandomSampler gives curated and noisy clips equal total weight). Mixup partners
    stay inside each stream (the released code mixes each loader's examples with its own)."""
    cur = plan_epoch(rng, ver, batch_size, mixup, alpha, mode, p)
    steps = cur.idx.shape[0]
    streams = [cur, repeat_pool(rng, unv, batch_size, steps, mixup, alpha, mode, p)]
    if semi:
        pick = rng.random((steps, batch_size)) < 0.5
        idx = np.where(pick, rng.choice(ver, size=pick.shape), rng.choice(unv, size=pick.shape))
        plan = mix_partners(rng, idx, mixup, alpha, mode, p)
        plan.semi = np.ones(idx.shape, np.float32)
        streams.append(plan)
    return join_plans(streams)


def cross_pairs(rng, plan, alpha):
    """Mixup between the two halves of plan_halves batches (Akiyama & Sato, Sec. 2.2: curated
    clips mixed with soft-pseudo-labelled ones): each example's partner is the example at
    the same place of the other half, lam ~ Beta(alpha, alpha) per example."""
    half = plan.idx.shape[1] // 2
    plan.partner = np.concatenate([plan.idx[:, half:2 * half], plan.idx[:, :half],
                                   plan.idx[:, 2 * half:]], axis=1)
    plan.lam = rng.beta(alpha, alpha, size=plan.idx.shape).astype(np.float32)
    plan.lam[:, 2 * half:] = 1.0  # an odd batch's last example has no partner
    return plan


def verified_pools(pool, verified, what):
    """(verified, unverified) patch indices of pool; verified [patches] is 1 for a verified
    clip's patch. A method that trains the two apart (`what`: learn.multitask, learn.mode
    staged) cannot run without both: ConfigError naming it."""
    ver, unv = pool[verified[pool]], pool[~verified[pool]]
    if ver.size == 0 or unv.size == 0:
        raise ConfigError(f'{what} needs verified and unverified training clips (FSDnoisy18k: '
                          f'ctrl.train_data all); this split has {ver.size} verified and '
                          f'{unv.size} unverified patches')
    return ver, unv


def check_batch_size(batch_size, pool, verified, verified_stages=False, halves=False,
                     streams=False):
    """Refuse a learn.batch_size that a pool of patch indices cannot fill, before any heavy
    work: plan_epoch pads the last batch with repeated patches, so a batch larger than its
    pool would be allocated (and trained) at its full size over the same few patches (issue
    19, case 5: batch_size 100000 on 456 patches reached 17 GB). verified [patches] is 1
    for a verified clip's patch. verified_stages: the mode also trains whole batches of the
    verified patches and batches half verified, half unverified (learn.mode staged);
    halves: every batch is half verified, half unverified (learn.multitask split);
    streams: every step takes batch_size of each (learn.multitask paper; the pseudo-label
    stream samples with replacement). A pool with no patch at all is left to
    verified_pools, which names what is missing."""
    half = max(1, batch_size // 2)
    ver, unv = int(verified[pool].sum()), int((~verified[pool]).sum())
    # (patches there are, patches a batch takes, the largest batch_size they allow, what)
    needs = [(pool.size, batch_size, pool.size, 'training patches')]
    if verified_stages:
        needs += [(ver, batch_size, ver, 'verified training patches (learn.mode staged '
                                         'trains whole batches of them)')]
    if verified_stages or halves:
        needs += [(ver, half, 2 * ver + 1, 'verified training patches (half of each batch)'),
                  (unv, batch_size - half, 2 * unv, 'unverified training patches (half of '
                                                    'each batch)')]
    if streams:
        needs += [(ver, batch_size, ver, 'verified training patches (learn.multitask takes '
                                         'batch_size of them per step)'),
                  (unv, batch_size, unv, 'unverified training patches (learn.multitask takes '
                                         'batch_size of them per step)')]
    needs = [n for n in needs if n[0]]
    for have, need, _, what in needs:
        if have < need:
            at_most = min(limit for _, _, limit, _ in needs)
            raise ConfigError(f'learn.batch_size {batch_size} needs {need} of the {have} '
                              f'{what}: a batch may not be larger than the data it is drawn '
                              f'from; set learn.batch_size to at most {at_most}')


@dataclass(frozen=True)
class Plans:
    """The epoch plans of a run: each method returns a function of an rng that draws one
    epoch's EpochPlan (mixup partners, then `augment`'s crops and masks).

    augment: (rng, plan) -> plan (augment.augment_plan with the run's settings). verified
    [patches] bool: a verified clip's patch. mixup_p: learn.mixup_p. multitask: both heads
    learn in every step, from batches of learn.multitask_batches (`batches`): paper,
    batch_size verified + batch_size unverified (+ batch_size of the pseudo-label stream)
    per step (plan_streams), or split, every batch half verified, half unverified;
    pseudo_labels: the unverified clips have soft pseudo labels (paper: the third stream;
    split: under mixup each verified example is mixed with an unverified one).
    """
    batch_size: int
    mixup: bool
    alpha: float
    mixup_mode: str
    augment: Callable
    verified: np.ndarray
    multitask: bool = False
    pseudo_labels: bool = False
    mixup_p: float = 1.0
    batches: str = 'paper'

    def epoch(self, pool, mixup=None):
        """Batches over the patch indices in pool; mixup as learn.mixup unless given."""
        mixup = self.mixup if mixup is None else mixup
        if self.multitask and self.batches == 'paper':
            return self._streams(pool, mixup)
        if self.multitask:
            return self._multitask(pool, mixup)
        return lambda rng: self.augment(rng, plan_epoch(
            rng, pool, self.batch_size, mixup, self.alpha, self.mixup_mode, self.mixup_p))

    def halves(self, first, second):
        """Batches whose first half are patches of `first`, the second half of `second`."""
        return lambda rng: self.augment(rng, plan_halves(
            rng, first, second, self.batch_size, self.mixup, self.alpha, self.mixup_mode,
            self.mixup_p))

    def _streams(self, pool, mixup):
        """learn.multitask_batches paper: plan_streams over the verified and unverified
        patches of pool; logs how long an epoch is and why."""
        ver, unv = verified_pools(pool, self.verified, 'learn.multitask')
        b = self.batch_size
        logger.info('multitask batches (paper): %d verified + %d unverified%s examples per '
                    'step; an epoch is one pass over the %d verified training patches: %d '
                    'steps', b, b, f' + {b} pseudo-label stream' if self.pseudo_labels else '',
                    ver.size, -(-ver.size // b))
        return lambda rng: self.augment(rng, plan_streams(
            rng, ver, unv, b, mixup, self.alpha, self.mixup_mode, self.mixup_p,
            self.pseudo_labels))

    def _multitask(self, pool, mixup):
        """learn.multitask_batches split: batches half verified, half unverified patches of
        pool (plan_halves; an epoch is one pass over the unverified ones). With pseudo
        labels and mixup the halves are mixed with each other (cross_pairs); otherwise
        mixup stays inside each half."""
        ver, unv = verified_pools(pool, self.verified, 'learn.multitask')
        cross = mixup and self.pseudo_labels
        half = max(1, self.batch_size // 2)
        logger.info('multitask batches (split): %d verified + %d unverified examples per '
                    'step; an epoch is one pass over the %d unverified training patches: %d '
                    'steps', half, self.batch_size - half, unv.size,
                    -(-unv.size // (self.batch_size - half)))

        def plan(rng):
            halves = plan_halves(rng, ver, unv, self.batch_size, mixup and not cross,
                                 self.alpha, self.mixup_mode, self.mixup_p)
            if cross:
                halves = cross_pairs(rng, halves, self.alpha)
            return self.augment(rng, halves)
        return plan
