"""ctrl.fast_dev_run (fastdev.py): every shipped YAML runs end to end as a dry run on tiny
synthetic data of its layout, with the structure of its procedure kept (stages, folds,
rounds, snapshots) and every stage cut to 2 epochs of 2 steps; the run is marked."""
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import config
import fastdev
import learn
import main
import runfolder
import sweepspec
from schedules import check_schedule
from conftest import tiny_dataset, write_tiny_config

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted((ROOT / 'config').glob('**/*.yaml'))  # experiments only: sweep files in sweeps/


# Every experiment YAML, the DCASE recipes (config/dcase19_he/, config/dcase18_dorfer/)
# included: their dry runs are cut in size as well (fastdev.fast_dev_inputs), so that
# CNN-GRU and VGG-GAP over whole clips run in minutes on CPU, not hours.
# Akiyama & Sato's chain (config/dcase19_akiyama/) runs in order in test_akiyama_chain.py:
# model B reads model A's run and pseudo labels, which no single dry run has.
# Dorfer & Widmer's dry run (4 folds x 11 rounds of a 60 MB VGG-GAP, ~150 model saves and
# 44 fit calls) takes 3.5-5 min on 2 CPU cores: it runs with NOISY_SED_LONG_DRY_RUNS=1, as
# the chain does, to keep make test within CI's 20 minutes.
LONG = os.environ.get('NOISY_SED_LONG_DRY_RUNS') == '1'
EXPERIMENTS = [p if p.parent.name != 'dcase18_dorfer' else pytest.param(
    p, marks=pytest.mark.skipif(not LONG, reason='~4 min: NOISY_SED_LONG_DRY_RUNS=1'))
    for p in YAMLS if p.parent.name != 'dcase19_akiyama']
SWEEP_FILES = sorted((ROOT / 'sweeps').glob('**/*.yaml'))

# Tiny data per layout, big enough for the YAMLs as written (batch 64 of 2 s patches, the
# verified-only stages of staged training, 4 self-verification folds): 20 classes (the
# FSDnoisy18k names; config/demo.yaml says n_classes 20), half of the training clips
# verified (6 verified clips per class: one for validation under ctrl.train_data clean),
# clips of 2-4 s at 44.1 kHz (the rate of config/params.yaml, so nothing is resampled but
# the demo's 22.05 kHz). The whole-clip recipes' dry runs (extract.crop random_crop: all
# those on the DCASE layouts) keep 4 clips per class of each part, in batches of 2
# (fastdev.FAST_WHOLE_CLIPS, FAST_BATCH): 8 training clips per class, half verified.
LAYOUTS = {
    'fsdnoisy18k': dict(n_classes=20, train_per_class=12, test_per_class=1),
    'fsdkaggle2018': dict(n_classes=20, train_per_class=8, test_per_class=1),
    'fsdkaggle2019': dict(n_classes=20, train_per_class=8, test_per_class=1, max_labels=2),
}


@pytest.fixture(scope='session')
def layouts(tmp_path_factory):
    """layout -> (dataset folder, features folder shared by the runs), each written once."""
    import synthetic
    made = {}

    def get(layout, n_classes=None):
        key = (layout, n_classes)
        if key not in made:
            root = tmp_path_factory.mktemp(f'fast_{layout}')
            sizes = {**LAYOUTS[layout], **({'n_classes': n_classes} if n_classes else {})}
            synthetic.make_dataset(root / 'data', clean_fraction=0.5, noise_rate=0.4,
                                   min_dur=2.0, max_dur=4.0, sr=44100, seed=3, layout=layout,
                                   **sizes)
            made[key] = (root / 'data', root / 'features')
        return made[key]
    return get


