"""Learning modes by number or name (config key `learn.mode`), and the training machinery.

prepare() turns the clip table and the feature store into an Experiment: patches, the
stratified train/val split, the scaler, the batch source, the model and its Trainer.
A mode is a function of the Experiment that calls experiment.fit(...) once per stage.
"""
import logging
import time

import keras
import numpy as np
import tensorflow as tf  # the step uses GradientTape and tf.data: TensorFlow backend only
from keras import ops

import architectures
import data
import losses
from utils import ConfigError, atomic_path, atomic_write_text

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- trainer

class Trainer(keras.Model):
    """Wraps the classifier; the step assembles its batch, weighs and reduces the loss.

    On the device path a step receives (idx, partner, lam) [B] and gathers its batch from
    the resident frames; on the host path tf.data has already built (x, y, verified).
    `masker`, when set by a mode, maps detached per-example losses and the verified flags
    to per-example weights (loss masking); it returns (weights, figures to log).
    """

    def __init__(self, classifier, source, step_loss):
        super().__init__(name='trainer')
        self.classifier, self.source, self.step_loss = classifier, source, step_loss
        self.masker = None
        outputs = classifier.output
        if step_loss.needs_embedding:
            outputs = [classifier.output, classifier.get_layer('embedding').output]
        self.net = keras.Model(classifier.input, outputs)
        self.loss_tracker = keras.metrics.Mean(name='loss')
        self.acc_tracker = keras.metrics.CategoricalAccuracy(name='accuracy')
        self.extra = {}

    def track(self, names):
        """Report these figures (means per epoch) in the logs and history.csv."""
        for name in names:
            self.extra.setdefault(name, keras.metrics.Mean(name=name))

    @property
    def metrics(self):
        return [self.loss_tracker, self.acc_tracker, *self.extra.values()]

    def call(self, x, training=False):
        return self.classifier(x, training=training)

    def _forward(self, x, training):
        out = self.net(x, training=training)
        return out if self.step_loss.needs_embedding else (out, None)

    def train_step(self, batch):
        x, y, verified = self.source.train_batch(*batch) if self.source.on_device else batch
        with tf.GradientTape() as tape:
            y_pred, emb = self._forward(x, training=True)
            per_example = self.step_loss.per_example(y, y_pred, x, emb)
            weights, figures = ops.ones_like(per_example), {}
            if self.masker is not None:
                weights, figures = self.masker(ops.stop_gradient(per_example), verified)
            loss, loss_figures = self.step_loss.reduce(per_example, weights)
            total = loss + ops.sum(self.classifier.losses) if self.classifier.losses else loss
            scaled = self.optimizer.scale_loss(total)
        variables = self.classifier.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        self.loss_tracker.update_state(loss)
        self.acc_tracker.update_state(y, y_pred)
        for name, value in {**figures, **loss_figures}.items():
            self.extra[name].update_state(value)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, batch):
        x, y = self.source.eval_batch(batch) if self.source.on_device else batch
        y_pred, emb = self._forward(x, training=False)
        per_example = self.step_loss.per_example(y, y_pred, x, emb)
        self.loss_tracker.update_state(ops.mean(per_example))
        self.acc_tracker.update_state(y, y_pred)
        return {m.name: m.result() for m in (self.loss_tracker, self.acc_tracker)}


# ----------------------------------------------------------------------------- callbacks

class History(keras.callbacks.Callback):
    """Appends one row per epoch to history.csv (rewritten atomically each epoch)."""

    def __init__(self, path):
        super().__init__()
        self.path, self.rows, self.lr = path, [], None

    def on_epoch_begin(self, epoch, logs=None):
        self.lr = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        row = {'epoch': epoch + 1, **{k: float(v) for k, v in (logs or {}).items()
                                      if k != 'learning_rate'}}
        row['lr'] = self.lr
        row['seconds'] = round(time.time() - self.t0, 2)
        self.rows.append(row)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        lines = [','.join(columns)]
        lines += [','.join('' if r.get(c) is None else f'{r[c]:.6g}' for c in columns)
                  for r in self.rows]
        atomic_write_text(self.path, '\n'.join(lines) + '\n')


