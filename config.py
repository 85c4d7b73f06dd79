"""Every config key once: defaults, types, choices and ranges; YAML + overrides -> config.

Every default lives in DEFAULTS below (the single place); config/params.yaml documents
each key with a one-line comment. User mistakes raise ConfigError, which main.py prints
as one line before exiting with status 2. lookup() is the one place where a name a user
wrote is looked up in a registry (models, losses, modes, aggregations, ...).
"""
import copy
import datetime
import math
import os
import re
import secrets
from pathlib import Path

import yaml


class ConfigError(Exception):
    """A user mistake: bad YAML, unknown key or value, missing or malformed data."""


# FSDnoisy18k classes whose labels are noisier (Fonseca et al., WASPAA 2019, Sec. 4.1):
# they get eps + delta in noise-dependent label smoothing (LSRmode GROUPS2).
FSDNOISY18K_NOISIER = ['Bass_guitar', 'Clapping', 'Crash_cymbal', 'Engine', 'Fire', 'Rain',
                       'Slam', 'Walk_or_footsteps', 'Wind']

DEFAULTS = {
    'ctrl': {
        'feat_ext': True, 'learn': True, 'dataset': 'fsdnoisy18k', 'train_data': 'noisy',
        'dataset_path': 'data/FSDnoisy18k', 'seed': 42, 'run_name': None,
        'features_dir': 'features', 'logs_dir': 'logs', 'workers': 0, 'verbose': 2,
        'inject_noise': {'rate': 0.0, 'kind': 'symmetric', 'seed': 0, 'subset': 'unverified'},
        'tensorboard': True,
        'overwrite': False,
    },
    'extract': {
        'audio_len_s': 2, 'eps': 2.220446049250313e-16, 'fmax': 22050, 'fmin': 0, 'fs': 44100,
        'hop_length_samples': 882, 'load_mode': 'varup', 'log': True, 'mono': True,
        'n_fft': 2048, 'n_mels': 96, 'normalize_audio': True, 'patch_hop': 50, 'patch_len': 100,
        'spectrogram_type': 'power', 'win_length_samples': 1764, 'store_dtype': 'float32',
        'trim_silence': False, 'trim_top_db': 60.0, 'crop': 'patches', 'crop_frames': 512,
        'clip_frames': 2000, 'normalize': 'dataset',
    },
    'learn': {
        'batch_size': 64, 'lr': 0.001, 'n_classes': None, 'n_epochs': 100, 'optim': 'Adam',
        'patience': 15, 'val_split': 0.15, 'LSR': False, 'eps_LSR_noisy': 0.15,
        'LSRmode': 'GROUPS2', 'delta_eps_LSR': 0.05, 'noisier_classes': FSDNOISY18K_NOISIER,
        'mixup': True, 'mixup_alpha': 0.1, 'mixup_mode': 'intra', 'mixup_warmup_epochs': 10,
        'mode': 0, 'model': 'baseline', 'stage1_epoch': 20, 'prune_stage1': 20,
        'prune_loss_type': 'lq_loss', 'prune_loss_q_value': 0.5,
        'prune_aggregate_loss_clip': 'amean', 'prune_loss_threshold_method': 'percentile',
        'prune_discard_percentile': 97.75, 'densenet_modules': 3,
        'staged_steps': [10000, 10000, 5000], 'mask_method': 'threshold', 'mask_top_k': 10,
        'mask_alpha': 0.9, 'jit_compile': 'auto', 'mixed_precision': False,
        'predict_batch_size': 1024, 'frames_on_device': 'auto', 'model_selection': 'last',
        'steps_per_epoch': None,
        'specaugment': {'freq_masks': 0, 'freq_width': 0, 'time_masks': 0, 'time_width': 0},
        'time_pooling': 'max', 'head': 'softmax',
        'lr_schedule': 'plateau', 'cycles': 8, 'cycle_epochs': 64, 'lr_min': 1e-6,
        'folds': 1, 'sv_excerpts': 25, 'sv_threshold': 0.95, 'sv_per_class': 40,
        'sv_epochs': 30, 'sv_lr': 0.0002, 'sv_rounds': 10,
        'multitask': False, 'pseudo_labels': None,
        'freq_mask': {'p': 0.0, 'min_width': 8, 'max_width': 32},
        'gain': {'p': 0.0, 'low': 0.8, 'high': 1.2},
        'extra_crop': {'p': 0.0, 'min_frac': 0.25, 'max_frac': 1.0},
    },
    'loss': {
        'q_loss': 0.5, 'q_loss2': 0.5, 'm_loss2': 0.93, 'perc_loss2': 93.0, 'type': 'lq_loss',
        'snn_temperature': 1000.0, 'q_min': 0.01, 'snn_space': 'input', 'lq_target': 'max',
        'multitask_weights': [1.0, 1.0], 'sharpen_T': 2.0, 'pseudo_weight': 20.0,
    },
    'recognizer': {'aggregate': 'gmean', 'metrics': None, 'ensemble': 'amean',
                   'snapshot_cycles': 'all'},
    'suffix': {'in': '_mel', 'out': '_label'},
}

