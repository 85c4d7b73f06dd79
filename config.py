"""YAML + overrides -> a validated config dict; ConfigError; lookup() of registry names.

Every key is declared once, in keys.py (default, doc, type, choices or range); this module
validates against those declarations, fills in the defaults and checks the keys that
depend on each other. User mistakes raise ConfigError, which main.py prints as one line
before exiting with status 2. lookup() is the one place where a name a user wrote is
looked up in a registry (models, losses, modes, aggregations, ...).
"""
import datetime
import math
import os
import re
import secrets
from pathlib import Path

import yaml

from keys import FEATURE_KEYS, KEYS, Group, defaults


class ConfigError(Exception):
    """A user mistake: bad YAML, unknown key or value, missing or malformed data."""


# Every key's default: a nested dict mirroring the YAML sections (declared in keys.py).
DEFAULTS = defaults()


def _type_name(kind):
    return {bool: 'a boolean', int: 'an integer', float: 'a number', str: 'a string',
            list: 'a list', dict: 'a mapping'}.get(kind, kind.__name__)


# A number as people write it. PyYAML (YAML 1.1) reads 1e-4 and 1e3 (no dot, or no sign
# in the exponent) as strings, so such strings are read as numbers here.
NUMBER = re.compile(r'[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?')


def _number(value):
    """A number written as text -> int or float; anything else unchanged."""
    if not isinstance(value, str) or not NUMBER.fullmatch(value.strip()):
        return value
    number = float(value.replace('_', ''))
    return int(number) if number.is_integer() and abs(number) < 2**63 else number


def _check_number(where, kind, value):
    """int / float keys: accept every way of writing a (finite) number of the right kind."""
    value = _number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f'{where} must be {_type_name(kind)}, got {value!r}')
    if not math.isfinite(value):
        raise ConfigError(f'{where} must be a finite number, got {value!r}')
    if kind is float:
        return float(value)
    if isinstance(value, float) and not value.is_integer():
        raise ConfigError(f'{where} must be an integer, got {value!r}')
    return int(value)


def _check_value(where, key, value):
    """Type-check value against its Key (keys.py), then its choices and range; return it.

    where is the name shown in messages: 'section.name' or, for a sub-key of a Group,
    'section.name.sub'.
    """
    if value is None:
        if key.nullable:
            return None
        raise ConfigError(f'{where} must not be empty (expected {_type_name(key.type)})')
    if key.type is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{where} must be true or false, got {value!r}')
    elif key.also is not None and isinstance(value, key.also) and not (
            isinstance(value, str) and NUMBER.fullmatch(value.strip())):
        return value
    elif key.type in (int, float):
        value = _check_number(where, key.type, value)
    elif key.type is str:
        if not isinstance(value, str):
            raise ConfigError(f'{where} must be a string, got {value!r}')
    elif key.type is list:
        if not isinstance(value, list):
            raise ConfigError(f'{where} must be a list, got {value!r}')
        value = [_number(v) for v in value]
    if key.choices and value not in key.choices:
        raise ConfigError(f'{where} is {value!r}; valid values: '
                          f'{", ".join(map(str, key.choices))}')
    if not isinstance(value, str):
        _check_range(where, key, value)
    return value


def _check_range(where, key, value):
    """value within its Key's bounds: at_least / at_most inclusive, above / below exclusive."""
    low, low_open = (key.above, True) if key.above is not None else (key.at_least, False)
    high, high_open = (key.below, True) if key.below is not None else (key.at_most, False)
    too_low = low is not None and (value < low or (value == low and low_open))
    too_high = high is not None and (value > high or (value == high and high_open))
    if too_low or too_high:
        def bound(limit, is_open):
            return 'any' if limit is None else \
                f'{limit} ({"exclusive" if is_open else "inclusive"})'
        raise ConfigError(f'{where} = {value!r} is out of range: from {bound(low, low_open)} '
                          f'to {bound(high, high_open)}')


