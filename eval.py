"""Clip predictions, aggregation, metrics and the accuracy report (section `recognizer`).

Patches are scored in large batches by one compiled function; clip scores aggregate the
patch scores of each clip (recognizer.aggregate: geometric mean gmean, arithmetic mean
amean, or the maximum max). With extract.crop random_crop each clip is scored whole, in one
pass, many clips per call. An ensemble averages its members' clip scores
(recognizer.ensemble). What a run reports (eval.predict, predict_clips) can score whole clips
at full length in length buckets and with padding views (recognizer.length_tolerance,
tta_pad; buckets.py); validation during training scores as clip_scorer does. Scoring that
takes long shows a progress bar.

The report computes (evaluate: metrics.METRICS -> results.Evaluation), formats
(evaluation_lines: the block, from the Results) and writes (predictions.csv, confusion.csv;
results.json last, write_results).
"""
import logging
import sys
from dataclasses import dataclass, field

import keras
import numpy as np
import pandas as pd
import tensorflow as tf  # tf.function compiles the gather + model call for prediction
from tqdm import tqdm

import architectures
import buckets
import datasets
import heads  # noqa: F401  (registers the Sparsemax layer that saved members may hold)
import metrics
import runfolder
import waveform
from config import ConfigError, lookup
from results import Evaluation, Results
from utils import Diverged, atomic_write_csv, atomic_write_json

logger = logging.getLogger(__name__)

TINY = 1e-12  # floor before a log, so that a zero score/loss does not give -inf
PROGRESS_AFTER_S = 10  # scoring shows a progress bar once it has taken this long


def _segments(clip_ids):
    """Start index of each run of equal clip ids (patches of a clip are contiguous)."""
    clip_ids = np.asarray(clip_ids)
    starts = np.flatnonzero(np.r_[True, clip_ids[1:] != clip_ids[:-1]])
    return clip_ids[starts], starts, np.diff(np.r_[starts, clip_ids.size])


def _amean(values, starts, counts):
    return np.add.reduceat(values, starts, axis=0) / counts.reshape(-1, *[1] * (values.ndim - 1))


def _gmean(values, starts, counts):
    return np.exp(_amean(np.log(np.maximum(values, TINY)), starts, counts))


def _max(values, starts, counts):
    return np.maximum.reduceat(values, starts, axis=0)


AGGREGATIONS = {'gmean': _gmean, 'amean': _amean, 'max': _max}


def aggregate(values, clip_ids, method):
    """Per-patch values [n, ...] grouped by contiguous clip ids -> (clips, per-clip values)."""
    reduce = lookup(AGGREGATIONS, method, 'aggregation')
    clips, starts, counts = _segments(clip_ids)
    return clips, reduce(np.asarray(values, np.float64), starts, counts)


def check(cfg):
    lookup(AGGREGATIONS, cfg['recognizer']['aggregate'], 'recognizer.aggregate')
    lookup(ENSEMBLES, cfg['recognizer']['ensemble'], 'recognizer.ensemble')
    buckets.check(cfg)
    check_metrics(cfg)


def map_patches(fn, idx, batch_size, done=None, progress=None):
    """fn(patch indices [b]) -> tensor [b, ...], over idx in fixed-size batches -> numpy.

    The last batch is padded so that the compiled function is traced once. fn may already
    be compiled (clip_scorer), so that calling this every epoch does not trace again.
    progress(k), when given, is called after each batch with the sum of done [len(idx)]
    over it (e.g. the clips whose last patch it held).
    """
    compiled = fn if isinstance(fn, tf.types.experimental.GenericFunction) else \
        tf.function(fn, reduce_retracing=True)
    idx = np.asarray(idx, np.int64)
    batch_size = max(1, min(batch_size, idx.size))
    out = []
    for lo in range(0, idx.size, batch_size):
        part = idx[lo:lo + batch_size]
        padded = np.pad(part, (0, batch_size - part.size), mode='edge')
        out.append(np.asarray(compiled(tf.constant(padded)))[:part.size])
        if progress is not None:
            progress(int(done[lo:lo + batch_size].sum()))
    return np.concatenate(out) if out else np.zeros((0,))


