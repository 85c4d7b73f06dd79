"""What a sweep runs (sweep.py): the command line's grid, seeds and baseline, a sweep file
(--spec), the experiment files of --configs, and the check that its runs are of one kind.

A sweep file holds a paper's comparison of many runs as one YAML mapping whose keys mirror
the command-line options:

    params: config/agce/system.yaml   # the experiment (relative to this file or the repository)
    name: table2                      # the sweep's name (logs/sweeps/NAME/)
    grid: {loss.type: [CCE, lq_loss, adaptive_lq]}   # section.key: [values]
    seeds: [0, 1, 2]
    baseline: {loss.type: CCE}        # the grid point paired differences are taken to
    overrides: {ctrl.inject_noise.rate: 0.4}         # section.key: value, for every run
    configs: [a.yaml, b.yaml]         # instead of params: a grid axis over experiment files

An option given on the command line as well overrides the file's: -p or --configs replace
the file's experiments, --name, --seeds and --baseline its values, and each --grid or -o
key its own entry (the file's other entries stay).
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

import config
from config import ConfigError

ROOT = Path(__file__).resolve().parent
SPEC_KEYS = {'params': str, 'name': str, 'grid': dict, 'seeds': list, 'baseline': dict,
             'overrides': dict, 'configs': list}
CONFIG_AXIS = 'config'  # the grid key of --configs: the experiment file's stem


def fmt(value):
    """A value as an override / name text (YAML-readable: JSON for non-strings)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))


def as_override(key, value):
    """'section.key=value' that config.parse_override reads back as `value`."""
    text = fmt(value)
    if isinstance(value, str) and yaml.safe_load(text) != value:  # e.g. 'true', '1', ': '
        text = json.dumps(value)
    return f'{key}={text}'


# ----------------------------------------------------------------------------- command line

def parse_values(text, what):
    """'v1,v2,...' -> values parsed as YAML ('[1,2],[3,4]' gives two lists)."""
    try:
        values = yaml.safe_load(f'[{text}]')
    except yaml.YAMLError:
        raise ConfigError(f'{what}: {text!r} is not a comma-separated list of values') from None
    if not values:
        raise ConfigError(f'{what} has no values')
    return values


def parse_grid(specs):
    """['section.key=v1,v2', ...] -> {key: [values]} in the order given."""
    if not specs:
        raise ConfigError('give at least one --grid section.key=v1,v2,...')
    grid = {}
    for spec in specs:
        key, sep, text = spec.partition('=')
        if not sep or '.' not in key:
            raise ConfigError(f'--grid {spec!r} must look like section.key=v1,v2,...')
        if key in grid:
            raise ConfigError(f'--grid names {key} twice')
        grid[key] = parse_values(text, f'--grid {key}')
    return grid


def parse_baseline(text, grid):
    """'k=v,k2=v2' -> {key: value}; keys must be grid keys, values among their values. With
    --configs a bare stem ('cce') names the baseline experiment file."""
    if CONFIG_AXIS in grid and '=' not in text:
        text = f'{CONFIG_AXIS}={text}'
    baseline = {}
    # Split before each 'section.key=' (or 'config=') so that values may hold commas.
    for part in re.split(rf',(?=(?:[A-Za-z_]\w*\.[\w.]+|{CONFIG_AXIS})=)', text):
        key, sep, raw = part.partition('=')
        if not sep or key not in grid:
            raise ConfigError(f'--baseline {part!r} must be key=value with a --grid key '
                              f'({", ".join(grid)})')
        baseline[key] = raw if key == CONFIG_AXIS else yaml.safe_load(raw)
    return check_baseline(baseline, grid, '--baseline')


def check_baseline(baseline, grid, where):
    """A baseline mapping whose keys are grid keys and values among their values."""
    for key, value in baseline.items():
        if key not in grid:
            raise ConfigError(f'{where} names {key}, which is not a grid key '
                              f'({", ".join(grid)})')
        if value not in grid[key]:
            raise ConfigError(f'{where} {key}={fmt(value)} is not one of the grid values '
                              f'{", ".join(map(fmt, grid[key]))}')
    return dict(baseline)


def parse_seeds(text):
    return check_seeds(parse_values(text, '--seeds'), f'--seeds {text!r}')


def check_seeds(seeds, where):
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f'{where} must be integers, e.g. 0,1,2')
    return list(seeds)


# ----------------------------------------------------------------------------- sweep file

