"""The Experiment of section `learn`: everything a learning mode works on.

prepare() turns the clip table and the feature store into an Experiment: the patch table
(or whole clips for random crops), the stratified train/val split (or the folds), the
scaler, the batch source, the model and its Trainer (trainer.py). The Experiment owns the
callbacks and the run state (RunState: epoch, stage, model selection, noise-detection
start) that a mode changes, and fit() trains one stage; learn.py holds the modes.
"""
import functools
import logging

import keras
import numpy as np
from keras import ops

import architectures
import augment
import data
import datasets
import eval as evaluation
import losses
import pipeline
import sampling
import self_verify
import splits
from config import ConfigError
from masking import Masker
from callbacks import (Backup, EpochLR, History, ModelSelection, RunState, Snapshots,
                       StopAfterSteps, StopOnNonFinite, TensorBoardScalars, ValClipAccuracy,
                       cosine_lr, detection_figures, load_backup, precision_recall)
from trainer import Trainer
from utils import atomic_path

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- experiment

class Experiment:
    """Everything a learning mode needs; modes call fit() once per stage."""

    def __init__(self, cfg, table, classes, store, patches, train_rows, val_rows, source,
                 trainer, run_dir, rng, fold=None):
        self.cfg, self.table, self.classes, self.store = cfg, table, classes, store
        self.patches, self.source, self.trainer = patches, source, trainer
        self.train_rows, self.val_rows = train_rows, val_rows
        self.run_dir, self.rng = run_dir, rng
        # fold: 1-based fold of k-fold training (ensemble.py, self_verify.py); None = the
        # single split, whose files keep their plain names.
        self.fold = fold
        self.tag = tag = '' if fold is None else f'_{fold}'
        self.train_idx = patches.of_clips(train_rows)
        self.val_idx = patches.of_clips(val_rows)
        # figures for results.json: the injected label noise, what a mode adds (noise_detection)
        self.results = datasets.label_noise(cfg, table)
        self.monitor = 'val_accuracy' if self.val_idx.size else 'accuracy'
        learn = cfg['learn']
        self.history = History(run_dir / f'history{tag}.csv')
        self.tensorboard = ([TensorBoardScalars(self.history, run_dir / f'tb{tag}')]
                            if cfg['ctrl']['tensorboard'] else [])
        self.state = RunState()  # epochs done and model selection, one schema
        self.selection = ModelSelection(learn['model_selection'], self.monitor,
                                        run_dir / f'model{tag}.keras', self.state)
        self.reduce_lr = keras.callbacks.ReduceLROnPlateau(
            monitor=self.monitor, mode='max', factor=0.5, patience=5, verbose=1)
        self.early_stopping = keras.callbacks.EarlyStopping(
            monitor=self.monitor, mode='max', patience=learn['patience'], min_delta=0.001,
            verbose=1)
        score = evaluation.clip_scorer(trainer.classifier, source, patches, cfg)
        self.val_clip = ([ValClipAccuracy(score, val_rows,
                                          datasets.targets(table, len(classes)))]
                         if self.val_idx.size else [])
        self.has_truth = 'true_idx' in table.columns
        self.plans = epoch_plans(cfg, table, patches, source)
        # Resume: fit() calls are the mode's stages; the backup holds the state at the end
        # of the last completed epoch, restored when the mode reaches that epoch's stage.
        self.stage_epochs = []
        # k folds and self-verification rounds are not resumed (a fold's stages interleave
        # with the others' decisions): their fold Experiments keep no backup.
        self.backup_path = None if fold else run_dir / 'backup' / 'state.pkl'
        self.resume = load_backup(self.backup_path) if self.backup_path else None
        # Results of once(): loaded now, since the mode asks for them between stages,
        # before the stage that restores the rest.
        self.memo = dict(self.resume['memo']) if self.resume else {}
        self.lr_callbacks = self.schedule()
        self.splits = [(train_rows, val_rows)]  # prepare() sets the k folds

    def for_fold(self, train_rows, val_rows, fold):
        """A fresh model and trainer on other rows, sharing this experiment's data, scaler
        and batch source (k-fold training)."""
        return Experiment(self.cfg, self.table, self.classes, self.store, self.patches,
                          train_rows, val_rows, self.source,
                          build_trainer(self.cfg, self.table, self.classes, self.source),
                          self.run_dir,
                          self.rng.spawn(1)[0], fold)

    def schedule(self):
        """The callbacks of learn.lr_schedule: plateau halves the rate on validation
        plateaus of 5 epochs; constant keeps learn.lr; cyclic_cosine anneals each cycle and
        saves a snapshot at each cycle's end."""
        learn = self.cfg['learn']
        if learn['lr_schedule'] == 'plateau':
            return [self.reduce_lr]
        if learn['lr_schedule'] == 'constant':
            return []
        lr, lr_min, length = learn['lr'], learn['lr_min'], learn['cycle_epochs']
        return [EpochLR(lambda epoch: cosine_lr(epoch, lr, lr_min, length)),
                Snapshots(length, learn['cycles'], self.save_snapshot)]

    def snapshot_path(self, cycle):
        return self.run_dir / f'snapshot_{self.fold or 1}_{cycle}.keras'

    def save_snapshot(self, cycle):
        with atomic_path(self.snapshot_path(cycle)) as tmp:
            self.trainer.classifier.save(tmp)
        logger.info('snapshot of cycle %d saved: %s', cycle, self.snapshot_path(cycle).name)

    # -- noise detection: only where the table knows the true labels
    def watch_noise(self):
        """The noise-detection figures count from the next epoch on (the Trainer counts
        flagged examples from the start when the mode drops or masks: DETECTS)."""
        self.state.noise_from = len(self.history.rows)

    def record_epoch_detection(self):
        """Per-epoch precision/recall of the masked/dropped examples since watch_noise()."""
        rows = self.history.rows[self.state.noise_from:]
        if not self.has_truth or not rows:
            return
        figures = [precision_recall(int(r['nd_flagged']), int(r['nd_hit']),
                                     int(r['nd_wrong'])) for r in rows]
        self.results['noise_detection'] = {
            key: [f[key] for f in figures] for key in ('precision', 'recall', 'n_flagged',
                                                        'n_wrong')}
        self.results['noise_detection']['epoch'] = [r['epoch'] for r in rows]
        for r, f in zip(rows, figures):
            logger.info('noise detection, epoch %d: precision %.3f, recall %.3f (%d flagged, '
                        '%d wrong-label examples seen)', r['epoch'], f['precision'],
                        f['recall'], f['n_flagged'], f['n_wrong'])

    def record_detection(self, what, rows, flagged):
        """Precision/recall of one drop decision over table rows (e.g. pruned clips)."""
        if not self.has_truth:
            return
        figures = detection_figures(flagged, data.wrong_labels(self.table)[rows])
        self.results['noise_detection'] = figures
        logger.info('noise detection (%s): precision %.3f, recall %.3f (%d flagged, %d '
                    'wrong-label clips)', what, figures['precision'], figures['recall'],
                    figures['n_flagged'], figures['n_wrong'])

    def write_pruned(self, rows, clip_loss):
        columns = ['fname', 'label'] + (['true_label'] if self.has_truth else [])
        frame = self.table.loc[rows, columns].copy()
        frame.insert(2, 'clip_loss', clip_loss)
        with atomic_path(self.run_dir / f'pruned{self.tag}.csv') as tmp:
            frame.to_csv(tmp, index=False, float_format='%.6g')

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
        if self.resume is not None and stage < self.resume['state']['stage']:
            self.state.epoch += self.resume['stage_epochs'][stage - 1]  # done before the kill
            return
        counters, stopped = None, False
        if self.resume is not None:
            counters, stopped = self._restore(self.resume), self.resume['stopped']
            self.resume = None
        if trains and not stopped:
            self._train(rng, start, epochs, steps, plan, early_stopping, counters,
                        lr_callbacks)
        self.stage_epochs.append(self.epoch - start)

    def _train(self, rng, start, epochs, steps, plan, early_stopping, counters,
               lr_callbacks):
        per_plan = plan(np.random.default_rng(0)).idx.shape[0]  # steps of every plan
        per_epoch = per_plan
        lr_callbacks = self.lr_callbacks if lr_callbacks is None else lr_callbacks
        # The LR callbacks come before History, which logs the epoch's rate.
        cbs = [StopOnNonFinite(), *self.trainer.step_loss.callbacks(), *lr_callbacks,
               *self.val_clip, self.history, *self.tensorboard, self.selection]
        cyclic = self.cfg['learn']['lr_schedule'] == 'cyclic_cosine'
        cbs += [self.early_stopping] if early_stopping and not cyclic else []
        if steps is not None:
            per_epoch = min(self.cfg['learn']['steps_per_epoch'] or per_epoch, steps)
            epochs = -(-steps // per_epoch)
            if steps % per_epoch:
                cbs.append(StopAfterSteps(steps, per_epoch, start))
        # StopOnNonFinite first: a diverged epoch must reach no other callback; Backup
        # last: it saves what the others updated at the epoch's end.
        if self.backup_path is not None:
            cbs.append(Backup(self.backup_path, self._state,
                              [self.reduce_lr, self.early_stopping], counters))
        # A resumed stage continues the stream of planned steps where its last completed
        # epoch ended: the plans drawn before are drawn again (the k-th plan of a stage
        # depends only on its rng), and the steps of the cut plan already trained skipped.
        done = (self.epoch - start) * per_epoch
        for _ in range(done // per_plan):
            plan(rng)
        train = pipeline.train_dataset(self.source, lambda: plan(rng), plan(rng),
                                       clean=self.trainer.step_loss.needs_clean)
        train = train.skip(done % per_plan)
        val = self._val_dataset() if self.val_idx.size else None
        self.trainer.fit(train, validation_data=val, epochs=start + epochs,
                         initial_epoch=self.epoch, steps_per_epoch=per_epoch, callbacks=cbs,
                         verbose=self.cfg['ctrl']['verbose'],
                         shuffle=False)  # plan_epoch shuffles, seeded

    def once(self, key, compute):
        """A result computed between stages from the weights of that moment (mode 3's clip
        losses): kept in the backup, so a resumed run reuses it rather than recomputing
        it from later weights."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    # -- resume
    def _variables(self):
        """Every variable training changes: weights, seed generators (dropout), optimizer
        (step, learning rate, moments) and the masker's threshold."""
        t = self.trainer
        if not t.optimizer.built:
            t.optimizer.build(t.classifier.trainable_variables)
        masker = [] if t.masker is None else t.masker.variables
        return [*t.classifier.variables, *t.optimizer.variables, *masker]

    def _state(self):
        return {'state': self.state.as_dict(), 'stage_epochs': list(self.stage_epochs),
                'variables': [ops.convert_to_numpy(v) for v in self._variables()],
                'history': list(self.history.rows), 'selected': self.selection.weights,
                'results': self.results, 'memo': self.memo}

    def _restore(self, state):
        """Put back the state of the last completed epoch; return the callbacks' counters."""
        variables = self._variables()
        if len(variables) != len(state['variables']):
            raise ConfigError(f'{self.backup_path} does not fit this model; set '
                              f'ctrl.overwrite true to start the run afresh')
        for variable, value in zip(variables, state['variables']):
            variable.assign(value)
        vars(self.state).update(state['state'])  # in place: ModelSelection shares it
        self.stage_epochs, self.history.rows = state['stage_epochs'], list(state['history'])
        self.selection.weights = state['selected']
        self.results = state['results']
        logger.info('resumed at epoch %d (stage %d; epochs 1-%d restored from %s)',
                    self.epoch + 1, self.state.stage, self.epoch, self.backup_path)
        return state['callbacks']

    def validate(self):
        """{'loss': ..., 'accuracy': ...} of the current model on the validation clips."""
        return self.trainer.evaluate(self._val_dataset(), verbose=0, return_dict=True)

    def _val_dataset(self):
        return pipeline.eval_dataset(self.source, self.val_idx,
                                     evaluation.eval_batch_size(self.cfg))



DETECTS = (2, 'staged')  # modes that drop or mask examples in the step (noise detection)


def epoch_plans(cfg, table, patches, source):
    """The run's sampling.Plans: learn.batch_size, mixup and multitask, with random crop
    offsets (extract.crop random_crop), SpecAugment and Akiyama & Sato's augmentations
    drawn into every epoch plan from the stage's rng."""
    learn = cfg['learn']
    draw = functools.partial(
        augment.augment_plan, max_shift=source.eval_len - source.patch_len,
        specaugment=augment.specaugment(learn), n_mels=cfg['extract']['n_mels'],
        length=source.patch_len,
        paper={key: learn[key] for key in ('freq_mask', 'gain', 'extra_crop')})
    return sampling.Plans(learn['batch_size'], learn['mixup'], learn['mixup_alpha'],
                          learn['mixup_mode'], draw,
                          table.verified.to_numpy()[patches.clip] == 1, learn['multitask'],
                          learn['pseudo_labels'] is not None)


def build_trainer(cfg, table, classes, source):
    """A new model (learn.model) in a compiled Trainer with its own loss and optimiser."""
    learn = cfg['learn']
    classifier = architectures.build(learn['model'], architectures.input_shape(cfg),
                                     len(classes), learn)
    staged = learn['mode'] == 'staged'
    masker = (Masker(learn['mask_method'], learn['mask_top_k'], learn['mask_alpha'],
                     active=False) if staged else None)
    detect = learn['mode'] in DETECTS and 'true_idx' in table.columns
    trainer = Trainer(classifier, source, losses.get(cfg), datasets.is_multi_label(table),
                      masker=masker, detect=detect)
    trainer.compile(optimizer=keras.optimizers.Adam(learn['lr']),
                    jit_compile=pipeline.use_xla(cfg))
    return trainer


def prepare(cfg, table, classes, store, rng, run_dir):
    """Patches, split, scaler, batch source, model and trainer -> Experiment.

    With learn.folds K > 1 the training subset is split into K stratified folds (learn.mode
    self_verify: its own 4) and the Experiment is the first fold's; the scaler is then
    fitted on the whole training subset, so that every fold model shares one batch source
    (band means and stds carry no label information).
    """
    learn = cfg['learn']
    rows = datasets.readable_train_rows(table, classes, store.length,
                                        cfg['ctrl']['train_data'])
    y = datasets.targets(table, len(classes))[rows]
    labels = splits.strata(y)  # one class per clip (multi-label: its rarest label)
    seed = cfg['ctrl']['seed']
    shared = learn['folds'] > 1 or learn['mode'] == 'self_verify'
    if learn['mode'] == 'self_verify':
        folds = self_verify.fold_splits(table, rows, seed)
    elif learn['folds'] > 1:
        folds = splits.kfold_split(rows, y if datasets.is_multi_label(table) else labels,
                                   learn['folds'], seed)
    else:
        folds = [splits.split_train_val(rows, labels, learn['val_split'], seed)]
    train_rows, val_rows = folds[0]
    if len(folds) == 1 and learn['val_split'] > 0 and val_rows.size == 0:
        raise ConfigError(f'learn.val_split {learn["val_split"]} leaves no validation clip '
                          f'({rows.size} readable training clips, at least one per class '
                          f'stays in training); raise it, or set it to 0 to select the '
                          f'model on training accuracy')
    patches = pipeline.patch_table(cfg, store)
    train_idx = patches.of_clips(train_rows)
    # Over the inputs the model is evaluated on: patches, or whole fixed-length clips
    # (whose random crops it is trained on).
    if cfg['extract']['normalize'] == 'per_clip':  # each example standardises itself
        mean, std = (np.zeros(cfg['extract']['n_mels'], np.float32),
                     np.ones(cfg['extract']['n_mels'], np.float32))
    else:
        mean, std = data.fit_scaler(store.frames, patches,
                                    patches.of_clips(rows) if shared else train_idx,
                                    architectures.lengths(cfg)[1])
    source = pipeline.batch_source(cfg, store, patches, table, mean, std,
                                   data.lsr_eps(learn, classes))
    logger.info('train: %d clips, %d patches; val: %d clips; frames on %s', train_rows.size,
                train_idx.size, val_rows.size, 'the device' if source.on_device else 'host')
    if cfg['extract']['crop'] == 'random_crop':
        logger.info('random crops of %d frames from clips fixed to %d frames; whole clips '
                    'validated and predicted, %d per call', *architectures.lengths(cfg),
                    evaluation.eval_batch_size(cfg))
    # Set (or reset) the policy every run, so one mixed-precision run in a process does
    # not leak into the next.
    keras.mixed_precision.set_global_policy(
        'mixed_float16' if learn['mixed_precision'] else 'float32')
    if learn['multitask']:  # every unverified clip of the subset: any fold may train it
        source.use_members(pseudo_labels(cfg, table, classes, rows))
    trainer = build_trainer(cfg, table, classes, source)
    if trainer.step_loss.needs_batch and not source.per_member:
        source.use_members()  # mixed pairs' members for the head's distribution branch
    with atomic_path(run_dir / 'scaler.npz') as tmp, open(tmp, 'wb') as f:
        np.savez(f, mean=mean, std=std)
    exp = Experiment(cfg, table, classes, store, patches, train_rows, val_rows, source,
                     trainer, run_dir, rng, fold=1 if len(folds) > 1 else None)
    exp.splits = folds
    return exp


def pseudo_labels(cfg, table, classes, train_rows):
    """learn.pseudo_labels -> sharpened soft pseudo labels [clips, K] of the unverified
    training clips (None without the key)."""
    path = cfg['learn']['pseudo_labels']
    if path is None:
        return None
    rows = train_rows[table.verified.to_numpy()[train_rows] == 0]
    scores = data.read_pseudo_labels(path, table, rows, classes)
    logger.info('soft pseudo labels of %d unverified training clips from %s, sharpened with '
                'T = %g, MSE weight %g', rows.size, path, cfg['loss']['sharpen_T'],
                cfg['loss']['pseudo_weight'])
    return data.sharpen(scores, cfg['loss']['sharpen_T'])
