"""Scores of trained runs on chosen clips (predict.py): one run's whole ensemble, and the
weighted average of several runs (model averaging).

A run is scored as its own test prediction was: every member it recorded in results.json
(`ensemble.members`: each fold's selected model, or each fold's snapshots, or the chosen
self-verification round's fold models; model.keras for a run of one model), averaged with
its recognizer.ensemble rule, each member scored with the run's recognizer keys
(aggregation, length buckets, padding views). `-o section.key=value` overrides are applied
to the run's config.yaml before scoring. Only a finished run is scored, unless unfinished
says otherwise (then the selected models it saved so far, with a warning).

Model averaging (Akiyama & Sato, DCASE 2019 task 2, Sec. 2.3: models A-F averaged
3:4:3:1:1:1; cropping-length averaging is the average of runs trained with different
crops; Dorfer & Widmer fuse three networks the same way) scores each run's ensemble on the
same clips and averages with weights w_i: arithmetic sum_i w_i p_i / sum_i w_i (the
released make_final_submission1.py), or geometric exp(sum_i w_i log p_i / sum_i w_i).
Runs of other datasets, other classes or other readable clips are refused; runs of
different feature kinds (log-mel, waveform) are averaged, as the paper averages its
ResNet34 and EnvNet-v2 models.
"""
import json
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import config
import runfolder
import utils

TINY = 1e-12  # floor before a log (as eval.TINY)

# --clips -> the table rows scored: training clips by status, or the test clips.
CLIPS = {'unverified': lambda t: (t.subset == 'train') & (t.verified == 0),
         'verified': lambda t: (t.subset == 'train') & (t.verified == 1),
         'train': lambda t: t.subset == 'train',
         'test': lambda t: t.subset == 'test'}

AVERAGES = ('amean', 'gmean')


def one_line(err):
    """An exception as its type and the first line of its message."""
    lines = str(err).strip().splitlines()
    return f'{type(err).__name__}: {lines[0] if lines else "no message"}'


@dataclass
class Scored:
    """One run's ensemble scores of the chosen clips."""
    run_dir: Path
    cfg: dict
    table: object     # the dataset's clip table (datasets.load)
    classes: list
    rows: np.ndarray  # table rows scored (readable clips of the chosen set)
    scores: np.ndarray  # [len(rows), K]
    ensemble: dict    # eval.Ensemble.summary() of what was averaged

    @property
    def features(self):
        return self.cfg['extract'].get('features', 'logmel')


# ----------------------------------------------------------------------------- one run

def check_finished(run_dir, unfinished):
    """Refuse (or, with unfinished, warn about) a run without a finished results.json;
    returns the results.json content of a finished run, else None."""
    status = runfolder.status(run_dir)
    if status == 'finished':
        try:
            return json.loads(runfolder.path(run_dir, 'results').read_text())
        except (OSError, ValueError):
            raise config.ConfigError(f'{runfolder.path(run_dir, "results")} is not readable '
                                     f'JSON: its ensemble members are unknown') from None
    what = ('has not finished (no results.json)' if status is None
            else f'has {status} (results.json)')
    if not unfinished:
        raise config.ConfigError(f'{run_dir} {what}: its model.keras is the last one it '
                                 f'saved, not a finished run\'s; pass --unfinished to score '
                                 f'it anyway')
    saved = [path.name for _, path in runfolder.per_fold(run_dir, 'model')]
    print(f'warning: {run_dir} {what}: scoring the last {", ".join(saved) or "model.keras"} '
          f'it saved', file=sys.stderr, flush=True)
    return None


def members(run_dir, results):
    """(member paths, folds, snapshots) of a run: results.json's ensemble, or its one
    model; without results (unfinished) every selected model it saved."""
    run_dir = Path(run_dir)
    if results is None:
        paths = [path for _, path in runfolder.per_fold(run_dir, 'model')]
        paths = paths or [runfolder.path(run_dir, 'model')]
        return paths, len(paths), 1
    ensemble = results.get('ensemble')
    if not ensemble:
        return [runfolder.path(run_dir, 'model')], 1, 1
    return ([run_dir / name for name in ensemble['members']], ensemble['folds'],
            ensemble['snapshots'])