def load(path):
    """A sweep file -> {key: value} with its keys checked and its experiment paths found
    (relative to the file's folder, else to the repository)."""
    where = f'sweep file {path}'
    spec = config.parse_yaml(config.read_config_text(path), where)
    if not isinstance(spec, dict):
        raise ConfigError(f'{where} must be a mapping of {", ".join(SPEC_KEYS)}')
    for key, value in spec.items():
        if key not in SPEC_KEYS:
            raise ConfigError(f'{where}: unknown key {key!r}; valid keys: '
                              f'{", ".join(SPEC_KEYS)}')
        if not isinstance(value, SPEC_KEYS[key]):
            kind = {str: 'a string', dict: 'a mapping', list: 'a list'}[SPEC_KEYS[key]]
            raise ConfigError(f'{where}: {key} must be {kind}, got {value!r}')
    for key, values in spec.get('grid', {}).items():
        if '.' not in str(key) or not isinstance(values, list) or not values:
            raise ConfigError(f'{where}: grid entries are section.key: [values], got '
                              f'{key}: {values!r}')
    for key in spec.get('overrides', {}):
        if '.' not in str(key):
            raise ConfigError(f'{where}: overrides are section.key: value, got {key!r}')
    if 'seeds' in spec:
        check_seeds(spec['seeds'], f'{where}: seeds')
    if 'params' in spec:
        spec['params'] = find(spec['params'], path, 'params')
    if 'configs' in spec:
        if not spec['configs'] or not all(isinstance(c, str) for c in spec['configs']):
            raise ConfigError(f'{where}: configs must be a list of experiment files')
        spec['configs'] = [find(c, path, 'configs') for c in spec['configs']]
    return spec


def find(name, spec_path, key):
    """An experiment path of a sweep file: absolute, or relative to the file's folder,
    else to the repository."""
    tried = [Path(name)] if Path(name).is_absolute() else [Path(spec_path).parent / name,
                                                            ROOT / name]
    for candidate in tried:
        if candidate.is_file():
            return str(candidate)
    raise ConfigError(f'sweep file {spec_path}: {key} {name}: no such file (looked for '
                      f'{" and ".join(map(str, tried))})')


# ----------------------------------------------------------------------------- one sweep

@dataclass
class Sweep:
    """What a sweep runs, from the command line and its sweep file."""
    params: str       # the experiment file, or None with configs
    configs: dict     # stem -> experiment file (--configs), or None
    name: str         # --name (None: from the experiment and grid keys)
    grid: dict        # key -> [values]; with configs its first key is 'config'
    seeds: list
    baseline: dict
    override: list    # 'section.key=value' for every run


def resolve(args):
    """The command line (argparse namespace of sweep.parse_args) and its --spec file ->
    Sweep: one source of experiments (-p, --configs, or the file's params or configs)."""
    spec = load(args.spec) if args.spec else {}
    if args.params and args.configs:
        raise ConfigError('give the experiments once: -p CONFIG.yaml or --configs A.yaml '
                          'B.yaml, not both')
    if args.params or args.configs:
        params, files = args.params, args.configs
    elif 'params' in spec and 'configs' in spec:
        raise ConfigError(f'sweep file {args.spec}: give params or configs, not both')
    else:
        params, files = spec.get('params'), spec.get('configs')
    if not params and not files:
        raise ConfigError('give the experiments: -p CONFIG.yaml, --configs A.yaml B.yaml, or '
                          '--spec FILE.yaml with params or configs')
    configs = stems(files) if files else None
    grid = {**spec.get('grid', {}), **(parse_grid(args.grid) if args.grid else {})}
    if configs:
        grid = {CONFIG_AXIS: list(configs), **grid}
    if not grid:
        raise ConfigError('give at least one --grid section.key=v1,v2,... (or --configs)')
    seeds = (parse_seeds(args.seeds) if args.seeds is not None
             else check_seeds(spec.get('seeds', [0]), 'seeds'))
    baseline = (parse_baseline(args.baseline, grid) if args.baseline is not None
                else check_baseline(spec.get('baseline', {}), grid,
                                    f'sweep file {args.spec}: baseline'))
    given = {o.partition('=')[0].strip() for o in args.override}
    override = [as_override(k, v) for k, v in spec.get('overrides', {}).items()
                if k not in given] + list(args.override)
    return Sweep(params, configs, args.name or spec.get('name'), grid, seeds, baseline,
                 override)


def stems(files):
    """--configs files -> {stem: file}; two files of one stem would give one run name."""
    out = {}
    for path in files:
        stem = Path(path).stem
        if stem in out:
            raise ConfigError(f'--configs: {out[stem]} and {path} have the same stem {stem!r}, '
                              f'which names their runs; rename one')
        out[stem] = path
    return out


def check_one_kind(cfgs, found):
    """Refuse a sweep whose runs mix dry runs (ctrl.fast_dev_run) and real ones: the
    finished runs' results.json (`found`: sweep.read_results of each) and the configs of
    the runs still to run. A dry run's numbers are not results."""
    fast = []
    for cfg, (results, error) in zip(cfgs, found):
        if results is None and error is None:
            fast.append(bool(cfg['ctrl']['fast_dev_run']))
        elif results is not None and results.get('status', 'finished') == 'finished':
            fast.append(bool(results.get('fast_dev_run')))
    if len(set(fast)) > 1:
        raise ConfigError(f'the sweep mixes {sum(fast)} fast-dev runs (ctrl.fast_dev_run, '
                          f'numbers that are not results) with {len(fast) - sum(fast)} real '
                          f'ones: it is not summarised; give it another --name, or delete '
                          f'the runs of the other kind')
