"""LR schedules and snapshots, k-fold ensembles and self-verification: units against
numpy written here, independently of trainer.py / eval.py / self_verify.py."""
import keras
import numpy as np
import pytest

import config
import learn
import trainer


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.lr = []

    def on_epoch_begin(self, epoch, logs=None):
        self.lr.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def test_cyclic_cosine_lr_per_epoch_and_a_snapshot_at_each_cycle_end():
    lr_max, lr_min, length, cycles = 1e-3, 1e-6, 4, 3
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.5), loss='mse')
    saved, recorder = [], _Recorder()
    callbacks = [trainer.EpochLR(lambda e: trainer.cosine_lr(e, lr_max, lr_min, length)),
                 trainer.Snapshots(length, cycles, saved.append), recorder]
    x = np.zeros((4, 3), np.float32)
    model.fit(x, x[:, :2], epochs=length * cycles + 2, verbose=0, callbacks=callbacks)
    # Akiyama & Sato: each cycle restarts at lr and anneals to lr_min by half a cosine.
    epochs = np.arange(length * cycles + 2)
    expected = lr_min + (lr_max - lr_min) * (1 + np.cos(np.pi * (epochs % length) / length)) / 2
    np.testing.assert_allclose(recorder.lr, expected, rtol=1e-6)
    assert recorder.lr[0] == pytest.approx(lr_max) and recorder.lr[length] == pytest.approx(lr_max)
    # Saved after epochs 4, 8, 12 (1-based); the two epochs past the last cycle save nothing.
    assert saved == [1, 2, 3]


def test_linear_decay_after_the_constant_epochs():
    got = [trainer.linear_decay_lr(e, 2e-4, 5, 30) for e in range(30)]
    expected = np.where(np.arange(30) < 5, 2e-4, 2e-4 * (1 - (np.arange(30) - 5) / 25))
    np.testing.assert_allclose(got, expected)


@pytest.mark.parametrize('overrides, message', [
    (['learn.lr_schedule=cyclic_cosine', 'learn.cycles=2', 'learn.cycle_epochs=3',
      'learn.n_epochs=5'], 'set learn.n_epochs to 6 (now 5)'),
    (['learn.lr_schedule=cyclic_cosine', 'learn.cycles=2', 'learn.cycle_epochs=3',
      'learn.mode=staged', 'learn.staged_epochs=[1,1,1]'], 'learn.staged_epochs (sum) to 6'),
    (['learn.lr_schedule=cyclic_cosine', 'learn.lr_min=0.01', 'learn.lr=0.001'],
     'learn.lr_min (0.01) must be below learn.lr'),
    (['learn.lr_schedule=step'], 'learn.lr_schedule is'),
])
def test_schedule_mistakes_are_one_line_errors(make_cfg, overrides, message):
    with pytest.raises(config.ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
        learn.check(make_cfg(*overrides))