# Values restricted to a set. Registries (models, losses, modes, aggregations) are checked
# by their own modules against their registry dicts, so that the list never goes stale.
CHOICES = {
    ('ctrl', 'train_data'): ['noisy', 'clean', 'noisy_small', 'noisy_small_clean', 'all',
                             'curated'],
    ('extract', 'load_mode'): ['varup', 'full'],
    ('extract', 'spectrogram_type'): ['power', 'magnitude'],
    ('extract', 'store_dtype'): ['float32', 'float16'],
    ('learn', 'optim'): ['Adam'],
    ('learn', 'LSRmode'): ['STANDARD', 'GROUPS2'],
    ('learn', 'mixup_mode'): ['intra', 'inter'],
    ('learn', 'prune_loss_type'): ['lq_loss', 'CCE'],
    ('learn', 'prune_aggregate_loss_clip'): ['amean', 'gmean', 'max'],
    ('learn', 'prune_loss_threshold_method'): ['percentile'],
    ('learn', 'mask_method'): ['threshold', 'topk'],
    ('learn', 'frames_on_device'): ['auto', 'always', 'never'],
    ('learn', 'jit_compile'): ['auto', True, False],
    ('learn', 'model_selection'): ['last', 'best_val'],
    ('loss', 'snn_space'): ['input', 'embedding'],
    ('loss', 'lq_target'): ['max', 'dot'],
    ('ctrl', 'inject_noise.kind'): ['symmetric', 'pairflip'],
    ('ctrl', 'inject_noise.subset'): ['unverified', 'verified', 'all'],
    ('extract', 'crop'): ['patches', 'random_crop'],
    ('learn', 'time_pooling'): ['max', 'mean'],
    ('learn', 'lr_schedule'): ['plateau', 'constant', 'cyclic_cosine'],
    ('extract', 'normalize'): ['dataset', 'per_clip'],
}

