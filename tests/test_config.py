"""config.load_config / parse_override / ConfigError, config/params.yaml, main.py errors."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import config
import keys
import keytable
import utils
from config import ConfigError

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / 'config' / 'params.yaml'

# The reference experiment of Fonseca et al. (WASPAA 2019) as written in its params.yaml.
REFERENCE = {
    ('extract', 'fs'): 44100, ('extract', 'n_fft'): 2048,
    ('extract', 'win_length_samples'): 1764, ('extract', 'hop_length_samples'): 882,
    ('extract', 'n_mels'): 96, ('extract', 'fmin'): 0, ('extract', 'fmax'): 22050,
    ('extract', 'spectrogram_type'): 'power', ('extract', 'log'): True,
    ('extract', 'eps'): 2.220446049250313e-16, ('extract', 'audio_len_s'): 2,
    ('extract', 'load_mode'): 'varup', ('extract', 'normalize_audio'): True,
    ('extract', 'patch_len'): 100, ('extract', 'patch_hop'): 50,
    ('learn', 'batch_size'): 64, ('learn', 'lr'): 0.001, ('learn', 'n_classes'): 20,
    ('learn', 'n_epochs'): 100, ('learn', 'patience'): 15, ('learn', 'val_split'): 0.15,
    ('learn', 'mixup'): True, ('learn', 'mixup_alpha'): 0.1, ('learn', 'mixup_mode'): 'intra',
    ('learn', 'mixup_warmup_epochs'): 10, ('learn', 'mode'): 0, ('learn', 'model'): 'baseline',
    ('loss', 'type'): 'lq_loss', ('loss', 'q_loss'): 0.5,
    ('recognizer', 'aggregate'): 'gmean',
}

# Every key of the original waspaa19 params.yaml; their names and meanings are kept.
ORIGINAL_KEYS = {
    'ctrl': ['feat_ext', 'learn', 'train_data', 'dataset_path'],
    'extract': ['audio_len_s', 'eps', 'fmax', 'fmin', 'fs', 'hop_length_samples', 'load_mode',
                'log', 'mono', 'n_fft', 'n_mels', 'normalize_audio', 'patch_hop', 'patch_len',
                'spectrogram_type', 'win_length_samples'],
    'learn': ['batch_size', 'lr', 'n_classes', 'n_epochs', 'optim', 'patience', 'val_split',
              'LSR', 'eps_LSR_noisy', 'LSRmode', 'delta_eps_LSR', 'mixup', 'mixup_alpha',
              'mixup_mode', 'mixup_warmup_epochs', 'mode', 'model', 'stage1_epoch',
              'prune_stage1', 'prune_loss_type', 'prune_loss_q_value',
              'prune_aggregate_loss_clip', 'prune_loss_threshold_method',
              'prune_discard_percentile', 'densenet_modules'],
    'loss': ['q_loss', 'q_loss2', 'm_loss2', 'perc_loss2', 'type'],
    'recognizer': ['aggregate'],
    'suffix': ['in', 'out'],
}


@pytest.fixture(scope='module')
def raw_params():
    with open(PARAMS) as f:
        return yaml.safe_load(f)


def _write(tmp_path, text, name='exp.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- params.yaml

def test_params_yaml_has_reference_values(raw_params):
    cfg = config.load_config(PARAMS)
    for (section, key), value in REFERENCE.items():
        assert raw_params[section][key] == value, (section, key)
        assert cfg[section][key] == value, (section, key)
        assert type(cfg[section][key]) is type(value), (section, key)


def test_params_yaml_keeps_every_original_key(raw_params):
    for section, keys in ORIGINAL_KEYS.items():
        assert isinstance(raw_params.get(section), dict), section
        missing = [k for k in keys if k not in raw_params[section]]
        assert not missing, (section, missing)


# params.yaml is the reference experiment: where it sets a key to another value than the
# default, it is the paper's (FSDnoisy18k has 20 classes; the default takes them from the data).
PARAMS_NOT_DEFAULT = {('learn', 'n_classes'): 20}


def _declared():
    """{(section, name): Key or Group} of keys.py, sub-keys of a Group as 'name.sub'."""
    declared = {}
    for section, names in keys.KEYS.items():
        for name, key in names.items():
            declared[section, name] = key
            if isinstance(key, keys.Group):
                declared.update({(section, f'{name}.{sub}'): k for sub, k in key.keys.items()})
    return declared


def _params_yaml_lines():
    """{(section, name or 'name.sub'): (value text, comment)} of every key line of
    params.yaml (a Group's line has no value: its sub-keys follow, indented)."""
    shown, section, group = {}, None, None
    for line in PARAMS.read_text().splitlines():
        if not line.strip() or line.startswith('#'):
            continue
        if re.fullmatch(r'\w+:', line):
            section = line[:-1]
            continue
        match = re.fullmatch(r'( {2}| {4})(\w+):\s*(.*?)\s*#\s(.*)', line)
        assert match, f'a key line without its comment: {line!r}'
        indent, name, value, comment = match.groups()
        if len(indent) == 2:
            group = name
        shown[section, name if len(indent) == 2 else f'{group}.{name}'] = (value, comment)
    return shown


def test_params_yaml_shows_every_declared_key_with_its_default_and_doc():
    declared, shown = _declared(), _params_yaml_lines()
    assert sorted(shown) == sorted(declared)  # neither has a key the other lacks
    for (section, name), key in declared.items():
        value, comment = shown[section, name]
        assert comment == key.doc, (section, name)
        if isinstance(key, keys.Group):
            assert value == '', (section, name)
            continue
        expected = PARAMS_NOT_DEFAULT.get((section, name), key.default)
        parsed = yaml.safe_load(value)
        assert parsed == expected and type(parsed) is type(expected), (section, name, value)


def _readme_key_table():
    """{section: {key: default text}} of README's "Config keys" tables, in their order."""
    text = (REPO / 'README.md').read_text()
    tables = text.split('\n## Config keys\n', 1)[1].split('\n## ', 1)[0]
    rows, section = {}, None
    for line in tables.splitlines():
        if re.fullmatch(r'\*\*\w+\*\*', line):
            section = line.strip('*')
            rows[section] = {}
        elif match := re.match(r'\| `([^`]+)` \| `([^`]*)` \|', line):
            rows[section][match[1]] = match[2]
    return rows


def test_readme_key_table_lists_every_declared_key_with_its_default():
    rows = _readme_key_table()
    assert list(rows) == list(keys.KEYS)
    for section, names in keys.KEYS.items():
        assert list(rows[section]) == list(names), section  # the same keys, in order
        for name, key in names.items():
            value = yaml.safe_load(rows[section][name])
            assert value == key.default and type(value) is type(key.default), (section, name)


def test_readme_key_table_is_the_generated_one():
    """README's tables are keytable.markdown_tables() between the markers, so that a default
    or doc changed in keys.py cannot leave a stale one in README."""
    shown = keytable.readme_table((REPO / 'README.md').read_text())
    assert shown is not None, 'README.md lacks the markers of the generated key table'
    assert shown == keytable.markdown_tables(), \
        "README's config-key table differs from keys.py: run `python keytable.py --readme`"


def test_key_table_generator_writes_defaults_as_yaml_and_escapes_pipes():
    """The generator's cells, against values written out here: YAML's spelling of each
    default, a Group as the mapping of its sub-keys, '|' escaped inside a cell."""
    table = {'sec': {
        'flag': keys.Key(True, 'a | b'), 'none': keys.Key(None, 'x', type=int, nullable=True),
        'small': keys.Key(1e-06, 'y'), 'names': keys.Key(['a', 'b'], 'z'),
        'group': keys.Group('g', {'p': keys.Key(0.0, 'pp'), 'kind': keys.Key('sym', 'kk')}),
    }}
    assert keytable.markdown_tables(table).splitlines() == [
        '**sec**', '', '| key | default | meaning |', '|---|---|---|',
        '| `flag` | `true` | a \\| b |', '| `none` | `null` | x |', '| `small` | `1.0e-06` | y |',
        '| `names` | `[a, b]` | z |', '| `group` | `{p: 0.0, kind: sym}` | g; `p`: pp; `kind`: kk |']
    for text in (table['sec']['small'].default, ['a', 'b'], {'p': 0.0}):
        assert yaml.safe_load(keytable.yaml_text(text)) == text


def test_keytable_writes_the_readme_table_in_place(tmp_path):
    readme = tmp_path / 'README.md'
    readme.write_text(f'intro\n{keytable.TABLE_BEGIN}\nstale\n{keytable.TABLE_END}\nrest\n')
    keytable.write_readme(readme)
    assert readme.read_text() == (f'intro\n{keytable.TABLE_BEGIN}\n{keytable.markdown_tables()}'
                                  f'{keytable.TABLE_END}\nrest\n')
    assert keytable.readme_table(readme.read_text()) == keytable.markdown_tables()
    out = subprocess.run([sys.executable, str(REPO / 'keytable.py'), '--markdown'],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == keytable.markdown_tables()


def test_defaults_are_the_declared_ones():
    """config.DEFAULTS (read by other modules and tests) is derived from keys.py."""
    assert config.DEFAULTS == {section: {name: key.default for name, key in names.items()}
                               for section, names in keys.KEYS.items()}
    assert config.load_config(None, ['ctrl.run_name=x'])['learn'] == config.DEFAULTS['learn']


# Grids of the original code's README (edufonseca/waspaa19): the defaults lie inside them.
GRIDS = {('learn', 'prune_discard_percentile'): {99.25, 98.5, 97.75, 97.0, 96.25},
         ('loss', 'perc_loss2'): {99.0, 96.0, 93.0}}


@pytest.mark.parametrize('section, key', list(GRIDS))
def test_defaults_lie_in_the_sources_grids(raw_params, section, key):
    assert config.DEFAULTS[section][key] in GRIDS[section, key]
    assert raw_params[section][key] == config.DEFAULTS[section][key]
    line = next(ln for ln in PARAMS.read_text().splitlines() if ln.strip().startswith(key))
    grid = re.search(r'\{([^}]*)\}', line)
    assert grid and {float(v) for v in grid[1].split(',')} == GRIDS[section, key]
    for value in GRIDS[section, key]:  # every grid value is accepted, as a real number
        cfg = config.load_config(None, [f'{section}.{key}={value}'])
        assert cfg[section][key] == value and isinstance(cfg[section][key], float)


def test_steps_per_epoch_is_null_or_a_positive_integer():
    assert config.load_config(None)['learn']['steps_per_epoch'] is None
    assert config.load_config(None, ['learn.steps_per_epoch=250'])['learn'][
        'steps_per_epoch'] == 250


# Every YAML under config/ is an experiment; sweep files (sweep.py --spec) live in sweeps/.
SHIPPED = sorted((REPO / 'config').rglob('*.yaml'))
WASPAA19 = ['cce', 'lsr', 'lsr_groups2', 'mixup', 'mixup_warmup', 'lq', 'time_lqmax',
            'time_lqperc', 'pruning']


def test_waspaa19_ships_one_config_per_method_of_the_paper():
    assert sorted(p.stem for p in (REPO / 'config' / 'waspaa19').glob('*.yaml')) == \
        sorted(WASPAA19)


@pytest.mark.parametrize('path', SHIPPED, ids=lambda p: str(p.relative_to(REPO / 'config')))
def test_every_shipped_yaml_loads_and_validates(path, tmp_path, monkeypatch):
    """Each passes the checks main.py makes before any heavy work (the same function).
    Akiyama & Sato's model B reads the folder and pseudo labels of step 1 (model A), which
    a clean checkout has not made: here they are stand-ins at the paths the YAML names."""
    import main
    cfg = config.load_config(path)
    if cfg['learn']['init_from'] is not None:
        monkeypatch.chdir(tmp_path)
        run = tmp_path / cfg['learn']['init_from']
        run.mkdir(parents=True)
        for fold in range(1, cfg['learn']['folds'] + 1):
            (run / f'model_{fold}.keras').touch()  # what check_names looks for
        pseudo = tmp_path / cfg['learn']['pseudo_labels']
        pseudo.parent.mkdir(parents=True)
        pseudo.touch()
    main.check_names(cfg)


@pytest.mark.parametrize('name, expected', [
    ('cce', {('learn', 'mode'): 1, ('learn', 'mixup'): False, ('loss', 'type'): 'CCE',
             ('learn', 'LSR'): False}),
    ('lsr', {('learn', 'LSR'): True, ('learn', 'LSRmode'): 'STANDARD',
             ('loss', 'type'): 'CCE', ('learn', 'mixup'): False}),
    ('lsr_groups2', {('learn', 'LSR'): True, ('learn', 'LSRmode'): 'GROUPS2'}),
    ('mixup', {('learn', 'mode'): 1, ('learn', 'mixup'): True, ('loss', 'type'): 'CCE'}),
    ('mixup_warmup', {('learn', 'mode'): 0, ('learn', 'mixup'): True}),
    ('lq', {('learn', 'mode'): 1, ('loss', 'type'): 'lq_loss', ('learn', 'mixup'): False}),
    ('time_lqmax', {('learn', 'mode'): 2, ('loss', 'type'): 'lq_lqmax_time_sudden'}),
    ('time_lqperc', {('learn', 'mode'): 2, ('loss', 'type'): 'lq_lqperc_time_sudden'}),
    ('pruning', {('learn', 'mode'): 3, ('learn', 'mixup'): False, ('loss', 'type'): 'lq_loss',
                 ('loss', 'q_loss'): 0.5, ('learn', 'prune_loss_type'): 'lq_loss'}),
])
def test_waspaa19_configs_switch_their_method(name, expected):
    cfg = config.load_config(REPO / 'config' / 'waspaa19' / f'{name}.yaml')
    for (section, key), value in expected.items():
        assert cfg[section][key] == value, (name, section, key)
    assert cfg['ctrl']['train_data'] == 'noisy'  # the paper trains on the noisy set


# The time-dependent loss of the original code's last params.yaml (edufonseca/waspaa19,
# learn.mode 2 with lq_lqmax_time_sudden): the switch epoch and both thresholds.
TIME_DEPENDENT = {('learn', 'stage1_epoch'): 20, ('loss', 'm_loss2'): 0.93,
                  ('loss', 'perc_loss2'): 93.0, ('loss', 'q_loss2'): 0.5}


@pytest.mark.parametrize('name', ['time_lqmax', 'time_lqperc'])
def test_time_dependent_configs_hold_the_original_values(raw_params, name):
    cfg = config.load_config(REPO / 'config' / 'waspaa19' / f'{name}.yaml')
    for (section, key), value in TIME_DEPENDENT.items():
        assert config.DEFAULTS[section][key] == raw_params[section][key] == value
        assert cfg[section][key] == value, (name, key)


# ----------------------------------------------------------------------------- overrides

def test_parse_override_parses_yaml_values():
    assert config.parse_override('learn.lr=0.01') == ('learn', 'lr', 0.01)
    assert config.parse_override('learn.mixup=false') == ('learn', 'mixup', False)
    assert config.parse_override('learn.staged_steps=[1,2,3]') == \
        ('learn', 'staged_steps', [1, 2, 3])
    with pytest.raises(ConfigError, match='section.key=value'):
        config.parse_override('lr=0.01')
    with pytest.raises(ConfigError, match='section.key=value'):
        config.parse_override('learn.lr')


def test_overrides_applied_with_types():
    cfg = config.load_config(PARAMS, ['learn.lr=0.01', 'learn.mixup=false',
                                     'learn.staged_steps=[1,2,3]', 'ctrl.run_name=abc'])
    assert cfg['learn']['lr'] == 0.01 and isinstance(cfg['learn']['lr'], float)
    assert cfg['learn']['mixup'] is False
    assert cfg['learn']['staged_steps'] == [1, 2, 3]
    assert cfg['ctrl']['run_name'] == 'abc'


def test_integer_given_for_float_key_becomes_float():
    cfg = config.load_config(None, ['learn.lr=1'])
    assert cfg['learn']['lr'] == 1.0 and isinstance(cfg['learn']['lr'], float)


def test_override_beats_file(tmp_path):
    path = _write(tmp_path, 'learn:\n  lr: 0.5\n  batch_size: 8\n')
    cfg = config.load_config(path, ['learn.lr=0.25'])
    assert cfg['learn']['lr'] == 0.25 and cfg['learn']['batch_size'] == 8
    assert cfg['learn']['n_epochs'] == config.DEFAULTS['learn']['n_epochs']


def test_default_run_name_is_stem_and_timestamp(tmp_path):
    path = _write(tmp_path, 'learn:\n  lr: 0.5\n', name='my_exp.yaml')
    name = config.load_config(path)['ctrl']['run_name']
    assert re.fullmatch(r'my_exp_\d{8}-\d{6}_\d+-[0-9a-f]{8}', name), name


def test_default_run_names_differ_within_one_second(tmp_path):
    """Issue 11, case 4: two runs started in the same second get different names."""
    path = _write(tmp_path, '', name='my_exp.yaml')
    names = {config.load_config(path)['ctrl']['run_name'] for _ in range(20)}
    assert len(names) == 20


def test_many_default_run_names_of_one_process_never_repeat(tmp_path):
    """The names of one process share the pid and mostly the second: with 16 random bits,
    5000 of them would repeat ~190 times (birthday bound 5000^2 / 2^17); none may."""
    path = tmp_path / 'my_exp.yaml'
    names = [config.default_run_name(path) for _ in range(5000)]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r'my_exp_\d{8}-\d{6}_\d+-[0-9a-f]{8}', n) for n in names)


