"""Scores of a trained run on chosen clips: python predict.py RUN_DIR [--clips C] -o OUT.csv

Loads RUN_DIR/config.yaml, model.keras and scaler.npz of an earlier run, extracts (or reads
the cached) features of its dataset and writes the clip scores of the chosen clips in the
predictions.csv format (fname, predicted, one score column per class), aggregated as the
run's own test prediction is. Its use: the soft pseudo labels of learn.pseudo_labels
(Akiyama & Sato, DCASE 2019 task 2) over the unverified training clips. They are out of
sample when the earlier run never trained on those clips, e.g. one trained on the verified
clips only (ctrl.train_data clean, or curated on FSDKaggle2019).

Only a finished run is scored (results.json status finished): the model.keras of an
unfinished, diverged or collapsed run is whatever epoch it last saved, so such a run is
refused unless --unfinished says to score it anyway (with a warning). A folder that is not
a trained run's, a model.keras or scaler.npz that cannot be read, a dataset whose classes
are not the model's and an output that cannot be written are each one line (exit 2).
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

import config  # noqa: E402  (the environment above must be set before Keras loads)
import runfolder  # noqa: E402
import utils  # noqa: E402

# --clips -> the table rows scored: training clips by status, or the test clips.
CLIPS = {'unverified': lambda t: (t.subset == 'train') & (t.verified == 0),
         'verified': lambda t: (t.subset == 'train') & (t.verified == 1),
         'train': lambda t: t.subset == 'train',
         'test': lambda t: t.subset == 'test'}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('run_dir', help='folder of an earlier run (logs/<run_name>)')
    parser.add_argument('--clips', default='unverified', choices=list(CLIPS),
                        help='clips to score (default: the unverified training clips)')
    parser.add_argument('-o', '--out', required=True, help='CSV file to write')
    parser.add_argument('--unfinished', action='store_true',
                        help='score a run that has not finished (its last saved model)')
    return parser.parse_args(argv)


def one_line(err):
    """An exception as its type and the first line of its message."""
    lines = str(err).strip().splitlines()
    return f'{type(err).__name__}: {lines[0] if lines else "no message"}'


def load_run(run_dir, unfinished=False):
    """(config, classifier, mean, std) of a finished run (or, with unfinished, of any
    trained one); one-line errors for what is missing or unreadable."""
    files = {name: runfolder.path(run_dir, name) for name in ('config', 'model', 'scaler')}
    for path in files.values():
        if not path.is_file():
            raise config.ConfigError(f'{run_dir} has no {path.name}: not the folder of a '
                                     f'trained run')
    check_finished(run_dir, unfinished)
    cfg = config.load_config(files['config'])
    utils.import_tensorflow_quietly()
    import keras
    import heads  # noqa: F401  (registers the Sparsemax layer for loading)
    try:
        classifier = keras.saving.load_model(files['model'], compile=False)
    except Exception as err:  # noqa: BLE001  (whatever the file holds: one line naming it)
        raise config.ConfigError(f'{files["model"]} is not a readable Keras model '
                                 f'({one_line(err)})') from None
    mean, std = load_scaler(files['scaler'], cfg['extract']['n_mels'])
    return cfg, classifier, mean, std


def check_finished(run_dir, unfinished):
    """Refuse (or, with unfinished, warn about) a run without a finished results.json."""
    status = runfolder.status(run_dir)
    if status == 'finished':
        return
    what = ('has not finished (no results.json)' if status is None
            else f'has {status} (results.json)')
    if not unfinished:
        raise config.ConfigError(f'{run_dir} {what}: its model.keras is the last one it '
                                 f'saved, not a finished run\'s; pass --unfinished to score '
                                 f'it anyway')
    print(f'warning: {run_dir} {what}: scoring the last model.keras it saved', file=sys.stderr,
          flush=True)


def load_scaler(path, n_mels):
    """(mean, std) per mel band from scaler.npz, or one line saying why it cannot be read."""
    try:
        with np.load(path) as scaler:
            mean, std = scaler['mean'], scaler['std']
    except Exception as err:  # noqa: BLE001  (not an npz, pickled data, a key missing...)
        raise config.ConfigError(f'{path} is not a readable scaler.npz '
                                 f'({one_line(err)})') from None
    if mean.shape != (n_mels,) or std.shape != (n_mels,):
        raise config.ConfigError(f'{path} holds a mean and std of shapes {mean.shape} and '
                                 f'{std.shape}, not one value per mel band ({n_mels})')
    return mean, std


def check_classes(classifier, classes, run_dir, cfg):
    """The model scores as many classes as the dataset has now (one score column each)."""
    k = classifier.output['scores'].shape[-1]
    if k != len(classes):
        raise config.ConfigError(f'the model of {run_dir} scores {k} classes but its dataset '
                                 f'{cfg["ctrl"]["dataset_path"]} has {len(classes)} now '
                                 f'({", ".join(classes)}): the dataset changed since the run')


def writable(out):
    """The output's folder, created if need be; one line when it cannot be."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise config.ConfigError(f'-o {out}: cannot create its folder {out.parent} '
                                 f'({one_line(err)})') from None
    if out.is_dir():
        raise config.ConfigError(f'-o {out} is a folder: give the CSV file to write')
    return out


def predict(run_dir, clips, out, unfinished=False):
    """Write the run's clip scores of `clips` (a CLIPS name) to `out`; returns their count.
    unfinished: score a run that has not finished too (warning)."""
    utils.import_tensorflow_quietly()  # before the modules below, which import TensorFlow
    import data
    import datasets
    import eval as evaluation
    import feat_extract
    import pipeline
    out = writable(out)
    cfg, classifier, mean, std = load_run(run_dir, unfinished)
    table, classes = datasets.load(cfg)
    check_classes(classifier, classes, run_dir, cfg)
    store = feat_extract.features(cfg, table)
    patches = pipeline.patch_table(cfg, store)
    source = pipeline.batch_source(cfg, store, patches, table, mean, std,
                                   data.lsr_eps(cfg['learn'], classes))
    rows = np.flatnonzero(CLIPS[clips](table).to_numpy() & (store.length > 0))
    rows, scores = evaluation.predict_clips(classifier, source, patches, rows, cfg)
    try:
        evaluation.write_predictions(out, table, classes, rows, scores)
    except OSError as err:  # e.g. a full disk, or the folder made read-only meanwhile
        raise config.ConfigError(f'-o {out}: cannot write it ({one_line(err)})') from None
    return len(rows)


def main(argv=None):
    args = parse_args(argv)
    try:
        n = predict(args.run_dir, args.clips, args.out, args.unfinished)
    except config.ConfigError as err:
        print(f'error: {err}', file=sys.stderr, flush=True)
        return 2
    print(f'{n} {args.clips} clips scored by {args.run_dir}: {args.out}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