# (low, high, low inclusive, high inclusive) for numbers that must lie in a range.
RANGES = {
    ('ctrl', 'workers'): (0, None, True, True),
    ('ctrl', 'verbose'): (0, 2, True, True),
    ('extract', 'audio_len_s'): (0, None, True, True),
    ('extract', 'eps'): (0, None, False, True),
    ('extract', 'fmin'): (0, None, True, True),
    ('extract', 'fmax'): (0, None, False, True),
    ('extract', 'fs'): (1, None, True, True),
    ('extract', 'hop_length_samples'): (1, None, True, True),
    ('extract', 'n_fft'): (1, None, True, True),
    ('extract', 'n_mels'): (1, None, True, True),
    ('extract', 'patch_hop'): (1, None, True, True),
    ('extract', 'patch_len'): (1, None, True, True),
    ('extract', 'win_length_samples'): (1, None, True, True),
    ('learn', 'batch_size'): (1, None, True, True),
    ('learn', 'lr'): (0, None, False, True),
    ('learn', 'n_classes'): (2, None, True, True),
    ('learn', 'n_epochs'): (1, None, True, True),
    ('learn', 'patience'): (1, None, True, True),
    ('learn', 'val_split'): (0, 1, True, False),
    ('learn', 'eps_LSR_noisy'): (0, 1, True, True),
    ('learn', 'delta_eps_LSR'): (0, 1, True, True),
    ('learn', 'mixup_alpha'): (0, None, False, True),
    ('learn', 'mixup_warmup_epochs'): (0, None, True, True),
    ('learn', 'stage1_epoch'): (0, None, True, True),
    ('learn', 'prune_stage1'): (0, None, True, True),
    ('learn', 'prune_loss_q_value'): (0, 1, False, True),
    ('learn', 'prune_discard_percentile'): (0, 100, True, True),
    ('learn', 'densenet_modules'): (1, 8, True, True),
    ('learn', 'mask_top_k'): (1, None, True, True),
    ('learn', 'mask_alpha'): (0, 1, True, True),
    ('learn', 'predict_batch_size'): (1, None, True, True),
    ('learn', 'steps_per_epoch'): (1, None, True, True),
    ('loss', 'q_loss'): (0, 1, False, True),
    ('loss', 'q_loss2'): (0, 1, False, True),
    ('loss', 'm_loss2'): (0, 1, False, True),
    ('loss', 'perc_loss2'): (0, 100, True, True),
    ('loss', 'snn_temperature'): (0, None, False, True),
    ('loss', 'q_min'): (0, 1, False, True),
    ('ctrl', 'inject_noise.rate'): (0, 1, True, True),
    ('ctrl', 'inject_noise.seed'): (0, None, True, True),
    ('extract', 'trim_top_db'): (0, None, False, True),
    ('extract', 'crop_frames'): (1, None, True, True),
    ('extract', 'clip_frames'): (1, None, True, True),
    ('learn', 'specaugment.freq_masks'): (0, None, True, True),
    ('learn', 'specaugment.freq_width'): (0, None, True, True),
    ('learn', 'specaugment.time_masks'): (0, None, True, True),
    ('learn', 'specaugment.time_width'): (0, None, True, True),
    ('ctrl', 'seed'): (0, 2**32 - 1, True, True),  # numpy's SeedSequence takes no negatives
    ('learn', 'cycles'): (1, None, True, True),
    ('learn', 'cycle_epochs'): (1, None, True, True),
    ('learn', 'lr_min'): (0, None, True, True),
    ('learn', 'folds'): (1, None, True, True),
    ('learn', 'sv_excerpts'): (1, None, True, True),
    ('learn', 'sv_threshold'): (0, 1, True, False),
    ('learn', 'sv_per_class'): (1, None, True, True),
    ('learn', 'sv_epochs'): (1, None, True, True),
    ('learn', 'sv_lr'): (0, None, False, True),
    ('learn', 'sv_rounds'): (1, None, True, True),
    ('loss', 'sharpen_T'): (0, None, False, True),
    ('loss', 'pseudo_weight'): (0, None, True, True),
    ('learn', 'freq_mask.p'): (0, 1, True, True),
    ('learn', 'freq_mask.min_width'): (0, None, True, True),
    ('learn', 'freq_mask.max_width'): (0, None, True, True),
    ('learn', 'gain.p'): (0, 1, True, True),
    ('learn', 'gain.low'): (0, None, False, True),
    ('learn', 'gain.high'): (0, None, False, True),
    ('learn', 'extra_crop.p'): (0, 1, True, True),
    ('learn', 'extra_crop.min_frac'): (0, 1, False, True),
    ('learn', 'extra_crop.max_frac'): (0, 1, False, True),
}

# Keys that also take a value of another type than their default's: learn.mode a name
# such as 'staged' (learn.py checks it), learn.jit_compile true/false besides 'auto',
# recognizer.snapshot_cycles a list of cycles besides 'all' (learn.py checks them).
ALSO = {('learn', 'mode'): str, ('learn', 'jit_compile'): bool,
        ('recognizer', 'snapshot_cycles'): list}

# Keys that may be null (None), with the type of their other values (learn.sv_threshold:
# null = no threshold, its default 0.95).
NULLABLE = {('ctrl', 'run_name'): str, ('learn', 'steps_per_epoch'): int,
            ('learn', 'n_classes'): int, ('recognizer', 'metrics'): list,
            ('learn', 'sv_threshold'): float,
            ('learn', 'pseudo_labels'): str}


def _type_name(value):
    return {bool: 'a boolean', int: 'an integer', float: 'a number', str: 'a string',
            list: 'a list', dict: 'a mapping'}.get(type(value), type(value).__name__)


# A number as people write it. PyYAML (YAML 1.1) reads 1e-4 and 1e3 (no dot, or no sign
# in the exponent) as strings, so such strings are read as numbers here.
NUMBER = re.compile(r'[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?')


def _number(value):
    """A number written as text -> int or float; anything else unchanged."""
    if not isinstance(value, str) or not NUMBER.fullmatch(value.strip()):
        return value
    number = float(value.replace('_', ''))
    return int(number) if number.is_integer() and abs(number) < 2**63 else number


def _check_number(where, default, value):
    """int / float keys: accept every way of writing a (finite) number of the right kind."""
    value = _number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = 'a number' if isinstance(default, float) else 'an integer'
        raise ConfigError(f'{where} must be {kind}, got {value!r}')
    if not math.isfinite(value):
        raise ConfigError(f'{where} must be a finite number, got {value!r}')
    if isinstance(default, float):
        return float(value)
    if isinstance(value, float) and not value.is_integer():
        raise ConfigError(f'{where} must be an integer, got {value!r}')
    return int(value)


