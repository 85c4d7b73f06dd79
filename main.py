"""Command line: python main.py -p config/params.yaml [-o section.key=value ...]

Loads and validates the config, runs the pipeline (table -> features -> learning mode ->
prediction -> report) and exits 0; a user mistake prints one line and exits 2.
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's C++ chatter out

import config  # noqa: E402  (the environment above must be set before Keras loads)
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


def pipeline(cfg, run_dir, t0):
    import datasets
    import eval as evaluation
    import feat_extract
    import learn
    table, classes = datasets.load(cfg)
    store = feat_extract.features(cfg, table)
    if not cfg['ctrl']['learn']:
        print('ctrl.learn is false: features are ready, nothing is trained.')
        return
    rng = utils.set_seed(cfg['ctrl']['seed'])
    experiment = learn.prepare(cfg, table, classes, store, rng, run_dir)
    predictor = learn.run(experiment)
    test_rows = table.index[(table.subset == 'test').to_numpy()].to_numpy()
    rows, scores = evaluation.predict(predictor, experiment.source, experiment.patches,
                                      test_rows, cfg)
    results = evaluation.report(cfg, table, classes, rows, scores, run_dir, time.time() - t0,
                                experiment.results)
    evaluation.write_plots(run_dir, table, classes, rows, scores, results)


def main(argv=None):
    args = parse_args(argv)
    return run(args.params, args.override)


def run(params_path, overrides=()):
    """One experiment (main.py and every run of sweep.py): config -> pipeline -> exit code."""
    t0 = time.time()
    stop_log = None
    try:
        cfg = config.load_config(params_path, overrides)
        utils.import_tensorflow_quietly()
        check_names(cfg)
        logs = Path(cfg['ctrl']['logs_dir'])
        run_dir = logs / cfg['ctrl']['run_name']
        run_dir.mkdir(parents=True, exist_ok=True)
        stop_log = utils.start_log(logs / f'{cfg["ctrl"]["run_name"]}.out')
        text = config.config_to_yaml(cfg)
        utils.atomic_write_text(run_dir / 'config.yaml', text)
        command = ' '.join(['-p', str(params_path), *(f'-o {o}' for o in overrides)])
        print(f'run {cfg["ctrl"]["run_name"]}: {command}\nresolved config:\n{text}', flush=True)
        pipeline(cfg, run_dir, t0)
    except config.ConfigError as err:
        print(f'error: {err}', file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        # history.csv and the selected model.keras so far are already on disk.
        print('interrupted: logs/<run>/ keeps history.csv and the selected model so far',
              file=sys.stderr, flush=True)
        return 130
    finally:
        if stop_log is not None:
            stop_log()
    return 0


if __name__ == '__main__':
    sys.exit(main())
