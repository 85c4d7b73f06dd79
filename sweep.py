"""Sweeps: python sweep.py -p CONFIG.yaml --grid section.key=v1,v2 [--seeds 0,1,2] ...

(or --configs A.yaml B.yaml: a grid axis over experiment files; or --spec FILE.yaml: a sweep
file holding these options, see sweepspec.py.)

Every (grid point x seed) is one run of main.run() (the code path of main.py), named
NAME/<key=value,...>_seed<k>, scheduled by Ray: embedded on this machine by default, or on
a cluster with --address. Features are extracted once, in this process, before any run
starts. Runs that ended (results.json with status finished, diverged or collapsed, or an
unreadable one) are skipped. The finished runs are summarised per grid point (mean, std,
95 % t confidence interval; paired differences to --baseline; sweep_summary.py) in
logs/sweeps/NAME/: runs.csv, summary.csv, summary.md, summary.png; the console shows the
dataset's headline metric. The progress bar counts the runs done and shows each running
run's epoch. The exit status is 0 when every run of the sweep has finished, 1 otherwise
(on every rerun alike), 2 for a mistake.
"""
import argparse
import itertools
import json
import logging
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pandas as pd  # noqa: E402

import config  # noqa: E402
import runfolder  # noqa: E402
import sweep_summary  # noqa: E402
import sweepspec  # noqa: E402
import tensorboard_hparams  # noqa: E402
import utils  # noqa: E402
from config import ConfigError  # noqa: E402
# The command line's values are parsed in sweepspec, with the sweep file's (--spec).
from sweepspec import (fmt, parse_baseline, parse_grid, parse_seeds,  # noqa: E402,F401
                       parse_values)

ROOT = Path(__file__).resolve().parent
UNSAFE = re.compile(r'[^A-Za-z0-9._=,+-]')  # anything else becomes '_' in a run name
# results.json statuses of runs that ended without a result; their message is their error.
STOPPED = ('diverged', 'collapsed')


@dataclass
class Run:
    name: str        # NAME/<point>_seed<k>, the run's ctrl.run_name
    point: str       # 'key=value,...' of its grid point
    values: dict     # grid key -> value
    seed: int
    overrides: list  # -o overrides + grid values + seed + run name
    params: str = None  # its experiment file, where --configs gives several


# ----------------------------------------------------------------------------- command line

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('-p', '--params', help='experiment YAML file')
    parser.add_argument('--configs', nargs='+', metavar='FILE.yaml',
                        help='experiment files: a grid axis named by their stems (instead of -p)')
    parser.add_argument('--spec', metavar='FILE.yaml', help='sweep file: params or configs, '
                        'name, grid, seeds, baseline, overrides (the command line overrides it)')
    parser.add_argument('--grid', action='append', default=[], metavar='SECTION.KEY=V1,V2',
                        help='values of one key (repeatable: the grid is their product)')
    parser.add_argument('--seeds', help='ctrl.seed values, e.g. 0,1,2 (default 0)')
    parser.add_argument('-o', '--override', action='append', default=[],
                        metavar='SECTION.KEY=VALUE', help='override for every run')
    parser.add_argument('--name', help='sweep name (default: config stem and grid keys)')
    parser.add_argument('--address', help="Ray cluster: 'auto' or ray://host:port "
                        '(default: Ray embedded on this machine)')
    parser.add_argument('--cpus-per-run', type=float, default=1.0)
    parser.add_argument('--gpus-per-run', type=float, default=0.0)
    parser.add_argument('--baseline', metavar='SECTION.KEY=VALUE,...',
                        help='grid point to which paired differences are computed '
                             '(with --configs: the baseline file\'s stem, e.g. cce)')
    return parser.parse_args(argv)


def point_name(values):
    return UNSAFE.sub('_', ','.join(f'{k}={fmt(v)}' for k, v in values.items()))


def plan(args, grid, seeds, configs=None):
    """Every (grid point x seed) -> Run, with a unique, file-safe run name. configs: stem ->
    experiment file of the grid's 'config' axis (--configs), whose stem names the runs."""
    stem = Path(args.params).stem if configs is None else '+'.join(configs)
    keys = [k for k in grid if k != sweepspec.CONFIG_AXIS]
    name = UNSAFE.sub('_', args.name or '-'.join([stem, *keys]))
    runs = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        point = point_name(values)
        for seed in seeds:
            run_name = f'{name}/{point}_seed{seed}'
            overrides = [*args.override, *(f'{k}={fmt(values[k])}' for k in keys),
                         f'ctrl.seed={seed}', f'ctrl.run_name={run_name}']
            runs.append(Run(run_name, point, values, seed, overrides,
                            configs and configs[values[sweepspec.CONFIG_AXIS]]))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f'two grid points give the same run name {dup!r} (repeated '
                          f'values, or values equal once unsafe characters become _)')
    return name, runs