def _check_value(section, key, value):
    """Type-check against the default's type, then choices and ranges; return the value.

    key is 'name' or, for a sub-key of a mapping-valued key, 'name.sub'.
    """
    name, _, sub = key.partition('.')
    default = DEFAULTS[section][name][sub] if sub else DEFAULTS[section][key]
    where = f'{section}.{key}'
    if value is None:
        if (section, key) in NULLABLE:
            return None
        raise ConfigError(f'{where} must not be empty (expected {_type_name(default)})')
    if default is None:  # nullable: checked against NULLABLE's type (and any range below)
        default = NULLABLE[section, key]()
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f'{where} must be true or false, got {value!r}')
    elif (section, key) in ALSO and isinstance(value, ALSO[section, key]) and not (
            isinstance(value, str) and NUMBER.fullmatch(value.strip())):
        return value
    elif isinstance(default, (int, float)):
        value = _check_number(where, default, value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f'{where} must be a string, got {value!r}')
    elif isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f'{where} must be a list, got {value!r}')
        value = [_number(v) for v in value]
    choices = CHOICES.get((section, key))
    if choices is not None and value not in choices:
        raise ConfigError(f'{where} is {value!r}; valid values: {", ".join(map(str, choices))}')
    bounds = RANGES.get((section, key))
    if bounds is not None and not isinstance(value, str):
        low, high, low_in, high_in = bounds
        too_low = low is not None and (value < low or (value == low and not low_in))
        too_high = high is not None and (value > high or (value == high and not high_in))
        if too_low or too_high:
            lo = 'any' if low is None else f'{low} ({"inclusive" if low_in else "exclusive"})'
            hi = 'any' if high is None else f'{high} ({"inclusive" if high_in else "exclusive"})'
            raise ConfigError(f'{where} = {value!r} is out of range: from {lo} to {hi}')
    return value


def _merge(cfg, section, key, value):
    """Set cfg[section][key]; key 'name.sub' (or a mapping value) sets sub-keys of a
    mapping-valued key such as ctrl.inject_noise, each validated on its own."""
    if section not in DEFAULTS:
        raise ConfigError(f'unknown config section {section!r}; valid sections: '
                          f'{", ".join(DEFAULTS)}')
    name, _, sub = key.partition('.')
    if name not in DEFAULTS[section]:
        raise ConfigError(f'unknown config key {section}.{name}; valid keys of {section}: '
                          f'{", ".join(DEFAULTS[section])}')
    default = DEFAULTS[section][name]
    if not isinstance(default, dict):
        if sub:
            raise ConfigError(f'config key {section}.{name} has no sub-keys (got {key!r})')
        cfg[section][name] = _check_value(section, name, value)
        return
    if not sub and not isinstance(value, dict):
        raise ConfigError(f'{section}.{name} must be a mapping of {", ".join(default)}, '
                          f'got {value!r}')
    for part, part_value in ({sub: value} if sub else value).items():
        if part not in default:
            raise ConfigError(f'unknown config key {section}.{name}.{part}; valid keys of '
                              f'{section}.{name}: {", ".join(default)}')
        cfg[section][name][part] = _check_value(section, f'{name}.{part}', part_value)


def parse_override(text):
    """'section.key=value' -> (section, key, value parsed as YAML)."""
    if '=' not in text or '.' not in text.split('=', 1)[0]:
        raise ConfigError(f'override {text!r} must look like section.key=value')
    name, raw = text.split('=', 1)
    section, key = name.strip().split('.', 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f'override {text!r}: value is not valid YAML ({err})') from None
    return section, key, value


def load_config(path=None, overrides=()):
    """YAML file + 'section.key=value' overrides -> validated config dict with defaults."""
    cfg = copy.deepcopy(DEFAULTS)  # list defaults must not be shared between configs
    if path is not None:
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f'config file not found: {path}') from None
        except yaml.YAMLError as err:
            raise ConfigError(f'config file {path} is not valid YAML: '
                              f'{str(err).splitlines()[0]}') from None
        data = data or {}
        if not isinstance(data, dict):
            raise ConfigError(f'config file {path} must hold sections (a mapping)')
        for section, values in data.items():
            if section not in DEFAULTS:
                raise ConfigError(f'unknown config section {section!r} in {path}; valid '
                                  f'sections: {", ".join(DEFAULTS)}')
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f'section {section} in {path} must be a mapping of keys')
            for key, value in values.items():
                _merge(cfg, section, key, value)
    for text in overrides:
        _merge(cfg, *parse_override(text))
    _check_consistency(cfg)
    if cfg['ctrl']['run_name'] is None:
        cfg['ctrl']['run_name'] = default_run_name(path)
    return cfg


_ISSUED_RUN_NAMES = set()  # default names made by this process, never given twice


