"""learn.mode confident_learning (confident_learning.py): the flagged set against a direct
call of cleanlab on the same out-of-fold scores, only unverified clips flagged, the drop
and relabel counts, the checks, and tiny main.py runs (one interrupted and resumed)."""
import json

import numpy as np
import pandas as pd
import pytest
from cleanlab.filter import find_label_issues

import callbacks
import confident_learning as cl
import eval as evaluation
import main
from config import ConfigError
from conftest import tiny_dataset, write_tiny_config


def _noisy_scores(rng, n=80, k=4, n_wrong=12):
    """Given labels with n_wrong errors and scores peaked on the true class."""
    true = rng.integers(0, k, n)
    given = true.copy()
    given[:n_wrong] = (true[:n_wrong] + rng.integers(1, k, n_wrong)) % k
    logits = 3.0 * np.eye(k)[true] + rng.normal(size=(n, k))
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return given, scores


@pytest.mark.parametrize('filter_by', ['prune_by_noise_rate', 'both', 'predicted_neq_given'])
def test_flags_are_cleanlabs_on_the_same_scores(filter_by):
    given, scores = _noisy_scores(np.random.default_rng(0))
    flagged = cl.find_issues(given, scores, filter_by, multi_label=False)
    direct = find_label_issues(given, scores, filter_by=filter_by, n_jobs=1)
    np.testing.assert_array_equal(flagged, direct)
    assert 0 < flagged.sum() < given.size
    if filter_by == 'predicted_neq_given':  # its definition, written out
        np.testing.assert_array_equal(flagged, scores.argmax(1) != given)


def test_single_label_scores_are_renormalised_and_multi_label_passed_as_lists():
    rng = np.random.default_rng(1)
    given, scores = _noisy_scores(rng)
    sigmoid_like = scores * rng.uniform(0.5, 2.0, (len(scores), 1))  # rows not summing to 1
    np.testing.assert_array_equal(
        cl.find_issues(given, sigmoid_like, 'prune_by_noise_rate', False),
        find_label_issues(given, sigmoid_like / sigmoid_like.sum(1, keepdims=True), n_jobs=1))
    labels = [(int(g),) if i % 3 else (int(g), (int(g) + 1) % 4) for i, g in enumerate(given)]
    probs = 1 / (1 + np.exp(-rng.normal(size=scores.shape) - 4 * (scores - 0.5)))
    np.testing.assert_array_equal(
        cl.find_issues(labels, probs, 'prune_by_noise_rate', True),
        find_label_issues([list(x) for x in labels], probs, multi_label=True, n_jobs=1))


def test_relabelling_takes_the_argmax_and_keeps_the_truth():
    scores = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    assert cl.new_labels(scores, False) == [(1,), (0,), (2,)]
    multi = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.1]])
    assert cl.new_labels(multi, True) == [(0, 1), (1,)]  # >= 0.5, else the argmax
    classes = ['a', 'b', 'c']
    table = pd.DataFrame({'label': ['a', 'b', 'c'], 'label_idx': [0, 1, 2],
                          'labels': [('a',), ('b',), ('c',)], 'labels_idx': [(0,), (1,), (2,)],
                          'true_idx': [0, 0, 2]})
    out = cl.relabelled(table, classes, np.array([1]), [(0,)])
    assert list(out.label) == ['a', 'a', 'c'] and list(out.label_idx) == [0, 0, 2]
    assert out.labels_idx.tolist() == [(0,), (0,), (2,)] and list(out.true_idx) == [0, 0, 2]
    assert list(table.label) == ['a', 'b', 'c']  # a copy


def test_checks_refuse_k_folds_and_relabel_with_snapshots(make_cfg):
    with pytest.raises(ConfigError, match='keep learn.folds 1, not 3'):
        cl.check(make_cfg('learn.mode=confident_learning', 'learn.folds=3'))
    with pytest.raises(ConfigError, match='learn.cl_action relabel'):
        cl.check(make_cfg('learn.mode=confident_learning', 'learn.cl_action=relabel',
                          'learn.lr_schedule=cyclic_cosine', 'learn.cycles=1',
                          'learn.cycle_epochs=100'))
    with pytest.raises(ConfigError, match="learn.cl_action.*'keep'"):
        make_cfg('learn.cl_action=keep')
    cl.check(make_cfg('learn.mode=confident_learning'))
    import learn  # the mode's declaration hands learn.check its own check
    with pytest.raises(ConfigError, match='makes its own learn.cl_folds = 4 folds'):
        learn.check(make_cfg('learn.mode=confident_learning', 'learn.folds=2'))


# ----------------------------------------------------------------------------- main.py

SMALL = {'ctrl': {'workers': 1, 'train_data': 'all'}, 'extract': {'n_mels': 16},
         'learn': {'n_classes': 3, 'batch_size': 16, 'n_epochs': 2, 'predict_batch_size': 128,
                   'mode': 'confident_learning', 'cl_folds': 2}}


@pytest.fixture(scope='module')
def noisy(tmp_path_factory):
    root = tmp_path_factory.mktemp('cl')
    return root, tiny_dataset(root / 'data', n_classes=3, train_per_class=12, test_per_class=3,
                              seed=8, noise_rate=0.4)


