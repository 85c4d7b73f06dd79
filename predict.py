"""Scores of trained runs on chosen clips.

    python predict.py RUN_DIR [--clips C] --out OUT.csv [-o section.key=value ...]
    python predict.py --runs RUN_DIR[:WEIGHT] ... [--clips C] --out DIR [--average amean]

One run: its whole ensemble (every fold and snapshot member its results.json records, or
its model.keras), averaged with its own recognizer.ensemble rule and scored as its own test
prediction is (features from the cache, scaler.npz), written in the predictions.csv format
(fname, predicted, one score column per class) that learn.pseudo_labels reads: the soft
pseudo labels of Akiyama & Sato (DCASE 2019 task 2) over the unverified training clips.

Several runs (--runs): each run's ensemble scores the same clips and the scores are
averaged with the weights (arithmetic or geometric, --average): DIR/predictions.csv and,
for the test clips, DIR/results.json with the dataset's metrics, as a finished run writes
them (model averaging; fusion.py).

-o section.key=value overrides a key of the runs' configs before scoring, as in main.py
and sweep.py (e.g. -o recognizer.tta_pad=[8,32]); the output is --out. Only a finished run
is scored (results.json status finished) unless --unfinished says to score one anyway
(with a warning). A folder that is not a trained run's, a model or scaler that cannot be
read, a dataset whose classes are not the model's, runs that cannot be averaged and an
output that cannot be written are each one line (exit 2).
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import config  # noqa: E402  (the environment above must be set before Keras loads)
import runfolder  # noqa: E402

import fusion  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('run_dir', nargs='?', help='folder of an earlier run (logs/<run_name>)')
    parser.add_argument('--runs', nargs='+', metavar='RUN_DIR[:WEIGHT]',
                        help='average several runs with weights (default 1): --out is a folder')
    parser.add_argument('--clips', default='unverified', choices=list(fusion.CLIPS),
                        help='clips to score (default: the unverified training clips)')
    parser.add_argument('--out', required=True,
                        help='CSV file to write (one run), or folder (--runs)')
    parser.add_argument('-o', '--override', action='append', default=[],
                        metavar='SECTION.KEY=VALUE',
                        help='override a key of the run\'s config (repeatable)')
    parser.add_argument('--average', default='amean', choices=fusion.AVERAGES,
                        help='--runs: weighted arithmetic (amean) or geometric (gmean) mean')
    parser.add_argument('--unfinished', action='store_true',
                        help='score a run that has not finished (the models it last saved)')
    return parser.parse_args(argv)


def check_args(args):
    """One run or --runs; -o is an override (an older script's -o OUT.csv is refused)."""
    for text in args.override:
        if '=' not in text:
            raise config.ConfigError(f'-o {text} is not section.key=value: -o overrides a '
                                     f'config key, as in main.py and sweep.py; the output '
                                     f'is --out {text}')
    if (args.run_dir is None) == (args.runs is None):
        raise config.ConfigError('give one RUN_DIR, or --runs RUN_DIR[:WEIGHT] ... (not both)')
    if args.runs and args.unfinished:
        raise config.ConfigError('--unfinished scores one run; --runs averages finished runs')


def writable(out):
    """The output CSV's folder, created if need be; one line when it cannot be."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise config.ConfigError(f'--out {out}: cannot create its folder {out.parent} '
                                 f'({fusion.one_line(err)})') from None
    if out.is_dir():
        raise config.ConfigError(f'--out {out} is a folder: give the CSV file to write')
    return out


def predict(run_dir, clips, out, overrides=(), unfinished=False):
    """Write the scores of one run's ensemble on `clips` (a CLIPS name) to `out`; returns
    the fusion.Scored. unfinished: score a run that has not finished too (warning)."""
    out = writable(out)
    scored = fusion.score_run(run_dir, clips, overrides, unfinished)
    import eval as evaluation  # after score_run has imported TensorFlow quietly
    try:
        evaluation.write_predictions(out, scored.table, scored.classes, scored.rows,
                                     scored.scores)
    except OSError as err:  # e.g. a full disk, or the folder made read-only meanwhile
        raise config.ConfigError(f'--out {out}: cannot write it '
                                 f'({fusion.one_line(err)})') from None
    return scored


def main(argv=None):
    args = parse_args(argv)
    try:
        check_args(args)
        if args.runs:
            specs = [fusion.parse_run(text) for text in args.runs]
            results, n = fusion.fuse(specs, args.clips, args.out, args.average, args.override)
        else:
            scored = predict(args.run_dir, args.clips, args.out, args.override,
                             args.unfinished)
    except config.ConfigError as err:
        print(f'error: {err}', file=sys.stderr, flush=True)
        return 2
    if args.runs:
        if results is not None:
            import eval as evaluation
            print('\n'.join(evaluation.evaluation_lines(results)), flush=True)
        print(f'{n} {args.clips} clips scored by {len(specs)} runs ({args.average}): '
              f'{runfolder.path(args.out, "predictions")}', flush=True)
        return 0
    ens = scored.ensemble
    print(f'{len(scored.rows)} {args.clips} clips scored by {args.run_dir} '
          f'({ens["n_models"]} models, {ens["method"]}): {args.out}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