def eval_batch_size(cfg):
    """Examples per prediction call, from a frame budget of learn.predict_batch_size
    training inputs: predict_batch_size patches, or as many whole clips of clip_frames
    as hold predict_batch_size crops' worth of frames (at least one)."""
    ext, n = cfg['extract'], cfg['learn']['predict_batch_size']
    if ext['crop'] == 'patches':
        return n
    return max(1, n * ext['crop_frames'] // ext['clip_frames'])


def clip_scorer(classifier, source, patches, cfg):
    """A function of table rows -> (evaluated rows, clip scores [n, K]): patch scores of
    the classifier aggregated per clip (recognizer.aggregate). Compiled once.

    random_crop: the table holds one whole clip per row, scored in one pass (no
    aggregation). Whole clips are batched by length (Akiyama & Sato, DCASE 2019 task 2,
    group clips of similar length); every clip is fixed to extract.clip_frames, so one
    length holds them all and a batch is eval_batch_size clips. Here clips are never padded
    to a common length: a convolution's border, batch normalisation's shift and the GRU or
    global pooling all see padded frames, so a padded clip would score differently from
    the same clip alone. Full-length scoring, which pads clips to their group's length
    within recognizer.length_tolerance (0: exact), is buckets.py's (recognizer_scorer).

    Waveforms (extract.features waveform): each whole clip at its own length
    (waveform.clip_scorer), at most predict_batch_size crops' worth of samples per call.
    """
    ext = cfg['extract']
    if ext['features'] == 'waveform':
        return waveform.clip_scorer(
            classifier, source, patches,
            architectures.MIN_SAMPLES.get(cfg['learn']['model'], 1),
            cfg['learn']['predict_batch_size'] * ext['crop_samples'])
    compiled = tf.function(
        lambda i: classifier(source.inputs(i, length=source.eval_len),
                             training=False)['scores'],
        reduce_retracing=True)
    whole = cfg['extract']['crop'] == 'random_crop'

    def score(rows, progress=None):
        idx = patches.of_clips(rows)
        clip = patches.clip[idx]
        last = np.r_[clip[1:] != clip[:-1], True] if clip.size else clip  # a clip's end
        scores = map_patches(compiled, idx, eval_batch_size(cfg), last, progress)
        if whole:
            return patches.clip[idx], scores
        return aggregate(scores, patches.clip[idx], cfg['recognizer']['aggregate'])
    return score


def recognizer_scorer(classifier, source, patches, cfg):
    """The scorer of what a run reports: clip_scorer's, or (recognizer.length_tolerance,
    tta_pad) whole clips in length buckets with each padding view, the views averaged as
    the members of an ensemble are (recognizer.ensemble; the released code takes one mean
    over folds, snapshots and pads). Same signature as clip_scorer's function."""
    if not buckets.active(cfg):
        return clip_scorer(classifier, source, patches, cfg)
    views = buckets.whole_clip_scorer(classifier, source, patches, cfg)

    def score(rows, progress=None):
        clips, scores = views(rows, progress)
        return clips, combine(scores, cfg['recognizer']['ensemble'])
    return score


def progress_bar(n_clips, n_models=1):
    """A bar over the clips scored by n_models, shown once scoring takes long."""
    what = 'scoring' if n_models == 1 else f'scoring with {n_models} models'
    return tqdm(total=n_clips * n_models, desc=what, unit='clip', delay=PROGRESS_AFTER_S,
                leave=False, file=sys.stderr)


def predict_clips(classifier, source, patches, rows, cfg):
    """Clip scores [len(evaluated rows), K] for the table rows that have patches, scored
    as the recognizer reports them (recognizer_scorer)."""
    score = recognizer_scorer(classifier, source, patches, cfg)
    with progress_bar(_n_clips(patches, rows)) as bar:
        return score(rows, bar.update)


def _n_clips(patches, rows):
    return int(np.isin(rows, patches.clip).sum())


# ----------------------------------------------------------------------------- ensembles

def _geometric(scores):
    return np.exp(np.log(np.maximum(scores, TINY)).mean(axis=0))


# members' clip scores [M, N, K] -> ensemble clip scores [N, K] (recognizer.ensemble)
ENSEMBLES = {'amean': lambda scores: scores.mean(axis=0), 'gmean': _geometric}


@dataclass
class Ensemble:
    """Saved member models (paths of .keras files, one per fold and snapshot) whose clip
    scores are averaged with `method`."""
    paths: list
    folds: int
    snapshots: int
    method: str
    names: list = field(init=False)

    def __post_init__(self):
        self.names = [p.name for p in self.paths]

    def summary(self):
        return {'n_models': len(self.paths), 'folds': self.folds,
                'snapshots': self.snapshots, 'method': self.method, 'members': self.names}


def ensemble_line(summary):
    """The evaluation block's line: how many models were averaged, and how."""
    return (f'ensemble: {summary["n_models"]} models ({summary["folds"]} folds x '
            f'{summary["snapshots"]} snapshots), {summary["method"]}')


def fusion_line(summary):
    """The evaluation block's line of predict.py --runs: the runs, their weights, the rule."""
    runs = ', '.join(f'{r["run"]} x{r["weight"]:g} ({r["n_models"]} models)'
                     for r in summary['runs'])
    return f'model averaging: {len(summary["runs"])} runs ({runs}), {summary["method"]}'


def combine(scores, method):
    """Members' clip scores [M, N, K] -> [N, K], arithmetic or geometric mean."""
    return lookup(ENSEMBLES, method, 'recognizer.ensemble')(np.asarray(scores, np.float64))


def predict(predictor, source, patches, rows, cfg):
    """Clip scores of one classifier, or of an Ensemble whose members' weights are loaded
    one at a time into one model (so that a large ensemble never sits in memory at once)."""
    if not isinstance(predictor, Ensemble):
        return predict_clips(predictor, source, patches, rows, cfg)
    # One model, built once, holds each member's weights in turn, and one scorer compiled
    # on it scores them all: its tf.function reads the model's variables when it runs, so
    # it is traced once per input signature, not once per member as a scorer per loaded
    # model would be. The members of an ensemble are one run's architecture, so each
    # scores exactly as it would alone: the same graph on the same weights.
    model = keras.saving.load_model(predictor.paths[0], compile=False)
    score, scores = recognizer_scorer(model, source, patches, cfg), []
    with progress_bar(_n_clips(patches, rows), len(predictor.paths)) as bar:
        for path in predictor.paths:
            model.load_weights(path)
            clips, member_scores = score(rows, bar.update)
            scores.append(member_scores)
    return clips, combine(scores, predictor.method)


# ----------------------------------------------------------------------------- report

# recognizer.metrics null or empty -> the metrics of the dataset's own challenge.
# A csv table: 'csv' for single-label data, 'csv multi-label' for multi-label data.
DEFAULT_METRICS = {'fsdnoisy18k': ['accuracy'], 'fsdkaggle2018': ['accuracy', 'map3'],
                   'fsdkaggle2019': ['lwlrap'],
                   # FSD50K (Fonseca et al., TASLP 2022) reports mAP, AudioSet-style d'
                   'fsd50k': ['lwlrap', 'map', 'dprime'], 'arca23k': ['accuracy'],
                   'csv': ['accuracy'], 'csv multi-label': ['lwlrap']}


def metric_names(cfg, table=None):
    """The configured metrics, or the dataset's default ones (table: the loaded clips,
    which tell whether a csv table is multi-label)."""
    name = cfg['ctrl']['dataset']
    if name == 'csv' and datasets.multi_label(cfg, table):
        name = 'csv multi-label'
    return cfg['recognizer']['metrics'] or DEFAULT_METRICS[name]


def check_metrics(cfg):
    """Refuse an unknown metric, or a single-label one on a multi-label dataset."""
    for name in metric_names(cfg):
        metric = lookup(metrics.choices(), name, 'recognizer.metrics')
        if datasets.multi_label(cfg) and metric.single_label:
            raise ConfigError(f'recognizer.metrics {name!r} needs single-label data, but '
                              f'{cfg["ctrl"]["dataset"]} has clips with several labels; use '
                              f'{metrics.multi_label_choices()}')


def compute(names, y_true, scores):
    """{metric figures} for the given metric names and those always computed (prf1);
    per-class arrays merged under 'per_class'."""
    always = [name for name, metric in metrics.METRICS.items() if metric.always]
    figures, per_class = {}, {}
    for name in dict.fromkeys([*names, *always]):
        out = dict(metrics.METRICS[name].compute(y_true, scores))
        per_class.update(out.pop('per_class', {}))
        figures.update(out)
    figures['per_class'] = per_class
    return figures


def evaluate(cfg, table, classes, rows_evaluated, scores, wall_time):
    """The metrics of the test clips' scores -> results.Evaluation. Non-finite scores are
    a diverged model (argmax of NaN scores would report chance accuracy)."""
    if not np.isfinite(scores).all():
        raise Diverged(f'the model predicts non-finite scores for '
                       f'{int((~np.isfinite(scores).all(axis=1)).sum())} of {len(scores)} test '
                       f'clips')
    names = metric_names(cfg, table)
    figures = compute(names, datasets.targets(table, len(classes))[rows_evaluated], scores)
    per_class, matrix = figures.pop('per_class'), figures.pop('confusion', None)
    return Evaluation(cfg['ctrl']['run_name'], list(names), figures, per_class, list(classes),
                      len(rows_evaluated), int((table.subset == 'test').sum()),
                      cfg['ctrl']['train_data'], wall_time, matrix)


def evaluation_lines(results):
    """The evaluation block of a Results with its Evaluation: one grep-able line per
    metric, what was evaluated (one model's epoch, or the ensemble), the per-class blocks
    (in the order of metrics.METRICS), the wall time."""
    ev = results.evaluation
    chosen = [(name, metrics.METRICS[name]) for name in ev.metrics]
    lines = ['', '=' * 72, 'EVALUATION']
    if results.fast_dev_run:
        lines.append('FAST DEV RUN: numbers are not results (ctrl.fast_dev_run: 2 steps per '
                     'epoch, at most 2 epochs per stage, a few clips per class)')
    lines += [m.line(ev.figures, ev.where) for _, m in chosen]
    if results.evaluated_epoch is not None:
        lines.append(f'model evaluated: learn.model_selection {results.model_selection}, '
                     f'epoch {results.evaluated_epoch}')
    if results.ensemble is not None:
        lines.append(ensemble_line(results.ensemble))
    if results.fusion is not None:
        lines.append(fusion_line(results.fusion))
    for name, metric in metrics.METRICS.items():
        if name in ev.metrics and metric.per_class_lines is not None:
            lines += metric.per_class_lines(ev.per_class, ev.classes)
    return lines + ['', f'wall time of the job: {ev.wall_time:.1f} s', '=' * 72]


def report(cfg, table, classes, rows_evaluated, scores, run_dir, wall_time, results=None):
    """Evaluate the test clips' scores into `results` (a Results; a fresh one if None),
    write predictions.csv (and confusion.csv when configured). Returns the results, which
    write_results writes to results.json: the marker of a finished run, so the last file
    a run writes; main.py prints their evaluation block after it."""
    results = Results() if results is None else results
    results.evaluated(evaluate(cfg, table, classes, rows_evaluated, scores, wall_time))
    write_predictions(runfolder.path(run_dir, 'predictions'), table, classes, rows_evaluated,
                      scores)
    if results.evaluation.confusion is not None:
        metrics.write_confusion_csv(runfolder.path(run_dir, 'confusion'),
                                    results.evaluation.confusion, classes)
    return results


def write_results(run_dir, results):
    """results.json (strict JSON, non-finite figures as null): the last file a run writes."""
    atomic_write_json(runfolder.path(run_dir, 'results'), results.to_json())


def write_predictions(path, table, classes, rows, scores):
    """predictions.csv format: fname, predicted (top class), one score column per class."""
    frame = pd.DataFrame(scores, columns=classes)
    frame.insert(0, 'predicted', [classes[k] for k in scores.argmax(axis=1)])
    frame.insert(0, 'fname', table.fname.to_numpy()[rows])
    atomic_write_csv(path, frame, index=False, float_format='%.6g')


def write_plots(run_dir, table, classes, rows_evaluated, scores, results):
    """curves.png from history.csv (curves_<fold>.png from each fold's history_<fold>.csv);
    confusion.png and per_class.png of the test clips (single-label: one true class per
    clip)."""
    import plots  # matplotlib is loaded only once a run has something to draw
    ev = results.evaluation
    name = ev.run_name
    for fold, history in runfolder.per_fold(run_dir, 'history'):
        plots.curves(history, runfolder.path(run_dir, 'curves', fold),
                     f'{name}: training' + (f', fold {fold}' if fold else ''), results.loss)
    if 'accuracy' not in ev.per_class:
        return  # multi-label metrics: no single true class per clip to plot
    true = table.label_idx.to_numpy()[rows_evaluated]
    plots.confusion(true, scores.argmax(axis=1), classes,
                    runfolder.path(run_dir, 'confusion_plot'),
                    f'{name}: confusion on the test clips (row-normalised)')
    plots.per_class(metrics.per_class_dict(ev.per_class, classes),
                    runfolder.path(run_dir, 'per_class_plot'),
                    f'{name}: per-class accuracy on the test clips')


# ----------------------------------------------------------------------------- long scorings

LONG = 20_000  # examples from which a scoring outside prediction shows a progress bar
CHUNK = 64     # batches per step of that bar


def map_with_progress(fn, idx, batch_size, desc):
    """map_patches(fn, idx, batch_size) with a progress bar (tqdm, on stderr) when idx holds
    at least LONG examples: pruning's clip scores and self-verification's excerpts. fn is
    compiled once here and scored in chunks of CHUNK whole batches, so that the chunks
    reuse one trace (only the last batch of the last chunk is padded, as map_patches
    pads)."""
    from tqdm import tqdm
    idx = np.asarray(idx, np.int64)
    if idx.size < LONG:
        return map_patches(fn, idx, batch_size)
    compiled = tf.function(fn, reduce_retracing=True)
    step = CHUNK * batch_size
    out = []
    with tqdm(total=idx.size, desc=desc, unit='example', leave=False) as bar:
        for lo in range(0, idx.size, step):
            out.append(map_patches(compiled, idx[lo:lo + step], batch_size))
            bar.update(min(step, idx.size - lo))
    return np.concatenate(out)