class BestModel(keras.callbacks.Callback):
    """Keeps the weights of the best epoch (monitored value) and saves model.keras then.

    Saving at every improvement means an interrupted run keeps its best model so far.
    """

    def __init__(self, monitor, path):
        super().__init__()
        self.monitor, self.path = monitor, path
        self.reset()

    def reset(self):
        self.best, self.weights, self.epoch = -np.inf, None, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or value <= self.best:
            return
        self.best, self.epoch = float(value), epoch + 1
        classifier = self.model.classifier
        self.weights = classifier.get_weights()
        with atomic_path(self.path) as tmp:
            classifier.save(tmp.with_suffix('.keras'))
            tmp.with_suffix('.keras').replace(tmp)

    def restore(self):
        if self.weights is not None:
            self.model.classifier.set_weights(self.weights)
            logger.info('restored the weights of epoch %d (%s = %.4f)', self.epoch,
                        self.monitor, self.best)


# ----------------------------------------------------------------------------- experiment

class Experiment:
    """Everything a learning mode needs; modes call fit() once per stage."""

    def __init__(self, cfg, table, classes, store, patches, train_rows, val_rows, source,
                 trainer, run_dir, rng):
        self.cfg, self.table, self.classes, self.store = cfg, table, classes, store
        self.patches, self.source, self.trainer = patches, source, trainer
        self.train_rows, self.val_rows = train_rows, val_rows
        self.run_dir, self.rng = run_dir, rng
        self.train_idx = patches.of_clips(train_rows)
        self.val_idx = patches.of_clips(val_rows)
        self.results = {}  # figures a mode adds to results.json (e.g. noise_detection)
        self.monitor = 'val_accuracy' if self.val_idx.size else 'accuracy'
        learn = cfg['learn']
        self.history = History(run_dir / 'history.csv')
        self.best = BestModel(self.monitor, run_dir / 'model.keras')
        self.reduce_lr = keras.callbacks.ReduceLROnPlateau(
            monitor=self.monitor, mode='max', factor=0.5, patience=5, verbose=1)
        self.early_stopping = keras.callbacks.EarlyStopping(
            monitor=self.monitor, mode='max', patience=learn['patience'], min_delta=0.001,
            verbose=1)
        self.epoch = 0  # epochs done so far, counted across stages

    def plan(self, pool, mixup=None):
        """A function that draws one epoch of batches over the patch indices in pool."""
        learn = self.cfg['learn']
        mixup = learn['mixup'] if mixup is None else mixup
        return lambda: data.plan_epoch(self.rng, pool, learn['batch_size'], mixup,
                                       learn['mixup_alpha'], learn['mixup_mode'])

    def fit(self, epochs, plan, early_stopping=True, callbacks=()):
        """Train for `epochs` more epochs (numbered on from self.epoch) over `plan`."""
        if epochs <= 0:
            return
        first = plan()
        steps = first.idx.shape[0]
        train = self._train_dataset(plan, first)
        val = self._eval_dataset(self.val_idx) if self.val_idx.size else None
        cbs = [self.history, self.best, self.reduce_lr, *callbacks]
        cbs += [self.early_stopping] if early_stopping else []
        hist = self.trainer.fit(train, validation_data=val, epochs=self.epoch + epochs,
                                initial_epoch=self.epoch, steps_per_epoch=steps,
                                callbacks=cbs, verbose=self.cfg['ctrl']['verbose'])
        self.epoch += len(hist.epoch)

    def _train_dataset(self, plan, first):
        """Epoch plans -> one (idx, partner, lam) element per step, prefetched."""
        def epochs():
            yield first.idx, first.partner, first.lam
            while True:
                p = plan()
                yield p.idx, p.partner, p.lam
        batch = first.idx.shape[1]
        spec = (tf.TensorSpec([None, batch], tf.int64), tf.TensorSpec([None, batch], tf.int64),
                tf.TensorSpec([None, batch], tf.float32))
        ds = tf.data.Dataset.from_generator(epochs, output_signature=spec)
        ds = ds.flat_map(lambda *a: tf.data.Dataset.from_tensor_slices(a))
        if not self.source.on_device:
            ds = ds.map(self.source.train_batch, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def _eval_dataset(self, idx):
        ds = tf.data.Dataset.from_tensor_slices(idx.astype(np.int64))
        ds = ds.batch(self.cfg['learn']['predict_batch_size'])
        if not self.source.on_device:
            ds = ds.map(self.source.eval_batch, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- modes

def mode_warmup_mixup(exp):
    """Mode 0: mixup_warmup_epochs without mixup, then mixup (Fonseca et al., Sec. 2.2).

    Same model and optimiser throughout; epochs are counted continuously; early stopping
    only in the second stage.
    """
    learn = exp.cfg['learn']
    warm = min(learn['mixup_warmup_epochs'], learn['n_epochs'])
    logger.info('mode 0: %d warm-up epochs without mixup, then mixup=%s', warm,
                learn['mixup'])
    exp.fit(warm, exp.plan(exp.train_idx, mixup=False), early_stopping=False)
    exp.fit(learn['n_epochs'] - exp.epoch, exp.plan(exp.train_idx))


def mode_standard(exp):
    """Mode 1: standard training with LSR / mixup / loss as configured."""
    exp.fit(exp.cfg['learn']['n_epochs'], exp.plan(exp.train_idx))


MODES = {
    0: mode_warmup_mixup,
    1: mode_standard,
}


def check(cfg):
    """Refuse an unknown mode before any heavy work."""
    if cfg['learn']['mode'] not in MODES:
        raise ConfigError(f'learn.mode {cfg["learn"]["mode"]!r} is unknown; valid modes: '
                          f'{", ".join(map(str, MODES))}')


def place_on_device(cfg, nbytes):
    """Decide where the frames live: the GPU when there is one and they fit, else host."""
    choice = cfg['learn']['frames_on_device']
    if choice != 'auto':
        return choice == 'always'
    gpus = tf.config.list_logical_devices('GPU')
    if not gpus:
        return False
    # Leave room for the model, activations and cuDNN workspaces: use at most half.
    try:
        limit = tf.config.experimental.get_memory_info('GPU:0')['peak'] or 0
        details = tf.config.experimental.get_device_details(
            tf.config.list_physical_devices('GPU')[0])
        total = details.get('device_memory_size') or 0
    except (ValueError, RuntimeError):
        total, limit = 0, 0
    fits = total == 0 or nbytes <= 0.5 * total - limit
    if not fits:
        logger.warning('frames need %.1f GiB, more than half the GPU memory: gathering '
                       'batches on the host instead', nbytes / 2 ** 30)
    return fits


def prepare(cfg, table, classes, store, rng, run_dir):
    """Patches, split, scaler, batch source, model and trainer -> Experiment."""
    ext, learn = cfg['extract'], cfg['learn']
    rows = data.train_rows(table, cfg['ctrl']['train_data'])
    rows = rows[store.length[rows] > 0]
    train_rows, val_rows = data.split_train_val(
        rows, table.label_idx.to_numpy()[rows], learn['val_split'], cfg['ctrl']['seed'])
    patches = data.make_patches(store.start, store.length, ext['patch_len'], ext['patch_hop'])
    train_idx = patches.of_clips(train_rows)
    mean, std = data.fit_scaler(store.frames, patches, train_idx, ext['patch_len'])
    on_device = place_on_device(cfg, store.frames.nbytes)
    source = data.PatchSource(store.frames, patches, table, mean, std,
                              data.lsr_eps(learn, classes), ext['patch_len'], on_device)
    logger.info('train: %d clips, %d patches; val: %d clips; frames on %s', train_rows.size,
                train_idx.size, val_rows.size, 'GPU' if on_device else 'host')
    if learn['mixed_precision']:
        keras.mixed_precision.set_global_policy('mixed_float16')
    classifier = architectures.build(learn['model'], (ext['patch_len'], ext['n_mels'], 1),
                                     len(classes), learn)
    trainer = Trainer(classifier, source, losses.get(cfg))
    trainer.compile(optimizer=keras.optimizers.Adam(learn['lr']),
                    jit_compile=learn['jit_compile'])
    np.savez(run_dir / 'scaler.npz', mean=mean, std=std)
    return Experiment(cfg, table, classes, store, patches, train_rows, val_rows, source,
                      trainer, run_dir, rng)


def run(exp):
    """Run the configured mode, then restore the best weights it saw."""
    t0 = time.time()
    MODES[exp.cfg['learn']['mode']](exp)
    exp.best.restore()
    logger.info('training done in %.1f s (%d epochs)', time.time() - t0, exp.epoch)