def check_members(run_dir, paths):
    """Every member is a file that can be a Keras archive; one line naming the first that
    is not. (A .keras file is a zip archive; loading each member here would double the
    work of scoring.)"""
    for path in paths:
        if not path.is_file():
            raise config.ConfigError(f'{run_dir} has no {path.name}: not the folder of a '
                                     f'trained run (or a member it recorded was removed)')
        if not zipfile.is_zipfile(path):
            raise config.ConfigError(f'{path} is not a readable Keras model (not a .keras '
                                     f'archive)')


def load_model(path):
    import keras
    import heads  # noqa: F401  (registers the Sparsemax layer for loading)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001  (whatever the file holds: one line naming it)
        raise config.ConfigError(f'{path} is not a readable Keras model '
                                 f'({one_line(err)})') from None


def load_scaler(path, width):
    """(mean, std) per feature band from scaler.npz, or one line saying why it cannot be
    read; width: the bands of the stored features (n_mels for log-mel)."""
    try:
        with np.load(path) as scaler:
            mean, std = scaler['mean'], scaler['std']
    except Exception as err:  # noqa: BLE001  (not an npz, pickled data, a key missing...)
        raise config.ConfigError(f'{path} is not a readable scaler.npz '
                                 f'({one_line(err)})') from None
    if mean.shape != (width,) or std.shape != (width,):
        raise config.ConfigError(f'{path} holds a mean and std of shapes {mean.shape} and '
                                 f'{std.shape}, not one value per feature band ({width})')
    return mean, std


def check_classes(classifier, classes, run_dir, cfg):
    """The model scores as many classes as the dataset has now (one score column each)."""
    k = classifier.output['scores'].shape[-1]
    if k != len(classes):
        raise config.ConfigError(f'the model of {run_dir} scores {k} classes but its dataset '
                                 f'{cfg["ctrl"]["dataset_path"]} has {len(classes)} now '
                                 f'({", ".join(classes)}): the dataset changed since the run')


def run_config(run_dir, overrides):
    """The run's config.yaml with the overrides applied, checked as main.py checks it."""
    import eval as evaluation
    path = runfolder.path(run_dir, 'config')
    if not path.is_file() or not runfolder.path(run_dir, 'scaler').is_file():
        missing = path if not path.is_file() else runfolder.path(run_dir, 'scaler')
        raise config.ConfigError(f'{run_dir} has no {missing.name}: not the folder of a '
                                 f'trained run')
    cfg = config.load_config(path, overrides)
    evaluation.check(cfg)
    import fastdev
    return fastdev.fast_dev_inputs(cfg)  # a whole-clip dry run trained on inputs cut in size


def score_run(run_dir, clips, overrides=(), unfinished=False):
    """One run's ensemble scores of the clips `clips` (a CLIPS name) -> Scored."""
    utils.import_tensorflow_quietly()  # before the modules below, which import TensorFlow
    import data
    import datasets
    import eval as evaluation
    import feat_extract
    import pipeline
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    results = check_finished(run_dir, unfinished)
    paths, folds, snapshots = members(run_dir, results)
    check_members(run_dir, paths)
    first = load_model(paths[0])
    table, classes = datasets.load(cfg)
    check_classes(first, classes, run_dir, cfg)
    del first  # eval.predict loads the members into one model of its own
    store = feat_extract.features(cfg, table)
    mean, std = load_scaler(runfolder.path(run_dir, 'scaler'), store.frames.shape[1])
    patches = pipeline.patch_table(cfg, store)
    source = pipeline.batch_source(cfg, store, patches, table, mean, std,
                                   data.lsr_eps(cfg['learn'], classes))
    rows = np.flatnonzero(CLIPS[clips](table).to_numpy() & (store.length > 0))
    ensemble = evaluation.Ensemble(paths, folds, snapshots, cfg['recognizer']['ensemble'])
    rows, scores = evaluation.predict(ensemble, source, patches, rows, cfg)
    return Scored(run_dir, cfg, table, classes, rows, scores, ensemble.summary())