def expected_epochs(cfg):
    """Epochs of one fold's history under fast_dev_run, from the paper-side config: each
    stage min(its epochs, 2), cyclic_cosine cycles x 2, staged stages of min(steps, 4)
    steps in epochs of 2, self-verification round 0 plus 2 per round; the linear schedule's
    epochs at lr and its decay two stages."""
    lrn = cfg['learn']
    n, mode = lrn['n_epochs'], lrn['mode']
    if mode == 'staged':
        return sum(math.ceil(min(s, 4) / 2) for s in lrn['staged_steps'])
    if lrn['lr_schedule'] == 'cyclic_cosine':
        return 2 * lrn['cycles']
    single = min(n, 2)  # one stage (mode 1, self-verification's round 0)
    if lrn['lr_schedule'] == 'linear':
        start = lrn['lr_decay_start']  # at lr until there, then the decay: two stages
        single = min(start, 2) + min(n - start, 2)
    if mode == 'self_verify':
        return single + lrn['sv_rounds'] * min(lrn['sv_epochs'], 2)
    first = {0: 'mixup_warmup_epochs', 2: 'stage1_epoch', 3: 'prune_stage1'}.get(mode)
    if first is None:
        return single
    stage1 = min(lrn[first], n)
    return min(stage1, 2) + min(n - stage1, 2)


def evaluation_block(out_text):
    lines = out_text.splitlines()
    start = lines.index('EVALUATION')
    end = next(i for i in range(start, len(lines)) if lines[i].startswith('=' * 72))
    return lines[start:end]


def check_structure(run_dir, cfg):
    """The histories, snapshots and marks a fast-dev run of cfg must leave."""
    results = json.loads((run_dir / 'results.json').read_text())
    assert results['status'] == 'finished' and results['fast_dev_run'] is True
    histories = runfolder.per_fold(run_dir, 'history')
    folds = 4 if cfg['learn']['mode'] == 'self_verify' else cfg['learn']['folds']
    assert len(histories) == folds
    for _, path in histories:
        history = pd.read_csv(path)
        assert len(history) == expected_epochs(cfg), path.name
        assert list(history.epoch) == list(range(1, len(history) + 1))
        # optimizer steps per epoch (the count restarts where a fine-tuning resets Adam)
        steps = np.diff(np.r_[0, history.steps])
        steps = np.where(steps > 0, steps, history.steps)
        assert ((steps >= 1) & (steps <= fastdev.FAST_STEPS)).all(), history.steps.tolist()
    if cfg['learn']['lr_schedule'] == 'cyclic_cosine':
        snapshots = sorted(p.name for p in run_dir.glob('snapshot_*.keras'))
        assert len(snapshots) == folds * cfg['learn']['cycles']
        assert results['ensemble']['n_models'] == len(snapshots)
    if cfg['learn']['mode'] == 'self_verify':
        assert [r['round'] for r in results['self_verification']] == \
            list(range(cfg['learn']['sv_rounds'] + 1))
    return results


@pytest.mark.slow
@pytest.mark.parametrize('path', EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT / 'config')))
def test_every_shipped_yaml_runs_as_a_fast_dev_run(path, layouts, tmp_path, capsys):
    """The YAML as written, but for the dry-run switch, the data and run folders, and how
    the run is shown (ctrl.verbose, ctrl.workers: neither changes a result)."""
    cfg = config.load_config(path)
    n_classes = cfg['learn']['n_classes']
    data, features = layouts(cfg['ctrl']['dataset'], n_classes)
    name = str(path.relative_to(ROOT / 'config').with_suffix('')).replace('/', '_')
    overrides = ['ctrl.fast_dev_run=true', f'ctrl.dataset_path={data}',
                 f'ctrl.features_dir={features}', f'ctrl.logs_dir={tmp_path}',
                 f'ctrl.run_name={name}', 'ctrl.verbose=0', 'ctrl.workers=1']
    t0 = time.perf_counter()
    code = main.run(path, overrides)
    seconds = time.perf_counter() - t0
    out = (tmp_path / f'{name}.out').read_text()
    assert code == 0, out[-3000:]
    check_structure(tmp_path / name, cfg)
    block = evaluation_block(out)
    assert block[1].startswith('FAST DEV RUN: numbers are not results'), block
    print(f'fast dev run of {name}: {seconds:.1f} s')


