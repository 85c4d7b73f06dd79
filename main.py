"""Command line: python main.py -p config/params.yaml [-o section.key=value ...]

Loads and validates the config, runs the pipeline (table -> features -> learning mode ->
prediction -> report) and exits 0; a user mistake prints one line and exits 2; a run that
diverged or failed exits 1. The same command continues a run that was killed.
"""
import argparse
import os
import sys
import time
import traceback

os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's C++ chatter out

import config  # noqa: E402  (the environment above must be set before Keras loads)
import runfolder  # noqa: E402
import utils  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('-p', '--params', required=True, help='experiment YAML file')
    parser.add_argument('-o', '--override', action='append', default=[],
                        metavar='SECTION.KEY=VALUE', help='override a config key (repeatable)')
    return parser.parse_args(argv)


def check_names(cfg):
    """Unknown dataset / model / loss / mode / aggregation names fail before heavy work."""
    import architectures
    import datasets
    import eval as evaluation
    import learn
    import losses
    datasets.check(cfg)
    architectures.check(cfg)
    losses.check(cfg)
    learn.check(cfg)
    evaluation.check(cfg)


def pipeline(cfg, folder, t0, version):
    import datasets
    import eval as evaluation
    import experiment
    import fastdev
    import feat_extract
    import learn
    table, classes = datasets.load(cfg)
    table = fastdev.fast_dev_clips(cfg, table)  # ctrl.fast_dev_run: a few clips per class
    cfg = fastdev.fast_dev_inputs(cfg)  # ... and whole-clip recipes' inputs cut in size
    store = feat_extract.features(cfg, table)
    if not cfg['ctrl']['learn']:
        print('ctrl.learn is false: features are ready, nothing is trained.')
        return
    test_rows = datasets.readable_test_rows(table, store.length)
    rng = utils.set_seed(cfg['ctrl']['seed'])
    mode = learn.MODES[cfg['learn']['mode']]
    exp = experiment.prepare(cfg, mode, table, classes, store, rng, folder.dir)
    exp.results.code_ran(version)
    folder.training = True  # from here on, an error keeps what the run wrote
    with utils.interrupts_at_safe_points():  # Ctrl-C: raised after a step (utils)
        predictor = learn.run(exp)
        rows, scores = evaluation.predict(predictor, exp.source, exp.patches, test_rows, cfg)
    results = evaluation.report(cfg, table, classes, rows, scores, folder.dir,
                                time.time() - t0, exp.results)
    evaluation.write_plots(folder.dir, table, classes, rows, scores, results)
    evaluation.write_results(folder.dir, results)  # last: results.json marks it finished
    # The block only once the run is finished: a run stopped before results.json and
    # continued would otherwise hold two in its .out (counted twice by a grep), and an
    # unfinished one an accuracy. A kill between these two lines, the one gap left, leaves
    # a finished run whose .out lacks the block (its figures are in results.json).
    print('\n'.join(evaluation.evaluation_lines(results)), flush=True)
    folder.drop_backup()


def run(params_path, overrides=()):
    """One experiment (main.py, and each run of a sweep) -> exit status: 0 done, 1 failed
    (diverged, or an unexpected error whose traceback also goes to logs/<run>.out), 2 a
    user mistake (one line; what the run created is removed when found before training)."""
    t0 = time.time()
    try:
        cfg = config.load_config(params_path, overrides)
    except config.ConfigError as err:
        print(f'error: {err}', file=sys.stderr, flush=True)
        return 2
    folder = runfolder.RunFolder(cfg)
    try:
        utils.import_tensorflow_quietly()
        check_names(cfg)
        folder.open()
        version = utils.code_version()
        announce(cfg, folder, params_path, overrides, version)
        pipeline(cfg, folder, t0, version)
    except config.ConfigError as err:
        print(f'error: {err}', file=sys.stderr, flush=True)
        folder.close(discard=not folder.training)
        return 2
    except KeyboardInterrupt:
        # history.csv, model.keras and the backup of the last epoch are on disk.
        print('interrupted: run the same command again to continue from the last epoch',
              file=sys.stderr, flush=True)
        return 130
    except Exception as err:  # noqa: BLE001  (logged in full, then a one-line verdict)
        return failed(folder, err)
    finally:
        folder.close()
    return 0


def announce(cfg, folder, params_path, overrides, version):
    """The run's first lines: its command, the config keys that differ from the defaults
    and the code version on the console and in the log; the whole resolved config in the
    log only (and config.yaml): some 170 lines that would bury the console."""
    command = ' '.join(['-p', str(params_path), *(f'-o {o}' for o in overrides)])
    changed = config.config_to_yaml(config.changed_from_defaults(cfg))
    print(f'run {folder.name}: {command}\nconfig keys that differ from the defaults '
          f'(all of them: resolved config in {folder.out}):\n{changed}'
          f'{utils.code_version_line(version)}', flush=True)
    utils.log_only(f'resolved config:\n{config.config_to_yaml(cfg)}')


def failed(folder, err):
    """Divergence or collapse: its message, with what the run kept, and results.json status
    "diverged" or "collapsed" (utils.Diverged.status); anything else: the traceback. Both
    end with the line saying the run failed (exit status 1)."""
    if isinstance(err, utils.Diverged):
        kept = folder.training_files()
        message = f'{err}; {"kept: " + ", ".join(kept) if kept else "nothing was saved yet"}'
        folder.write_status(err.status, message=message, epoch=err.epoch, step=err.step)
        err = message
    else:
        traceback.print_exc()
        err = f'{type(err).__name__}: {err}'
    print(f'run {folder.name} failed: {err}', file=sys.stderr, flush=True)
    return 1


def main(argv=None):
    args = parse_args(argv)
    return run(args.params, args.override)


if __name__ == '__main__':
    sys.exit(main())