# ----------------------------------------------------------------------------- several runs

def parse_run(text):
    """'logs/A:3' -> (Path('logs/A'), 3.0); 'logs/A' -> weight 1."""
    path, sep, weight = text.rpartition(':')
    if not sep:
        return Path(text), 1.0
    try:
        value = float(weight)
    except ValueError:
        raise config.ConfigError(f'--runs {text}: the weight after ":" must be a number '
                                 f'(RUN_DIR:WEIGHT, e.g. logs/model_a:3)') from None
    if not np.isfinite(value) or value <= 0:
        raise config.ConfigError(f'--runs {text}: the weight must be a positive number')
    return Path(path), value


def average(scores, weights, method):
    """Runs' clip scores [R, N, K] with weights [R] -> [N, K]: the weighted arithmetic
    (amean) or geometric (gmean) mean."""
    scores = np.asarray(scores, np.float64)
    w = np.asarray(weights, np.float64).reshape(-1, 1, 1) / np.sum(weights)
    if method == 'amean':
        return (w * scores).sum(axis=0)
    return np.exp((w * np.log(np.maximum(scores, TINY))).sum(axis=0))


def check_same(runs):
    """Runs whose scores can be averaged: one dataset, its classes in one order, the same
    clips scored."""
    base = runs[0]
    for run in runs[1:]:
        for what, a, b in (
                ('datasets', base.cfg['ctrl']['dataset'], run.cfg['ctrl']['dataset']),
                ('dataset folders', Path(base.cfg['ctrl']['dataset_path']).resolve(),
                 Path(run.cfg['ctrl']['dataset_path']).resolve()),
                ('classes', list(base.classes), list(run.classes))):
            if a != b:
                shown = ((f'{len(a)} classes', f'{len(b)} classes') if what == 'classes'
                         else (a, b))
                raise config.ConfigError(f'--runs {base.run_dir} and {run.run_dir} are of '
                                         f'different {what} ({shown[0]} vs {shown[1]}): '
                                         f'their scores cannot be averaged')
        if not np.array_equal(base.rows, run.rows):
            raise config.ConfigError(f'--runs {base.run_dir} and {run.run_dir} score different '
                                     f'clips ({len(base.rows)} vs {len(run.rows)} readable): '
                                     f'their features failed on different files')


def fuse(specs, clips, out_dir, method='amean', overrides=()):
    """Score each run of specs [(run_dir, weight)] and write their weighted average to
    out_dir/predictions.csv, with the dataset's metrics in out_dir/results.json when the
    test clips are scored. Returns (the Results or None, number of clips)."""
    t0 = time.time()
    out_dir = writable_dir(out_dir)
    runs = [score_run(run_dir, clips, overrides) for run_dir, _ in specs]
    import eval as evaluation  # after score_run has imported TensorFlow quietly
    from results import Results
    check_same(runs)
    weights = [w for _, w in specs]
    scores = average([run.scores for run in runs], weights, method)
    base = runs[0]
    summary = {'method': method, 'runs': [
        {'run': str(run.run_dir), 'weight': w, 'features': run.features,
         'model': run.cfg['learn']['model'], 'n_models': run.ensemble['n_models']}
        for run, w in zip(runs, weights)]}
    if clips != 'test':  # no metrics: the labels of training clips are the noisy ones
        evaluation.write_predictions(runfolder.path(out_dir, 'predictions'), base.table,
                                     base.classes, base.rows, scores)
        return None, len(base.rows)
    cfg = {**base.cfg, 'ctrl': {**base.cfg['ctrl'], 'run_name': out_dir.name}}
    results = Results()
    results.averaged(summary)
    results = evaluation.report(cfg, base.table, base.classes, base.rows, scores, out_dir,
                                time.time() - t0, results)
    evaluation.write_results(out_dir, results)
    return results, len(base.rows)


def writable_dir(out_dir):
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise config.ConfigError(f'--out {out_dir} is a file: --runs writes a folder '
                                 f'(predictions.csv, results.json)')
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise config.ConfigError(f'--out {out_dir}: cannot create it ({one_line(err)})') \
            from None
    return out_dir
