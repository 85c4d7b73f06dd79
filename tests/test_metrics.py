"""metrics.py against references written here from the metrics' definitions (loops over
clips and labels), sklearn where the definitions coincide, and edge cases."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import label_ranking_average_precision_score

import metrics
from config import ConfigError

N, K = 60, 7


def _single(rng, n=N, k=K):
    """One-hot truth with every class present, and tie-free scores."""
    labels = np.r_[np.arange(k), rng.integers(0, k, n - k)]
    return np.eye(k, dtype=int)[labels], rng.random((n, k))


def _multi(rng, n=N, k=K, max_labels=3):
    """1..max_labels positives per clip, tie-free scores."""
    y = np.zeros((n, k), int)
    for i in range(n):
        y[i, rng.choice(k, rng.integers(1, max_labels + 1), replace=False)] = 1
    return y, rng.random((n, k))


# ----------------------------------------------------------------------------- references

def _precisions_at_hits(y, s):
    """[(class, precision)] for every positive label: positives at or above it / rank."""
    out = []
    for yi, si in zip(y, s):
        for j in np.flatnonzero(yi):
            above = si >= si[j]
            out.append((j, np.sum(above & (yi > 0)) / np.sum(above)))
    return out


def _lwlrap_ref(y, s):
    """Per-class mean of the precisions at hits, weighted by the class's label count."""
    hits = _precisions_at_hits(y, s)
    per_class = np.full(y.shape[1], np.nan)
    weights = np.zeros(y.shape[1])
    for c in range(y.shape[1]):
        values = [p for j, p in hits if j == c]
        if values:
            per_class[c], weights[c] = np.mean(values), len(values)
    weights /= weights.sum()
    return np.nansum(per_class * weights), per_class, weights


def _apk_ref(actual, ranked, k):
    """Average precision at k of one clip, the Kaggle definition."""
    hits, total = 0, 0.0
    for r, c in enumerate(ranked[:k], start=1):
        if c in actual:
            hits += 1
            total += hits / r
    return total / min(len(actual), k)


def _map_ref(y, s, k):
    aps = [_apk_ref(set(np.flatnonzero(yi)), list(np.argsort(-si, kind='stable')), k)
           for yi, si in zip(y, s) if yi.any()]
    return np.mean(aps)


def _prf_ref(y, pred):
    """Per-class precision, recall, F1 from counts, in percent; nan where a denominator is 0."""
    tp = np.sum((y > 0) & pred, axis=0)
    fp = np.sum((y == 0) & pred, axis=0)
    fn = np.sum((y > 0) & ~pred, axis=0)
    with np.errstate(invalid='ignore', divide='ignore'):
        p, r = tp / (tp + fp), tp / (tp + fn)
        f = 2 * tp / (2 * tp + fp + fn)
    return 100 * p, 100 * r, 100 * f


# ----------------------------------------------------------------------------- lwlrap

@pytest.mark.parametrize('make', [_single, _multi])
def test_lwlrap_and_per_class_match_definition(make):
    y, s = make(np.random.default_rng(1))
    ref, ref_per_class, ref_weights = _lwlrap_ref(y, s)
    per_class, weights = metrics.lwlrap_per_class(y, s)
    assert metrics.lwlrap(y, s) == pytest.approx(ref, abs=1e-12)
    np.testing.assert_allclose(per_class, ref_per_class, atol=1e-12)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-12)
    assert np.sum(per_class * weights) == pytest.approx(metrics.lwlrap(y, s), abs=1e-12)


def test_lwlrap_is_sklearn_lrap_and_mean_reciprocal_rank_with_one_label_per_clip():
    y, s = _single(np.random.default_rng(2))
    rank = np.array([np.sum(si >= si[yi.argmax()]) for yi, si in zip(y, s)])
    assert metrics.lwlrap(y, s) == pytest.approx(np.mean(1 / rank), abs=1e-12)
    assert metrics.lwlrap(y, s) == pytest.approx(label_ranking_average_precision_score(y, s),
                                                 abs=1e-12)


