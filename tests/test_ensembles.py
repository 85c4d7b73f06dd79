"""LR schedules and snapshots, k-fold ensembles and self-verification: units against
numpy written here, independently of schedules.py / eval.py / self_verify.py."""
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

import config
import splits
import learn
import schedules
from results import Results


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
    schedule = [schedules.EpochLR(lambda e: schedules.cosine_lr(e, lr_max, lr_min, length)),
                schedules.Snapshots(length, cycles, saved.append), recorder]
    x = np.zeros((4, 3), np.float32)
    model.fit(x, x[:, :2], epochs=length * cycles + 2, verbose=0, callbacks=schedule)
    # Akiyama & Sato: each cycle restarts at lr and anneals to lr_min by half a cosine.
    epochs = np.arange(length * cycles + 2)
    expected = lr_min + (lr_max - lr_min) * (1 + np.cos(np.pi * (epochs % length) / length)) / 2
    np.testing.assert_allclose(recorder.lr, expected, rtol=1e-6)
    assert recorder.lr[0] == pytest.approx(lr_max) and recorder.lr[length] == pytest.approx(lr_max)
    # Saved after epochs 4, 8, 12 (1-based); the two epochs past the last cycle save nothing.
    assert saved == [1, 2, 3]


def test_linear_decay_after_the_constant_epochs():
    got = [schedules.linear_decay_lr(e, 2e-4, 5, 30) for e in range(30)]
    expected = np.where(np.arange(30) < 5, 2e-4, 2e-4 * (1 - (np.arange(30) - 5) / 25))
    np.testing.assert_allclose(got, expected)


@pytest.mark.parametrize('overrides, message', [
    (['learn.lr_schedule=cyclic_cosine', 'learn.cycles=2', 'learn.cycle_epochs=3',
      'learn.n_epochs=5'], 'set learn.n_epochs to 6 epochs (now 5)'),
    (['learn.lr_schedule=cyclic_cosine', 'learn.cycles=2', 'learn.cycle_epochs=3',
      'learn.mode=staged', 'learn.staged_steps=[10,10,5]', 'learn.steps_per_epoch=4'],
     'set learn.staged_steps / learn.steps_per_epoch to 6 epochs (now 8)'),
    (['learn.lr_schedule=cyclic_cosine', 'learn.cycles=2', 'learn.cycle_epochs=3',
      'learn.mode=staged'], 'with learn.mode staged needs learn.steps_per_epoch'),
    (['learn.lr_schedule=cyclic_cosine', 'learn.lr_min=0.01', 'learn.lr=0.001'],
     'learn.lr_min (0.01) must be below learn.lr'),
    (['learn.lr_schedule=step'], 'learn.lr_schedule is'),
])
def test_schedule_mistakes_are_one_line_errors(make_cfg, overrides, message):
    with pytest.raises(config.ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
        learn.check(make_cfg(*overrides))


@pytest.mark.parametrize('method', ['amean', 'gmean'])
def test_ensemble_combines_members_by_arithmetic_or_geometric_mean(method):
    import eval as evaluation
    scores = np.random.default_rng(1).dirichlet(np.ones(4), size=(3, 5))  # 3 members
    expected = (scores.sum(axis=0) / 3 if method == 'amean'
                else np.prod(scores, axis=0) ** (1 / 3))
    np.testing.assert_allclose(evaluation.combine(scores, method), expected, rtol=1e-12)
    assert (evaluation.ensemble_line({'n_models': 6, 'folds': 3, 'snapshots': 2,
                                      'method': method})
            == f'ensemble: 6 models (3 folds x 2 snapshots), {method}')


def test_kfold_split_is_stratified_and_disjoint():
    rows = np.arange(100, 160)
    labels = np.repeat([0, 1, 2], [30, 18, 12])
    parts = splits.kfold_split(rows, labels, 3, seed=5)
    vals = [val for _, val in parts]
    np.testing.assert_array_equal(np.sort(np.concatenate(vals)), rows)  # each row once
    for train, val in parts:
        assert np.intersect1d(train, val).size == 0 and train.size + val.size == rows.size
        # every class is split 10/6/4 per fold
        assert np.bincount(labels[val - 100], minlength=3).tolist() == [10, 6, 4]
    assert [v.tolist() for v in vals] == [v.tolist() for _, v in splits.kfold_split(
        rows, labels, 3, seed=5)]


@pytest.mark.parametrize('value', ['[0]', '[3]', '[]', 'some'])
def test_snapshot_cycles_must_name_existing_cycles(make_cfg, value):
    cfg = make_cfg('learn.lr_schedule=cyclic_cosine', 'learn.cycles=2', 'learn.cycle_epochs=2',
                   'learn.n_epochs=4', f'recognizer.snapshot_cycles={value}')
    with pytest.raises(config.ConfigError, match='recognizer.snapshot_cycles must be all or'):
        learn.check(cfg)


def test_snapshot_cycles_select_the_members(make_cfg):
    import ensemble
    cfg = make_cfg('learn.lr_schedule=cyclic_cosine', 'learn.cycles=3', 'learn.cycle_epochs=2',
                   'learn.n_epochs=6', 'recognizer.snapshot_cycles=[3, 2]')
    assert ensemble.snapshot_cycles(cfg) == [2, 3]
    assert ensemble.snapshot_cycles(make_cfg('learn.lr_schedule=cyclic_cosine',
                                             'learn.cycles=3')) == [1, 2, 3]
    assert ensemble.snapshot_cycles(make_cfg()) is None


def _numpy_self_verified(labels, posteriors, threshold, per_class):
    """Greedy over all clips by falling posterior of their given label: take a clip whose
    argmax is its label, whose label posterior exceeds the threshold, while its class has
    fewer than per_class taken."""
    taken, count = [], {}
    own = posteriors[np.arange(len(labels)), labels]
    for i in sorted(range(len(labels)), key=lambda i: (-own[i], i)):
        if posteriors[i].argmax() != labels[i] or (threshold is not None and own[i] <= threshold):
            continue
        if count.get(labels[i], 0) < per_class:
            count[labels[i]] = count.get(labels[i], 0) + 1
            taken.append(i)
    return sorted(taken)


@pytest.mark.parametrize('threshold, per_class', [(0.95, 40), (0.95, 3), (None, 5), (0.6, 2)])
def test_self_verification_rule_matches_numpy(threshold, per_class):
    import self_verify
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=300)
    # Peaked posteriors, many near the label, so that all three conditions bite.
    logits = rng.normal(size=(300, 4)) * 3
    logits[np.arange(300), labels] += rng.uniform(0, 6, size=300)
    posteriors = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    got = self_verify.select(labels, posteriors, threshold, per_class)
    assert got.tolist() == _numpy_self_verified(labels, posteriors, threshold, per_class)
    assert np.bincount(labels[got], minlength=4).max() <= per_class


