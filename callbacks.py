"""The Keras callbacks of section `learn` that every mode uses: history.csv, model
selection, the stop at a non-finite loss or at a collapse, the stop after a number of
steps, the clip accuracy of the validation set, TensorBoard scalars and the checkpoint for
resume (the LR schedules and snapshots are in schedules.py). Also the noise-detection
figures computed from the counts the training step logs.
"""
import logging
import pickle
import time
from dataclasses import asdict, dataclass
from typing import Optional

import keras
import numpy as np
import tensorflow as tf  # tf.summary: Keras has no summary writer of its own
from tensorflow.core.framework import summary_pb2  # the TensorBoard scalar data class
from keras import ops

from config import ConfigError
from utils import Diverged, atomic_path, atomic_write_text, interrupt_point

logger = logging.getLogger(__name__)


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, naming the epoch and step.

    Keras's TerminateOnNaN only ends the current fit quietly: the mode would go on to its
    next stage and save and evaluate a NaN model. Raising ends the run instead, before
    the epoch's other callbacks (history, model selection) see the bad epoch. The check
    runs on Keras's callback thread (async_safe), so it adds no sync point to the step;
    Keras re-raises its error on the training thread within a step or at the epoch end.
    """

    async_safe = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get('loss')
        if loss is not None and not np.isfinite(float(loss)):
            raise Diverged(f'training diverged: the loss is {float(loss)} at epoch '
                           f'{self.epoch + 1}, step {batch + 1} (try a lower learn.lr)',
                           self.epoch + 1, batch + 1)


class InterruptPoint(keras.callbacks.Callback):
    """Raises a waiting Ctrl-C after each step (utils.interrupts_at_safe_points)."""
    async_safe = True  # else Keras runs every batch hook synchronously: a sync per step

    def on_train_batch_end(self, batch, logs=None):
        interrupt_point()

    def on_test_batch_end(self, batch, logs=None):
        interrupt_point()


class Collapsed(Diverged):
    """Training collapsed: the model gives every clip the same scores (StopOnCollapse)."""

    status = 'collapsed'


def constant_scores(scores, tol=1e-3):
    """Whether clip scores [N, K] are the same for every clip: no class's score varies by
    more than tol between clips (a collapsed model: dead units or saturated outputs give
    exactly one score vector, e.g. one-hot on one class)."""
    scores = np.asarray(scores, np.float64)
    return len(scores) > 1 and float(np.ptp(scores, axis=0).max()) <= tol


class StopOnCollapse(keras.callbacks.Callback):
    """Ends a run whose training collapsed, which the loss alone does not show: a huge
    learn.lr can leave the loss finite but stuck (issue 19: 12.38 at lr 1e4) with one class
    scored 1 for every clip, and such a run would be reported as a result.

    The rule, checked at the end of every epoch from epoch EPOCHS on (counted across
    stages; a healthy run has learnt something by then): the epoch's training loss is not
    below that of the first epoch (history.csv's first row) AND the model's clip scores are
    the same for every clip (constant_scores) of up to CLIPS validation clips (training
    clips without validation), spread evenly over them. Both must hold: a loss that rises
    (mixup starting, a stage with another loss) with varied predictions is no collapse, and
    a model whose loss still falls is learning. The scores are computed only when the loss
    condition holds, so a learning run pays nothing.
    """

    EPOCHS = 3
    CLIPS = 256

    def __init__(self, history, score_clips, rows, classes):
        super().__init__()
        self.history, self.score_clips, self.classes = history, score_clips, classes
        self.rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), self.CLIPS)).astype(int)]

    def on_epoch_end(self, epoch, logs=None):
        rows = self.history.rows
        if len(rows) < self.EPOCHS or rows[-1]['loss'] < rows[0]['loss']:
            return
        _, scores = self.score_clips(self.rows)
        if constant_scores(scores):
            top = int(np.argmax(scores[0]))
            raise Collapsed(f'training collapsed: at epoch {epoch + 1} the training loss '
                            f'({rows[-1]["loss"]:.4g}) is not below that of epoch 1 '
                            f'({rows[0]["loss"]:.4g}) and the model gives all '
                            f'{len(scores)} clips checked the same scores ({self.classes[top]} '
                            f'{scores[0, top]:.3g} for every clip); try a lower learn.lr',
                            epoch + 1)


def detection_figures(flagged, wrong):
    """Noise detection of a drop/mask decision: precision = % of flagged examples whose
    given label is wrong, recall = % of wrong-label examples that were flagged."""
    flagged, wrong = np.asarray(flagged, bool), np.asarray(wrong, bool)
    return precision_recall(int(flagged.sum()), int((flagged & wrong).sum()),
                             int(wrong.sum()))


def precision_recall(n_flagged, n_hit, n_wrong):
    """Noise-detection precision and recall in percent (as accuracy; nan for 0 / 0)."""
    return {'precision': 100.0 * n_hit / n_flagged if n_flagged else float('nan'),
            'recall': 100.0 * n_hit / n_wrong if n_wrong else float('nan'),
            'n_flagged': n_flagged, 'n_wrong': n_wrong}


def noise_detection(row):
    """Per-epoch precision/recall from the summed counts the step logged, if any."""
    if 'nd_flagged' not in row:
        return {}
    f = precision_recall(row['nd_flagged'], row['nd_hit'], row['nd_wrong'])
    return {'nd_precision': f['precision'], 'nd_recall': f['recall']}


class History(keras.callbacks.Callback):
    """Appends one row per epoch to history.csv (rewritten atomically each epoch). Its
    `event` column names where the method acted just before that epoch (mark()): mixup
    starts, the time-dependent switch, pruning, a stage, a self-verification round, which
    curves.png draws as vertical marks."""

    def __init__(self, path):
        super().__init__()
        self.path, self.rows, self.lr = path, [], None
        self.events = []  # (epochs done when it happened, what), for the next row

    def mark(self, done, what):
        """The method acts after epoch `done` (before epoch done + 1): `what` goes into
        that epoch's row. A resumed run marks again what its restored rows already hold;
        such a mark never reaches a later row."""
        self.events.append((done, what.replace(',', ';')))

    def state_dict(self):
        return {'rows': list(self.rows)}

    def load_state_dict(self, state):
        self.rows = list(state['rows'])

    def on_epoch_begin(self, epoch, logs=None):
        self.lr = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        row = {'epoch': epoch + 1, **{k: float(v) for k, v in (logs or {}).items()
                                      if k != 'learning_rate'}}
        row.update(noise_detection(row))
        row['lr'] = self.lr
        row['steps'] = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        row['seconds'] = round(time.time() - self.t0, 2)
        events = [what for done, what in self.events if done == epoch]
        self.events = [(done, what) for done, what in self.events if done > epoch]
        if events:
            row['event'] = '; '.join(events)
        self.rows.append(row)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        lines = [','.join(columns)]
        lines += [','.join(_cell(r.get(c)) for c in columns) for r in self.rows]
        atomic_write_text(self.path, '\n'.join(lines) + '\n')


def _cell(value):
    return '' if value is None else value if isinstance(value, str) else f'{value:.6g}'


class Checkpoint:
    """The resume state of a run in one file (logs/<run>/backup/state.pkl), written
    atomically. Each part (an object with state_dict() -> picklable and
    load_state_dict(d)) saves and restores itself; the checkpoint only collects the parts
    by name, with a few extra entries of the moment it is saved (save(**extra))."""

    def __init__(self, path, parts):
        self.path, self.parts = path, parts

    def save(self, **extra):
        state = {name: part.state_dict() for name, part in self.parts.items()}
        state.update(extra)
        with atomic_path(self.path) as tmp:
            tmp.write_bytes(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))

    def load(self):
        """The state save() wrote, or None when there is none (a fresh run). A file that
        does not unpickle (truncated, damaged) or lacks a part (another version's layout)
        is one ConfigError line: the run cannot continue."""
        try:
            state = pickle.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except Exception as err:  # noqa: BLE001  (damaged bytes may raise almost anything)
            raise self._unusable('is unreadable', err) from None
        missing = [name for name in self.parts
                   if not isinstance(state, dict) or name not in state]
        if missing:
            raise self._unusable(f'lacks {", ".join(missing)}')
        return state

    def restore(self, state):
        """Every part loads its own entry of `state` (what load() returned). A part whose
        saved state does not fit it (another model, another version's layout) raises
        ValueError, KeyError or TypeError: one-line error."""
        try:
            for name, part in self.parts.items():
                part.load_state_dict(state[name])
        except (ValueError, KeyError, TypeError) as err:
            raise self._unusable('does not fit this model', err) from err

    def _unusable(self, what, err=None):
        text = str(err).strip().splitlines()[:1]  # its first line: a shape mismatch runs long
        why = f' ({type(err).__name__}{": " + text[0][:200] if text else ""})' if err else ''
        return ConfigError(f'the backup {self.path} {what}{why}, so the run cannot '
                           f'continue; set ctrl.overwrite true to start it again')


class Counters:
    """The counters of Keras callbacks that reset themselves when a fit begins
    (ReduceLROnPlateau's wait and cooldown, EarlyStopping's wait and best): a checkpoint
    part whose loaded values wait for put_back(), which Backup calls after the reset."""

    NAMES = ('wait', 'best', 'cooldown_counter', 'stopped_epoch', 'best_epoch')

    def __init__(self, callbacks):
        self.callbacks, self.pending = callbacks, None

    def state_dict(self):
        return [{k: getattr(c, k) for k in self.NAMES if hasattr(c, k)}
                for c in self.callbacks]

    def load_state_dict(self, state):
        self.pending = state

    def drop(self):
        """Forget the loaded counters: the stage they belong to trains no further."""
        self.pending = None

    def put_back(self):
        for callback, saved in zip(self.callbacks, self.pending or ()):
            vars(callback).update(saved)
        self.pending = None


class Backup(keras.callbacks.Callback):
    """Saves the checkpoint at the end of every epoch, so that a killed run continues from
    its last completed epoch; `stopped` records whether early stopping ended the stage.

    In on_train_begin it puts back the counters a resumed run loaded (Counters), after
    those callbacks have reset themselves; so this callback must come after them in the
    list. keras.callbacks.BackupAndRestore covers one fit() call; a mode's stages are
    several, with state between them, hence this one.
    """

    def __init__(self, checkpoint, counters):
        super().__init__()
        self.checkpoint, self.counters = checkpoint, counters

    def on_train_begin(self, logs=None):
        self.counters.put_back()

    def on_epoch_end(self, epoch, logs=None):
        self.checkpoint.save(stopped=bool(self.model.stop_training))


@dataclass
class RunState:
    """What a run has done so far, in one object with one schema (a backup saves it whole).

    epoch: epochs done, counted across stages. stage: fit calls begun (the current stage,
    1-based). noise_from: first history row of the noise-detection figures (watch_noise).
    selection_from: the first epoch (1-based)
    that model selection may return: the epoch from which the method as configured trains
    (learn.py restarts it when a mode changes the training). best_value, best_epoch: the
    best monitored value since then and its epoch (best_val). evaluated_epoch: the epoch
    whose weights are evaluated, once training is done.
    """
    epoch: int = 0
    stage: int = 0
    noise_from: int = 0
    selection_from: int = 1
    best_value: float = -np.inf
    best_epoch: Optional[int] = None
    evaluated_epoch: Optional[int] = None

    def state_dict(self):
        return asdict(self)

    def load_state_dict(self, state):
        vars(self).update(state)  # in place: ModelSelection shares this object


class ModelSelection(keras.callbacks.Callback):
    """learn.model_selection: which weights are evaluated and saved as model.keras.

    last: the weights of the last epoch trained (the original code: early stopping without
    restoring). best_val: the weights of the epoch with the best monitored value (monitor:
    val_accuracy, or accuracy without validation clips) among the epochs from
    state.selection_from on, so that the evaluated model is always one trained by the
    method as configured. best_val_loss: the same with the lowest loss of the monitored
    set (val_loss, or loss), as Dorfer & Widmer's released code keeps the epoch of lowest
    validation loss. state.best_value holds the best value as compared, the loss negated.
    model.keras is rewritten whenever the selected weights change, so an interrupted run
    keeps them.
    """

    BEST = ('best_val', 'best_val_loss')

    def __init__(self, rule, monitor, path, state):
        super().__init__()
        if rule == 'best_val_loss':
            monitor = monitor.replace('accuracy', 'loss')
        self.rule, self.monitor, self.path, self.state = rule, monitor, path, state
        self.sign = -1.0 if rule == 'best_val_loss' else 1.0
        self.weights = None

    def state_dict(self):
        """The selected weights (RunState, shared, is a part of its own)."""
        return {'weights': self.weights}

    def load_state_dict(self, state):
        self.weights = state['weights']

    def restart(self, from_epoch=None):
        """Only epochs from `from_epoch` (1-based; default: the next one) may be selected."""
        s = self.state
        s.selection_from = s.epoch + 1 if from_epoch is None else from_epoch
        s.best_value, s.best_epoch, self.weights = -np.inf, None, None

    def on_epoch_end(self, epoch, logs=None):
        s = self.state
        s.epoch = epoch + 1
        if self.rule in self.BEST:
            value = (logs or {}).get(self.monitor)
            if s.epoch < s.selection_from or value is None or \
                    self.sign * value <= s.best_value:
                return
            s.best_value, s.best_epoch = self.sign * float(value), s.epoch
            self.weights = self.model.classifier.get_weights()
        self._save()

    def _save(self):
        with atomic_path(self.path) as tmp:
            self.model.classifier.save(tmp)

    def finish(self, trainer):
        """Put the selected weights into the classifier; record and log the epoch."""
        s = self.state
        if self.rule in self.BEST and self.weights is not None:
            trainer.classifier.set_weights(self.weights)
            s.evaluated_epoch = s.best_epoch
            logger.info('model selection %s: the weights of epoch %d (%s = %.4f, best '
                        'since epoch %d)', self.rule, s.best_epoch, self.monitor,
                        self.sign * s.best_value, s.selection_from)
        else:
            s.evaluated_epoch = s.epoch
            if s.epoch < s.selection_from:
                logger.warning('training ended at epoch %d, before the method acted (epoch '
                               '%d): the last epoch is evaluated', s.epoch, s.selection_from)
            logger.info('model selection %s: the weights of the last epoch trained, %d',
                        self.rule, s.epoch)
        self.set_model(trainer)
        self._save()


class StopAfterSteps(keras.callbacks.Callback):
    """Stops fit after `steps` optimizer steps, inside an epoch if need be (Keras 3 checks
    stop_training after every batch, then still validates and ends that epoch)."""

    def __init__(self, steps, steps_per_epoch, initial_epoch):
        super().__init__()
        self.steps, self.per_epoch, self.initial_epoch = steps, steps_per_epoch, initial_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch - self.initial_epoch) * self.per_epoch + batch + 1 >= self.steps:
            self.model.stop_training = True


class ValClipAccuracy(keras.callbacks.Callback):
    """Adds val_clip_accuracy to the epoch logs: the share of validation clips whose
    aggregated clip score (recognizer.aggregate, as for the test report) picks the given
    label (multi-label: one of the given labels; targets are [N, K] multi-hot). The
    per-patch val_accuracy (the paper's figure) stays what the schedule and the model
    selection watch."""

    def __init__(self, score_clips, rows, targets):
        super().__init__()
        self.score_clips, self.rows, self.targets = score_clips, rows, targets

    def on_epoch_end(self, epoch, logs=None):
        rows, scores = self.score_clips(self.rows)
        hits = self.targets[rows, scores.argmax(axis=1)] > 0
        logs['val_clip_accuracy'] = float(np.mean(hits))


class TensorBoardScalars(keras.callbacks.Callback):
    """Writes each epoch's history.csv row (losses, accuracies, lr and the method figures,
    noise-detection precision/recall included) as TensorBoard scalars under log_dir.

    It runs after History and reads its last row, so TensorBoard shows exactly the figures
    of history.csv. tf.summary: Keras has no summary writer of its own (its TensorBoard
    callback would miss the figures computed by History). tf.summary.scalar lives in the
    tensorboard package, which is not pinned; the core op tf.summary.write with the scalar
    plugin's metadata writes the same event.
    """

    SCALAR = tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name='scalars'),
        data_class=summary_pb2.DATA_CLASS_SCALAR)

    def __init__(self, history, log_dir):
        super().__init__()
        self.history = history
        self.writer = tf.summary.create_file_writer(str(log_dir))

    def on_epoch_end(self, epoch, logs=None):
        row = self.history.rows[-1]
        with self.writer.as_default():
            for name, value in row.items():
                if name not in ('epoch', 'seconds', 'event') and value is not None:
                    tf.summary.write(name, tf.constant(value, tf.float32), step=row['epoch'],
                                     metadata=self.SCALAR)
        self.writer.flush()
