"""Evaluation metrics by name (config key `recognizer.metrics`).

Every entry of METRICS is a Metric: its compute function maps (y_true [N, K] multi-hot truth,
scores [N, K] clip scores) to a dict of results.json-ready figures (floats for the overall
figures and, under 'per_class', a dict of per-class arrays in class order, which
per_class_dict turns into {class: {...}}); the entry also owns its line of the evaluation
block, its per-class block, the results.json keys a sweep summarises and its curves.

Ties in the scores: lwlrap counts a tied label as ranked above (the pessimistic rank, as
sklearn's label_ranking_average_precision_score); MAP@k and top-1 break ties by the lower
class index (a stable sort). Real-valued network scores are practically never tied.
"""
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata
from sklearn.metrics import (average_precision_score, confusion_matrix,
                             label_ranking_average_precision_score,
                             precision_recall_fscore_support, roc_auc_score)

from config import ConfigError
from utils import atomic_write_csv

PRF1_THRESHOLD = 0.5  # prf1 on multi-label truth: a class is predicted when its score >= this


def _positives(y_true):
    """Multi-hot truth (any numeric dtype) -> bool [N, K]."""
    return np.asarray(y_true) > 0


def _single_label(y_true, metric):
    """Class index per clip; refuses truth that is not exactly one label per clip."""
    truth = _positives(y_true)
    counts = truth.sum(axis=1)
    if np.any(counts != 1):
        raise ConfigError(f"recognizer.metrics '{metric}' needs single-label data, but "
                          f"{int(np.sum(counts != 1))} of {len(counts)} clips have 0 or "
                          f"several true labels; use {multi_label_choices()}")
    return truth.argmax(axis=1)


def _top1(scores):
    return np.asarray(scores).argmax(axis=1)  # argmax takes the first of tied maxima


def accuracy(y_true, scores):
    """Micro accuracy of the top-1 class, in percent (as the ACCURACY - MICRO line), and the
    per-class number of files and accuracy in percent (nan for a class without files)."""
    true, pred = _single_label(y_true, 'accuracy'), _top1(scores)
    n_classes = np.shape(scores)[1]
    n_files = np.bincount(true, minlength=n_classes)
    hits = np.bincount(true[pred == true], minlength=n_classes)
    with np.errstate(invalid='ignore', divide='ignore'):
        per_class = np.where(n_files > 0, 100.0 * hits / n_files, np.nan)
    micro = 100.0 * float(np.mean(pred == true)) if true.size else 0.0
    return {'accuracy_micro': micro, 'per_class': {'n_files': n_files, 'accuracy': per_class}}


# ----------------------------------------------------------------------------- lwlrap

def lwlrap(y_true, scores):
    """Label-weighted label-ranking average precision (DCASE 2019 task 2; Fonseca et al.,
    "Audio tagging with noisy labels and minimal supervision", DCASE 2019).

    For every positive label of every clip: the share of the labels ranked at or above it
    (in that clip's scores) that are positive; lwlrap is the mean over all positive labels
    of the test set, so each label weighs the same. sklearn's LRAP averages these
    precisions per clip first; weighting clip i by its number of labels undoes that
    (sum_i n_i * mean_i = sum over all labels), which gives lwlrap exactly.
    A clip without positive labels has weight 0 and no effect; nan if no clip has one.
    """
    truth = _positives(y_true)
    counts = truth.sum(axis=1)
    if counts.sum() == 0:
        return float('nan')
    return float(label_ranking_average_precision_score(truth, np.asarray(scores, float),
                                                       sample_weight=counts))


def lwlrap_per_class(y_true, scores):
    """Per-class lwlrap [K] (nan for a class without positives) and class weights [K]
    (the class's share of all positive labels): their weighted sum is lwlrap.

    Written out because sklearn has no per-class LRAP: for a positive label j of clip i,
    precision = #{positive k: s_ik >= s_ij} / #{k: s_ik >= s_ij}, averaged per class.
    """
    truth, scores = _positives(y_true), np.asarray(scores, float)
    rank = rankdata(-scores, method='max', axis=1)
    # Negatives set to +inf rank after every positive, so among positives 'max' counts
    # the positives scored at or above each one.
    positive_rank = rankdata(np.where(truth, -scores, np.inf), method='max', axis=1)
    precision = np.where(truth, positive_rank / rank, 0.0)
    n_labels = truth.sum(axis=0)
    with np.errstate(invalid='ignore', divide='ignore'):
        per_class = np.where(n_labels > 0, precision.sum(axis=0) / n_labels, np.nan)
    weights = n_labels / max(n_labels.sum(), 1)
    return per_class, weights


