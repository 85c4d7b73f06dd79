"""ctrl.fast_dev_run: a dry run of a config's whole procedure in about a minute on CPU.

The name is the one Lightning users know (PyTorch Lightning's Trainer(fast_dev_run=...)).
A dry run keeps the structure of the configured procedure, every fold, stage,
self-verification round, snapshot cycle and ensemble member, the evaluation, results.json
and the plots, and makes each part small, so that a mistake in step 9 of 10 shows up
before a day on a GPU. Three cuts, each made here and nowhere else:

- the clips (fast_dev_clips): at most FAST_CLIPS clips of each class in each part of the
  dataset (training verified / unverified (and FSDnoisy18k's noisy_small) clips, test
  clips), so that feature extraction, validation, prediction and every clip scoring
  (mode 3's clip losses, self-verification's excerpts) see a few batches; the collapse
  check (callbacks.StopOnCollapse) is off, since epochs of 2 steps cannot tell a
  collapse from a slow start (a sigmoid head's scores all near 0 after a few steps);
- the stages (fast_dev_config): at most FAST_EPOCHS epochs per stage, read from the mode's
  declaration (learn.Mode: first_stage, stage_epochs, steps); cyclic_cosine keeps its
  cycles with FAST_EPOCHS epochs each, so every snapshot is still taken; the linear
  schedule's constant and decaying parts are two stages;
- the epochs (cut_plans): every epoch plan cut to its first FAST_STEPS optimizer steps
  (drawn in full first, so the rng stream is the one of the real run).

Whole-clip recipes (extract.crop random_crop: He et al.'s CNN-GRU, Dorfer & Widmer's
VGG-GAP) cost far more per example: a trunk of millions of weights over clips of 2000 or
3000 frames, batches of 64 or 100, every validation and prediction a pass over whole
clips. Their dry runs are also cut in size (fast_dev_inputs, before the features are
extracted): crops of FAST_CROP frames and clips of FAST_CROP + FAST_SHIFT (so crops keep
their random offsets), FAST_MELS mel bands, each at least what the model accepts
(architectures.MIN_FRAMES, MIN_MELS), SpecAugment's time and frequency sizes scaled
with them, batches of FAST_BATCH; fast_dev_clips keeps FAST_WHOLE_CLIPS clips per class
of each part and at most FAST_SCORED test clips, fast_dev_folds FAST_SCORED validation
clips per fold, and cut_judged FAST_SCORED clips judged per fold and round by
self-verification: every whole clip scored is a few batches of work. Waveform runs
(EnvNet-v2: crops of 133,300 samples in batches of 64 + 64) train on crops of at most
FAST_SAMPLES samples (at least the model's shortest input, architectures.MIN_SAMPLES) in
batches of FAST_BATCH.

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

import architectures

logger = logging.getLogger(__name__)

FAST_STEPS = 2   # optimizer steps per epoch
FAST_EPOCHS = 2  # epochs per stage (per cycle of cyclic_cosine)
FAST_CLIPS = 8   # clips per class in each part of the dataset
FAST_SCORINGS = 2  # scorings of one clip where a mode scores it several times (excerpts)
# whole-clip recipes (extract.crop random_crop), each at least what the model accepts:
FAST_CROP = 32     # frames of a training crop
FAST_SHIFT = 16    # clips fixed to FAST_CROP + FAST_SHIFT frames: a crop has 17 offsets
FAST_MELS = 16     # mel bands
FAST_BATCH = 2     # examples per batch (staged and multitask batches: one of each half)
FAST_WHOLE_CLIPS = 4  # clips per class in each part: 4 stratified folds need 4 of a class
FAST_SCORED = 4    # clips validated per fold, judged per fold and round, and tested
FAST_SAMPLES = 32768  # samples of a waveform run's training crop (at least the model's minimum)


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
    if learn['lr_schedule'] == 'linear':
        learn.update(_linear(old, learn, mode))
    for key in mode.stage_epochs:
        learn[key] = min(old[key], FAST_EPOCHS)
    for key in mode.scorings:  # e.g. self-verification's excerpts per judged clip
        learn[key] = min(old[key], FAST_SCORINGS)
    changed = {k: (old[k], v) for k, v in learn.items() if old[k] != v}
    logger.info('fast dev run: %s; %d steps per epoch, at most %d clips per class of each '
                'part of the data', ', '.join(f'learn.{k} {a} -> {b}'
                                              for k, (a, b) in changed.items()) or
                'no stage longer than 2 epochs', FAST_STEPS,
                FAST_WHOLE_CLIPS if whole_clips(cfg) else FAST_CLIPS)
    return {**cfg, 'learn': learn}


def _linear(old, learn, mode):
    """learn.lr_schedule linear: the epochs at learn.lr before learn.lr_decay_start and the
    decay after it are two stages, each cut to FAST_EPOCHS; where the mode's own stages
    fix the epochs already, the decay starts by the last epoch (schedules.check_linear)."""
    start = min(old['lr_decay_start'], FAST_EPOCHS)
    if mode.steps:
        epochs = sum(-(-n // FAST_STEPS) for n in learn['staged_steps'])
        return {'lr_decay_start': max(0, min(start, epochs - 1))}
    if mode.first_stage is not None:
        return {'lr_decay_start': max(0, min(start, learn['n_epochs'] - 1))}
    return {'lr_decay_start': start,
            'n_epochs': start + min(old['n_epochs'] - old['lr_decay_start'], FAST_EPOCHS)}


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


def whole_clips(cfg):
    """A dry run of a whole-clip recipe (extract.crop random_crop), cut in size too."""
    return on(cfg) and cfg['extract']['crop'] == 'random_crop'


def fast_dev_inputs(cfg):
    """The config of a dry run's inputs, before its features are extracted (unchanged but
    for a dry run of a whole-clip recipe): crops of FAST_CROP frames, clips fixed to
    FAST_CROP + FAST_SHIFT frames, FAST_MELS mel bands (each at least what learn.model
    accepts, at most the configured value), SpecAugment's time sizes scaled with the crop
    and its frequency sizes (and learn.freq_mask's) with the bands, learn.batch_size at
    most FAST_BATCH. Logs what it changed."""
    ext, learn = dict(cfg['extract']), dict(cfg['learn'])
    model = learn['model']
    if on(cfg) and ext['features'] == 'waveform':  # EnvNet-v2's 3 s crops in batches of 64
        crop = max(FAST_SAMPLES, architectures.MIN_SAMPLES.get(model, 1))
        return _changed(cfg, {**ext, 'crop_samples': min(ext['crop_samples'], crop)},
                        {**learn, 'batch_size': min(learn['batch_size'], FAST_BATCH)})
    if not whole_clips(cfg):
        return cfg
    ext['crop_frames'] = min(ext['crop_frames'],
                             max(FAST_CROP, architectures.MIN_FRAMES.get(model, 1)))
    ext['clip_frames'] = min(ext['clip_frames'], ext['crop_frames'] + FAST_SHIFT)
    if model in architectures.MIN_MELS:  # a model of any other width keeps its bands
        ext['n_mels'] = min(ext['n_mels'], max(FAST_MELS, architectures.MIN_MELS[model]))
    learn['batch_size'] = min(learn['batch_size'], FAST_BATCH)
    learn['specaugment'] = _masks(learn['specaugment'], cfg['extract'], ext)
    mask = learn['freq_mask']
    if mask['p'] > 0:  # Akiyama & Sato's frequency mask fits the bands
        width = min(mask['max_width'], ext['n_mels'])
        learn['freq_mask'] = {**mask, 'max_width': width,
                              'min_width': min(mask['min_width'], width)}
    return _changed(cfg, ext, learn)


def _changed(cfg, ext, learn):
    """cfg with the extract and learn sections replaced; logs the keys changed."""
    changed = [f'{section}.{k} {cfg[section][k]} -> {new[k]}'
               for section, new in (('extract', ext), ('learn', learn))
               for k in new if new[k] != cfg[section][k]]
    logger.info('fast dev run of a whole-clip recipe: %s', ', '.join(changed) or
                'inputs already small')
    return {**cfg, 'extract': ext, 'learn': learn}


def _masks(masks, old, new):
    """learn.specaugment with its time sizes scaled by the crop (extract.crop_frames old ->
    new), its band width by the bands (n_mels), each at least 1 where it was set, and the
    time warp W within what the crop allows (2 W + 3 frames: config's check)."""
    def scaled(key, a, b):
        return max(1, masks[key] * b // a) if masks[key] else 0
    crop = new['crop_frames']
    return {**masks,
            'time_warp': min(scaled('time_warp', old['crop_frames'], crop), (crop - 3) // 2),
            'time_width': scaled('time_width', old['crop_frames'], crop),
            'freq_width': scaled('freq_width', old['n_mels'], new['n_mels'])}


def fast_dev_clips(cfg, table):
    """The clip table of a dry run (unchanged when ctrl.fast_dev_run is off): in each part
    of the dataset (subset, verified, noisy_small where the layout has it), a clip is kept
    while one of its labels has fewer than FAST_CLIPS kept clips (FAST_WHOLE_CLIPS for a
    whole-clip recipe), in table order; so every class keeps min(FAST_CLIPS, its clips)
    clips of every part (multi-label clips count for each of their labels). A whole-clip
    recipe keeps the first FAST_SCORED of those test clips."""
    if not on(cfg):
        return table
    per_class = FAST_WHOLE_CLIPS if whole_clips(cfg) else FAST_CLIPS
    columns = [c for c in ('subset', 'verified', 'noisy_small') if c in table.columns]
    keep = np.zeros(len(table), bool)
    labels = table.labels_idx.to_numpy()
    for rows in table.groupby(columns, sort=False, dropna=False).indices.values():
        count = collections.Counter()
        for row in np.sort(rows):
            if any(count[c] < per_class for c in labels[row]):
                keep[row] = True
                count.update(labels[row])
    if whole_clips(cfg):
        test = np.flatnonzero(keep & (table.subset == 'test').to_numpy())
        keep[test[FAST_SCORED:]] = False
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


def fast_dev_folds(cfg, folds):
    """The folds' (training rows, validation rows) of a dry run: a whole-clip recipe
    validates each fold on the first FAST_SCORED of its validation clips (its model
    selection, the collapse check and oof.csv see those); unchanged otherwise."""
    if not whole_clips(cfg):
        return folds
    return [(train, val[:FAST_SCORED]) for train, val in folds]


def cut_judged(cfg, rows):
    """The clips a fold model judges in a round of self-verification (learn.mode
    self_verify): the first FAST_SCORED in a dry run of a whole-clip recipe."""
    return rows[:FAST_SCORED] if whole_clips(cfg) else rows
