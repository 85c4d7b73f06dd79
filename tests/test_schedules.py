"""learn.lr_schedule linear (learn.lr_decay_start), learn.patience null and
learn.model_selection best_val_loss: the schedule against a numpy replay of the released
code's rule (Dorfer & Widmer, CPJKU/dcase_task2: the rate is lowered after each epoch),
the selection against the history of a run."""
import json
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest

import callbacks
import config
import learn
import schedules
from config import ConfigError
from experiment import Experiment


def replay(lr, decay_start, epochs):
    """The released code's loop: the update is applied once before training (as epoch 0)
    and after each epoch n = 1, 2, ...: the rate stays when n < decay_start, else drops by
    lr / (epochs - decay_start), not below 0. -> the rate each epoch was trained with."""
    step = lr / (epochs - decay_start)

    def update(rate, n):
        return rate if n < decay_start else max(0.0, rate - step)
    rates, rate = [], update(lr, 0)
    for n in range(1, epochs + 1):
        rates.append(rate)
        rate = update(rate, n)
    return np.array(rates)


@pytest.mark.parametrize('lr, start, epochs', [(1e-3, 100, 500), (2e-4, 5, 30), (0.1, 0, 7)])
def test_linear_schedule_against_the_replayed_rule(lr, start, epochs):
    got = np.array([schedules.linear_lr(e, lr, start, epochs) for e in range(epochs)])
    np.testing.assert_allclose(got, replay(lr, start, epochs), rtol=1e-9, atol=1e-12)
    assert got[-1] == 0 and np.all(got[:start] == lr) and np.all(np.diff(got[start:]) < 0)


def test_linear_schedule_sets_the_rate_of_each_epoch_in_fit():
    """Experiment.schedule's callback, run by Keras: the optimizer's rate in each epoch."""
    cfg = config.load_config(None, ['learn.lr_schedule=linear', 'learn.n_epochs=9',
                                    'learn.lr_decay_start=3', 'learn.lr=0.01',
                                    'ctrl.run_name=x'])
    host = SimpleNamespace(cfg=cfg, mode=learn.MODES[1], reduce_lr=None)
    [schedule] = Experiment.schedule(host)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Dense(1)(inp))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss='mse')
    x = np.zeros((4, 2), np.float32)
    model.fit(x, x[:, :1], epochs=9, verbose=0, callbacks=[schedule, Record()])
    np.testing.assert_allclose(seen, replay(0.01, 3, 9), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('overrides, message', [
    (['learn.n_epochs=100'], r'learn.lr_decay_start = 100 must be below the 100 epochs of '
                             r'learn.n_epochs'),
    (['learn.mode=staged'], r'linear with learn.mode staged needs learn.steps_per_epoch'),
])
def test_linear_schedule_checks(make_cfg, overrides, message):
    cfg = make_cfg('learn.lr_schedule=linear', *overrides)
    with pytest.raises(ConfigError, match=message):
        learn.check(cfg)
    learn.check(make_cfg('learn.lr_schedule=linear', 'learn.n_epochs=101'))


def test_patience_null_is_accepted_and_zero_refused(make_cfg):
    assert make_cfg('learn.patience=null')['learn']['patience'] is None
    with pytest.raises(ConfigError, match='learn.patience'):
        make_cfg('learn.patience=0')


def test_best_val_loss_keeps_the_lowest_validation_loss_since_the_restart(tmp_path):
    inp = keras.Input((3,))
    net = keras.Model(inp, keras.layers.Dense(2)(inp))
    host = SimpleNamespace(classifier=net)
    state = callbacks.RunState()
    selection = callbacks.ModelSelection('best_val_loss', 'val_accuracy', tmp_path / 'm.keras',
                                         state)
    selection.set_model(host)
    losses = [0.1, 0.9, 0.7, 0.4, 0.6]  # the lowest (epoch 1) is before the method acts
    selection.restart(from_epoch=2)
    for i, value in enumerate(losses):
        net.set_weights([np.full(w.shape, i + 1.0, 'float32') for w in net.get_weights()])
        selection.on_epoch_end(i, {'val_loss': value, 'val_accuracy': 1 - value})
    selection.finish(host)
    assert state.evaluated_epoch == 4 and selection.monitor == 'val_loss'
    for w in net.get_weights():
        np.testing.assert_array_equal(w, 4.0)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from conftest import tiny_dataset
    root = tmp_path_factory.mktemp('schedules')
    return root, tiny_dataset(root / 'tiny', n_classes=3, train_per_class=8,
                              test_per_class=2, seed=5)


def test_round_zero_schedule_in_a_run(tiny, monkeypatch):
    """Dorfer & Widmer's round 0 in small: every epoch trained (no early stopping), the
    rates of the rule in history.csv, the epoch of lowest val_loss evaluated."""
    import main
    from conftest import write_tiny_config
    root, data = tiny
    monkeypatch.setattr(keras.callbacks.EarlyStopping, 'on_epoch_end',
                        lambda *a, **k: pytest.fail('early stopping ran'))
    params = write_tiny_config(root / 'dorfer.yaml', data, root, {
        'ctrl': {'workers': 1, 'run_name': 'round0'}, 'extract': {'n_mels': 16},
        'learn': {'n_classes': 3, 'n_epochs': 5, 'lr_schedule': 'linear', 'lr_decay_start': 2,
                  'patience': None, 'model_selection': 'best_val_loss', 'lr': 0.002}})
    assert main.main(['-p', str(params)]) == 0
    history = pd.read_csv(root / 'logs' / 'round0' / 'history.csv')
    np.testing.assert_allclose(history.lr, replay(0.002, 2, 5), rtol=1e-5, atol=1e-9)
    results = json.loads((root / 'logs' / 'round0' / 'results.json').read_text())
    assert results['model_selection'] == 'best_val_loss'
    assert results['evaluated_epoch'] == int(history.epoch[history.val_loss.idxmin()])