def test_lwlrap_differs_from_unweighted_lrap_with_multiple_labels():
    # Clip 0: 1 label ranked 1st (LRAP 1); clip 1: 3 labels at ranks 2, 3, 4 (precisions
    # 1/2, 2/3, 3/4). LRAP = (1 + 23/36) / 2; lwlrap = (1 + 1/2 + 2/3 + 3/4) / 4.
    y = np.array([[1, 0, 0, 0], [0, 1, 1, 1]])
    s = np.array([[0.9, 0.1, 0.2, 0.3], [0.9, 0.5, 0.4, 0.3]])
    assert metrics.lwlrap(y, s) == pytest.approx((1 + 1 / 2 + 2 / 3 + 3 / 4) / 4)
    assert label_ranking_average_precision_score(y, s) == pytest.approx((1 + 23 / 36) / 2)


def test_lwlrap_ties_count_pessimistically_and_per_class_still_sums():
    rng = np.random.default_rng(3)
    y, _ = _multi(rng)
    s = rng.integers(0, 3, y.shape).astype(float)  # many ties
    ref, ref_per_class, _ = _lwlrap_ref(y, s)
    per_class, weights = metrics.lwlrap_per_class(y, s)
    assert metrics.lwlrap(y, s) == pytest.approx(ref, abs=1e-12)
    np.testing.assert_allclose(per_class, ref_per_class, atol=1e-12)
    assert np.sum(per_class * weights) == pytest.approx(ref, abs=1e-12)


def test_lwlrap_clip_without_labels_is_ignored_and_class_without_positives_is_nan():
    rng = np.random.default_rng(4)
    y, s = _multi(rng)
    y[:, 2] = 0          # a class without positives
    y[5] = 0             # a clip without positives
    base = metrics.lwlrap(np.delete(y, 5, 0), np.delete(s, 5, 0))
    assert metrics.lwlrap(y, s) == pytest.approx(base, abs=1e-12)
    assert metrics.lwlrap(y, s) == pytest.approx(_lwlrap_ref(y, s)[0], abs=1e-12)
    per_class, weights = metrics.lwlrap_per_class(y, s)
    assert np.isnan(per_class[2]) and weights[2] == 0
    assert np.nansum(per_class * weights) == pytest.approx(base, abs=1e-12)
    assert np.isnan(metrics.lwlrap(np.zeros((3, 4)), rng.random((3, 4))))


# ----------------------------------------------------------------------------- MAP@k