# ----------------------------------------------------------------------------- MAP@k

def map_at_k(y_true, scores, k=3):
    """Mean average precision at k (MAP@3 of DCASE 2018 task 2 / Kaggle).

    Per clip, AP@k = sum over the top-k ranks r of precision@r x [class at r is true],
    divided by min(number of true labels, k). With one true label per clip (DCASE 2018)
    that is 1/rank of the true label if it is in the top k, else 0. Ties are broken by
    the lower class index. Clips without true labels are left out of the mean; nan if
    no clip has one.

    Hand-written: scikit-learn has no MAP@k (its average_precision_score ranks the clips
    of each class over all ranks, not the top k classes of each clip); sklearn's
    top_k_accuracy_score gives 1 per hit at any rank, not 1/rank.
    """
    truth, scores = _positives(y_true), np.asarray(scores, float)
    top = np.argsort(-scores, axis=1, kind='stable')[:, :k]
    hit = np.take_along_axis(truth, top, axis=1)
    precision = np.cumsum(hit, axis=1) / np.arange(1, top.shape[1] + 1)
    n_true = truth.sum(axis=1)
    keep = n_true > 0
    if not keep.any():
        return float('nan')
    ap = (precision * hit).sum(axis=1)[keep] / np.minimum(n_true[keep], k)
    return float(ap.mean())


# ----------------------------------------------------------------------------- mAP, AUC, d'

def ranked_classes(y_true, both=False):
    """The classes a per-class ranking figure is defined for: those with a positive among
    the test clips (both: and a negative, which ROC AUC needs as well) -> bool [K]."""
    truth = _positives(y_true)
    ok = truth.any(axis=0)
    return ok & ~truth.all(axis=0) if both else ok


def _per_class(figure, truth, scores, ok):
    """figure(truth[:, k], scores[:, k]) for every class with ok[k], nan for the others."""
    return np.array([figure(truth[:, k], scores[:, k]) if ok[k] else np.nan
                     for k in range(truth.shape[1])])


def average_precision(y_true, scores):
    """Average precision per class (sklearn's average_precision_score: the clips ranked by
    the class's score, precision averaged at each positive), its macro mean (mAP, as
    FSD50K and AudioSet report it) and its micro form (every (clip, class) pair ranked
    together), over the classes with a positive among the test clips: AP is undefined
    for a class without one."""
    truth, scores = _positives(y_true), np.asarray(scores, float)
    ok = ranked_classes(truth)
    per_class = _per_class(average_precision_score, truth, scores, ok)
    micro = (float(average_precision_score(truth[:, ok], scores[:, ok], average='micro'))
             if ok.any() else float('nan'))
    return {'map': _nanmean(per_class), 'map_micro': micro,
            'map_classes_left_out': float((~ok).sum()), 'per_class': {'ap': per_class}}


def dprime_of(auc):
    """d' = sqrt(2) * Phi^-1(AUC): the separation, in standard deviations, of two unit
    normal score distributions whose ROC has that area (AudioSet: Hershey et al., "CNN
    architectures for large-scale audio classification", ICASSP 2017). AUC 1 -> inf."""
    return np.sqrt(2.0) * norm.ppf(auc)


def roc_auc(y_true, scores):
    """ROC AUC per class (sklearn's roc_auc_score) and its macro mean over the classes with
    a positive and a negative among the test clips (undefined otherwise); d' of the macro
    AUC, as AudioSet papers report it, and per class the d' of each class's AUC."""
    truth, scores = _positives(y_true), np.asarray(scores, float)
    ok = ranked_classes(truth, both=True)
    per_class = _per_class(roc_auc_score, truth, scores, ok)
    auc = _nanmean(per_class)
    return {'auc': auc, 'dprime': float(dprime_of(auc)),
            'auc_classes_left_out': float((~ok).sum()),
            'per_class': {'auc': per_class, 'dprime': dprime_of(per_class)}}


# ----------------------------------------------------------------------------- P/R/F1

def prf1(y_true, scores, threshold=None):
    """Per-class precision, recall, F1 (in percent) and support, and their macro averages.

    threshold None: the prediction is the top-1 class (single-label data); a number: every
    class scored >= threshold is predicted (multi-label). A figure whose denominator is 0
    (precision of a never-predicted class, recall of a class without positives) is nan and
    left out of the macro average, as sklearn's zero_division=nan does.
    """
    truth, scores = _positives(y_true), np.asarray(scores, float)
    if threshold is None:
        pred = np.zeros_like(truth)
        pred[np.arange(len(scores)), _top1(scores)] = True
    else:
        pred = scores >= threshold
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, pred, average=None, zero_division=np.nan)
    # Percent, as accuracy: one unit for every confusion-count proportion (README).
    per_class = {'precision': 100.0 * precision, 'recall': 100.0 * recall, 'f1': 100.0 * f1,
                 'support': support}
    macro = {f'{name}_macro': _nanmean(per_class[name]) for name in ('precision', 'recall', 'f1')}
    return {**macro, 'per_class': per_class}


