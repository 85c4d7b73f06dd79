"""The training step of section `learn`: the Keras Model subclass whose train_step
assembles the batch and weighs and reduces the loss (the callbacks are in callbacks.py).

Modes (learn.py) change training by passing things in (a masker, a loss's own callbacks)
or through the Trainer's public methods (reset_optimizer), never by reaching into its
internals.
"""
import keras
import tensorflow as tf  # the step uses GradientTape: TensorFlow backend only
from keras import ops

from data import Batch


# ----------------------------------------------------------------------------- trainer

class Trainer(keras.Model):
    """Wraps the classifier; the step assembles its batch (data.Batch), calls the step
    loss on it and the model's outputs, and applies the gradients.

    On the device path a step receives its plan row (idx, partner, lam, ...) [B] and
    gathers its batch from the resident frames; on the host path tf.data has already
    built it. The step loss returns its per-example weights: the product of its own keep
    mask (time-dependent loss) and, when the mode has one, its masker's (staged loss
    masking, active only in the stage that masks); a weight of 0 flags the example as
    dropped. With `detect` on, flagged and wrong-label counts are summed per epoch for
    the noise-detection figures.
    """

    def __init__(self, classifier, source, step_loss, multi_label=False, detect=False):
        super().__init__(name='trainer')
        self.classifier, self.source, self.step_loss = classifier, source, step_loss
        # Fixed for the Trainer's life, so the step is traced once: a mode turns masking
        # on and off through the masker's own variable (Masker.activate).
        self.detect = detect
        self.loss_tracker = keras.metrics.Mean(name='loss')
        # 'accuracy' on single-label data (as always); on multi-label data the top-1
        # precision under the same name, so that model selection, the LR schedule and
        # early stopping monitor it unchanged.
        self.acc_tracker = (keras.metrics.MeanMetricWrapper(top1_precision, name='accuracy')
                            if multi_label else keras.metrics.CategoricalAccuracy(name='accuracy'))
        self.extra = {}
        self.track(step_loss.figure_names)
        if detect:  # flagged / wrong-label example counts per epoch (needs true labels)
            self.track(NOISE_COUNTS, keras.metrics.Sum)

    def track(self, names, kind=keras.metrics.Mean):
        """Report these figures per epoch (means, or sums) in the logs and history.csv."""
        for name in names:
            self.extra.setdefault(name, kind(name=name))

    def reset_optimizer(self):
        """A fresh optimizer state (step count and moments zeroed) without compiling
        again, so the traced step is kept; the learning rate is left to a schedule."""
        optimizer = getattr(self.optimizer, 'inner_optimizer', self.optimizer)  # loss scaling
        lr = optimizer.learning_rate
        for variable in optimizer.variables:
            if variable is not lr:
                variable.assign(ops.zeros(variable.shape, variable.dtype))

    def _variables(self):
        """Every variable training changes: weights, seed generators (dropout), optimizer
        (step, learning rate, moments) and the step loss's (the masker's threshold)."""
        if not self.optimizer.built:
            self.optimizer.build(self.classifier.trainable_variables)
        return [*self.classifier.variables, *self.optimizer.variables,
                *self.step_loss.variables]

    def state_dict(self):
        """Its variables as numpy arrays (a part of the run's callbacks.Checkpoint)."""
        return {'variables': [ops.convert_to_numpy(v) for v in self._variables()]}

    def load_state_dict(self, state):
        variables = self._variables()
        if len(variables) != len(state['variables']):
            raise ValueError(f'{len(state["variables"])} saved variables for '
                             f'{len(variables)}')
        for variable, value in zip(variables, state['variables']):
            variable.assign(value)

    @property
    def metrics(self):
        return [self.loss_tracker, self.acc_tracker, *self.extra.values()]

    def call(self, x, training=False):
        return self.classifier(x, training=training)

    def train_step(self, element):
        # The device path gets the step's plan row (indices, partners, weights, ...), the
        # host path the batch tf.data built from it, as a dict (data.Batch).
        batch = (self.source.train_batch(**element) if self.source.on_device
                 else Batch(**element))
        with tf.GradientTape() as tape:
            outputs = self.classifier(batch.x, training=True)
            if self.step_loss.needs_embedding:
                # The embeddings of the unmixed inputs, in inference mode (an extra forward
                # pass without gradient): the training pass only sees the mixed inputs.
                clean = self.classifier(batch.x_clean, training=False)['embedding']
                outputs = {**outputs, 'clean_embedding': ops.stop_gradient(clean)}
            loss, weights, figures = self.step_loss(batch, outputs)
            total = loss + ops.sum(self.classifier.losses) if self.classifier.losses else loss
            scaled = self.optimizer.scale_loss(total)
        variables = self.classifier.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        if self.detect:
            # Per pair of mixed examples, both count by their true labels (members, wrong).
            flagged = 1.0 - ops.cast(weights > 0, 'float32')
            figures.update(nd_flagged=ops.sum(flagged * batch.members),
                           nd_hit=ops.sum(flagged * batch.wrong),
                           nd_wrong=ops.sum(batch.wrong))
        self.loss_tracker.update_state(loss)
        self.acc_tracker.update_state(batch.y, outputs['scores'])
        for name, value in figures.items():
            self.extra[name].update_state(value)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, batch):
        x, y = self.source.eval_batch(batch) if self.source.on_device else batch
        outputs = self.classifier(x, training=False)
        per_example = self.step_loss.per_example(y, outputs, x, outputs['embedding'])
        self.loss_tracker.update_state(ops.mean(per_example))
        self.acc_tracker.update_state(y, outputs['scores'])
        return {m.name: m.result() for m in (self.loss_tracker, self.acc_tracker)}


def top1_precision(y_true, y_pred):
    """Per example: 1 when the top-scored class is one of the example's labels. Targets
    may be smoothed or mixed in training, so a label is a class holding at least half the
    example's largest target value; on the unsmoothed validation targets that is exactly
    y = 1. Single-label one-hot data: the same as categorical accuracy."""
    top = ops.expand_dims(ops.argmax(y_pred, axis=-1), -1)
    at_top = ops.squeeze(ops.take_along_axis(y_true, top, axis=-1), -1)
    return ops.cast(at_top >= 0.5 * ops.max(y_true, axis=-1), 'float32')


# Per-epoch sums the step logs when it counts flagged examples (callbacks.noise_detection).
NOISE_COUNTS = ('nd_flagged', 'nd_hit', 'nd_wrong')
