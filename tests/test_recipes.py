"""The recipes of config/agce, config/dcase19_he, config/dcase18_dorfer and the sweep specs
of sweeps/: each key holds the value its paper (or the released code) gives.

The independent side of each check is the paper's own numbers, written here as the paper
states them (frames in milliseconds, overlaps in percent, Table 1's clip counts, ...) and
converted here, not read back from the YAML. Running every shipped YAML end to end is
tests/test_fast_dev_run.py's job; here the files are read as YAML and as validated configs.
"""
import itertools
from pathlib import Path

import pytest
import yaml

import config
import keys
import keytable

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / 'config'
SWEEPS = REPO / 'sweeps'
SPEC_KEYS = {'params', 'configs', 'name', 'grid', 'seeds', 'baseline', 'overrides'}


def _resolved(path):
    """The file's values over the declared defaults (Group sub-keys merged), read with
    PyYAML only: what the recipe asks for, whatever config.py's checks say."""
    cfg = keys.defaults()
    for section, values in (yaml.safe_load(path.read_text()) or {}).items():
        for key, value in (values or {}).items():
            if isinstance(value, dict) and isinstance(cfg[section].get(key), dict):
                cfg[section][key] = {**cfg[section][key], **value}
            else:
                cfg[section][key] = value
    return cfg


def _check(cfg, expected, where):
    for dotted, value in expected.items():
        section, *names = dotted.split('.')
        got = cfg[section]
        for name in names:
            got = got[name]
        assert got == value and type(got) is type(value), (where, dotted, got, value)


# ----------------------------------------------------------------------------- Deng et al.
# Deng, Gao, Feng, Xu & Chen, adaptive generalized cross-entropy: Sec. 3.2 (learning set-up),
# Sec. 3.3 (T), Table 1 (subsets); the values Sec. 3.2 takes from Fonseca et al. (ICASSP
# 2019) come from that paper's released config (edufonseca/icassp19, config/params.yaml).
DENG = {'ctrl.dataset': 'fsdnoisy18k', 'ctrl.train_data': 'all', 'extract.n_mels': 96,
        'learn.mode': 1, 'learn.model': 'baseline', 'learn.mixup': False, 'learn.LSR': False,
        'learn.batch_size': 64, 'learn.optim': 'Adam', 'learn.lr': 0.001,
        'learn.lr_schedule': 'plateau', 'learn.patience': 15, 'learn.n_epochs': 160,
        'learn.val_split': 0.15}
DENG_TABLE1_NOISY = {'extra small': 500, 'small': 1003, 'medium': 5000, 'large': 10000}
DENG_TABLE1_CLEAN = {'small': 443, 'medium': 886, 'large': 1329}
DENG_ALL = {'noisy': 15813, 'clean': 1772}
DENG_RUNS = 12


@pytest.mark.parametrize('name, loss', [
    ('system', {'loss.type': 'adaptive_lq', 'loss.snn_temperature': 1000.0,
                'loss.snn_space': 'input', 'ctrl.n_noisy': None, 'ctrl.n_clean': None}),
    ('cce', {'loss.type': 'CCE', 'ctrl.n_noisy': None, 'ctrl.n_clean': None}),
    ('lq', {'loss.type': 'lq_loss', 'loss.q_loss': 0.7}),
    ('clean', {'loss.type': 'CCE', 'ctrl.train_data': 'clean'}),
])
def test_deng_recipes_hold_the_papers_set_up(name, loss):
    cfg = _resolved(CONFIG / 'agce' / f'{name}.yaml')
    _check(cfg, {**DENG, **loss}, name)


