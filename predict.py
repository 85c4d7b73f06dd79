"""Scores of a trained run on chosen clips: python predict.py RUN_DIR [--clips unverified] -o OUT.csv

Loads RUN_DIR/config.yaml, model.keras and scaler.npz of an earlier run, extracts (or reads
the cached) features of its dataset and writes the clip scores of the chosen clips in the
predictions.csv format (fname, predicted, one score column per class), aggregated as the
run's own test prediction is. Its use: the soft pseudo labels of learn.pseudo_labels
(Akiyama & Sato, DCASE 2019 task 2) over the unverified training clips. They are out of
sample when the earlier run never trained on those clips, e.g. one trained on the verified
clips only (ctrl.train_data clean, or curated on FSDKaggle2019).
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
    return parser.parse_args(argv)


def load_run(run_dir):
    """(config, classifier, mean, std) of a finished run; one-line errors for what is
    missing."""
    files = {name: runfolder.path(run_dir, name) for name in ('config', 'model', 'scaler')}
    for path in files.values():
        if not path.is_file():
            raise config.ConfigError(f'{run_dir} has no {path.name}: not the folder of a '
                                     f'trained run')
    cfg = config.load_config(files['config'])
    utils.import_tensorflow_quietly()
    import keras
    import heads  # noqa: F401  (registers the Sparsemax layer for loading)
    classifier = keras.saving.load_model(files['model'], compile=False)
    with np.load(files['scaler']) as scaler:
        return cfg, classifier, scaler['mean'], scaler['std']


def predict(run_dir, clips, out):
    """Write the run's clip scores of `clips` (a CLIPS name) to `out`; returns their count."""
    import data
    import datasets
    import eval as evaluation
    import feat_extract
    import pipeline
    cfg, classifier, mean, std = load_run(run_dir)
    table, classes = datasets.load(cfg)
    store = feat_extract.features(cfg, table)
    patches = pipeline.patch_table(cfg, store)
    source = pipeline.batch_source(cfg, store, patches, table, mean, std,
                                   data.lsr_eps(cfg['learn'], classes))
    rows = np.flatnonzero(CLIPS[clips](table).to_numpy() & (store.length > 0))
    rows, scores = evaluation.predict_clips(classifier, source, patches, rows, cfg)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    evaluation.write_predictions(Path(out), table, classes, rows, scores)
    return len(rows)


def main(argv=None):
    args = parse_args(argv)
    try:
        n = predict(args.run_dir, args.clips, args.out)
    except config.ConfigError as err:
        print(f'error: {err}', file=sys.stderr, flush=True)
        return 2
    print(f'{n} {args.clips} clips scored by {args.run_dir}: {args.out}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