@pytest.mark.parametrize('path', SWEEP_FILES, ids=lambda p: str(p.relative_to(ROOT / 'sweeps')))
def test_every_shipped_sweep_file_plans_valid_runs(path):
    """A sweep file of sweeps/ names an existing experiment and its every run's config is
    valid (the runs themselves are those of the experiment YAMLs above)."""
    import sweep
    args = sweep.parse_args(['--spec', str(path)])
    spec = sweepspec.resolve(args)
    _, runs = sweep.plan(spec, spec.grid, spec.seeds, spec.configs)
    sweep.check_runs(spec.params, runs)


# ----------------------------------------------------------------------------- the plan

def cut(*overrides):
    cfg = config.load_config(None, ['ctrl.fast_dev_run=true', *overrides])
    mode = learn.MODES[cfg['learn']['mode']]
    return cfg, fastdev.fast_dev_config(cfg, mode)


@pytest.mark.parametrize('overrides, expect', [
    # mode 0: warm-up stage and mixup stage, 2 epochs each
    (['learn.mode=0'], {'n_epochs': 4, 'mixup_warmup_epochs': 2}),
    (['learn.mode=0', 'learn.mixup_warmup_epochs=0'], {'n_epochs': 2, 'mixup_warmup_epochs': 0}),
    (['learn.mode=0', 'learn.n_epochs=1'], {'n_epochs': 1, 'mixup_warmup_epochs': 1}),
    (['learn.mode=1'], {'n_epochs': 2}),
    (['learn.mode=2', 'learn.stage1_epoch=1'], {'n_epochs': 3, 'stage1_epoch': 1}),
    (['learn.mode=3'], {'n_epochs': 4, 'prune_stage1': 2}),
    # staged: 2 epochs of 2 steps per stage; an empty stage stays empty
    (['learn.mode=staged', 'learn.staged_steps=[10000,3,0]'],
     {'staged_steps': [4, 3, 0], 'steps_per_epoch': 2}),
    # cyclic cosine keeps its cycles, 2 epochs each
    (['learn.mode=1', 'learn.lr_schedule=cyclic_cosine', 'learn.n_epochs=512'],
     {'n_epochs': 16, 'cycle_epochs': 2, 'cycles': 8}),
    # ... also with a stage boundary inside it (mode 3 prunes after 2 epochs)
    (['learn.mode=3', 'learn.lr_schedule=cyclic_cosine', 'learn.cycles=2',
      'learn.cycle_epochs=50', 'learn.n_epochs=100'],
     {'n_epochs': 4, 'cycle_epochs': 2, 'prune_stage1': 2}),
    # staged + cyclic: 3 cycles x 2 epochs over stages of 10, 10, 4 epochs: shares 2.5,
    # 2.5, 1 -> 3, 2, 1 epochs (largest remainder, the first of equal remainders first)
    (['learn.mode=staged', 'learn.lr_schedule=cyclic_cosine', 'learn.steps_per_epoch=100',
      'learn.staged_steps=[1000,1000,400]', 'learn.cycles=3', 'learn.cycle_epochs=8'],
     {'staged_steps': [6, 4, 2], 'steps_per_epoch': 2, 'cycle_epochs': 2}),
    # the linear schedule: epochs at lr, then the decay, 2 each (Dorfer & Widmer's round 0)
    (['learn.mode=self_verify', 'learn.lr_schedule=linear', 'learn.n_epochs=500',
      'learn.lr_decay_start=100'],
     {'n_epochs': 4, 'lr_decay_start': 2, 'sv_epochs': 2, 'sv_excerpts': 2}),
    (['learn.mode=1', 'learn.lr_schedule=linear', 'learn.n_epochs=10',
      'learn.lr_decay_start=9'], {'n_epochs': 3, 'lr_decay_start': 2}),
    (['learn.mode=0', 'learn.lr_schedule=linear', 'learn.n_epochs=10',
      'learn.lr_decay_start=1', 'learn.mixup_warmup_epochs=5'],
     {'n_epochs': 4, 'lr_decay_start': 1, 'mixup_warmup_epochs': 2}),
    (['learn.mode=staged', 'learn.lr_schedule=linear', 'learn.steps_per_epoch=10',
      'learn.staged_steps=[10,0,0]', 'learn.lr_decay_start=0'],
     {'staged_steps': [4, 0, 0], 'lr_decay_start': 0}),
    # self-verification: every round kept, each round's fine-tuning 2 epochs
    (['learn.mode=self_verify', 'learn.sv_rounds=10'],
     {'n_epochs': 2, 'sv_epochs': 2, 'sv_rounds': 10, 'sv_excerpts': 2}),
])
def test_every_stage_is_cut_to_two_epochs_and_the_structure_kept(overrides, expect):
    cfg, fast = cut(*overrides)
    assert {k: fast['learn'][k] for k in expect} == expect
    check_schedule(fast, learn.MODES[fast['learn']['mode']].steps)  # whole cycles still
    untouched = set(cfg['learn']) - set(expect) - {'steps_per_epoch', 'cycle_epochs'}
    assert all(fast['learn'][k] == cfg['learn'][k] for k in untouched)
    assert fast['ctrl'] == cfg['ctrl'] and fast['extract'] == cfg['extract']
    assert cfg['learn']['n_epochs'] >= fast['learn']['n_epochs']  # cfg itself is unchanged