# ----------------------------------------------------------------------------- before Ray

def check_runs(params, runs):
    """Every run's config, validated here: a mistake stops the sweep before any work."""
    import main
    cfgs = [config.load_config(run.params or params, run.overrides) for run in runs]
    utils.import_tensorflow_quietly()
    for cfg in cfgs:
        main.check_names(cfg)
    return cfgs


def extract_features(cfgs):
    """Extract each distinct feature cache once, here, so that runs only read it."""
    import datasets
    import fastdev
    import feat_extract
    seen = set()
    for cfg in cfgs:
        key = json.dumps([cfg['ctrl'][k] for k in ('dataset', 'dataset_path', 'features_dir',
                                                   'feat_ext')] + [cfg['extract']])
        if key not in seen:
            seen.add(key)
            feat_extract.features(fastdev.fast_dev_inputs(cfg),
                                  fastdev.fast_dev_clips(cfg, datasets.load(cfg)[0]))


def run_dir(cfg):
    return Path(cfg['ctrl']['logs_dir']) / cfg['ctrl']['run_name']


def read_results(cfg):
    """A run's results.json -> (its entries, None); (None, None) when there is none (the run
    has not ended); (None, error naming the file) when it cannot be read: the run ended
    (main.py never modifies it) but its result is lost, so it counts as failed."""
    path = runfolder.path(run_dir(cfg), 'results')
    try:
        results = json.loads(path.read_text())
        if not isinstance(results, dict):
            raise ValueError('not a JSON object')
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as err:
        return None, (f'{path} is unreadable ({type(err).__name__}: {_last_line(str(err))}); '
                      f'delete the run\'s folder and .out to run it again')
    return results, None


def status_of(found):
    """A run's status from read_results' (results, error); None: it has not ended."""
    results, error = found
    return 'failed' if error else None if results is None else results.get('status', 'finished')


# ----------------------------------------------------------------------------- Ray

class StderrTail:
    """sys.stderr during a run, passed through, keeping its last characters: a run's
    verdict (its error) is its last line there. Ray does not forward a worker's output, and
    a run that stops before training removes its own .out, so this is where the sweep
    finds the error."""

    KEEP = 4000

    def __init__(self, stream):
        self.stream, self.tail = stream, ''

    def write(self, text):
        self.tail = (self.tail + text)[-self.KEEP:]
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def run_one(cwd, params, overrides):
    """One run inside a Ray worker: main.run in the sweep's working directory ->
    (exit status, the last line the run wrote to stderr)."""
    os.chdir(cwd)
    import main
    saved = sys.stderr
    sys.stderr = tail = StderrTail(saved)
    try:
        code = main.run(params, overrides)
    finally:
        sys.stderr = saved
    return code, _last_line(tail.tail)


class _NoTokenNotice(logging.Filter):
    """Drops Ray's start-up notice "Token authentication is enabled for this Ray cluster"
    (Ray's own default for a local cluster, nothing for the user to do); Ray's other
    warnings pass."""

    def filter(self, record):
        return not record.getMessage().startswith('Token authentication is enabled')


_NO_TOKEN_NOTICE = _NoTokenNotice()  # one instance: addFilter adds it once


def start_ray(address):
    """Embedded Ray on this machine (address None) or a connection to a cluster."""
    import ray
    logging.getLogger('ray._private.authentication.authentication_token_setup').addFilter(
        _NO_TOKEN_NOTICE)
    # Workers import the framework's modules from this folder (a cluster needs the
    # repository, data and logs at the same paths on every node: a shared file system).
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get('PYTHONPATH')) if p)
    # TensorFlow takes all of a GPU's memory by default: growth lets runs share a GPU
    # (--gpus-per-run 0.5).
    env = {'KERAS_BACKEND': 'tensorflow', 'TF_CPP_MIN_LOG_LEVEL': '2', 'PYTHONPATH': path,
           'TF_FORCE_GPU_ALLOW_GROWTH': 'true'}
    kwargs = {'runtime_env': {'env_vars': env}, 'log_to_driver': False}
    if address is None:
        # A small object store: runs pass only their exit code through it.
        ray.init(address='local', num_cpus=utils.n_workers(0), object_store_memory=200_000_000,
                 include_dashboard=False, **kwargs)
    else:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as err:  # no cluster there: a user mistake, one line
            raise ConfigError(f'--address {address}: {_last_line(str(err))}') from None
    return ray