@pytest.mark.parametrize('other', ['learn.folds=2', 'learn.lr_schedule=cyclic_cosine'])
def test_self_verification_refuses_folds_and_cycles(make_cfg, other):
    cfg = make_cfg('learn.mode=self_verify', other, 'learn.cycles=2', 'learn.cycle_epochs=50')
    with pytest.raises(config.ConfigError, match='learn.mode self_verify makes its own 4 folds'):
        learn.check(cfg)


def test_sv_threshold_may_be_null(make_cfg):
    assert make_cfg('learn.sv_threshold=null')['learn']['sv_threshold'] is None
    with pytest.raises(config.ConfigError, match='learn.sv_threshold'):
        make_cfg('learn.sv_threshold=1.5')


def test_multilabel_kfold_keeps_each_labels_share():
    """Multi-hot targets go through iterative stratification: every label's clips are
    spread over the folds within one clip of an even share (counted here in numpy)."""
    rng = np.random.default_rng(0)
    y = (rng.random((90, 6)) < [0.5, 0.3, 0.2, 0.15, 0.1, 0.05]).astype(np.float32)
    y[y.sum(axis=1) == 0, 0] = 1
    rows = np.arange(500, 590)
    parts = splits.kfold_split(rows, y, 3, seed=1)
    vals = [val for _, val in parts]
    np.testing.assert_array_equal(np.sort(np.concatenate(vals)), rows)
    per_fold = np.stack([y[val - 500].sum(axis=0) for val in vals])  # [3, K]
    assert np.all(np.abs(per_fold - y.sum(axis=0) / 3) <= 1.0), per_fold
    assert [v.tolist() for v in vals] == [v.tolist() for _, v in splits.kfold_split(
        rows, y, 3, seed=1)]


class _RunExp:
    """Stands in for an Experiment in learn.run: training does nothing, model selection
    evaluates epoch 7, saved models are named as the Experiment names them."""

    def __init__(self, cfg, splits, fold=1):
        self.cfg, self.splits, self.fold, self.epoch = cfg, splits, fold, 8
        self.results = Results()
        self.train_idx = np.arange(3)
        self.state = SimpleNamespace(evaluated_epoch=7)
        self.selection = SimpleNamespace(finish=lambda trainer: None, restart=lambda: None,
                                         path=Path(f'model_{fold}.keras'))
        self.trainer = SimpleNamespace(classifier='the classifier')
        self.source = self.patches = None
        self.plans = SimpleNamespace(epoch=lambda idx, **kwargs: idx)

    def for_fold(self, fold):
        return _RunExp(self.cfg, self.splits, fold)

    def fit(self, *args, **kwargs):
        pass

    def snapshot_path(self, cycle):
        return Path(f'snapshot_{self.fold}_{cycle}.keras')


