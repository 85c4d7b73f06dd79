"""The Experiment of section `learn`: everything a learning mode works on.

prepare() turns the clip table and the feature store into an Experiment: split (the
stratified train/val split, or the folds), the patch table (or whole clips for random
crops) and check_batch_size (a batch no larger than its training pools), batch_source
(the scaler and its file, the PatchSource), build_trainer (the model in its Trainer,
trainer.py) and the Experiment itself. The Experiment owns the
callbacks, the epoch plans (sampling.Plans) and the run state (RunState: epoch, stage,
model selection, noise-detection start) that a mode changes, and the checkpoint that
collects the state of its parts; fit() trains one stage. learn.py holds the modes.
"""
import functools
import logging

import keras
import numpy as np

import architectures
import augment
import data
import datasets
import eval as evaluation
import fastdev
import losses
import optimizers
import pipeline
import runfolder
import sampling
import splits
import subsets
import warmstart
import waveform
from config import ConfigError
from masking import Masker
from callbacks import (Backup, Checkpoint, Counters, History, InterruptPoint,
                       ModelSelection, RunState, StopAfterSteps, StopOnCollapse,
                       StopOnNonFinite, TensorBoardScalars, ValClipAccuracy,
                       detection_figures, precision_recall)
from results import Results
import schedules
from schedules import EpochLR, Snapshots, cosine_lr
from trainer import Trainer
from utils import atomic_path, atomic_write_csv

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- experiment