def check_resources(ray, cpus, gpus):
    """A run that asks for more than the cluster has would wait for ever: refuse it."""
    total = ray.cluster_resources()
    for what, need in (('CPU', cpus), ('GPU', gpus)):
        if need > total.get(what, 0):
            raise ConfigError(f'--{what.lower()}s-per-run {need:g} exceeds the {what}s of the '
                              f'Ray cluster ({total.get(what, 0):g}): no run could start')


POLL_S = 2.0  # seconds between two looks at the running runs' history.csv


def epochs_done(cfg):
    """'epoch E/N' of a run in flight (rows of its newest history*.csv; 'fold F' where it
    trains several), None before its first epoch. N: learn.n_epochs where the mode trains
    in epochs; a fold or self-verification round restarts the count."""
    histories = sorted(run_dir(cfg).glob('history*.csv'), key=lambda p: p.stat().st_mtime)
    if not histories:
        return None
    try:
        epochs = max(0, len(histories[-1].read_text().splitlines()) - 1)
    except OSError:  # rewritten (atomically) while read: the next look reads it
        return None
    fold = histories[-1].stem.partition('_')[2]
    return f'{f"fold {fold} " if fold else ""}epoch {epochs}/{cfg["learn"]["n_epochs"]}'


def in_flight(pending, cfgs):
    """The progress bar's postfix: each started run (one with a history.csv) and its epoch."""
    started = [(run, epochs_done(cfgs[run.name])) for run in pending.values()]
    return '; '.join(f'{run.name.partition("/")[2]} {where}' for run, where in started
                     if where)


def execute(ray, todo, params, cpus, gpus, cfgs=None):
    """Run `todo` on Ray with a progress bar of the runs done whose postfix shows each
    running run's epoch (cfgs: run name -> its config; None: runs only); -> {run name:
    error} of the failed runs."""
    from tqdm import tqdm
    remote = ray.remote(run_one).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    cwd = os.getcwd()
    pending = {remote.remote(cwd, run.params or params, run.overrides): run for run in todo}
    failed = {}
    with tqdm(total=len(todo), unit='run', desc='sweep', file=sys.stdout) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in ready:
                run = pending.pop(ref)
                try:
                    code, last = ray.get(ref)
                    error = None if code == 0 else f'exit code {code}: {last}'
                except Exception as err:  # the run's own exception, raised again by Ray
                    error = _last_line(str(err))
                if error is not None:
                    failed[run.name] = error
                    bar.write(f'run {run.name} failed: {error}')
                bar.update(1)
            if cfgs is not None:
                bar.set_postfix_str(in_flight(pending, cfgs), refresh=True)
    return failed


def _last_line(text):
    """The last non-empty line of a text (a progress bar's redraws end at '\\r'): its error."""
    lines = [line.rpartition('\r')[2] for line in text.splitlines()]
    lines = [line.strip() for line in lines if line.strip()]
    return lines[-1] if lines else 'no message'


# ----------------------------------------------------------------------------- runs.csv

def collect(runs, cfgs, errors, common):
    """runs.csv: one row per run: grid values, seed, the -o overrides common to all runs
    (`common`), status (finished, diverged, collapsed or failed), error (the message of a
    diverged or collapsed run, the error of a failed one: `errors`, or its unreadable
    results.json), a finished run's method_acted (empty where it has no such method) and
    its every numeric result."""
    rows = []
    for run, cfg in zip(runs, cfgs):
        results, unreadable = read_results(cfg)
        status = status_of((results, unreadable)) or 'failed'
        results = results or {}
        # A diverged run's epoch and step say where it stopped: not metrics.
        error = (results.get('message', '') if status in STOPPED
                 else unreadable or errors.get(run.name, ''))
        rows.append({'run': run.name, 'point': run.point,
                     **{k: fmt(v) for k, v in run.values.items()}, 'seed': run.seed,
                     'overrides': ' '.join(f'-o {shlex.quote(o)}' for o in common),
                     'status': status, 'error': error,
                     **({'method_acted': results.get('method_acted'), **sweep_summary.flatten(results)}
                        if status == 'finished' else {})})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- main

