"""ctrl.fast_dev_run: a dry run of a config's whole procedure in about a minute on CPU.

The name is the one Lightning users know (PyTorch Lightning's Trainer(fast_dev_run=...)).
A dry run keeps the structure of the configured procedure, every fold, stage,
self-verification round, snapshot cycle and ensemble member, the evaluation, results.json
and the plots, and makes each part small, so that a mistake in step 9 of 10 shows up
before a day on a GPU. Three cuts, each made here and nowhere else:

- the clips (fast_dev_clips): at most FAST_CLIPS clips of each class in each part of the
  dataset (training verified / unverified (and FSDnoisy18k's noisy_small) clips, test
  clips), so that feature extraction, validation, prediction and every clip scoring
  (mode 3's clip losses, self-verification's excerpts, the collapse check) see a few
  batches;
- the stages (fast_dev_config): at most FAST_EPOCHS epochs per stage, read from the mode's
  declaration (learn.Mode: first_stage, stage_epochs, steps); cyclic_cosine keeps its
  cycles with FAST_EPOCHS epochs each, so every snapshot is still taken;
- the epochs (cut_plans): every epoch plan cut to its first FAST_STEPS optimizer steps
  (drawn in full first, so the rng stream is the one of the real run).

Nothing else changes: early stopping and the plateau schedule see 2-epoch stages (neither
acts), the model selection and the resume backup work as in any run. The run is marked:
results.json has `fast_dev_run: true`, the evaluation block says `FAST DEV RUN`, and
sweep.py refuses to summarise fast-dev runs together with real ones. A real run never
continues a fast-dev run's backup: ctrl.fast_dev_run is part of the config a rerun must
repeat.
"""
import collections
import dataclasses
import logging

import numpy as np

logger = logging.getLogger(__name__)

FAST_STEPS = 2   # optimizer steps per epoch
FAST_EPOCHS = 2  # epochs per stage (per cycle of cyclic_cosine)
FAST_CLIPS = 8   # clips per class in each part of the dataset


def on(cfg):
    return bool(cfg['ctrl']['fast_dev_run'])


def fast_dev_config(cfg, mode):
    """The config of a dry run of `cfg` (returned unchanged when ctrl.fast_dev_run is off):
    every stage of `mode` (its learn.Mode declaration) cut to FAST_EPOCHS epochs, staged
    stages to FAST_EPOCHS x FAST_STEPS steps. Logs what it changed."""
    if not on(cfg):
        return cfg
    old, learn = cfg['learn'], dict(cfg['learn'])
    cyclic = learn['lr_schedule'] == 'cyclic_cosine'
    if cyclic:
        learn['cycle_epochs'] = FAST_EPOCHS  # the cycles stay: every snapshot is taken
    if mode.steps:
        learn.update(_staged(old, cyclic))
    else:
        n = old['n_epochs']
        learn['n_epochs'] = old['cycles'] * FAST_EPOCHS if cyclic else min(n, FAST_EPOCHS)
        if mode.first_stage is not None:
            # stage 1: the first `first` epochs of n_epochs, stage 2 the rest; each cut
            first = min(old[mode.first_stage], n)
            learn[mode.first_stage] = min(first, FAST_EPOCHS)
            if not cyclic:
                learn['n_epochs'] = learn[mode.first_stage] + min(n - first, FAST_EPOCHS)
    for key in mode.stage_epochs:
        learn[key] = min(old[key], FAST_EPOCHS)
    changed = {k: (old[k], v) for k, v in learn.items() if old[k] != v}
    logger.info('fast dev run: %s; %d steps per epoch, at most %d clips per class of each '
                'part of the data', ', '.join(f'learn.{k} {a} -> {b}'
                                              for k, (a, b) in changed.items()) or
                'no stage longer than 2 epochs', FAST_STEPS, FAST_CLIPS)
    return {**cfg, 'learn': learn}


def _staged(learn, cyclic):
    """learn.staged_steps and steps_per_epoch of a dry run: FAST_STEPS steps per epoch,
    each stage at most FAST_EPOCHS epochs; under cyclic_cosine the cycles x FAST_EPOCHS
    epochs shared out over the stages in proportion to their epochs (largest remainder),
    so that they still last whole cycles."""
    steps = learn['staged_steps']
    if not cyclic:
        return {'staged_steps': [min(n, FAST_EPOCHS * FAST_STEPS) for n in steps],
                'steps_per_epoch': FAST_STEPS}
    per_epoch = learn['steps_per_epoch']  # set: schedules.check_schedule requires it
    epochs = np.array([-(-n // per_epoch) for n in steps], float)
    total = learn['cycles'] * FAST_EPOCHS
    share = epochs * total / epochs.sum()
    cut = np.floor(share).astype(int)
    for i in np.argsort(-(share - cut), kind='stable')[:total - cut.sum()]:
        cut[i] += 1
    return {'staged_steps': [int(e) * FAST_STEPS for e in cut], 'steps_per_epoch': FAST_STEPS}


def fast_dev_clips(cfg, table):
    """The clip table of a dry run (unchanged when ctrl.fast_dev_run is off): in each part
    of the dataset (subset, verified, noisy_small where the layout has it), a clip is kept
    while one of its labels has fewer than FAST_CLIPS kept clips, in table order; so every
    class keeps min(FAST_CLIPS, its clips) clips of every part (multi-label clips count
    for each of their labels)."""
    if not on(cfg):
        return table
    columns = [c for c in ('subset', 'verified', 'noisy_small') if c in table.columns]
    keep = np.zeros(len(table), bool)
    labels = table.labels_idx.to_numpy()
    for rows in table.groupby(columns, sort=False, dropna=False).indices.values():
        count = collections.Counter()
        for row in np.sort(rows):
            if any(count[c] < FAST_CLIPS for c in labels[row]):
                keep[row] = True
                count.update(labels[row])
    logger.info('fast dev run: %d of %d clips kept (%d train, %d test)', keep.sum(),
                len(table), (keep & (table.subset == 'train').to_numpy()).sum(),
                (keep & (table.subset == 'test').to_numpy()).sum())
    return table[keep].reset_index(drop=True)


class CutPlans:
    """sampling.Plans whose every epoch plan is cut to its first FAST_STEPS steps."""

    def __init__(self, plans):
        self.plans = plans

    def __getattr__(self, name):  # verified, batch_size, ...: those of the plans
        return getattr(self.plans, name)

    def epoch(self, pool, mixup=None):
        return _cut(self.plans.epoch(pool, mixup))

    def halves(self, first, second):
        return _cut(self.plans.halves(first, second))


def _cut(draw):
    def plan(rng):
        full = draw(rng)
        return dataclasses.replace(full, **{f.name: getattr(full, f.name)[:FAST_STEPS]
                                            for f in dataclasses.fields(full)})
    return plan


def cut_plans(cfg, plans):
    """The run's epoch plans, cut under ctrl.fast_dev_run."""
    return CutPlans(plans) if on(cfg) else plans