@pytest.mark.parametrize('text, expected', [
    ('1e-4', 1e-4), ('1e3', 1000.0), ('1E+3', 1000.0), ('.5', 0.5), ('2', 2.0),
    ('2.5e-1', 0.25), ('1_000', 1000.0)])
def test_every_written_number_is_accepted(tmp_path, text, expected):
    """Issue 11, case 8: PyYAML reads 1e-4 as a string; in a file and in an override."""
    path = _write(tmp_path, f'learn:\n  lr: {text}\n')
    assert config.load_config(path)['learn']['lr'] == expected
    assert config.load_config(None, [f'learn.lr={text}'])['learn']['lr'] == expected


@pytest.mark.parametrize('text, expected', [('1e2', 100), ('64.0', 64), ('1E1', 10)])
def test_integer_keys_accept_integral_numbers(tmp_path, text, expected):
    path = _write(tmp_path, f'learn:\n  n_epochs: {text}\n')
    assert config.load_config(path)['learn']['n_epochs'] == expected
    value = config.load_config(None, [f'learn.batch_size={text}'])['learn']['batch_size']
    assert value == expected and type(value) is int


@pytest.mark.parametrize('override, message', [
    ('learn.n_epochs=1.5', 'learn.n_epochs must be an integer'),
    ('learn.lr=.nan', 'learn.lr must be a finite number'),
    ('learn.lr=.inf', 'learn.lr must be a finite number'),
    ('learn.lr=1e-4x', 'learn.lr must be a number'),
    ('learn.lr=1e3', None)])