def _merge(cfg, section, key, value):
    """Set cfg[section][key]; key 'name.sub' (or a mapping value) sets sub-keys of a
    Group such as ctrl.inject_noise, each validated on its own."""
    if section not in KEYS:
        raise ConfigError(f'unknown config section {section!r}; valid sections: '
                          f'{", ".join(KEYS)}')
    name, _, sub = key.partition('.')
    if name not in KEYS[section]:
        raise ConfigError(f'unknown config key {section}.{name}; valid keys of {section}: '
                          f'{", ".join(KEYS[section])}')
    declared = KEYS[section][name]
    if not isinstance(declared, Group):
        if sub:
            raise ConfigError(f'config key {section}.{name} has no sub-keys (got {key!r})')
        cfg[section][name] = _check_value(f'{section}.{name}', declared, value)
        return
    if not sub and not isinstance(value, dict):
        raise ConfigError(f'{section}.{name} must be a mapping of '
                          f'{", ".join(declared.keys)}, got {value!r}')
    for part, part_value in ({sub: value} if sub else value).items():
        if part not in declared.keys:
            raise ConfigError(f'unknown config key {section}.{name}.{part}; valid keys of '
                              f'{section}.{name}: {", ".join(declared.keys)}')
        cfg[section][name][part] = _check_value(f'{section}.{name}.{part}',
                                                declared.keys[part], part_value)


def parse_override(text):
    """'section.key=value' -> (section, key, value parsed as YAML)."""
    if '=' not in text or '.' not in text.split('=', 1)[0]:
        raise ConfigError(f'override {text!r} must look like section.key=value')
    name, raw = text.split('=', 1)
    section, key = name.strip().split('.', 1)
    value = (parse_yaml(raw, f'override {text!r}', where=f'{section}.{key}', lines=False)
             if raw.strip() else None)
    return section, key, value


# ----------------------------------------------------------------------------- YAML text

def parse_yaml(text, source, where='', lines=True):
    """YAML text -> value, as yaml.safe_load, but a key given twice in one mapping (at any
    depth) is refused instead of silently keeping the last; any error is one ConfigError
    line naming source, the line (if lines) and column, and the offending text. where: the
    key path of the text's top level ('' for a whole file)."""
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses a NUL at once
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _refuse_duplicate_keys(node, where, source, lines, set())
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ConfigError(f'{source} is not valid YAML: {_yaml_problem(err, text, lines)}') \
            from None


def _refuse_duplicate_keys(node, where, source, lines, seen_nodes):
    """Walk the composed node tree; a second occurrence of a mapping's key is an error
    (PyYAML would let it replace the first: a second `learn:` block overriding the first).
    Merge keys (<<) are YAML's own way to override and are not counted. seen_nodes: nodes
    already walked (an alias may point back to its own anchor)."""
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f'{where}[{i}]', source, lines, seen_nodes)
    if not isinstance(node, yaml.MappingNode):
        return
    first = {}
    for key_node, value_node in node.value:
        name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        path = f'{where}.{name}' if where else str(name)
        if name is not None and key_node.tag != 'tag:yaml.org,2002:merge':
            if name in first:
                raise ConfigError(f'{source}: key {path} is given twice, '
                                  f'{_at(first[name], lines, key_node.start_mark)} and '
                                  f'{_at(key_node.start_mark, lines, first[name])} (PyYAML would '
                                  f'silently keep the second): keep one')
            first[name] = key_node.start_mark
        _refuse_duplicate_keys(value_node, path, source, lines, seen_nodes)


def _at(mark, lines, other=None):
    """Where a key is: its line, with the column when the other key is on the same line."""
    if lines and (other is None or other.line != mark.line):
        return f'at line {mark.line + 1}'
    return f'at {"line %d, " % (mark.line + 1) if lines else ""}column {mark.column + 1}'