def test_without_fast_dev_run_nothing_is_cut():
    cfg = config.load_config(None)
    assert fastdev.fast_dev_config(cfg, learn.MODES[0]) is cfg
    table = pd.DataFrame({'subset': ['train'] * 20, 'verified': 0,
                          'labels_idx': [(0,)] * 20})
    assert fastdev.fast_dev_clips(cfg, table) is table


def test_the_clips_are_cut_per_class_and_part():
    """At most FAST_CLIPS clips of each label in each (subset, verified, noisy_small) part,
    the first in table order; a multi-label clip counts for all its labels."""
    rng = np.random.default_rng(0)
    n = 300
    labels = [tuple(sorted(set(rng.integers(0, 4, size=rng.integers(1, 3)).tolist())))
              for _ in range(n)]
    table = pd.DataFrame({'subset': rng.choice(['train', 'test'], n),
                          'verified': rng.integers(0, 2, n),
                          'noisy_small': rng.integers(0, 2, n), 'labels_idx': labels,
                          'fname': [f'{i}.wav' for i in range(n)]})
    cfg = config.load_config(None, ['ctrl.fast_dev_run=true'])
    kept = fastdev.fast_dev_clips(cfg, table)
    # the rule replayed clip by clip
    counts, expect = {}, []
    for row in table.itertuples():
        part = (row.subset, row.verified, row.noisy_small)
        if any(counts.get((part, c), 0) < fastdev.FAST_CLIPS for c in row.labels_idx):
            expect.append(row.fname)
            for c in row.labels_idx:
                counts[part, c] = counts.get((part, c), 0) + 1
    assert kept.fname.tolist() == expect
    assert kept.index.tolist() == list(range(len(kept)))
    for part, group in table.groupby(['subset', 'verified', 'noisy_small']):
        have = kept.merge(group[['fname']])
        for c in range(4):
            total = sum(c in ls for ls in group.labels_idx)
            got = sum(c in ls for ls in have.labels_idx)
            assert got >= min(total, fastdev.FAST_CLIPS)


# ----------------------------------------------------------------------------- runs

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('fast_tiny')
    return root, tiny_dataset(root / 'data', n_classes=5, train_per_class=16,
                              test_per_class=3, seed=4, noise_rate=0.3)


def test_folds_and_snapshots_are_all_kept(tiny):
    """k folds x cycles of cyclic cosine: every fold trains every cycle (2 epochs of 2
    steps each) and saves its snapshot, and the ensemble averages them all."""
    root, data = tiny
    path = write_tiny_config(root / 'cyclic.yaml', data, root, {
        'ctrl': {'run_name': 'cyclic', 'fast_dev_run': True},
        'learn': {'folds': 2, 'lr_schedule': 'cyclic_cosine', 'cycles': 2, 'cycle_epochs': 20,
                  'n_epochs': 40, 'mode': 1}})
    assert main.run(path) == 0
    results = check_structure(root / 'logs' / 'cyclic', config.load_config(path))
    assert results['ensemble']['folds'] == 2 and results['ensemble']['snapshots'] == 2
    assert all('fast_dev_run' not in fold for fold in results['folds'])
    history = pd.read_csv(root / 'logs' / 'cyclic' / 'history_1.csv')
    # the cosine restarts every 2 epochs: lr at each cycle's first epoch is learn.lr
    assert np.allclose(history.lr.to_numpy()[::2], 0.001)