def sweep(args):
    if args.cpus_per_run <= 0 or args.gpus_per_run < 0:
        raise ConfigError(f'--cpus-per-run must be above 0 and --gpus-per-run not below 0 '
                          f'(got {args.cpus_per_run:g} and {args.gpus_per_run:g})')
    spec = sweepspec.resolve(args)  # the command line over its --spec file
    grid, seeds, baseline = spec.grid, spec.seeds, spec.baseline
    params = str(Path(spec.params).resolve()) if spec.params else None
    configs = spec.configs and {k: str(Path(p).resolve()) for k, p in spec.configs.items()}
    name, runs = plan(spec, grid, seeds, configs)
    cfgs = check_runs(params, runs)
    utils.configure_logging()
    # A run that ended is never run again: a finished one has its result, a diverged or
    # collapsed one would end so again with the same config and seed, and main.py refuses
    # to touch any of them (an unreadable results.json included).
    found = [read_results(cfg) for cfg in cfgs]
    sweepspec.check_one_kind(cfgs, found)  # dry runs and real ones are never summarised
    ended = [status_of(f) for f in found]
    todo = [(run, cfg) for run, cfg, end in zip(runs, cfgs, ended) if end is None]
    skipped = ', '.join(f'{ended.count(s)} {s}' for s in ('failed', *STOPPED) if s in ended)
    print(f'sweep {name}: {len(runs)} runs ({len(runs) // len(seeds)} grid points x '
          f'{len(seeds)} seeds); skipped {ended.count("finished")} finished runs'
          f'{f" and runs that ended without a result: {skipped}" if skipped else ""}',
          flush=True)
    failed = {}
    if todo:
        extract_features([cfg for _, cfg in todo])
        ray = start_ray(args.address)
        try:
            check_resources(ray, args.cpus_per_run, args.gpus_per_run)
            failed = execute(ray, [run for run, _ in todo], params, args.cpus_per_run,
                             args.gpus_per_run, {run.name: cfg for run, cfg in todo})
        finally:
            ray.shutdown()
    out = Path(cfgs[0]['ctrl']['logs_dir']) / 'sweeps' / name
    frame = collect(runs, cfgs, failed, spec.override)
    summary, _, shown = sweep_summary.write_outputs(out, name, frame, grid, baseline,
                                                    headline_metric(cfgs[0], frame, grid))
    print(shown)
    tensorboard_hparams.write(out / 'tensorboard', runs, frame)  # TensorBoard's HParams view
    return verdict(frame, {run.name for run, _ in todo}, cfgs[0]['ctrl']['logs_dir'], name,
                   f'summary of {int(summary.n.sum())} finished runs: {out}/summary.md')


def headline_metric(cfg, frame, grid):
    """The headline key of the dataset's first reported metric (recognizer.metrics or the
    dataset's own, eval.metric_names) that the console summary shows."""
    import eval as evaluation
    return sweep_summary.headline_metric(evaluation.metric_names(cfg),
                                         sweep_summary.metric_columns(frame, grid))


def verdict(frame, ran, logs, name, summary_line):
    """Print what the runs of this call did and every run of the sweep without a result
    (with its error) -> the exit status: 0 when every run of the sweep has finished, else
    1, the same on a rerun that only skips the runs that ended."""
    counts = frame[frame.run.isin(ran)].status.value_counts()
    print(f'{counts.get("finished", 0)} runs finished, ' + ', '.join(
        f'{counts.get(s, 0)} {s}' for s in ('failed', *STOPPED)) + f' (logs in {logs}/{name}/)')
    missing = frame[frame.status != 'finished']
    for _, row in missing.iterrows():
        print(f'  {row.status}: {row.run}: {row.error}{"" if row.run in ran else " (skipped)"}')
    print(summary_line, flush=True)
    if len(missing):
        print(f'{len(missing)} of {len(frame)} runs of the sweep have no result: it is '
              f'incomplete (exit status 1)', flush=True)
        return 1
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        return sweep(args)
    except ConfigError as err:
        print(f'error: {err}', file=sys.stderr, flush=True)
        return 2


if __name__ == '__main__':
    sys.exit(main())