def test_map3_single_label_is_reciprocal_rank_in_top3():
    y, s = _single(np.random.default_rng(5))
    rank = np.array([np.sum(si >= si[yi.argmax()]) for yi, si in zip(y, s)])
    expected = np.mean(np.where(rank <= 3, 1 / rank, 0))
    assert 0 < expected < 1 and np.any(rank > 3)
    assert metrics.map_at_k(y, s, k=3) == pytest.approx(expected, abs=1e-12)
    # With k = K every true label is in the list: MAP@K = LRAP for one label per clip.
    assert metrics.map_at_k(y, s, k=K) == pytest.approx(
        label_ranking_average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize('k', [1, 3, 10])
def test_map_at_k_multi_label_matches_kaggle_definition(k):
    rng = np.random.default_rng(6)
    y, s = _multi(rng, max_labels=4)
    y[7] = 0  # left out of the mean
    assert metrics.map_at_k(y, s, k=k) == pytest.approx(_map_ref(y, s, k), abs=1e-12)


def test_map3_ties_go_to_the_lower_class_index_and_empty_truth_is_nan():
    y = np.array([[0, 0, 1, 0]])
    assert metrics.map_at_k(y, np.array([[0.5, 0.5, 0.5, 0.1]])) == pytest.approx(1 / 3)
    assert np.isnan(metrics.map_at_k(np.zeros((2, 3)), np.ones((2, 3))))


# ----------------------------------------------------------------------------- accuracy

def test_accuracy_micro_percent_and_per_class():
    rng = np.random.default_rng(7)
    y, s = _single(rng)
    y[:, 3] = 0
    y[y.sum(axis=1) == 0, 4] = 1  # class 3 has no files
    true, pred = y.argmax(1), s.argmax(1)
    out = metrics.accuracy(y, s)
    assert out['accuracy_micro'] == pytest.approx(100 * np.mean(true == pred))
    for c in range(K):
        n = np.sum(true == c)
        assert out['per_class']['n_files'][c] == n
        if n:
            assert out['per_class']['accuracy'][c] == pytest.approx(
                100 * np.mean(pred[true == c] == c))
    assert np.isnan(out['per_class']['accuracy'][3])


@pytest.mark.parametrize('name', ['accuracy', 'confusion'])
def test_single_label_metrics_refuse_multi_label_truth(name):
    y, s = _multi(np.random.default_rng(8))
    with pytest.raises(ConfigError, match=f"'{name}' needs single-label"):
        metrics.METRICS[name].compute(y, s)


# ----------------------------------------------------------------------------- P/R/F1

def test_prf1_top1_single_label_matches_counts():
    y, s = _single(np.random.default_rng(9))
    pred = np.eye(K, dtype=bool)[s.argmax(1)]
    p, r, f = _prf_ref(y, pred)
    out = metrics.METRICS['prf1'].compute(y, s)  # single-label truth -> top-1
    np.testing.assert_allclose(out['per_class']['precision'], p, atol=1e-12)
    np.testing.assert_allclose(out['per_class']['recall'], r, atol=1e-12)
    np.testing.assert_allclose(out['per_class']['f1'], f, atol=1e-12)
    np.testing.assert_array_equal(out['per_class']['support'], y.sum(0))
    assert out['f1_macro'] == pytest.approx(np.nanmean(f))


def test_prf1_threshold_multi_label_with_nan_for_undefined_figures():
    rng = np.random.default_rng(10)
    y, s = _multi(rng)
    y[:, 1] = 0                 # no positives: recall undefined
    s[:, 2] = 0.1               # never predicted: precision undefined
    out = metrics.METRICS['prf1'].compute(y, s)  # multi-label truth -> threshold 0.5
    p, r, f = _prf_ref(y, s >= metrics.PRF1_THRESHOLD)
    for name, ref in [('precision', p), ('recall', r), ('f1', f)]:
        np.testing.assert_allclose(out['per_class'][name], ref, atol=1e-12)
        assert out[f'{name}_macro'] == pytest.approx(np.nanmean(ref))
    assert np.isnan(out['per_class']['recall'][1]) and np.isnan(out['per_class']['precision'][2])
    tight = metrics.prf1(y, s, threshold=0.9)
    np.testing.assert_allclose(tight['per_class']['recall'], _prf_ref(y, s >= 0.9)[1], atol=1e-12)


# ----------------------------------------------------------------------------- confusion

def test_confusion_matrix_and_csv(tmp_path):
    y, s = _single(np.random.default_rng(11))
    expected = np.zeros((K, K), int)
    np.add.at(expected, (y.argmax(1), s.argmax(1)), 1)
    matrix = metrics.METRICS['confusion'].compute(y, s)['confusion']
    np.testing.assert_array_equal(matrix, expected)
    classes = [f'class {c}' for c in range(K)]
    metrics.write_confusion_csv(tmp_path / 'confusion.csv', matrix, classes)
    back = pd.read_csv(tmp_path / 'confusion.csv', index_col=0)
    assert list(back.index) == classes and list(back.columns) == classes
    np.testing.assert_array_equal(back.to_numpy(), expected)
    assert [p.name for p in tmp_path.iterdir()] == ['confusion.csv']


# ----------------------------------------------------------------------------- mAP, AUC, d'

def _ap_ref(truth, score):
    """Average precision of one class from its definition: clips ranked by score, the
    precision at the rank of each positive, averaged over the positives (no ties)."""
    order = np.argsort(-score)
    hits = truth[order] > 0
    precision_at = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return precision_at[hits].mean()


def _auc_ref(truth, score):
    """ROC AUC as the share of (positive, negative) pairs ranked correctly (no ties)."""
    pos, neg = score[truth > 0], score[truth == 0]
    return np.mean(pos[:, None] > neg[None, :])


def test_map_auc_dprime_on_a_hand_computed_case():
    """One class by hand: scores 0.9 0.8 0.7 0.6 with positives at 0.9 and 0.7: AP = (1/1 +
    2/3) / 2, AUC = 3 of 4 pairs, d' = sqrt(2) Phi^-1(3/4) = 2 erfinv(2 AUC - 1)."""
    from scipy.special import erfinv
    y = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    s = np.array([[0.9, 0.1], [0.8, 0.9], [0.7, 0.2], [0.6, 0.3]])
    ap = metrics.average_precision(y, s)
    assert ap['per_class']['ap'] == pytest.approx([5 / 6, 1.0])
    assert ap['map'] == pytest.approx((5 / 6 + 1) / 2)
    auc = metrics.roc_auc(y, s)
    assert auc['per_class']['auc'] == pytest.approx([0.75, 1.0])
    assert auc['auc'] == pytest.approx(0.875)
    assert auc['dprime'] == pytest.approx(2 * erfinv(2 * 0.875 - 1))
    assert auc['per_class']['dprime'][0] == pytest.approx(2 * erfinv(0.5))
    assert auc['per_class']['dprime'][0] == pytest.approx(0.9538725, abs=1e-6)
    assert np.isinf(auc['per_class']['dprime'][1])  # a perfect ranking: d' infinite


@pytest.mark.parametrize('make', [_single, _multi])
def test_map_and_auc_match_their_definitions_and_sklearn(make):
    """Per class and macro against the rank definitions written here; the micro form
    against sklearn's micro average (every clip-class pair ranked together)."""
    from sklearn.metrics import average_precision_score
    y, s = make(np.random.default_rng(21), n=30, k=5)
    ap = np.array([_ap_ref(y[:, k], s[:, k]) for k in range(5)])
    auc = np.array([_auc_ref(y[:, k], s[:, k]) for k in range(5)])
    out = metrics.average_precision(y, s)
    np.testing.assert_allclose(out['per_class']['ap'], ap)
    assert out['map'] == pytest.approx(ap.mean())
    assert out['map_micro'] == pytest.approx(average_precision_score(y.ravel(), s.ravel()))
    assert out['map_classes_left_out'] == 0
    roc = metrics.roc_auc(y, s)
    np.testing.assert_allclose(roc['per_class']['auc'], auc)
    assert roc['auc'] == pytest.approx(auc.mean())


def test_classes_without_a_positive_are_left_out_and_counted():
    """A class with no positive test clip has no AP and no AUC; a class whose every clip is
    positive has an AP but no AUC. Both are left out of the means, counted in the lines."""
    rng = np.random.default_rng(22)
    y, s = _single(rng, n=24, k=4)
    y[:, 3] = 0                      # class 3: no positive
    y = np.c_[y, np.ones(24, int)]   # class 4: every clip positive (no negative)
    s = np.c_[s, rng.random(24)]
    ap = metrics.average_precision(y, s)
    assert np.isnan(ap['per_class']['ap'][3]) and ap['per_class']['ap'][4] == pytest.approx(1)
    kept = [0, 1, 2, 4]
    assert ap['map'] == pytest.approx(np.mean([_ap_ref(y[:, k], s[:, k]) for k in kept]))
    assert ap['map_classes_left_out'] == 1
    roc = metrics.roc_auc(y, s)
    assert np.isnan(roc['per_class']['auc'][[3, 4]]).all()
    assert roc['auc'] == pytest.approx(np.mean([_auc_ref(y[:, k], s[:, k]) for k in range(3)]))
    assert roc['auc_classes_left_out'] == 2
    line = metrics.METRICS['map'].line(ap, 'here')
    assert line.startswith(f'MAP: {ap["map"]:.4f} ') and '1 class without a positive' in line
    dline = metrics.METRICS['dprime'].line(metrics.METRICS['dprime'].compute(y, s), 'here')
    assert dline.startswith('D-PRIME: ') and '2 classes without a positive and a negative' in dline


def test_fsd50k_default_metrics_include_map_and_dprime():
    import eval as evaluation
    assert evaluation.DEFAULT_METRICS['fsd50k'] == ['lwlrap', 'map', 'dprime']


# ----------------------------------------------------------------------------- registry

def test_smoke_registry_entries_give_json_ready_per_class_figures():
    """Smoke test (the registry against its own functions): every test-score metric
    computes, and per_class_dict turns the merged per-class arrays into plain numbers."""
    y, s = _single(np.random.default_rng(12))
    assert list(metrics.choices()) == ['accuracy', 'lwlrap', 'map3', 'map', 'auc', 'dprime',
                                       'prf1', 'confusion']
    results = {name: m.compute(y, s) for name, m in metrics.choices().items()}
    merged = {**results['lwlrap']['per_class'], **results['prf1']['per_class'],
              **results['map']['per_class'], **results['auc']['per_class'],
              **results['dprime']['per_class']}
    classes = [f'c{k}' for k in range(K)]
    table = metrics.per_class_dict(merged, classes)
    assert list(table) == classes
    assert set(table['c0']) == {'lwlrap', 'lwlrap_weight', 'precision', 'recall', 'f1', 'support',
                                'ap', 'auc', 'dprime'}
    assert table['c3']['recall'] == pytest.approx(merged['recall'][3])
    json.dumps(table)  # plain Python numbers only


def test_every_registry_entry_against_sklearn_and_numpy():
    """Each entry's figures, its report line and its headline keys on a small case, against
    sklearn / numpy computed here."""
    from scipy.special import erfinv
    from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix,
                                 precision_recall_fscore_support, roc_auc_score)
    rng = np.random.default_rng(13)
    y, s = _single(rng, n=20, k=4)
    true, pred = y.argmax(1), s.argmax(1)
    p, r, f, _ = precision_recall_fscore_support(true, pred, labels=range(4), average=None,
                                                 zero_division=np.nan)
    p, r, f = 100 * p, 100 * r, 100 * f  # confusion-kind proportions in percent
    top3 = np.argsort(-s, axis=1)[:, :3]
    rank = np.array([list(row).index(t) + 1 if t in row else np.inf for row, t in
                     zip(top3, true)])
    mean_ap = average_precision_score(y, s, average='macro')
    micro_ap = average_precision_score(y, s, average='micro')
    auc = roc_auc_score(y, s, average='macro')
    dprime = 2 * erfinv(2 * auc - 1)  # sqrt(2) Phi^-1(auc), Phi^-1(p) = sqrt(2) erfinv(2p - 1)
    expected = {
        'accuracy': {'accuracy_micro': 100 * accuracy_score(true, pred)},
        'lwlrap': {'lwlrap': label_ranking_average_precision_score(y, s)},  # 1 label per clip
        'map3': {'map_at_3': np.mean(1 / rank)},
        'map': {'map': mean_ap, 'map_micro': micro_ap, 'map_classes_left_out': 0},
        'auc': {'auc': auc, 'auc_classes_left_out': 0},
        'dprime': {'dprime': dprime, 'auc_classes_left_out': 0},
        'prf1': {'precision_macro': np.nanmean(p), 'recall_macro': np.nanmean(r),
                 'f1_macro': np.nanmean(f)},
    }
    lines = {'accuracy': f'ACCURACY - MICRO: {100 * accuracy_score(true, pred):.2f} % (here)',
             'lwlrap': f'LWLRAP: {label_ranking_average_precision_score(y, s):.4f} (here)',
             'map3': f'MAP@3: {np.mean(1 / rank):.4f} (here)',
             'map': (f'MAP: {mean_ap:.4f} (macro over classes; micro {micro_ap:.4f}; 0 classes '
                     f'without a positive in the test set left out) (here)'),
             'auc': (f'AUC: {auc:.4f} (macro ROC AUC; 0 classes without a positive and a '
                     f'negative in the test set left out) (here)'),
             'dprime': (f"D-PRIME: {dprime:.4f} (d' of the macro AUC; 0 classes without a "
                        f'positive and a negative in the test set left out) (here)'),
             'prf1': (f'PRF1 - MACRO: precision {np.nanmean(p):.2f} %, recall '
                      f'{np.nanmean(r):.2f} %, F1 {np.nanmean(f):.2f} % (here)'),
             'confusion': 'CONFUSION: confusion.csv (here)'}
    for name, metric in metrics.choices().items():
        out = metric.compute(y, s)
        out.pop('per_class', None)
        if name == 'confusion':
            np.testing.assert_array_equal(out['confusion'],
                                          confusion_matrix(true, pred, labels=range(4)))
        else:
            assert out == pytest.approx(expected[name]), name
            assert set(metric.headline) <= set(expected[name]), name
        assert metric.line(out, 'here') == lines[name]
        assert metric.single_label == (name in ('accuracy', 'confusion'))
    accuracy = metrics.METRICS['accuracy'].compute(y, s)['per_class']
    np.testing.assert_allclose(accuracy['accuracy'], r)  # per-class accuracy = recall (both %)
    np.testing.assert_array_equal(accuracy['n_files'], np.bincount(true, minlength=4))
    # Noise detection is measured during training: headline keys and curves, no compute.
    detection = metrics.METRICS['noise_detection']
    assert detection.compute is None and 'noise_detection' not in metrics.choices()
    assert set(detection.headline) == {'noise_detection.precision', 'noise_detection.recall'}
    assert metrics.headline_keys() == {'accuracy_micro', 'lwlrap', 'map_at_3', 'map', 'map_micro',
                                       'auc', 'dprime', 'precision_macro', 'recall_macro',
                                       'f1_macro', *detection.headline}