def _nanmean(values):
    values = np.asarray(values, float)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float('nan')


# ----------------------------------------------------------------------------- confusion

def confusion(y_true, scores):
    """Single-label confusion matrix [K, K]: rows true class, columns top-1 class."""
    true = _single_label(y_true, 'confusion')
    return confusion_matrix(true, _top1(scores), labels=np.arange(np.shape(scores)[1]))


def write_confusion_csv(path, matrix, classes):
    """The matrix as CSV, rows (true) and columns (predicted) named by class; atomic."""
    frame = pd.DataFrame(np.asarray(matrix), columns=list(classes),
                         index=pd.Index(list(classes), name='true/predicted'))
    atomic_write_csv(path, frame)


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Metric:
    """One entry of METRICS: how a metric is computed, reported and summarised, so that
    adding a metric is one entry here (eval.py, sweep.py and plots.py read these)."""
    # (y_true [N, K], scores [N, K]) -> {figure: float, 'per_class': {figure: [K]}} (the
    # confusion entry: {'confusion': matrix [K, K]}, which eval writes to confusion.csv);
    # None for figures that a learning mode measures during training (not a
    # recognizer.metrics choice)
    compute: Callable = None
    line: Callable = None             # (figures, where) -> its line of the evaluation block
    per_class_lines: Callable = None  # (per_class, classes) -> its per-class block
    headline: tuple = ()              # results.json keys that a sweep summarises
    # the unit of those keys (README): '%' for confusion-count proportions (accuracy,
    # precision, recall, F1, noise detection), 'fraction' for ranking scores (lwlrap, mAP,
    # AUC) in [0, 1] as their papers report them, None for unbounded figures (d')
    unit: str = None
    single_label: bool = False        # needs exactly one true label per clip
    always: bool = False              # in results.json even when not in recognizer.metrics
    curves: dict = field(default_factory=dict)  # history.csv column -> label in curves.png


def _lwlrap_entry(y_true, scores):
    per_class, weights = lwlrap_per_class(y_true, scores)
    return {'lwlrap': lwlrap(y_true, scores),
            'per_class': {'lwlrap': per_class, 'lwlrap_weight': weights}}


def _map3_entry(y_true, scores):
    return {'map_at_3': map_at_k(y_true, scores, k=3)}


def _prf1_entry(y_true, scores):
    """Top-1 when every clip has exactly one label, else the PRF1_THRESHOLD threshold."""
    single = np.all(_positives(y_true).sum(axis=1) == 1)
    return prf1(y_true, scores, threshold=None if single else PRF1_THRESHOLD)


def _auc_entry(y_true, scores):
    out = roc_auc(y_true, scores)
    return {'auc': out['auc'], 'auc_classes_left_out': out['auc_classes_left_out'],
            'per_class': {'auc': out['per_class']['auc']}}


def _dprime_entry(y_true, scores):
    out = roc_auc(y_true, scores)
    return {'dprime': out['dprime'], 'auc_classes_left_out': out['auc_classes_left_out'],
            'per_class': {'dprime': out['per_class']['dprime']}}


def _left_out(n, what):
    n = int(n)
    return f'{n} class{"" if n == 1 else "es"} without {what} in the test set left out'


def _map_line(f, where):
    return (f'MAP: {f["map"]:.4f} (macro over classes; micro {f["map_micro"]:.4f}; '
            f'{_left_out(f["map_classes_left_out"], "a positive")}) ({where})')


def _auc_line(f, where):
    return (f'AUC: {f["auc"]:.4f} (macro ROC AUC; '
            f'{_left_out(f["auc_classes_left_out"], "a positive and a negative")}) ({where})')


def _dprime_line(f, where):
    return (f"D-PRIME: {f['dprime']:.4f} (d' of the macro AUC; "
            f'{_left_out(f["auc_classes_left_out"], "a positive and a negative")}) ({where})')


def _figure_per_class(figure, title):
    """The per-class block of one figure (nan: the class was left out)."""
    def lines(per_class, classes):
        fmt = '  {:<%d}  %s = {:.4f}' % (max(len(c) for c in classes), figure)
        return ['', f'per-class {title}, class order:',
                *(fmt.format(c, v) for c, v in zip(classes, per_class[figure]))]
    return lines


def _confusion_entry(y_true, scores):
    return {'confusion': confusion(y_true, scores)}