def test_deng_subsets_are_table_1s():
    """Table 1's rows: counts of noisy / clean clips, with 'all' as null (every clip)."""
    t2 = yaml.safe_load((SWEEPS / 'agce' / 'table2.yaml').read_text())
    t3 = yaml.safe_load((SWEEPS / 'agce' / 'table3.yaml').read_text())
    assert t2['grid']['ctrl.n_noisy'] == [*DENG_TABLE1_NOISY.values(), None]
    assert t2['overrides'] == {'ctrl.n_clean': None}
    assert t3['grid']['ctrl.n_clean'] == [*DENG_TABLE1_CLEAN.values(), None]
    assert t3['overrides'] == {'ctrl.n_noisy': DENG_TABLE1_NOISY['large']}
    # the subsets are parts of the whole set, smaller than it
    assert max(DENG_TABLE1_NOISY.values()) < DENG_ALL['noisy']
    assert max(DENG_TABLE1_CLEAN.values()) < DENG_ALL['clean']
    # Table 1's clean subsets are quarters of the 1,772 clean clips (rounded down)
    assert list(DENG_TABLE1_CLEAN.values()) == [DENG_ALL['clean'] * k // 4 for k in (1, 2, 3)]
    for spec in (t2, t3):
        assert spec['params'] == 'config/agce/system.yaml'
        assert spec['grid']['loss.type'] == ['CCE', 'lq_loss', 'adaptive_lq']
        assert spec['baseline'] == {'loss.type': 'CCE'}
        assert spec['seeds'] == list(range(DENG_RUNS)) and len(set(spec['seeds'])) == DENG_RUNS
    clean = yaml.safe_load((SWEEPS / 'agce' / 'table3_clean.yaml').read_text())
    assert clean['params'] == 'config/agce/clean.yaml' and len(clean['seeds']) == DENG_RUNS


# ----------------------------------------------------------------------------- He et al.
# He, Shen, Zhang & Liu, DCASE 2019: Sec. 2.1 (features, lengths, augmentation), Sec. 2.3
# (geometric-mean ensemble), Sec. 3.1 (k, alpha), Sec. 3.2 (head), Sec. 4.2 (schedule),
# Sec. 4.3 (lwlrap). Frames: 40 ms with 50 % overlap at FSDKaggle2019's 44.1 kHz.
HE_FS = 44100
HE_FRAME_S, HE_OVERLAP = 0.040, 0.5
HE = {'ctrl.train_data': 'all', 'extract.fs': HE_FS,
      'extract.win_length_samples': round(HE_FRAME_S * HE_FS),
      'extract.hop_length_samples': round(HE_FRAME_S * HE_FS * (1 - HE_OVERLAP)),
      'extract.window': 'hann', 'extract.spectrogram_type': 'magnitude', 'extract.n_mels': 80,
      'extract.trim_silence': True, 'extract.crop': 'random_crop', 'extract.clip_frames': 2000,
      'extract.crop_frames': 512, 'learn.mode': 'staged',
      'learn.staged_steps': [10_000, 10_000, 5_000], 'learn.batch_size': 64,
      'learn.optim': 'Adam', 'learn.lr': 0.001, 'learn.lr_schedule': 'constant',
      'learn.model': 'cnn_gru', 'learn.head': 'sigmoid_sparsemax',
      'learn.mask_method': 'threshold', 'learn.mask_top_k': 10, 'learn.mask_alpha': 0.9,
      'learn.mixup': True, 'learn.folds': 4, 'learn.fold_subset': 'all', 'loss.type': 'bce',
      'recognizer.ensemble': 'gmean'}
# SpecAugment's sizes are not in the paper: Park et al.'s LibriSpeech-basic policy
# (Interspeech 2019, Table 1: W 80, F 27, m_F 1, T 100, m_T 1).
PARK_LB = {'time_warp': 80, 'freq_width': 27, 'freq_masks': 1, 'time_width': 100,
           'time_masks': 1}


@pytest.mark.parametrize('name, own', [
    ('system', {'ctrl.dataset': 'fsdkaggle2019', 'recognizer.metrics': ['lwlrap']}),
    ('fsdnoisy18k', {'ctrl.dataset': 'fsdnoisy18k',
                     'recognizer.metrics': ['accuracy', 'lwlrap']}),
])
def test_he_recipes_hold_the_papers_set_up(name, own):
    cfg = _resolved(CONFIG / 'dcase19_he' / f'{name}.yaml')
    _check(cfg, {**HE, **own}, name)
    assert cfg['learn']['specaugment'] == PARK_LB
    # frames of 40 ms every 20 ms: the window is twice the hop and fits the FFT
    ext = cfg['extract']
    assert ext['win_length_samples'] == 2 * ext['hop_length_samples'] <= ext['n_fft']
    # 2000 frames of 20 ms are 40 s, longer than any FSDKaggle2019 clip (at most 30 s)
    assert ext['clip_frames'] * ext['hop_length_samples'] / ext['fs'] == pytest.approx(40.0)


def test_he_table1_is_three_heads_by_three_training_settings():
    t1 = yaml.safe_load((SWEEPS / 'dcase19_he' / 'table1.yaml').read_text())
    verified = yaml.safe_load((SWEEPS / 'dcase19_he' / 'table1_verified.yaml').read_text())
    heads = ['sigmoid', 'sigmoid_softmax', 'sigmoid_sparsemax']
    assert t1['grid'] == {'learn.head': heads, 'learn.mask_method': ['topk', 'threshold']}
    assert verified['grid'] == {'learn.head': heads}
    # "Verified data": the staged system without its unverified stage
    assert verified['overrides'] == {'learn.staged_steps': [10_000, 0, 5_000]}
    assert t1['params'] == verified['params'] == 'config/dcase19_he/system.yaml'


def test_staged_yaml_is_replaced_by_the_he_recipe():
    assert not (CONFIG / 'staged.yaml').exists()
    for path in [REPO / 'README.md', *REPO.glob('*.py'), *(REPO / 'tests').glob('*.py'),
                 *(REPO / 'bench').rglob('*.py')]:
        if path.name != 'test_recipes.py':
            assert 'config/staged.yaml' not in path.read_text(), path


# ----------------------------------------------------------------------------- Dorfer & Widmer
# Dorfer & Widmer's write-up (DCASE 2018 task 2): "Audio Data Pre-processing" (32 kHz,
# 1024-sample hann windows, hop 192, 128 mel bins, 3000 frames), "General Training
# Procedure" (384-frame excerpts, mixup 0.3, Adam 0.001, batch 100, 500 epochs, linear decay
# from epoch 100), "Iterative Self-Verification Loop" (K = 25, 0.95, 40 per class, 30
# epochs at 0.0002, ten rounds, lowest validation loss). The released code
# (CPJKU/dcase_task2): Lasagne batch_norm(alpha=0.1) and its epsilon 1e-4, no early
# stopping (patience = max_epochs), fmax None (fs / 2).
DORFER_FS = 32000
DORFER = {'ctrl.dataset': 'fsdkaggle2018', 'ctrl.train_data': 'all',
          'extract.fs': DORFER_FS, 'extract.n_fft': 1024, 'extract.win_length_samples': 1024,
          'extract.hop_length_samples': 192, 'extract.window': 'hann', 'extract.n_mels': 128,
          'extract.fmax': DORFER_FS // 2, 'extract.trim_silence': True,
          'extract.crop': 'random_crop', 'extract.clip_frames': 3000,
          'extract.crop_frames': 384, 'learn.mode': 'self_verify', 'learn.model': 'vgg_gap',
          'learn.head': 'softmax', 'learn.batch_size': 100, 'learn.optim': 'Adam',
          'learn.lr': 0.001, 'learn.n_epochs': 500, 'learn.lr_schedule': 'linear',
          'learn.lr_decay_start': 100, 'learn.patience': None,
          'learn.model_selection': 'best_val_loss', 'learn.mixup': True,
          'learn.mixup_alpha': 0.3, 'learn.bn_momentum': 1 - 0.1, 'learn.bn_epsilon': 1e-4,
          'learn.sv_excerpts': 25, 'learn.sv_threshold': 0.95, 'learn.sv_per_class': 40,
          'learn.sv_epochs': 30, 'learn.sv_lr': 0.0002, 'learn.sv_rounds': 10,
          'learn.folds': 1, 'loss.type': 'CCE', 'recognizer.metrics': ['map3', 'accuracy']}


def test_dorfer_recipe_holds_the_write_ups_set_up():
    cfg = _resolved(CONFIG / 'dcase18_dorfer' / 'system.yaml')
    _check(cfg, DORFER, 'dcase18_dorfer')
    # sox's silence threshold, 0.15 % of full scale, below the peak sox normalised to -0.1 dB
    threshold_db = -20 * __import__('math').log10(0.0015) - 0.1
    assert cfg['extract']['trim_top_db'] == pytest.approx(threshold_db, abs=0.05)
    # an excerpt is 384 frames of 6 ms: 2.3 s; a clip 3000 frames: 18 s
    assert 384 * 192 / DORFER_FS == pytest.approx(2.304)


# ----------------------------------------------------------------------------- Akiyama & Sato
# Akiyama & Sato (DCASE 2019 task 2): Sec. 3.2.2 (128 mel channels, hop 347 "that makes log
# mel spectrogram 128 Hz time resolution", dB after all augmentations, per-sample
# standardisation), 3.3.1 (mixup Beta(1, 1) with ratio 0.5, frequency masks 8-32 with ratio
# 0.5, "4 seconds (512 dimensions)" crops, additional cropping 25-100 % with ratio 0.5, gain
# 0.80-1.20 with ratio 0.5), 3.3.2 (crops of 3.02 s = 133,300 samples, scale 0.8-1.25, gain
# 0.501-2.00), 3.5 (Adam 1e-3 -> 1e-6 in 64-epoch cycles; SGD 1e-1 -> 1e-6 in 80-epoch
# cycles, batch 64 for the sigmoid model), Tables 1 and 2 (cycles x epochs, crops, batches),
# Sec. 2.2 (T = 2, SSL weight 20), Table 3 (Pad = 8, 32 frames; 8k, 32k samples).
AKIYAMA_FS = 44100
AKIYAMA_MEL = {'ctrl.dataset': 'fsdkaggle2019', 'ctrl.train_data': 'all',
               'extract.fs': AKIYAMA_FS, 'extract.hop_length_samples': 347,
               'extract.n_mels': 128, 'extract.spectrogram_type': 'power',
               'extract.normalize': 'per_clip', 'extract.crop': 'random_crop',
               'learn.model': 'resnet34', 'learn.multitask': True, 'learn.folds': 5,
               'learn.optim': 'Adam', 'learn.lr': 1e-3, 'learn.lr_min': 1e-6,
               'learn.lr_schedule': 'cyclic_cosine', 'learn.cycle_epochs': 64,
               'learn.head': 'sigmoid', 'learn.mixup': True, 'learn.mixup_alpha': 1.0,
               'learn.mixup_p': 0.5, 'learn.augment_domain': 'power',
               'learn.freq_mask': {'p': 0.5, 'min_width': 8, 'max_width': 32},
               'learn.gain': {'p': 0.5, 'low': 0.8, 'high': 1.2}, 'loss.type': 'bce',
               'recognizer.metrics': ['lwlrap'], 'recognizer.tta_pad': [8, 32]}
# Table 1: #4 model A "8x64, Crop=512, BS=64", #5 model B "7x64, Crop=512, BS=32, AC",
# #7 "6x64, Crop=1,024, BS=64"
AKIYAMA_MODELS = {'model_a.yaml': (8, 512, 64), 'model_b.yaml': (7, 512, 32),
                  'model_a_crop1024.yaml': (6, 1024, 64)}


@pytest.mark.parametrize('name', sorted(AKIYAMA_MODELS))
def test_akiyama_resnet_recipes_hold_the_papers_set_up(name):
    cfg = _resolved(CONFIG / 'dcase19_akiyama' / name)
    _check(cfg, AKIYAMA_MEL, name)
    cycles, crop, batch = AKIYAMA_MODELS[name]
    lrn = cfg['learn']
    assert (lrn['cycles'], cfg['extract']['crop_frames'], lrn['batch_size']) == (cycles, crop,
                                                                                  batch)
    assert lrn['n_epochs'] == cycles * 64
    assert AKIYAMA_FS / 347 == pytest.approx(128, rel=0.01)  # "128 Hz time resolution"
    seconds = crop * 347 / AKIYAMA_FS  # "4 seconds (512 dimensions)", 8 s for 1024
    assert seconds == pytest.approx(4 * crop / 512, rel=0.01)
    if name == 'model_b.yaml':
        assert lrn['extra_crop'] == {'p': 0.5, 'min_frac': 0.25, 'max_frac': 1.0}
        assert (cfg['loss']['sharpen_T'], cfg['loss']['pseudo_weight']) == (2.0, 20.0)
        assert lrn['init_from'] == 'logs/akiyama_model_a'
        model_a = _resolved(CONFIG / 'dcase19_akiyama' / 'model_a.yaml')
        assert lrn['pseudo_labels'].startswith('pseudo/' + model_a['ctrl']['run_name'])
    else:
        assert lrn['extra_crop']['p'] == 0 and lrn['pseudo_labels'] is None


def test_akiyama_envnet_recipe_holds_the_papers_set_up():
    cfg = _resolved(CONFIG / 'dcase19_akiyama' / 'envnet.yaml')
    _check(cfg, {'extract.features': 'waveform', 'extract.fs': AKIYAMA_FS,
                 'learn.model': 'envnet_v2', 'learn.multitask': True, 'learn.optim': 'SGD',
                 'learn.momentum': 0.9, 'learn.nesterov': True, 'learn.lr': 0.1,
                 'learn.lr_min': 1e-6, 'learn.cycle_epochs': 80, 'learn.cycles': 3,
                 'learn.n_epochs': 240, 'learn.batch_size': 64, 'learn.head': 'sigmoid',
                 'learn.mixup_alpha': 1.0, 'loss.type': 'bce',
                 'recognizer.tta_pad': [8000, 32000]}, 'envnet')
    assert cfg['extract']['crop_samples'] / AKIYAMA_FS == pytest.approx(3.02, abs=0.005)
    scale = cfg['learn']['wave_scale']['max']
    assert (1 / scale, scale) == (pytest.approx(0.8), pytest.approx(1.25))
    db = cfg['learn']['wave_gain']['db']  # 0.501 - 2.00 as a factor
    assert (10 ** (-db / 20), 10 ** (db / 20)) == (pytest.approx(0.501, abs=1e-3),
                                                   pytest.approx(2.0, abs=0.01))


def test_akiyama_chain_reads_the_folders_it_names():
    """Each step's run_name is the folder the next step (and README's commands) read."""
    names = {f: _resolved(CONFIG / 'dcase19_akiyama' / f)['ctrl']['run_name']
             for f in ('model_a.yaml', 'model_b.yaml', 'model_a_crop1024.yaml', 'envnet.yaml')}
    assert len(set(names.values())) == 4
    readme = (REPO / 'README.md').read_text()
    for name in names.values():
        assert f'logs/{name}' in readme, name


# ----------------------------------------------------------------------------- every recipe

RECIPES = sorted(p for folder in ('agce', 'dcase19_he', 'dcase18_dorfer', 'dcase19_akiyama')
                 for p in (CONFIG / folder).glob('*.yaml'))
SPECS = sorted(SWEEPS.rglob('*.yaml'))


def test_each_recipe_folder_has_its_system():
    for folder in ('agce', 'dcase19_he', 'dcase18_dorfer'):
        assert (CONFIG / folder / 'system.yaml').is_file(), folder


@pytest.mark.parametrize('path', RECIPES, ids=lambda p: str(p.relative_to(CONFIG)))
def test_every_key_of_a_recipe_says_where_it_comes_from(path):
    """Each key line (not a section heading) carries a comment, and the file says how to
    run it."""
    text = path.read_text()
    assert '# Run: python ' in text, path
    for line in text.splitlines():
        if line.startswith('  ') and not line.lstrip().startswith('#'):
            assert ' # ' in line, (path.name, line)


@pytest.mark.parametrize('path', SPECS, ids=lambda p: str(p.relative_to(SWEEPS)))
def test_sweep_specs_name_existing_experiments_and_valid_points(path):
    """A spec's keys are the spec format's; its experiment files exist (paths relative to
    the repository); every grid point with the overrides is a valid config (config.py's
    checks)."""
    spec = yaml.safe_load(path.read_text())
    assert set(spec) <= SPEC_KEYS, set(spec) - SPEC_KEYS
    assert ('params' in spec) != ('configs' in spec)
    experiments = [REPO / p for p in spec.get('configs', [spec.get('params')])]
    assert all(p.is_file() for p in experiments), experiments
    grid = spec.get('grid') or {}
    overrides = [f'{k}={keytable.yaml_text(v)}' for k, v in (spec.get('overrides') or {}).items()]
    for experiment, values in itertools.product(experiments, itertools.product(*grid.values())):
        point = [f'{k}={keytable.yaml_text(v)}' for k, v in zip(grid, values)]
        config.load_config(experiment, point + overrides)


def test_waspaa19_methods_spec_runs_every_method_of_the_paper():
    spec = yaml.safe_load((SWEEPS / 'waspaa19' / 'methods.yaml').read_text())
    stems = sorted(Path(c).stem for c in spec['configs'])
    assert stems == sorted(['cce', 'lsr', 'lsr_groups2', 'mixup', 'mixup_warmup', 'lq',
                            'time_lqmax', 'time_lqperc', 'pruning'])
    assert spec['baseline'] == {'config': 'cce'}