def test_self_verification_keeps_every_round(tiny):
    root, data = tiny
    path = write_tiny_config(root / 'sv.yaml', data, root, {
        'ctrl': {'run_name': 'sv', 'fast_dev_run': True},
        'learn': {'mode': 'self_verify', 'sv_rounds': 1, 'sv_epochs': 30, 'n_epochs': 50,
                  'batch_size': 16}})
    assert main.run(path) == 0
    check_structure(root / 'logs' / 'sv', config.load_config(path))


def test_a_real_run_never_continues_a_fast_dev_run(tiny, tmp_path):
    """ctrl.fast_dev_run is part of the config a rerun must repeat: an unfinished dry run's
    folder refuses the real run of its name (and a finished one refuses any rerun)."""
    root, data = tiny
    cfg = config.load_config(None, [f'ctrl.logs_dir={tmp_path}', 'ctrl.run_name=r',
                                    'ctrl.fast_dev_run=true'])
    folder = runfolder.RunFolder(cfg)
    folder.open()
    folder.close()  # left unfinished: config.yaml, no results.json
    real = runfolder.RunFolder({**cfg, 'ctrl': {**cfg['ctrl'], 'fast_dev_run': False}})
    with pytest.raises(config.ConfigError, match='ctrl.fast_dev_run'):
        real.open()
    real.close()


# ----------------------------------------------------------------------------- whole clips