def test_numbers_that_are_not_accepted(override, message):
    if message is None:
        assert config.load_config(None, [override])['learn']['lr'] == 1000.0
        return
    with pytest.raises(ConfigError, match=message):
        config.load_config(None, [override])


@pytest.mark.parametrize('seed', ['-1', '5e9', '4294967296'])
def test_seed_is_range_checked(seed):
    """Issue 11, case 9: numpy seeds are 0 .. 2**32 - 1."""
    with pytest.raises(ConfigError, match=r'ctrl.seed = -?\d+ is out of range'):
        config.load_config(None, [f'ctrl.seed={seed}'])
    assert config.load_config(None, ['ctrl.seed=4294967295'])['ctrl']['seed'] == 2**32 - 1


def test_defaults_are_not_shared_between_configs():
    a = config.load_config(None)
    a['learn']['noisier_classes'].append('X')
    a['learn']['staged_steps'][0] = 99
    b = config.load_config(None)
    assert 'X' not in b['learn']['noisier_classes']
    assert b['learn']['staged_steps'] == [10000, 10000, 5000]


# ----------------------------------------------------------------------------- errors

def test_unknown_section():
    with pytest.raises(ConfigError) as err:
        config.load_config(None, ['lern.lr=0.1'])
    msg = str(err.value)
    assert 'lern' in msg and all(s in msg for s in config.DEFAULTS)