def _run(noisy, name, *overrides):
    root, data = noisy
    path = write_tiny_config(root / f'{name}.yaml', data, root, SMALL)
    args = ['-p', str(path), '-o', f'ctrl.run_name={name}']
    for o in overrides:
        args += ['-o', o]
    return main.main(args), root / 'logs' / name, root / 'logs' / f'{name}.out'


def _direct_flags(run_dir):
    """The flags of a direct cleanlab call on the run's saved out-of-fold scores, with the
    given labels of the table, restricted to the unverified clips -> set of fnames."""
    import config
    import datasets
    cfg = config.load_config(run_dir / 'config.yaml', [])
    table, classes = datasets.load(cfg)
    parts = [np.load(p) for p in sorted(run_dir.glob('cl_oof_*.npz'))]
    assert len(parts) == 2
    rows = np.concatenate([p['rows'] for p in parts])
    scores = np.concatenate([p['scores'] for p in parts])
    flags = find_label_issues(table.label_idx.to_numpy()[rows], scores, n_jobs=1)
    unverified = table.verified.to_numpy()[rows] == 0
    return set(table.fname.to_numpy()[rows[flags & unverified]]), table, rows


def test_drop_run_flags_what_cleanlab_flags_and_reports_it(noisy):
    """The flagged set is a direct cleanlab call's on the saved out-of-fold scores; the
    counts and noise-detection figures follow from it."""
    code, run_dir, out = _run(noisy, 'cl_drop', 'learn.n_epochs=1')
    assert code == 0, out.read_text()
    expected, table, rows = _direct_flags(run_dir)
    flagged = pd.read_csv(run_dir / 'cl_flagged.csv')
    assert set(flagged.fname) == expected and len(expected) > 0
    assert (flagged.verified == 0).all()
    results = json.loads((run_dir / 'results.json').read_text())
    summary = results['confident_learning']
    assert summary['n_flagged'] == summary['n_dropped'] == len(expected)
    assert summary['n_scored'] == rows.size == len(pd.read_csv(run_dir / 'oof.csv'))
    # noise detection against the truth the synthetic dataset knows
    scored = table.iloc[rows]
    wrong = set(scored.fname[scored.label_idx.to_numpy() != scored.true_idx.to_numpy()])
    nd = results['noise_detection']
    assert nd['n_flagged'] == len(expected) and nd['n_wrong'] == len(wrong)
    assert nd['precision'] == pytest.approx(100 * len(expected & wrong) / len(expected))
    assert nd['recall'] == pytest.approx(100 * len(expected & wrong) / len(wrong))
    assert len(pd.read_csv(run_dir / 'history.csv')) == 1  # the final model's epochs
    assert 'ACCURACY - MICRO' in out.read_text()


def test_relabel_run_resumes_between_folds_and_in_the_final_training(noisy, monkeypatch):
    """Relabel, interrupted while scoring fold 2: the rerun reads fold 1's scores back and
    trains fold 2 only; interrupted again after the final model's first epoch: the last
    run takes the decision from the backup (no fold trains again). The relabelled count is
    that of the flagged clips whose out-of-fold label differs from the given one."""
    real_predict, calls = evaluation.predict_clips, []
    real_backup = callbacks.Backup.on_epoch_end

    def second_interrupts(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_predict(*args, **kwargs)

    def stop(self, epoch, logs=None):
        real_backup(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt
    relabel = 'learn.cl_action=relabel'
    with monkeypatch.context() as patch:
        patch.setattr(evaluation, 'predict_clips', second_interrupts)
        code, run_dir, out = _run(noisy, 'cl_relabel', relabel)
    assert code == 130 and [p.name for p in run_dir.glob('cl_oof_*.npz')] == ['cl_oof_1.npz']
    logs = [out.read_text()]
    with monkeypatch.context() as patch:
        patch.setattr(callbacks.Backup, 'on_epoch_end', stop)
        code, _, _ = _run(noisy, 'cl_relabel', relabel)
    assert code == 130
    logs.append(out.read_text()[len(logs[0]):])
    assert 'fold 1 of 2 read back from cl_oof_1.npz' in logs[1]
    assert 'fold 2 of 2, ' in logs[1] and 'fold 1 of 2, ' not in logs[1]
    code, _, _ = _run(noisy, 'cl_relabel', relabel)
    assert code == 0
    last = out.read_text()[len(logs[0]) + len(logs[1]):]
    assert 'confident learning: fold' not in last and 'resumed at epoch 2 (stage 1' in last
    expected, _, _ = _direct_flags(run_dir)
    flagged = pd.read_csv(run_dir / 'cl_flagged.csv')
    assert set(flagged.fname) == expected
    summary = json.loads((run_dir / 'results.json').read_text())['confident_learning']
    assert summary['action'] == 'relabel' and summary['n_flagged'] == len(expected)
    assert summary['n_relabelled'] == int((flagged.oof_label != flagged.label).sum())
    assert len(pd.read_csv(run_dir / 'history.csv')) == 2