def _yaml_problem(err, text, lines):
    """What PyYAML found and where, in one line: its own message takes five lines, naming
    a '<unicode string>' and repeating the text under a caret."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        problem = f'{_where(mark.line, mark.column, text, lines)}: {err.problem}'
        if err.context:
            mark = err.context_mark
            problem += (f' ({err.context} at {_where(mark.line, mark.column, text, lines)})'
                        if mark is not None else f' ({err.context})')
        return problem
    if isinstance(err, yaml.reader.ReaderError):  # a character YAML refuses, e.g. NUL
        line = text.count('\n', 0, err.position)
        column = err.position - (text.rfind('\n', 0, err.position) + 1)
        return (f'{_where(line, column, text, lines)}: character #x{err.character:04x} is '
                f'not allowed in YAML (not a text file?)')
    return str(err).splitlines()[0]


def _where(line, column, text, lines):
    """'line L, column C ("<the text of that line>")' (1-based), or for a one-line text
    (an override's value) 'column C of "<text>"'."""
    if not lines:
        return f'column {column + 1} of {text!r}'
    rows = text.splitlines()
    shown = repr(rows[line].strip()) if line < len(rows) else 'the end of the file'
    return f'line {line + 1}, column {column + 1} ({shown})'


def load_config(path=None, overrides=()):
    """YAML file + 'section.key=value' overrides -> validated config dict with defaults."""
    cfg = defaults()  # a fresh copy: list defaults must not be shared between configs
    if path is not None:
        data = parse_yaml(read_config_text(path), f'config file {path}') or {}
        if not isinstance(data, dict):
            raise ConfigError(f'config file {path} must hold sections (a mapping)')
        for section, values in data.items():
            if section not in KEYS:
                raise ConfigError(f'unknown config section {section!r} in {path}; valid '
                                  f'sections: {", ".join(KEYS)}')
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


def read_config_text(path):
    """The text of a config file, or one line saying why it cannot be read."""
    try:
        return Path(path).read_text(encoding='utf-8')
    except FileNotFoundError:
        raise ConfigError(f'config file not found: {path}') from None
    except IsADirectoryError:
        raise ConfigError(f'config file {path} is a directory; give the experiment\'s '
                          f'YAML file') from None
    except UnicodeDecodeError as err:
        raise ConfigError(f'config file {path} is not a text file (byte '
                          f'{err.object[err.start]:#04x} at offset {err.start} is not UTF-8); '
                          f'give the experiment\'s YAML file') from None
    except OSError as err:
        raise ConfigError(f'config file {path} cannot be read: {err.strerror}') from None


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
    check_feature_kind(cfg)
    if ext['features'] == 'logmel':
        _check_stft(ext)
    if ext['crop'] == 'random_crop' and ext['crop_frames'] > ext['clip_frames']:
        raise ConfigError(f'extract.crop_frames = {ext["crop_frames"]} must not exceed '
                          f'extract.clip_frames = {ext["clip_frames"]} (crops are cut from '
                          f'the fixed-length clip)')
    _check_zeropad(ext)
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


def _check_stft(ext):
    """The mel filters and the STFT window fit (log-mel runs: a waveform run leaves these
    keys at their defaults, which need not fit its fs)."""
    if ext['fmax'] > ext['fs'] / 2:
        raise ConfigError(f'extract.fmax = {ext["fmax"]} exceeds the Nyquist frequency '
                          f'fs/2 = {ext["fs"] / 2}')
    if ext['fmin'] >= ext['fmax']:
        raise ConfigError('extract.fmin must be below extract.fmax')
    if ext['win_length_samples'] > ext['n_fft']:
        raise ConfigError('extract.win_length_samples must not exceed extract.n_fft')


def check_feature_kind(cfg):
    """A key of the other input kind (keys.FEATURE_KEYS) set to anything but its default is
    refused: n_mels or SpecAugment on a waveform run, crop_samples on a log-mel run would do
    nothing, silently."""
    kind = cfg['extract']['features']
    for other, names in FEATURE_KEYS.items():
        if other == kind:
            continue
        for name in names:
            section, key = name.split('.')
            if cfg[section][key] != DEFAULTS[section][key]:
                what = 'log-mel' if other == 'logmel' else 'waveform'
                raise ConfigError(f'{name} is a {what} option, but extract.features is {kind} '
                                  f'(it is set to {cfg[section][key]!r}): remove it, or set '
                                  f'extract.features {other}')


def _check_zeropad(ext):
    """extract.load_mode zeropad must pad the audio to at least the frames a clip is read
    over (patch_len, or random_crop's clip_frames): shorter, the clip would still be
    repeated up to them when read (data.Patches wraps around a clip's end)."""
    if ext['load_mode'] != 'zeropad' or ext['features'] == 'waveform':
        return  # a waveform is read with zeros beyond its ends, never repeated
    key = 'clip_frames' if ext['crop'] == 'random_crop' else 'patch_len'
    hop, fs = ext['hop_length_samples'], ext['fs']
    frames = 1 + int(round(ext['audio_len_s'] * fs)) // hop  # centred STFT frames
    if frames < ext[key]:
        raise ConfigError(f'extract.load_mode zeropad pads clips to extract.audio_len_s = '
                          f'{ext["audio_len_s"]} s ({frames} frames), fewer than extract.{key} '
                          f'= {ext[key]}: set audio_len_s to at least '
                          f'{math.ceil((ext[key] - 1) * hop / fs)} s, or short clips are repeated')


def _check_specaugment(cfg):
    """A mask wider than the input it masks is a mistake, not a wider mask; a time warp
    needs room for its point and distance."""
    ext, masks = cfg['extract'], cfg['learn']['specaugment']
    frames = ext['crop_frames'] if ext['crop'] == 'random_crop' else ext['patch_len']
    size_key = 'extract.crop_frames' if ext['crop'] == 'random_crop' else 'extract.patch_len'
    for axis, size, key in (('freq', ext['n_mels'], 'extract.n_mels'),
                            ('time', frames, size_key)):
        width = masks[f'{axis}_width']
        if width > size:
            raise ConfigError(f'learn.specaugment.{axis}_width = {width} exceeds {key} = '
                              f'{size}')
    warp = masks['time_warp']
    if warp and 2 * warp + 3 > frames:
        raise ConfigError(f'learn.specaugment.time_warp = {warp} needs {size_key} of at least '
                          f'2 x {warp} + 3 = {2 * warp + 3} frames (the point lies in (W, T - 1 '
                          f'- W)), got {frames}')


def _check_paper_augment(cfg):
    """The ranges of learn.freq_mask, gain and extra_crop run from low to high; a mask that
    is drawn (p > 0) fits the mel bands; learn.augment_domain power standardises per clip."""
    learn = cfg['learn']
    for key, low, high in (('freq_mask', 'min_width', 'max_width'), ('gain', 'low', 'high'),
                           ('extra_crop', 'min_frac', 'max_frac')):
        if learn[key][low] > learn[key][high]:
            raise ConfigError(f'learn.{key}.{low} = {learn[key][low]} exceeds '
                              f'learn.{key}.{high} = {learn[key][high]}')
    if learn['augment_domain'] == 'power' and cfg['extract']['normalize'] != 'per_clip':
        raise ConfigError('learn.augment_domain power standardises each input after its '
                          'augmentations, by its own mean and std: set extract.normalize '
                          'per_clip')
    mask = learn['freq_mask']
    if mask['p'] > 0 and mask['max_width'] > cfg['extract']['n_mels']:
        raise ConfigError(f'learn.freq_mask.max_width = {learn["freq_mask"]["max_width"]} '
                          f'exceeds extract.n_mels = {cfg["extract"]["n_mels"]}')


def config_to_yaml(cfg):
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)


def changed_from_defaults(cfg, default=None):
    """The part of cfg whose values differ from the defaults, nested as cfg (a nested key,
    e.g. ctrl.inject_noise.rate, alone under its parent): what the console shows of a
    run's config, the whole resolved config going to its log and config.yaml."""
    default = defaults() if default is None else default
    changed = {}
    for key, value in cfg.items():
        base = default.get(key)
        if isinstance(value, dict) and isinstance(base, dict):
            inner = changed_from_defaults(value, base)
            if inner:
                changed[key] = inner
        elif key not in default or value != base:
            changed[key] = value
    return changed


def lookup(registry, name, key):
    """registry[name], or the one error naming the key and the valid names."""
    if name not in registry:
        raise ConfigError(f'{key} {name!r} is unknown; valid: {", ".join(map(str, registry))}')
    return registry[name]
