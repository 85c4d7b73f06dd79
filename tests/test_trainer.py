"""trainer.py and callbacks.py: model selection (last / best_val with restarts), the
training step's batch before mixup for adaptive Lq, noise-detection counts and the
resume checkpoint, against references written here."""
from types import SimpleNamespace

import keras
import numpy as np
import pytest

import callbacks
import config
import losses
import trainer


def _classifier():
    inp = keras.Input((3,))
    return keras.Model(inp, keras.layers.Dense(2, activation='softmax')(inp))


def _epochs(selection, net, values, start=0):
    """Run epochs start+1.. with val_accuracy values; epoch e's weights are all e."""
    for i, value in enumerate(values, start=start):
        net.set_weights([np.full(w.shape, i + 1.0, 'float32') for w in net.get_weights()])
        selection.on_epoch_end(i, {'val_accuracy': value})


@pytest.mark.parametrize('rule', ['last', 'best_val'])
def test_model_selection_restarts_where_the_method_acts(tmp_path, rule):
    net = _classifier()
    host = SimpleNamespace(classifier=net)
    state = callbacks.RunState()
    selection = callbacks.ModelSelection(rule, 'val_accuracy', tmp_path / 'model.keras', state)
    selection.set_model(host)
    _epochs(selection, net, [0.2, 0.9, 0.3])  # the best epoch (2) is before the method acts
    selection.restart()                       # e.g. pruning: from epoch 4 on
    _epochs(selection, net, [0.4, 0.6, 0.5], start=3)
    selection.finish(host)
    expected = {'last': 6, 'best_val': 5}[rule]
    assert state.evaluated_epoch == expected and state.epoch == 6
    assert state.selection_from == 4
    for w in net.get_weights():
        np.testing.assert_array_equal(w, expected)
    # model.keras holds the evaluated weights.
    saved = keras.saving.load_model(tmp_path / 'model.keras')
    for w in saved.get_weights():
        np.testing.assert_array_equal(w, expected)
    assert set(state.state_dict()) == {'epoch', 'stage', 'noise_from', 'selection_from',
                                    'best_value', 'best_epoch', 'evaluated_epoch'}


def test_best_val_restart_at_a_later_epoch_ignores_the_epochs_before(tmp_path):
    """Mode 2: the loss switches inside one fit; only epochs from the switch count."""
    net = _classifier()
    host = SimpleNamespace(classifier=net)
    state = callbacks.RunState()
    selection = callbacks.ModelSelection('best_val', 'val_accuracy', tmp_path / 'm.keras', state)
    selection.set_model(host)
    selection.restart(from_epoch=3)
    _epochs(selection, net, [0.9, 0.8, 0.1, 0.2])
    selection.finish(host)
    assert state.evaluated_epoch == 4 and state.best_value == pytest.approx(0.2)


def _snn_reference(x, labels, t):
    """Soft nearest neighbour ratio written out pair by pair (numpy)."""
    x = x.reshape(len(x), -1).astype(np.float64)
    terms = []
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        w = {j: np.exp(-np.sum((x[i] - x[j]) ** 2) / t) for j in others}
        same = [j for j in others if labels[j] == labels[i]]
        terms.append(sum(w[j] for j in same) / sum(w.values()) if same else 0.0)
    return float(np.mean(terms))


def test_adaptive_lq_step_measures_snn_on_the_batch_before_mixup():
    rng = np.random.default_rng(0)
    b, k = 8, 3
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    x_clean = (rng.normal(size=(b, 4)) + 3 * labels[:, None]).astype('float32')
    partner = rng.permutation(b)
    lam = rng.beta(0.4, 0.4, size=b).astype('float32')[:, None]
    y_clean = np.eye(k, dtype='float32')[labels]
    batch = {'x': lam * x_clean + (1 - lam) * x_clean[partner],
             'y': lam * y_clean + (1 - lam) * y_clean[partner],
             'verified': np.ones(b, 'float32'), 'wrong': np.zeros(b, 'float32'),
             'members': np.full(b, 2.0, 'float32'), 'x_clean': x_clean,
             'labels': labels.astype('int32')}
    inp = keras.Input((4,))
    hidden = keras.layers.Dense(5, name='embedding')(inp)
    probs = keras.layers.Dense(k, activation='softmax')(hidden)
    net = keras.Model(inp, {'scores': probs, 'softmax': probs, 'embedding': hidden})
    cfg = config.load_config(None, ['loss.type=adaptive_lq', 'loss.snn_temperature=10.0'])
    step_loss = losses.get(cfg)
    model = trainer.Trainer(net, SimpleNamespace(on_device=False), step_loss)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.train_step({key: keras.ops.convert_to_tensor(v) for key, v in batch.items()})
    expected = 1.0 - _snn_reference(x_clean, labels, 10.0)
    mixed = 1.0 - _snn_reference(batch['x'], batch['y'].argmax(axis=1), 10.0)
    assert abs(expected - mixed) > 0.05  # the two readings differ on this batch
    assert float(keras.ops.convert_to_numpy(step_loss.q_a)) == pytest.approx(expected, rel=1e-4)


class _DropFirstThree(losses.CCE):
    """CCE that drops the first three examples of every batch (weight 0)."""

    def keep(self, values):
        weights = keras.ops.convert_to_tensor(np.r_[np.zeros(3), np.ones(5)].astype('float32'))
        return weights, {}