@pytest.mark.parametrize('folds, cyclic', [(1, False), (1, True), (2, False), (2, True)])
def test_results_name_the_ensemble_not_one_models_epoch(make_cfg, monkeypatch, tmp_path,
                                                        folds, cyclic):
    """One model: results.json and the log name learn.model_selection and the epoch. An
    ensemble (snapshots and/or folds): model_selection 'ensemble', no evaluated_epoch, the
    members named, the one ensemble line and no 'model evaluated' line; per fold, the
    selected epoch or the snapshot cycles that are that fold's members."""
    import json

    import pandas as pd

    import ensemble
    import eval as evaluation
    over = ['learn.mode=1', f'learn.folds={folds}', 'learn.n_epochs=4']
    if cyclic:
        over += ['learn.lr_schedule=cyclic_cosine', 'learn.cycles=2', 'learn.cycle_epochs=2']
    cfg = make_cfg(*over)
    rows = np.arange(10)
    splits = [(rows[rows % folds != f], rows[rows % folds == f]) for f in range(folds)]
    # folds > 1 predict each fold's own clips (out-of-fold) and write oof.csv: not here
    monkeypatch.setattr(evaluation, 'predict',
                        lambda e, s, p, r, c: (r, np.zeros((r.size, 3))))
    monkeypatch.setattr(ensemble, 'write_oof', lambda *args: None)
    exp = _RunExp(cfg, splits)
    predictor = learn.run(exp)
    results = exp.results.to_json()

    members = ([f'snapshot_{f}_{c}.keras' for f in range(1, folds + 1) for c in (1, 2)]
               if cyclic else [f'model_{f}.keras' for f in range(1, folds + 1)])
    per_fold = ({'model_selection': 'snapshots', 'snapshot_cycles': [1, 2]} if cyclic
                else {'model_selection': 'last', 'evaluated_epoch': 7})
    if folds == 1 and not cyclic:
        assert predictor == 'the classifier'
        assert results == {'model_selection': 'last', 'evaluated_epoch': 7}
        expected_line = 'model evaluated: learn.model_selection last, epoch 7'
    else:
        assert isinstance(predictor, evaluation.Ensemble)
        assert results['model_selection'] == 'ensemble' and 'evaluated_epoch' not in results
        assert results['ensemble'] == {'n_models': len(members), 'folds': folds,
                                       'snapshots': 2 if cyclic else 1, 'method': 'amean',
                                       'members': members}
        if folds > 1:
            assert results['folds'] == [dict(per_fold, fold=f) for f in range(1, folds + 1)]
        expected_line = (f'ensemble: {len(members)} models ({folds} folds x '
                         f'{2 if cyclic else 1} snapshots), amean')

    classes = ['a', 'b', 'c']
    table = pd.DataFrame({'fname': ['t1.wav', 't2.wav', 't3.wav'], 'subset': 'test',
                          'label_idx': [0, 1, 2], 'labels_idx': [(0,), (1,), (2,)]})
    report_cfg = {'ctrl': {'run_name': 'r', 'train_data': 'all', 'dataset': 'fsdnoisy18k'},
                  'recognizer': {'metrics': None}}
    scores = np.eye(3) * 0.8 + 0.05
    saved = evaluation.report(report_cfg, table, classes, np.arange(3), scores, tmp_path, 1.0,
                              exp.results)
    evaluation.write_results(tmp_path, saved)
    lines = evaluation.evaluation_lines(saved)
    assert expected_line in lines
    assert len([ln for ln in lines if ln.startswith(('model evaluated:', 'ensemble:'))]) == 1
    on_disk = json.loads((tmp_path / 'results.json').read_text())
    assert on_disk['model_selection'] == results['model_selection']
    assert ('evaluated_epoch' in on_disk) == (folds == 1 and not cyclic)


def test_k_fold_results_keep_the_injected_label_noise(make_cfg, monkeypatch):
    """Issue 15: results.json of a k-fold run keeps the top-level label_noise (run_folds
    dropped it), and each fold's entry keeps its own figures; fold 1's selection is not
    left at the top."""
    import ensemble
    import eval as evaluation
    noise = {'rate': 0.2, 'kind': 'symmetric', 'subset': 'train', 'share_changed': 0.2}
    monkeypatch.setattr(evaluation, 'predict', lambda e, s, p, r, c: (r, np.zeros((r.size, 3))))
    monkeypatch.setattr(ensemble, 'write_oof', lambda *args: None)
    monkeypatch.setattr(_RunExp, 'for_fold', lambda self, fold: _noisy(
        _RunExp(self.cfg, self.splits, fold), noise))
    rows = np.arange(9)
    splits = [(rows[rows % 3 != f], rows[rows % 3 == f]) for f in range(3)]
    exp = _noisy(_RunExp(make_cfg('learn.mode=1', 'learn.folds=3'), splits), noise)
    learn.run(exp)
    saved = exp.results.to_json()
    assert saved['label_noise'] == noise
    assert saved['model_selection'] == 'ensemble' and 'evaluated_epoch' not in saved
    assert saved['folds'] == [{'label_noise': noise, 'model_selection': 'last',
                               'evaluated_epoch': 7, 'fold': f} for f in (1, 2, 3)]


def _noisy(exp, noise):
    exp.results = Results(label_noise=noise)
    return exp
