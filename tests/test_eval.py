"""eval.py: aggregation, metrics, the accuracy report, batched patch mapping."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from scipy.stats import gmean
from sklearn.metrics import accuracy_score, precision_score, recall_score

import eval as evaluation
from config import ConfigError
from results import Results

ACCURACY_LINE = (r'^ACCURACY - MICRO: \d+\.\d{2} % \(\d+/\d+ test files, '
                 r'train_data=\w+\)$')


def _patch_scores(counts, n_classes=5, seed=0):
    """Softmax-like patch scores [sum(counts), K] and contiguous clip ids (not 0..n-1)."""
    rng = np.random.default_rng(seed)
    clip_ids = np.repeat(np.arange(len(counts)) * 7 + 3, counts)
    scores = rng.dirichlet(np.ones(n_classes), size=clip_ids.size)
    return scores, clip_ids


@pytest.mark.parametrize('method, reference', [
    ('gmean', lambda v: gmean(v, axis=0)),
    ('amean', lambda v: np.mean(v, axis=0)),
    ('max', lambda v: np.max(v, axis=0)),
])
def test_aggregate_against_numpy(method, reference):
    counts = [1, 4, 2, 7, 1, 3]
    scores, clip_ids = _patch_scores(counts)
    clips, agg = evaluation.aggregate(scores, clip_ids, method)
    expected_clips = np.arange(len(counts)) * 7 + 3
    np.testing.assert_array_equal(clips, expected_clips)
    assert agg.shape == (len(counts), scores.shape[1])
    for k, c in enumerate(expected_clips):
        np.testing.assert_allclose(agg[k], reference(scores[clip_ids == c]), rtol=1e-10)


def test_aggregate_one_dimensional_values():
    losses = np.array([0.5, 2.0, 1.0, 3.0, 4.0, 0.25])
    clip_ids = np.array([0, 0, 5, 5, 5, 9])
    _, agg = evaluation.aggregate(losses, clip_ids, 'gmean')
    np.testing.assert_allclose(agg, [1.0, 12 ** (1 / 3), 0.25], rtol=1e-12)


def test_aggregate_unknown_method():
    with pytest.raises(ConfigError) as err:
        evaluation.aggregate(np.ones((2, 2)), [0, 0], 'median')
    for name in ['median', 'gmean', 'amean', 'max']:
        assert name in str(err.value)


def test_report_files_and_line(tmp_path):
    classes = ['Acoustic_guitar', 'Rain', 'Wind']
    table = pd.DataFrame({
        'fname': ['tr1.wav', 'tr2.wav', 't1.wav', 't2.wav', 't3.wav', 't4.wav', 't5.wav'],
        'subset': ['train', 'train'] + ['test'] * 5,
        'label_idx': [0, 1, 0, 1, 2, 2, 1],
        'labels_idx': [(0,), (1,), (0,), (1,), (2,), (2,), (1,)],
    })
    rows = np.array([2, 3, 4, 6])  # t4.wav (row 5) failed to load: not evaluated
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.1, 0.7], [0.3, 0.6, 0.1]])
    cfg = {'ctrl': {'run_name': 'r1', 'train_data': 'noisy', 'dataset': 'fsdnoisy18k'},
           'recognizer': {'metrics': None}}
    results = evaluation.report(cfg, table, classes, rows, scores, tmp_path, 12.345)
    assert not (tmp_path / 'results.json').exists()  # written last, by write_results
    evaluation.write_results(tmp_path, results)

    true = table.label_idx.to_numpy()[rows]
    pred = scores.argmax(axis=1)
    acc = 100 * accuracy_score(true, pred)  # 3 of 4 right

    lines = evaluation.evaluation_lines(results)  # printed by main.py after results.json
    hits = [ln for ln in lines if ln.startswith('ACCURACY - MICRO')]
    assert len(hits) == 1 and re.match(ACCURACY_LINE, hits[0]), hits
    assert hits[0] == f'ACCURACY - MICRO: {acc:.2f} % (4/5 test files, train_data=noisy)'

    saved = json.loads((tmp_path / 'results.json').read_text())
    assert saved['accuracy_micro'] == pytest.approx(acc, abs=1e-4)
    assert saved['n_files_evaluated'] == 4 and saved['n_files_listed'] == 5
    assert saved['wall_time_s'] == pytest.approx(12.345, abs=0.01)
    recall = 100 * recall_score(true, pred, labels=range(3), average=None)
    assert list(saved['per_class']) == classes
    for k, c in enumerate(classes):
        assert saved['per_class'][c]['accuracy'] == pytest.approx(recall[k])
        assert saved['per_class'][c]['n_files'] == int(np.sum(true == k))
    assert results.evaluation.n_listed == 5

    pred_csv = pd.read_csv(tmp_path / 'predictions.csv')
    assert list(pred_csv.columns) == ['fname', 'predicted'] + classes
    assert pred_csv.fname.tolist() == ['t1.wav', 't2.wav', 't3.wav', 't5.wav']
    assert pred_csv.predicted.tolist() == [classes[k] for k in pred]
    np.testing.assert_allclose(pred_csv[classes].to_numpy(), scores, rtol=1e-5)
    assert not list(tmp_path.glob('.*.tmp*'))  # atomic writes left no temp file


@pytest.mark.parametrize('n, batch', [(23, 5), (5, 5), (3, 8), (1, 1)])
def test_map_patches_order_and_length(n, batch):
    idx = np.random.default_rng(0).permutation(100)[:n]

    def fn(i):
        i = tf.cast(i, tf.float32)
        return tf.stack([i * 2.0, i + 1.0], axis=-1)
    out = evaluation.map_patches(fn, idx, batch)
    np.testing.assert_array_equal(out, np.stack([idx * 2.0, idx + 1.0], axis=-1))


def _lwlrap_by_hand(truth, scores):
    """Mean over every positive (clip, label) of the share of positives among the labels
    scored at or above it (Fonseca et al., DCASE 2019)."""
    precisions = []
    for t, s in zip(truth, scores):
        for j in np.flatnonzero(t):
            above = s >= s[j]
            precisions.append(t[above].sum() / above.sum())
    return float(np.mean(precisions))


def test_report_multi_label_lines_and_results(tmp_path):
    classes = ['a', 'b', 'c', 'd']
    table = pd.DataFrame({'fname': [f'{i}.wav' for i in range(5)], 'subset': ['test'] * 5,
                          'labels_idx': [(0,), (1, 2), (3,), (0, 3), (2,)],
                          'label_idx': [0, 1, 3, 0, 2]})
    rows = np.arange(5)
    scores = np.random.default_rng(4).random((5, 4))
    cfg = {'ctrl': {'run_name': 'r2', 'train_data': 'all', 'dataset': 'fsdkaggle2019'},
           'recognizer': {'metrics': ['lwlrap', 'map3', 'prf1']}}
    results = evaluation.report(cfg, table, classes, rows, scores, tmp_path, 1.0)
    evaluation.write_results(tmp_path, results)
    truth = np.zeros((5, 4))
    for i, ids in enumerate(table.labels_idx):
        truth[i, list(ids)] = 1
    expected = _lwlrap_by_hand(truth, scores)
    lines = evaluation.evaluation_lines(results)
    assert f'LWLRAP: {expected:.4f} (5/5 test files, train_data=all)' in lines
    assert not any(ln.startswith('ACCURACY') for ln in lines)
    # MAP@3 by hand: 1/rank of each true label within the top 3, over min(n labels, 3).
    ap = []
    for t, s in zip(truth, scores):
        top = np.argsort(-s)[:3]
        hits = np.cumsum(t[top])
        ap.append(sum(hits[r] / (r + 1) for r in range(3) if t[top[r]]) / min(t.sum(), 3))
    assert any(re.match(rf'MAP@3: {np.mean(ap):.4f} \(5/5', ln) for ln in lines)
    saved = json.loads((tmp_path / 'results.json').read_text())
    assert saved['lwlrap'] == pytest.approx(expected, abs=1e-6)
    assert saved['map_at_3'] == pytest.approx(np.mean(ap), abs=1e-6)
    assert 'accuracy_micro' not in saved
    assert {'lwlrap', 'precision', 'recall', 'f1'} <= set(saved['per_class']['d'])
    # d is positive in clips 2 and 3: its lwlrap is the mean of their two precisions.
    d = [truth[i][scores[i] >= scores[i, 3]].sum() / (scores[i] >= scores[i, 3]).sum()
         for i in (2, 3)]
    assert saved['per_class']['d']['lwlrap'] == pytest.approx(np.mean(d))


def test_single_label_metric_on_a_multi_label_dataset_is_refused():
    cfg = {'ctrl': {'dataset': 'fsdkaggle2019'}, 'recognizer': {'metrics': ['accuracy']}}
    with pytest.raises(ConfigError) as err:
        evaluation.check_metrics(cfg)
    assert str(err.value) == ("recognizer.metrics 'accuracy' needs single-label data, but "
                              "fsdkaggle2019 has clips with several labels; use lwlrap, map3, "
                              "map, auc, dprime or prf1")
    cfg['recognizer']['metrics'] = ['roc']  # unknown: the error lists the valid names
    with pytest.raises(ConfigError, match='lwlrap'):
        evaluation.check_metrics(cfg)


def test_report_refuses_non_finite_scores(tmp_path):
    """Issue 11, case 2: NaN scores would give argmax 0 and a chance-level accuracy."""
    import utils
    table = pd.DataFrame({'fname': ['t1.wav', 't2.wav'], 'subset': ['test', 'test'],
                          'label_idx': [0, 1], 'labels_idx': [(0,), (1,)]})
    scores = np.array([[0.7, 0.3], [np.nan, np.nan]])
    cfg = {'ctrl': {'run_name': 'r1', 'train_data': 'noisy'}}
    with pytest.raises(utils.Diverged, match='non-finite scores for 1 of 2 test clips'):
        evaluation.report(cfg, table, ['a', 'b'], np.array([0, 1]), scores, tmp_path, 1.0)
    assert not (tmp_path / 'results.json').exists()


def _strict_json(text):
    """json.loads that refuses NaN and Infinity, which are not JSON (RFC 8259)."""
    def refuse(constant):
        raise ValueError(f'{constant} is not valid JSON')
    return json.loads(text, parse_constant=refuse)


def test_results_json_is_strict_json_with_a_never_predicted_class(tmp_path):
    """The precision of a class that is never predicted is 0/0: null in results.json, and
    the file parses with a strict parser."""
    classes = ['a', 'b', 'c']
    table = pd.DataFrame({'fname': [f't{i}.wav' for i in range(4)], 'subset': ['test'] * 4,
                          'label_idx': [0, 1, 2, 1], 'labels_idx': [(0,), (1,), (2,), (1,)]})
    rows = np.arange(4)
    scores = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.1, 0.7], [0.1, 0.2, 0.7]])
    cfg = {'ctrl': {'run_name': 'r3', 'train_data': 'all', 'dataset': 'fsdnoisy18k'},
           'recognizer': {'metrics': ['accuracy', 'prf1']}}
    extra = Results(noise_detection={'precision': float('nan'), 'recall': 0.5, 'n_flagged': 0})
    results = evaluation.report(cfg, table, classes, rows, scores, tmp_path, 1.0, extra)
    evaluation.write_results(tmp_path, results)
    saved = _strict_json((tmp_path / 'results.json').read_text())
    true, pred = table.label_idx.to_numpy(), scores.argmax(axis=1)
    assert 1 not in pred  # class b is never predicted
    precision = 100 * precision_score(true, pred, labels=range(3), average=None,
                                      zero_division=0)  # percent
    assert saved['per_class']['b']['precision'] is None
    for k in (0, 2):
        assert saved['per_class'][classes[k]]['precision'] == pytest.approx(precision[k])
    assert saved['precision_macro'] == pytest.approx(precision[[0, 2]].mean())
    assert saved['noise_detection'] == {'precision': None, 'recall': 0.5, 'n_flagged': 0}


def test_long_scorings_in_chunks_match_one_pass(monkeypatch, capsys):
    """map_with_progress: chunked scoring with a bar gives map_patches' values (numpy
    here), padded batches included."""
    monkeypatch.setattr(evaluation, 'LONG', 10)
    monkeypatch.setattr(evaluation, 'CHUNK', 2)
    values = np.arange(37, dtype=np.float32) ** 2
    fn = lambda i: tf.gather(tf.constant(values), i)  # noqa: E731
    idx = np.random.default_rng(0).permutation(37)
    got = evaluation.map_with_progress(fn, idx, 4, 'scoring')
    np.testing.assert_array_equal(got, values[idx])
    assert 'scoring' in capsys.readouterr().err


def test_curves_name_the_loss_mark_the_method_and_per_class_keeps_class_order(monkeypatch,
                                                                              tmp_path):
    """curves.png: the loss named, accuracy in percent, the rate on a log axis, a dashed
    mark between the epochs where the method acted; per_class.png in class order."""
    import plots
    figures = []
    monkeypatch.setattr(plots, '_save', lambda fig, path: figures.append(fig))
    hist = pd.DataFrame({'epoch': [1, 2, 3], 'loss': [3.0, 2.0, 1.0],
                         'accuracy': [0.1, 0.5, 0.8], 'lr': [1e-3] * 3,
                         'event': [None, 'pruning', None]})
    plots.curves(hist, tmp_path / 'c.png', 'run', 'lq_loss')
    loss, accuracy, lr = figures[0].axes[:3]
    assert loss.get_title() == 'loss (lq_loss)' and lr.get_yscale() == 'log'
    np.testing.assert_allclose(accuracy.lines[0].get_ydata(), [10, 50, 80])
    for ax in (loss, accuracy, lr):
        assert any(list(line.get_xdata()) == [1.5, 1.5] for line in ax.lines)
    plots.per_class({'zz': {'accuracy': 10.0}, 'aa': {'accuracy': 90.0}}, tmp_path / 'p.png',
                    'run')
    assert [t.get_text() for t in figures[1].axes[0].get_xticklabels()] == ['zz', 'aa']