def _accuracy_per_class(per_class, classes):
    """Per-class files and accuracy, in class order, then best first."""
    fmt = '  {:<%d}  n = {:>5}  accuracy = {:6.2f} %%' % max(len(c) for c in classes)
    rows = list(zip(classes, per_class['n_files'], per_class['accuracy']))
    ranked = sorted(rows, key=lambda row: -np.nan_to_num(row[2], nan=-1))
    return ['', 'per-class accuracy, class order:', *(fmt.format(*row) for row in rows),
            '', 'per-class accuracy, best first:', *(fmt.format(*row) for row in ranked)]


def _lwlrap_per_class(per_class, classes):
    fmt = '  {:<%d}  lwlrap = {:.4f}  (weight {:.4f})' % max(len(c) for c in classes)
    rows = zip(classes, per_class['lwlrap'], per_class['lwlrap_weight'])
    return ['', 'per-class lwlrap, class order:', *(fmt.format(*row) for row in rows)]


def _prf1_line(f, where):
    return (f'PRF1 - MACRO: precision {f["precision_macro"]:.2f} %, recall '
            f'{f["recall_macro"]:.2f} %, F1 {f["f1_macro"]:.2f} % ({where})')


METRICS = {
    'accuracy': Metric(
        accuracy, lambda f, where: f'ACCURACY - MICRO: {f["accuracy_micro"]:.2f} % ({where})',
        _accuracy_per_class, headline=('accuracy_micro',), single_label=True, unit='%'),
    'lwlrap': Metric(_lwlrap_entry, lambda f, where: f'LWLRAP: {f["lwlrap"]:.4f} ({where})',
                     _lwlrap_per_class, headline=('lwlrap',), unit='fraction'),
    'map3': Metric(_map3_entry, lambda f, where: f'MAP@3: {f["map_at_3"]:.4f} ({where})',
                   headline=('map_at_3',), unit='fraction'),
    'map': Metric(average_precision, _map_line, _figure_per_class('ap', 'average precision'),
                  headline=('map', 'map_micro'), unit='fraction'),
    'auc': Metric(_auc_entry, _auc_line, _figure_per_class('auc', 'ROC AUC'),
                  headline=('auc',), unit='fraction'),
    'dprime': Metric(_dprime_entry, _dprime_line, _figure_per_class('dprime', "d'"),
                     headline=('dprime',)),
    'prf1': Metric(_prf1_entry, _prf1_line,
                   headline=('precision_macro', 'recall_macro', 'f1_macro'), always=True,
                   unit='%'),
    'confusion': Metric(_confusion_entry, lambda f, where: f'CONFUSION: confusion.csv ({where})',
                        single_label=True),
    # The precision and recall of the examples that learn.mode 2, 3 and staged drop or
    # mask, measured during training where the true labels are known (results.json
    # noise_detection, history.csv nd_precision / nd_recall).
    'noise_detection': Metric(
        headline=('noise_detection.precision', 'noise_detection.recall'), unit='%',
        curves={'nd_precision': 'noise detection: precision',
                'nd_recall': 'noise detection: recall'}),
}


def choices():
    """The metrics that recognizer.metrics may name: those computed from test scores."""
    return {name: metric for name, metric in METRICS.items() if metric.compute is not None}


def multi_label_choices():
    """The recognizer.metrics choices that work on multi-label data, as a user reads them
    ('lwlrap, map3, map, auc, dprime or prf1')."""
    names = [name for name, metric in choices().items() if not metric.single_label]
    return ' or '.join([', '.join(names[:-1]), names[-1]] if len(names) > 1 else names)


def headline_keys():
    """Every results.json key that a sweep summarises (nested keys joined by '.')."""
    return {key for metric in METRICS.values() for key in metric.headline}


# The range of a figure in each unit: what a summary clips an interval to.
UNIT_RANGES = {'%': (0.0, 100.0), 'fraction': (0.0, 1.0), None: (-np.inf, np.inf)}


def headline_range(key):
    """(low, high) that a headline key can take (its metric's unit); unbounded if unknown."""
    unit = next((m.unit for m in METRICS.values() if key in m.headline), None)
    return UNIT_RANGES[unit]


def curve_labels():
    """history.csv columns of the metrics -> their label in curves.png."""
    return {column: label for metric in METRICS.values() for column, label in
            metric.curves.items()}


def per_class_dict(per_class, classes):
    """{figure: array [K]} (merged from several metrics) -> {class: {figure: value}}, with
    plain Python numbers, for results.json."""
    return {name: {figure: np.asarray(values)[k].item() for figure, values in per_class.items()}
            for k, name in enumerate(classes)}