def test_unknown_section_in_file(tmp_path):
    path = _write(tmp_path, 'lern:\n  lr: 0.1\n')
    with pytest.raises(ConfigError, match='lern'):
        config.load_config(path)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        config.load_config(None, ['learn.lrr=0.1'])
    msg = str(err.value)
    assert 'learn.lrr' in msg
    assert all(k in msg for k in config.DEFAULTS['learn'])


def test_unknown_key_in_file(tmp_path):
    path = _write(tmp_path, 'extract:\n  n_mel: 64\n')
    with pytest.raises(ConfigError, match=r'extract\.n_mel\b') as err:
        config.load_config(path)
    assert 'n_mels' in str(err.value)


@pytest.mark.parametrize('override, key', [
    ('learn.lr=abc', 'learn.lr'),
    ('learn.mixup=3', 'learn.mixup'),
    ('learn.batch_size=1.5', 'learn.batch_size'),
    ('learn.batch_size=true', 'learn.batch_size'),
    ('learn.staged_steps=5', 'learn.staged_steps'),
    ('learn.steps_per_epoch=1.5', 'learn.steps_per_epoch'),
    ('ctrl.dataset_path=[1]', 'ctrl.dataset_path'),
    ('learn.lr=', 'learn.lr'),
])
def test_wrong_type(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        config.load_config(None, [override])


@pytest.mark.parametrize('override, key', [
    ('learn.val_split=1.5', 'learn.val_split'),
    ('learn.val_split=1', 'learn.val_split'),
    ('loss.q_loss=0', 'loss.q_loss'),
    ('loss.q_loss=1.01', 'loss.q_loss'),
    ('learn.batch_size=0', 'learn.batch_size'),
    ('learn.lr=-0.1', 'learn.lr'),
    ('learn.n_classes=1', 'learn.n_classes'),
    ('learn.steps_per_epoch=0', 'learn.steps_per_epoch'),
])
def test_out_of_range(override, key):
    with pytest.raises(ConfigError, match=re.escape(key) + '.*out of range'):
        config.load_config(None, [override])


@pytest.mark.parametrize('override', ['learn.val_split=0', 'loss.q_loss=1',
                                      'learn.batch_size=1'])
def test_range_limits_that_are_allowed(override):
    config.load_config(None, [override])


def test_bad_choice_lists_valid_values():
    with pytest.raises(ConfigError) as err:
        config.load_config(None, ['learn.mixup_mode=foo'])
    msg = str(err.value)
    assert 'learn.mixup_mode' in msg and 'foo' in msg
    assert 'intra' in msg and 'inter' in msg


def test_bad_train_data_lists_valid_values():
    with pytest.raises(ConfigError) as err:
        config.load_config(None, ['ctrl.train_data=noisyy'])
    for name in ['noisy', 'clean', 'noisy_small', 'noisy_small_clean', 'all']:
        assert name in str(err.value)


def test_invalid_yaml_file(tmp_path):
    path = _write(tmp_path, 'learn:\n  lr: [0.1\n  mixup: true\n')
    with pytest.raises(ConfigError) as err:
        config.load_config(path)
    assert str(path) in str(err.value) and 'YAML' in str(err.value)
    assert '\n' not in str(err.value)


def test_yaml_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match='mapping'):
        config.load_config(_write(tmp_path, '- a\n- b\n'))
    with pytest.raises(ConfigError, match='learn'):
        config.load_config(_write(tmp_path, 'learn: 3\n'))