def test_noise_detection_counts_both_examples_of_a_mixed_pair():
    rng = np.random.default_rng(1)
    b, k = 8, 3
    members = np.array([2, 1, 2, 2, 1, 2, 2, 2], 'float32')  # 1: mixed with itself
    wrong = np.array([2, 0, 1, 0, 1, 1, 0, 2], 'float32')    # wrong-label members per pair
    batch = {'x': rng.normal(size=(b, 4)).astype('float32'),
             'y': np.eye(k, dtype='float32')[rng.integers(0, k, b)],
             'verified': np.zeros(b, 'float32'), 'wrong': wrong, 'members': members}
    inp = keras.Input((4,))
    probs = keras.layers.Dense(k, activation='softmax')(inp)
    net = keras.Model(inp, {'scores': probs, 'softmax': probs, 'embedding': inp})
    model = trainer.Trainer(net, SimpleNamespace(on_device=False), _DropFirstThree({}),
                            detect=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    logs = model.train_step({key: keras.ops.convert_to_tensor(v) for key, v in batch.items()})
    # Examples 0-2 are flagged: 2 + 1 + 2 patches, of which 2 + 0 + 1 have wrong labels.
    assert float(logs['nd_flagged']) == 5 and float(logs['nd_hit']) == 3
    assert float(logs['nd_wrong']) == wrong.sum()
    figures = callbacks.precision_recall(5, 3, int(wrong.sum()))
    assert figures['precision'] == pytest.approx(100 * 3 / 5)  # percent
    assert figures['recall'] == pytest.approx(100 * 3 / 7)


def test_val_clip_accuracy_is_the_clip_accuracy_of_gmean_patch_scores(clips, make_cfg):
    """history.csv's val_clip_accuracy: each validation clip's patches scored one by one
    (standardised in numpy), geometric mean over the clip's patches, argmax against the
    given label, share of hits -- as the test report would count it."""
    import data
    import eval as evaluation
    import pandas as pd
    keras.utils.set_random_seed(3)
    plen, hop, n_mels = clips['patch_len'], clips['patch_hop'], clips['n_mels']
    p = data.make_patches(clips['starts'], clips['lengths'], plen, hop)
    mean, std = data.fit_scaler(clips['frames'], p, np.arange(p.clip.size), plen)
    table = pd.DataFrame({'label_idx': [0, 1, 2, 0, 1, 2], 'verified': 1,
                          'labels_idx': [(0,), (1,), (2,), (0,), (1,), (2,)]})
    src = data.PatchSource(clips['frames'], p, table, mean, std, np.zeros(3, np.float32),
                           plen, False)
    inp = keras.Input((plen, n_mels, 1))
    x = keras.layers.Flatten()(inp)
    model = keras.Model(inp, {'scores': keras.layers.Dense(3, activation='softmax')(x)})
    cfg = make_cfg(f'extract.patch_len={plen}', f'extract.patch_hop={hop}',
                   f'extract.n_mels={n_mels}', 'recognizer.aggregate=gmean')
    targets = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    rows = np.array([1, 2, 4])  # clips with patches (lengths 8, 20, 14)
    callback = callbacks.ValClipAccuracy(evaluation.clip_scorer(model, src, p, cfg), rows,
                                       targets)
    logs = {}
    callback.on_epoch_end(0, logs)
    hits = []
    for c in rows:
        start, n = clips['starts'][c], clips['lengths'][c]
        probs = []
        for s in range(0, n - plen + 1, hop):
            x = (clips['frames'][start + s:start + s + plen] - mean) / std
            probs.append(np.asarray(model(x[None, :, :, None])['scores'])[0])
        clip = np.exp(np.log(np.array(probs)).mean(axis=0))
        hits.append(clip.argmax() == targets[c].argmax())
    assert logs['val_clip_accuracy'] == pytest.approx(np.mean(hits))


def test_checkpoint_parts_save_and_restore_themselves(tmp_path):
    """callbacks.Checkpoint: each part's state_dict goes into state.pkl and comes back
    through its load_state_dict; the counters wait for put_back (after Keras resets
    them); a model with other variables is refused with one line naming the file."""
    net = _classifier()
    model = trainer.Trainer(net, SimpleNamespace(on_device=False), losses.CCE({}))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    state, history = callbacks.RunState(epoch=3, stage=2), callbacks.History(tmp_path / 'h.csv')
    history.rows = [{'epoch': 1, 'loss': 0.5}]
    stopping = keras.callbacks.EarlyStopping(patience=4)
    stopping.wait, stopping.best = 2, 0.75
    counters = callbacks.Counters([stopping])
    path = tmp_path / 'backup' / 'state.pkl'
    parts = {'run': state, 'history': history, 'trainer': model, 'counters': counters}
    checkpoint = callbacks.Checkpoint(path, parts)
    weights = [w.copy() for w in net.get_weights()]
    checkpoint.save(stopped=True)
    net.set_weights([w + 1.0 for w in weights])
    state.epoch, history.rows = 9, []
    stopping.on_train_begin()  # Keras resets the counters when a fit begins
    saved = callbacks.Checkpoint(path, parts).load()
    assert saved['stopped'] is True and callbacks.Checkpoint(tmp_path / 'none', {}).load() is None
    checkpoint.restore(saved)
    assert state.epoch == 3 and state.stage == 2 and history.rows == [{'epoch': 1, 'loss': 0.5}]
    for got, want in zip(net.get_weights(), weights):
        np.testing.assert_array_equal(got, want)
    assert stopping.wait == 0  # not yet: put back when the resumed fit begins
    counters.put_back()
    assert (stopping.wait, stopping.best) == (2, 0.75)
    inp = keras.Input((3,))
    deeper = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dense(4)(inp)))
    other = trainer.Trainer(deeper, SimpleNamespace(on_device=False), losses.CCE({}))
    other.compile(optimizer=keras.optimizers.Adam(1e-3))
    with pytest.raises(config.ConfigError, match='state.pkl does not fit this model'):
        callbacks.Checkpoint(path, {'trainer': other}).restore(saved)