def default_run_name(path):
    """<config stem>_<YYYYmmdd-HHMMSS>_<pid>-<8 random hex digits>: the pid tells apart
    two runs started in the same second on one machine, the random part (32 bits, drawn
    again in the rare case that this process gave the name already) two of one process
    or two started on machines that share the logs folder."""
    stem = Path(path).stem if path else 'run'
    while True:
        name = (f'{stem}_{datetime.datetime.now():%Y%m%d-%H%M%S}_{os.getpid()}-'
                f'{secrets.token_hex(4)}')
        if name not in _ISSUED_RUN_NAMES:
            _ISSUED_RUN_NAMES.add(name)
            return name


def _check_consistency(cfg):
    ext = cfg['extract']
    if ext['fmax'] > ext['fs'] / 2:
        raise ConfigError(f'extract.fmax = {ext["fmax"]} exceeds the Nyquist frequency '
                          f'fs/2 = {ext["fs"] / 2}')
    if ext['fmin'] >= ext['fmax']:
        raise ConfigError('extract.fmin must be below extract.fmax')
    if ext['win_length_samples'] > ext['n_fft']:
        raise ConfigError('extract.win_length_samples must not exceed extract.n_fft')
    if ext['crop'] == 'random_crop' and ext['crop_frames'] > ext['clip_frames']:
        raise ConfigError(f'extract.crop_frames = {ext["crop_frames"]} must not exceed '
                          f'extract.clip_frames = {ext["clip_frames"]} (crops are cut from '
                          f'the fixed-length clip)')
    _check_specaugment(cfg)
    _check_paper_augment(cfg)
    staged = cfg['learn']['staged_steps']
    if len(staged) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                   for n in staged):
        raise ConfigError(f'learn.staged_steps must be three non-negative integers '
                          f'[n1, n2, n3] (optimizer steps), got {staged!r}')
    weights = cfg['loss']['multitask_weights']
    if len(weights) != 2 or not all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                    and w >= 0 for w in weights):
        raise ConfigError(f'loss.multitask_weights must be two non-negative numbers '
                          f'[verified, unverified], got {weights!r}')
    if not all(isinstance(c, str) for c in cfg['learn']['noisier_classes']):
        raise ConfigError('learn.noisier_classes must be a list of class names')
    name = cfg['ctrl']['run_name']
    # 'sweep/point_seed0' is allowed (sweep.py names its runs so): relative, no '..' and no
    # hidden or empty components, so that a run stays inside ctrl.logs_dir.
    if name is not None and any(not part or part.startswith('.') for part in name.split('/')):
        raise ConfigError(f'ctrl.run_name {name!r} must be a file name or a relative path '
                          f'of file names (NAME/sub), without leading dots')


def _check_specaugment(cfg):
    """A mask wider than the input it masks is a mistake, not a wider mask."""
    ext, masks = cfg['extract'], cfg['learn']['specaugment']
    frames = ext['crop_frames'] if ext['crop'] == 'random_crop' else ext['patch_len']
    size_key = 'extract.crop_frames' if ext['crop'] == 'random_crop' else 'extract.patch_len'
    for axis, size, key in (('freq', ext['n_mels'], 'extract.n_mels'),
                            ('time', frames, size_key)):
        width = masks[f'{axis}_width']
        if width > size:
            raise ConfigError(f'learn.specaugment.{axis}_width = {width} exceeds {key} = '
                              f'{size}')


def _check_paper_augment(cfg):
    """The ranges of learn.freq_mask, gain and extra_crop run from low to high; a mask that
    is drawn (p > 0) fits the mel bands."""
    learn = cfg['learn']
    for key, low, high in (('freq_mask', 'min_width', 'max_width'), ('gain', 'low', 'high'),
                           ('extra_crop', 'min_frac', 'max_frac')):
        if learn[key][low] > learn[key][high]:
            raise ConfigError(f'learn.{key}.{low} = {learn[key][low]} exceeds '
                              f'learn.{key}.{high} = {learn[key][high]}')
    mask = learn['freq_mask']
    if mask['p'] > 0 and mask['max_width'] > cfg['extract']['n_mels']:
        raise ConfigError(f'learn.freq_mask.max_width = {learn["freq_mask"]["max_width"]} '
                          f'exceeds extract.n_mels = {cfg["extract"]["n_mels"]}')


def config_to_yaml(cfg):
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)


def lookup(registry, name, key):
    """registry[name], or the one error naming the key and the valid names."""
    if name not in registry:
        raise ConfigError(f'{key} {name!r} is unknown; valid: {", ".join(map(str, registry))}')
    return registry[name]