def test_missing_config_file(tmp_path):
    path = tmp_path / 'nope.yaml'
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        config.load_config(path)


def test_fmax_above_nyquist():
    with pytest.raises(ConfigError, match='fmax'):
        config.load_config(None, ['extract.fs=22050'])  # fmax 22050 > 11025
    cfg = config.load_config(None, ['extract.fs=22050', 'extract.fmax=11025'])
    assert cfg['extract']['fmax'] == 11025


def test_other_consistency_errors():
    with pytest.raises(ConfigError, match='fmin'):
        config.load_config(None, ['extract.fmin=22050'])
    with pytest.raises(ConfigError, match='win_length_samples'):
        config.load_config(None, ['extract.win_length_samples=4096'])
    with pytest.raises(ConfigError, match='staged_steps'):
        config.load_config(None, ['learn.staged_steps=[1,2]'])
    for bad in ('a/../b', '/abs', 'a//b', '.hidden/b', 'a/.b', 'a/', '..'):
        with pytest.raises(ConfigError, match='run_name'):
            config.load_config(None, [f'ctrl.run_name={bad}'])
    assert config.load_config(None, ['ctrl.run_name=sweep/p=1_seed0'])['ctrl']['run_name'] \
        == 'sweep/p=1_seed0'


def test_mapping_keys_are_validated_per_sub_key(tmp_path):
    cfg = config.load_config(None, ['ctrl.inject_noise.rate=0.4',
                                    'ctrl.inject_noise={kind: pairflip}'])
    assert cfg['ctrl']['inject_noise'] == {'rate': 0.4, 'kind': 'pairflip', 'held_out': None,
                                           'held_out_share': 0.2, 'seed': 0,
                                           'subset': 'unverified'}
    assert config.DEFAULTS['ctrl']['inject_noise']['rate'] == 0.0  # defaults untouched
    path = tmp_path / 'noise.yaml'
    path.write_text('ctrl:\n  inject_noise: {rate: 1, subset: all}\n')
    assert config.load_config(path)['ctrl']['inject_noise']['subset'] == 'all'
    cases = {'ctrl.inject_noise.rat=0.1': r'unknown config key ctrl\.inject_noise\.rat; valid',
             'ctrl.inject_noise.rate=1.5': r'ctrl\.inject_noise\.rate = 1\.5 is out of range',
             'ctrl.inject_noise.rate=high': r'ctrl\.inject_noise\.rate must be a number',
             'ctrl.inject_noise.kind=flip': r'ctrl\.inject_noise\.kind .*symmetric, pairflip',
             'ctrl.inject_noise.subset=test': r'ctrl\.inject_noise\.subset .*unverified',
             'ctrl.inject_noise.seed=-1': r'ctrl\.inject_noise\.seed',
             'ctrl.inject_noise=0.4': r'ctrl\.inject_noise must be a mapping',
             'ctrl.seed.x=1': r'ctrl\.seed has no sub-keys'}
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message) as err:
            config.load_config(None, [override])
        assert '\n' not in str(err.value)