def test_whole_clip_recipes_are_cut_in_size_and_stay_valid(tmp_path):
    """He et al.'s recipe under fast_dev_run: crops of 32 frames, clips of 32 + 16, 16 mel
    bands (CNN-GRU's fewest: four halvings), batches of 2, SpecAugment's sizes scaled
    with them (W 80 x 32 / 512 = 5, T 100 x 32 / 512 = 6, F 27 x 16 / 80 = 5); Dorfer &
    Widmer's: VGG-GAP's shortest input (191 frames: a stride-2 conv and five time pools
    before a valid 3x3 conv) and fewest bands (47). The cut configs pass every check of
    config.py as written YAML."""
    he = config.load_config(ROOT / 'config/dcase19_he/system.yaml', ['ctrl.fast_dev_run=true'])
    cut = fastdev.fast_dev_inputs(he)
    assert {k: cut['extract'][k] for k in ('crop_frames', 'clip_frames', 'n_mels')} == \
        {'crop_frames': 32, 'clip_frames': 48, 'n_mels': 16}
    assert cut['learn']['batch_size'] == 2
    assert cut['learn']['specaugment'] == {'time_warp': 5, 'time_width': 6, 'freq_width': 5,
                                           'freq_masks': 1, 'time_masks': 1}
    dorfer = config.load_config(ROOT / 'config/dcase18_dorfer/system.yaml',
                                ['ctrl.fast_dev_run=true'])
    cut2 = fastdev.fast_dev_inputs(dorfer)
    n = next(n for n in range(1, 1000) if (-(-n // 2)) // 2 ** 5 >= 3)  # 191
    m = next(m for m in range(1, 1000) if (-(-m // 2)) // 2 ** 3 >= 3)  # 47
    assert {k: cut2['extract'][k] for k in ('crop_frames', 'clip_frames', 'n_mels')} == \
        {'crop_frames': n, 'clip_frames': n + 16, 'n_mels': m}
    assert cut2['learn']['batch_size'] == 2
    for i, (original, fast) in enumerate(((he, cut), (dorfer, cut2))):
        assert original['extract']['clip_frames'] > fast['extract']['clip_frames']  # a copy
        path = tmp_path / f'{i}.yaml'
        path.write_text(config.config_to_yaml(fast))
        config.load_config(path)  # every check of config.py passes
        rest = {k: v for k, v in fast['extract'].items()
                if k not in ('crop_frames', 'clip_frames', 'n_mels')}
        assert rest == {k: original['extract'][k] for k in rest}
    # a patch recipe, or a real run, is left as it is
    for cfg in (config.load_config(None, ['ctrl.fast_dev_run=true']),
                config.load_config(ROOT / 'config/dcase19_he/system.yaml')):
        assert fastdev.fast_dev_inputs(cfg) is cfg


def test_waveform_recipes_train_on_short_crops_in_small_batches(tmp_path):
    """Akiyama & Sato's EnvNet-v2 (crops of 133,300 samples, batches of 64 + 64, ~10 GB of
    activations on CPU) dry-runs on crops of 32,768 samples (at least EnvNet-v2's 20,570)
    in batches of 2; the cut config passes every check; a waveform crop already shorter is
    kept; a real run is left as it is."""
    import trunks
    path = ROOT / 'config/dcase19_akiyama/envnet.yaml'
    env = config.load_config(path, ['ctrl.fast_dev_run=true'])
    cut = fastdev.fast_dev_inputs(env)
    assert cut['extract']['crop_samples'] == max(2 ** 15, trunks.ENVNET_MIN_SAMPLES) == 32768
    assert cut['learn']['batch_size'] == 2 and env['learn']['batch_size'] == 64
    out = tmp_path / 'cut.yaml'
    out.write_text(config.config_to_yaml(cut))
    config.load_config(out)
    short = config.load_config(path, ['ctrl.fast_dev_run=true', 'extract.crop_samples=20600'])
    assert fastdev.fast_dev_inputs(short)['extract']['crop_samples'] == 20600
    real = config.load_config(path)
    assert fastdev.fast_dev_inputs(real) is real


def test_whole_clip_recipes_keep_four_clips_per_class_and_four_test_clips():
    rng = np.random.default_rng(1)
    n = 200
    labels = [(int(k),) for k in rng.integers(0, 6, n)]
    table = pd.DataFrame({'subset': rng.choice(['train', 'test'], n),
                          'verified': rng.integers(0, 2, n), 'labels_idx': labels,
                          'fname': [f'{i}.wav' for i in range(n)]})
    cfg = config.load_config(ROOT / 'config/dcase18_dorfer/system.yaml',
                             ['ctrl.fast_dev_run=true'])
    kept = fastdev.fast_dev_clips(cfg, table)
    first = table.assign(c=[ls[0] for ls in labels]).groupby(
        ['subset', 'verified', 'c'], sort=False).head(4)  # the first 4 of each class/part
    train = first[first.subset == 'train']
    test = first[first.subset == 'test'].head(fastdev.FAST_SCORED)
    assert sorted(kept.fname) == sorted(pd.concat([train, test]).fname)
    assert (kept.subset == "test").sum() == fastdev.FAST_SCORED


def test_whole_clip_recipes_validate_and_judge_a_few_clips():
    """fast_dev_folds: each fold validates on its first FAST_SCORED validation clips, its
    training rows untouched; cut_judged: the first FAST_SCORED of the clips a fold model
    judges. Neither changes a patch recipe's dry run."""
    folds = [(np.arange(10), np.arange(10, 19)), (np.arange(5), np.array([7, 8]))]
    whole = config.load_config(ROOT / 'config/dcase18_dorfer/system.yaml',
                               ['ctrl.fast_dev_run=true'])
    cut = fastdev.fast_dev_folds(whole, folds)
    assert [t.tolist() for t, _ in cut] == [t.tolist() for t, _ in folds]
    assert [v.tolist() for _, v in cut] == [[10, 11, 12, 13], [7, 8]]
    assert fastdev.cut_judged(whole, np.arange(30, 40)).tolist() == [30, 31, 32, 33]
    patches = config.load_config(None, ['ctrl.fast_dev_run=true'])
    assert fastdev.fast_dev_folds(patches, folds) is folds
    assert fastdev.cut_judged(patches, np.arange(9)).tolist() == list(range(9))