class Experiment:
    """Everything a learning mode needs; modes call fit() once per stage.

    mode: the learn.Mode declaration of the configured mode. splits: the (training rows,
    validation rows) of every fold (one for a single split); fold: the 1-based fold this
    Experiment trains (k-fold training, self-verification), None for the single split,
    whose files keep their plain names.
    """

    def __init__(self, cfg, mode, table, classes, store, patches, source, trainer, run_dir,
                 rng, splits, fold=None):
        self.cfg, self.mode, self.table, self.classes = cfg, mode, table, classes
        self.store, self.patches, self.source, self.trainer = store, patches, source, trainer
        self.run_dir, self.rng, self.splits, self.fold = run_dir, rng, splits, fold
        self.train_rows, self.val_rows = splits[(fold or 1) - 1]
        self.train_idx = patches.of_clips(self.train_rows)
        self.val_idx = patches.of_clips(self.val_rows)
        # figures for results.json: the injected label noise, what a mode adds (noise_detection)
        self.results = Results(**datasets.label_noise(cfg, table),
                               fast_dev_run=fastdev.on(cfg) or None)
        self.results.built(cfg['learn']['model'],
                           architectures.n_trainable_params(trainer.classifier),
                           cfg['loss']['type'])
        self.monitor = 'val_accuracy' if self.val_idx.size else 'accuracy'
        learn = cfg['learn']
        self.history = History(runfolder.path(run_dir, 'history', fold))
        self.tensorboard = ([TensorBoardScalars(self.history,
                                                runfolder.path(run_dir, 'tensorboard', fold))]
                            if cfg['ctrl']['tensorboard'] else [])
        self.state = RunState()  # epochs done and model selection, one schema
        self.selection = ModelSelection(learn['model_selection'], self.monitor,
                                        runfolder.path(run_dir, 'model', fold), self.state)
        self.reduce_lr = keras.callbacks.ReduceLROnPlateau(
            monitor=self.monitor, mode='max', factor=0.5, patience=5, verbose=1)
        # learn.patience null: no early stopping (Dorfer & Widmer train all 500 epochs)
        self.early_stopping = keras.callbacks.EarlyStopping(
            monitor=self.monitor, mode='max', patience=learn['patience'], min_delta=0.001,
            verbose=1) if learn['patience'] is not None else None
        score = evaluation.clip_scorer(trainer.classifier, source, patches, cfg)
        self.val_clip = ([ValClipAccuracy(score, self.val_rows,
                                          datasets.targets(table, len(classes)))]
                         if self.val_idx.size else [])
        # A dry run's 2-step epochs cannot tell a collapse from a slow start (ctrl.fast_dev_run)
        self.collapse = [] if cfg['ctrl']['fast_dev_run'] else [StopOnCollapse(
            self.history, score, self.val_rows if self.val_idx.size else self.train_rows,
            classes)]
        self.has_truth = 'true_idx' in table.columns
        self.plans = fastdev.cut_plans(cfg, epoch_plans(cfg, table, patches, source))
        self.stage_epochs = []  # epochs each fit() call (stage) trained
        self.memo = Memo()
        self.counters = Counters([c for c in (self.reduce_lr, self.early_stopping)
                                  if c is not None])
        # Resume: fit() calls are the mode's stages; the checkpoint holds the state at the
        # end of the last completed epoch, restored when the mode reaches that epoch's
        # stage. k folds and self-verification rounds are not resumed (a fold's stages
        # interleave with the others' decisions): their fold Experiments keep none.
        self.checkpoint = None if fold else Checkpoint(
            runfolder.path(run_dir, 'backup'),
            {'run': self.state, 'experiment': self, 'trainer': trainer,
             'history': self.history, 'selection': self.selection, 'memo': self.memo,
             'counters': self.counters})
        self.resume = self.checkpoint.load() if self.checkpoint else None
        if self.resume:
            # once()'s results now: the mode asks for them between stages, before the
            # stage that restores the rest.
            self.memo.load_state_dict(self.resume['memo'])
        self.lr_callbacks = self.schedule()

    def for_fold(self, fold):
        """Fold `fold` (1-based) of self.splits: a fresh model and trainer sharing this
        experiment's data, scaler and batch source (k-fold training)."""
        trainer = build_trainer(self.cfg, self.mode, self.table, self.classes, self.source,
                                fold)
        return Experiment(self.cfg, self.mode, self.table, self.classes, self.store,
                          self.patches, self.source, trainer, self.run_dir,
                          self.rng.spawn(1)[0], self.splits, fold)

    def state_dict(self):
        """Its own part of the checkpoint: the epochs of each stage and the results."""
        return {'stage_epochs': list(self.stage_epochs), 'results': self.results.state_dict()}

    def load_state_dict(self, state):
        self.stage_epochs = list(state['stage_epochs'])
        self.results.load_state_dict(state['results'])

    def schedule(self):
        """The callbacks of learn.lr_schedule: plateau halves the rate on validation
        plateaus of 5 epochs; constant keeps learn.lr; linear decays it from
        learn.lr_decay_start to 0 at the last epoch; cyclic_cosine anneals each cycle and
        saves a snapshot at each cycle's end."""
        learn = self.cfg['learn']
        if learn['lr_schedule'] == 'plateau':
            return [self.reduce_lr]
        if learn['lr_schedule'] == 'constant':
            return []
        if learn['lr_schedule'] == 'linear':
            lr, start = learn['lr'], learn['lr_decay_start']
            epochs = schedules.mode_epochs(learn, self.mode.steps)[1]
            return [EpochLR(lambda epoch: schedules.linear_lr(epoch, lr, start, epochs))]
        lr, lr_min, length = learn['lr'], learn['lr_min'], learn['cycle_epochs']
        return [EpochLR(lambda epoch: cosine_lr(epoch, lr, lr_min, length)),
                Snapshots(length, learn['cycles'], self.save_snapshot)]

    def snapshot_path(self, cycle):
        return runfolder.path(self.run_dir, 'snapshot', self.fold or 1, cycle=cycle)

    def save_snapshot(self, cycle):
        with atomic_path(self.snapshot_path(cycle)) as tmp:
            self.trainer.classifier.save(tmp)
        logger.info('snapshot of cycle %d saved: %s', cycle, self.snapshot_path(cycle).name)

    def set_masking(self, on):
        """Turn the mode's loss masking (learn.mode staged) on or off for the next stage."""
        self.trainer.step_loss.masker.activate(on)

    # -- noise detection: only where the table knows the true labels
    def watch_noise(self):
        """The noise-detection figures count from the next epoch on (the Trainer counts
        flagged examples from the start when the mode drops or masks: Mode.detects)."""
        self.state.noise_from = len(self.history.rows)

    def record_epoch_detection(self):
        """Per-epoch precision/recall of the masked/dropped examples since watch_noise()."""
        rows = self.history.rows[self.state.noise_from:]
        if not self.has_truth or not rows:
            return
        figures = [precision_recall(int(r['nd_flagged']), int(r['nd_hit']),
                                     int(r['nd_wrong'])) for r in rows]
        self.results.noise_detected_per_epoch([r['epoch'] for r in rows], figures)
        for r, f in zip(rows, figures):
            logger.info('noise detection, epoch %d: precision %.1f %%, recall %.1f %% (%d flagged, '
                        '%d wrong-label examples seen)', r['epoch'], f['precision'],
                        f['recall'], f['n_flagged'], f['n_wrong'])

    def record_detection(self, what, rows, flagged):
        """Precision/recall of one drop decision over table rows (e.g. pruned clips)."""
        if not self.has_truth:
            return
        figures = detection_figures(flagged, data.wrong_labels(self.table)[rows])
        self.results.noise_detected(figures)
        logger.info('noise detection (%s): precision %.1f %%, recall %.1f %% (%d flagged, %d '
                    'wrong-label clips)', what, figures['precision'], figures['recall'],
                    figures['n_flagged'], figures['n_wrong'])

    def write_pruned(self, rows, clip_loss):
        columns = ['fname', 'label'] + (['true_label'] if self.has_truth else [])
        frame = self.table.loc[rows, columns].copy()
        frame.insert(2, 'clip_loss', clip_loss)
        atomic_write_csv(runfolder.path(self.run_dir, 'pruned', self.fold), frame,
                         index=False, float_format='%.6g')

    def mark(self, what, done=None):
        """The method acts after `done` epochs (None: now, after the epochs done so far):
        curves.png marks it (history.csv's event column)."""
        self.history.mark(self.epoch if done is None else done, what)

    def figures_since_watch(self, name):
        """history.csv's figure `name` of each epoch since watch_noise() (None where an
        epoch has none)."""
        return [r.get(name) for r in self.history.rows[self.state.noise_from:]]

    @property
    def epoch(self):
        """Epochs done so far, counted across stages."""
        return self.state.epoch

    def fit(self, epochs, plan, early_stopping=True, steps=None, lr_callbacks=None):
        """Train `epochs` more epochs (numbered on from self.epoch) over `plan`, an epoch
        being one pass over its pool; or, given `steps`, that many optimizer steps, an epoch
        (validation, LR schedule, history row) being learn.steps_per_epoch steps (null: one
        pass over the pool) and the last one shorter where they do not divide. The LR
        follows learn.lr_schedule unless other lr_callbacks are passed; under cyclic_cosine
        the cycles fix the length, so early stopping is off.

        One call is one stage of the mode. A resumed run skips the stages it had finished
        and continues the one it was in from its last completed epoch."""
        self.state.stage += 1
        stage, start = self.state.stage, self.epoch
        trains = (steps if steps is not None else epochs) > 0
        # A child rng per stage: tf.data may draw an epoch ahead by a timing-dependent
        # amount, which must not shift the draws of the next stage. Drawn for skipped stages
        # too, so that a resumed run's stages get the same ones.
        rng = self.rng.spawn(1)[0] if trains else None
        resume, stopped = self.resume, False
        if resume is not None and stage < resume['run']['stage']:
            # done before the kill
            self.state.epoch += resume['experiment']['stage_epochs'][stage - 1]
            return
        if resume is not None:
            self.checkpoint.restore(resume)
            stopped, self.resume = resume['stopped'], None
            logger.info('resumed at epoch %d (stage %d; epochs 1-%d restored from %s)',
                        self.epoch + 1, self.state.stage, self.epoch, self.checkpoint.path)
        if trains and not stopped:
            self._train(rng, start, epochs, steps, plan, early_stopping, lr_callbacks)
        else:
            self.counters.drop()
        self.stage_epochs.append(self.epoch - start)

    def _train(self, rng, start, epochs, steps, plan, early_stopping, lr_callbacks):
        per_plan = plan(np.random.default_rng(0)).idx.shape[0]  # steps of every plan
        per_epoch = per_plan
        lr_callbacks = self.lr_callbacks if lr_callbacks is None else lr_callbacks
        # The LR callbacks come before History, which logs the epoch's rate.
        cbs = [StopOnNonFinite(), InterruptPoint(), *self.trainer.step_loss.callbacks(),
               *lr_callbacks, *self.val_clip, self.history, *self.collapse, *self.tensorboard,
               self.selection]
        cyclic = self.cfg['learn']['lr_schedule'] == 'cyclic_cosine'
        stops = early_stopping and not cyclic and self.early_stopping is not None
        cbs += [self.early_stopping] if stops else []
        if steps is not None:
            per_epoch = min(self.cfg['learn']['steps_per_epoch'] or per_epoch, steps)
            epochs = -(-steps // per_epoch)
            if steps % per_epoch:
                cbs.append(StopAfterSteps(steps, per_epoch, start))
        # StopOnNonFinite first: a diverged epoch must reach no other callback;
        # StopOnCollapse right after History, whose row of the epoch it reads, and before
        # the model selection; Backup last: it saves what the others updated at the
        # epoch's end.
        if self.checkpoint is not None:
            cbs.append(Backup(self.checkpoint, self.counters))
        # A resumed stage continues the stream of planned steps where its last completed
        # epoch ended: the plans drawn before are drawn again (the k-th plan of a stage
        # depends only on its rng), and the steps of the cut plan already trained skipped.
        done = (self.epoch - start) * per_epoch
        for _ in range(done // per_plan):
            plan(rng)
        train = pipeline.train_dataset(self.source, lambda: plan(rng), plan(rng))
        train = train.skip(done % per_plan)
        val = self._val_dataset() if self.val_idx.size else None
        self.trainer.fit(train, validation_data=val, epochs=start + epochs,
                         initial_epoch=self.epoch, steps_per_epoch=per_epoch, callbacks=cbs,
                         verbose=self.cfg['ctrl']['verbose'],
                         shuffle=False)  # plan_epoch shuffles, seeded

    def once(self, key, compute):
        """A result computed between stages from the weights of that moment (mode 3's clip
        losses): kept in the checkpoint, so a resumed run reuses it rather than recomputing
        it from later weights."""
        return self.memo.once(key, compute)

    def validate(self):
        """{'loss': ..., 'accuracy': ...} of the current model on the validation clips."""
        return self.trainer.evaluate(self._val_dataset(), verbose=0, return_dict=True)

    def _val_dataset(self):
        return pipeline.eval_dataset(self.source, self.val_idx,
                                     evaluation.eval_batch_size(self.cfg))


class Memo:
    """Results of Experiment.once by key; a part of the checkpoint."""

    def __init__(self):
        self.values = {}

    def once(self, key, compute):
        if key not in self.values:
            self.values[key] = compute()
        return self.values[key]

    def state_dict(self):
        return dict(self.values)

    def load_state_dict(self, state):
        self.values = dict(state)


def epoch_plans(cfg, table, patches, source):
    """The run's sampling.Plans: learn.batch_size, mixup (mixup_p) and multitask
    (multitask_batches), with random crop
    offsets (extract.crop random_crop), SpecAugment and Akiyama & Sato's augmentations
    drawn into every epoch plan from the stage's rng; for waveforms the crops, stretches
    and gains of waveform.augment_plan."""
    learn = cfg['learn']
    if cfg['extract']['features'] == 'waveform':
        draw = functools.partial(waveform.augment_plan, clen=patches.clen,
                                 crop=source.patch_len, scale=learn['wave_scale'],
                                 gain=learn['wave_gain'])
        return plans_of(cfg, table, patches, draw)
    draw = functools.partial(
        augment.augment_plan, max_shift=source.eval_len - source.patch_len,
        specaugment=augment.specaugment(learn), n_mels=cfg['extract']['n_mels'],
        length=source.patch_len, clen=patches.clen,
        paper={key: learn[key] for key in ('freq_mask', 'gain', 'extra_crop')})
    return plans_of(cfg, table, patches, draw)


def plans_of(cfg, table, patches, draw):
    """sampling.Plans of learn.batch_size, mixup and multitask, with `draw` drawing the
    augmentations into every plan."""
    learn = cfg['learn']
    return sampling.Plans(learn['batch_size'], learn['mixup'], learn['mixup_alpha'],
                          learn['mixup_mode'], draw,
                          table.verified.to_numpy()[patches.clip] == 1, learn['multitask'],
                          learn['pseudo_labels'] is not None, learn['mixup_p'],
                          learn['multitask_batches'])


def build_trainer(cfg, mode, table, classes, source, fold=None):
    """A new model (learn.model; its weights from learn.init_from when set, for fold
    `fold`, None for a single split) in a compiled Trainer with its own loss and optimiser
    (learn.optim), and the loss masker when the mode declares one (off until it turns it
    on)."""
    learn = cfg['learn']
    classifier = architectures.build(learn['model'], architectures.input_shape(cfg),
                                     len(classes), learn)
    if learn['init_from'] is not None:
        warmstart.init_weights(classifier, warmstart.source_path(learn['init_from'], fold))
    masker = (Masker(learn['mask_method'], learn['mask_top_k'], learn['mask_alpha'],
                     active=False) if mode.masker else None)
    detect = mode.detects and 'true_idx' in table.columns
    trainer = Trainer(classifier, source, losses.get(cfg, masker),
                      datasets.is_multi_label(table), detect=detect)
    trainer.compile(optimizer=optimizers.optimizer(learn),
                    jit_compile=pipeline.use_xla(cfg))
    # The optimizer's variables now: a step that creates them is traced twice (tf.function
    # traces again after a trace that created variables), 10-25 s per model of CNN-GRU size
    trainer.optimizer.build(classifier.trainable_variables)
    return trainer


def prepare(cfg, mode, table, classes, store, rng, run_dir):
    """Split, patch table (refusing a batch larger than its training pools), batch source
    (with its scaler), trainer -> the Experiment of the first fold (or of the single
    split). mode: the configured mode's learn.Mode declaration. Under ctrl.fast_dev_run
    the Experiment gets the dry run's config (fastdev.fast_dev_config)."""
    cfg = fastdev.fast_dev_config(cfg, mode)
    rows, folds, drawn = split(cfg, mode, table, classes, store)
    folds = fastdev.fast_dev_folds(cfg, folds)  # a dry run validates on a few clips
    patches = pipeline.patch_table(cfg, store)
    check_batch_size(cfg['learn'], mode, table, patches, folds)
    source = batch_source(cfg, table, classes, store, patches, rows, folds, run_dir)
    set_precision_policy(cfg['learn'])
    fold = 1 if len(folds) > 1 else None
    trainer = build_trainer(cfg, mode, table, classes, source, fold)
    logger.info('model: %s, %d trainable parameters', cfg['learn']['model'],
                architectures.n_trainable_params(trainer.classifier))
    exp = Experiment(cfg, mode, table, classes, store, patches, source, trainer, run_dir,
                     rng, folds, fold=fold)
    exp.results.subset_drawn(drawn)
    return exp


def split(cfg, mode, table, classes, store):
    """(the readable training rows, the folds' (training rows, validation rows), the
    counts drawn by ctrl.n_noisy / n_clean): one stratified train/val split (the dataset's
    own validation clips where it has them: FSD50K, ARCA23K, a csv split column with val),
    or with learn.folds K > 1 K stratified folds (of the verified clips only, with
    learn.fold_subset verified: splits.fold_split), or the folds the mode makes itself
    (Mode.split: self_verify's 4), of the training rows, drawn first when ctrl.n_noisy or
    n_clean is set (subsets.py)."""
    learn, ctrl = cfg['learn'], cfg['ctrl']
    rows = datasets.readable_train_rows(table, classes, store.length, ctrl['train_data'])
    targets = datasets.targets(table, len(classes))
    seed = ctrl['seed']
    n_before = rows.size
    rows, drawn = subsets.draw(rows, table.verified.to_numpy()[rows],
                               splits.strata(targets[rows]), ctrl['n_noisy'], ctrl['n_clean'],
                               seed)
    subsets.log_drawn(drawn, n_before)
    y = targets[rows]
    labels = splits.strata(y)  # one class per clip (multi-label: its rarest label)
    own_val = datasets.readable_val_rows(table, store.length)
    if own_val is not None and (mode.split is not None or learn['folds'] > 1):
        logger.info('the dataset\'s own %d validation clips are not used: the folds validate',
                    own_val.size)
    if mode.split is not None:
        return rows, mode.split(table, rows, seed), drawn
    if learn['folds'] > 1:
        return rows, splits.fold_split(rows, y if datasets.is_multi_label(table) else labels,
                                       table.verified.to_numpy()[rows] == 1, learn['folds'],
                                       learn['fold_subset'], seed), drawn
    if own_val is not None:
        logger.info('validation: the dataset\'s own split, %d clips (learn.val_split %g is not '
                    'used)', own_val.size, learn['val_split'])
        return rows, [(rows, own_val)], drawn
    train_rows, val_rows = splits.split_train_val(rows, labels, learn['val_split'], seed)
    if learn['val_split'] > 0 and val_rows.size == 0:
        raise ConfigError(f'learn.val_split {learn["val_split"]} leaves no validation clip '
                          f'({rows.size} readable training clips, at least one per class '
                          f'stays in training); raise it, or set it to 0 to select the '
                          f'model on training accuracy')
    return rows, [(train_rows, val_rows)], drawn


def check_batch_size(learn, mode, table, patches, folds):
    """learn.batch_size against the training pools of every fold, as the mode and
    learn.multitask draw batches from them (sampling.check_batch_size)."""
    verified = table.verified.to_numpy()[patches.clip] == 1
    for train_rows, _ in folds:
        paper = learn['multitask'] and learn['multitask_batches'] == 'paper'
        sampling.check_batch_size(learn['batch_size'], patches.of_clips(train_rows), verified,
                                  mode.verified_stages, learn['multitask'] and not paper, paper)


def batch_source(cfg, table, classes, store, patches, rows, folds, run_dir):
    """The run's PatchSource over its patch table, its scaler written to scaler.npz. With
    k folds the scaler is fitted on the whole training subset (rows), so that every fold
    model shares one batch source (band means and stds carry no label information); else
    on the training rows of the split."""
    learn = cfg['learn']
    train_rows, val_rows = folds[0]
    train_idx = patches.of_clips(train_rows)
    mean, std = pipeline.scaler(cfg, store, patches,
                                patches.of_clips(rows) if len(folds) > 1 else train_idx)
    pipeline.write_scaler(runfolder.path(run_dir, 'scaler'), mean, std)
    # What the loss reads from the batch, declared by its class: the source is built to
    # carry it (pseudo labels of every unverified clip of the subset: any fold may train it).
    needs = losses.needs(cfg)
    pseudo = pseudo_labels(cfg, table, classes, rows) if 'pseudo' in needs else None
    source = pipeline.batch_source(cfg, store, patches, table, mean, std,
                                   data.lsr_eps(learn, classes), needs, pseudo)
    logger.info('train: %d clips, %d patches; val: %d clips; frames on %s', train_rows.size,
                train_idx.size, val_rows.size, 'the device' if source.on_device else 'host')
    if cfg['extract']['crop'] == 'random_crop':
        logger.info('random crops of %d frames from clips fixed to %d frames; whole clips '
                    'validated and predicted, %d per call', *architectures.lengths(cfg),
                    evaluation.eval_batch_size(cfg))
    if cfg['extract']['features'] == 'waveform':
        crop, fs = cfg['extract']['crop_samples'], cfg['extract']['fs']
        logger.info('waveform: random crops of %d samples (%.2f s), zero beyond the clip; '
                    'whole clips predicted; no standardisation', crop, crop / fs)
    return source


def set_precision_policy(learn):
    """learn.mixed_precision: Keras's global policy, set (or reset) every run, so that one
    mixed-precision run in a process does not leak into the next."""
    keras.mixed_precision.set_global_policy(
        'mixed_float16' if learn['mixed_precision'] else 'float32')


def pseudo_labels(cfg, table, classes, train_rows):
    """learn.pseudo_labels -> sharpened soft pseudo labels [clips, K] of the unverified
    training clips."""
    path = cfg['learn']['pseudo_labels']
    rows = train_rows[table.verified.to_numpy()[train_rows] == 0]
    scores = data.read_pseudo_labels(path, table, rows, classes)
    logger.info('soft pseudo labels of %d unverified training clips from %s, sharpened with '
                'T = %g, MSE weight %g', rows.size, path, cfg['loss']['sharpen_T'],
                cfg['loss']['pseudo_weight'])
    return data.sharpen(scores, cfg['loss']['sharpen_T'])