# ----------------------------------------------------------------------------- main.py

# Subprocess cases (the real command line and exit status): overrides per case. Both are
# started at once; the dataset case imports TensorFlow, which takes seconds.
MAIN_CASES = {
    'unknown_key': ['learn.lrr=0.1'],
    'dataset': ['ctrl.dataset_path={tmp}/no_such_dataset'],
}


@pytest.fixture(scope='module')
def main_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('main')
    params = tmp / 'exp.yaml'
    params.write_text(PARAMS.read_text())
    procs = {}
    for name, overrides in MAIN_CASES.items():
        args = [sys.executable, 'main.py', '-p', str(params),
                '-o', f'ctrl.logs_dir={tmp}/logs', '-o', f'ctrl.features_dir={tmp}/features']
        for o in overrides:
            args += ['-o', o.format(tmp=tmp)]
        procs[name] = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[name] = (proc.returncode, out, err)
    return tmp, results


def _error_line(err):
    """The error line main.py printed (TensorFlow may print start-up chatter before it)."""
    lines = [ln for ln in err.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1, err
    return lines[0]


def test_main_unknown_key_prints_one_line(main_runs):
    _, results = main_runs
    code, _, err = results['unknown_key']
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith('error:') and 'learn.lrr' in lines[0]
    assert 'Traceback' not in err


def test_main_missing_dataset_folder(main_runs):
    tmp, results = main_runs
    code, _, err = results['dataset']
    assert code == 2, err
    assert 'Traceback' not in err
    line = _error_line(err)
    assert f'{tmp}/no_such_dataset' in line
    # Issue 11, case 11: an error before training leaves nothing behind in logs/.
    assert not (tmp / 'logs').exists() or not list((tmp / 'logs').iterdir())
    assert not list((REPO / 'logs').glob('exp_*'))


@pytest.mark.parametrize('override', ['learn.model=resnet9000', 'loss.type=focal9000',
                                      'learn.mode=97', 'learn.mode=warmup9000',
                                      'recognizer.aggregate=median'])
def test_main_unknown_registry_name_lists_valid_options(tmp_path, capsys, override):
    """main.main in this process (TensorFlow is loaded once): the names are refused before
    any log file or run folder is made."""
    import architectures
    import eval as evaluation
    import learn
    import losses
    import main
    key, bad = override.split('=')
    valid = {'learn.model': architectures.MODELS, 'loss.type': losses.LOSSES,
             'learn.mode': learn.MODES, 'recognizer.aggregate': evaluation.AGGREGATIONS}[key]
    params = tmp_path / 'exp.yaml'
    params.write_text(PARAMS.read_text())
    code = main.main(['-p', str(params), '-o', f'ctrl.logs_dir={tmp_path}/logs',
                      '-o', override])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:'), err
    assert key in lines[0] and bad in lines[0]
    for option in valid:
        assert re.search(rf'\b{re.escape(str(option))}\b', lines[0]), (option, lines[0])
    assert not (tmp_path / 'logs').exists()


def test_start_log_tees_output_but_not_progress_redraws(tmp_path, capsys):
    stop = utils.start_log(tmp_path / 'run.out')
    try:
        print('first line')
        sys.stderr.write('\rbar  10%')
        sys.stderr.write('\rbar 100%')
        sys.stderr.write('\n')
        print('after the bar')
    finally:
        stop()
    assert (tmp_path / 'run.out').read_text() == 'first line\n\nafter the bar\n'
    console = capsys.readouterr()
    assert 'bar 100%' in console.err and 'after the bar' in console.out
