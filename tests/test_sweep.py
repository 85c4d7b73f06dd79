"""sweep.py: grids x seeds on embedded Ray, summaries with t confidence intervals."""
import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import config
import sweep
import sweep_summary
from conftest import tiny_dataset, write_tiny_config


def ci(values):
    """Independent 95 % t interval of the mean (scipy's own interval function)."""
    values = np.asarray(values, float)
    return stats.t.interval(0.95, values.size - 1, loc=values.mean(), scale=stats.sem(values))


def test_run_names_are_readable_unique_and_file_safe():
    args = sweep.parse_args(['-p', 'config/demo.yaml', '--grid', 'loss.type=CCE,lq_loss',
                             '--grid', 'ctrl.dataset_path=a/b,"c d"', '--seeds', '0,1'])
    grid = sweep.parse_grid(args.grid)
    assert grid == {'loss.type': ['CCE', 'lq_loss'], 'ctrl.dataset_path': ['a/b', 'c d']}
    name, runs = sweep.plan(args, grid, [0, 1])
    assert name == 'demo-loss.type-ctrl.dataset_path' and len(runs) == 8
    assert runs[0].name == f'{name}/loss.type=CCE,ctrl.dataset_path=a_b_seed0'
    assert len({r.name for r in runs}) == 8
    assert all(re.fullmatch(r'[\w.=,+-]+/[\w.=,+-]+', r.name) for r in runs)
    assert runs[3].overrides == ['loss.type=CCE', 'ctrl.dataset_path=c d', 'ctrl.seed=1',
                                 f'ctrl.run_name={runs[3].name}']
    for r in runs:  # every name is a valid ctrl.run_name
        config.load_config(None, [f'ctrl.run_name={r.name}'])
    # Lists as grid values; values that collide once sanitised are refused.
    assert sweep.parse_grid(['learn.staged_steps=[1,1,1],[2,2,1]']) == {
        'learn.staged_steps': [[1, 1, 1], [2, 2, 1]]}
    with pytest.raises(config.ConfigError, match='same run name'):
        sweep.plan(args, {'ctrl.dataset_path': ['a/b', 'a b']}, [0])


@pytest.mark.parametrize('argv, message', [
    (['--grid', 'loss.typo=CCE,lq_loss'], 'unknown config key loss.typo'),
    (['--grid', 'loss.type=CCE,nope'], "loss.type 'nope' is unknown"),
    (['--grid', 'loss.type'], 'must look like section.key=v1,v2'),
    (['--grid', 'loss.type=CCE', '--seeds', 'a,b'], '--seeds'),
    (['--grid', 'loss.type=CCE', '--baseline', 'loss.type=lq_loss'], 'not one of the grid'),
    (['--grid', 'loss.type=CCE', '--cpus-per-run', '0'], '--cpus-per-run must be above 0'),
])
def test_mistakes_stop_the_sweep_with_one_line(tmp_path, capsys, argv, message):
    assert sweep.main(['-p', 'config/demo.yaml', '-o', f'ctrl.logs_dir={tmp_path}', *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err and err.count('\n') == 1
    assert not any(tmp_path.iterdir())  # nothing ran


def test_summary_and_paired_differences_match_scipy():
    grid = {'loss.type': ['CCE', 'lq_loss', 'adaptive_lq']}
    rng = np.random.default_rng(0)
    rows = [{'run': f'r{t}{s}', 'point': f'loss.type={t}', 'loss.type': t, 'seed': s,
             'status': 'finished', 'accuracy_micro': rng.normal(60, 5),
             'per_class.a.accuracy': rng.normal(50, 5)}
            for t in grid['loss.type'] for s in range(4)]
    rows[-1].update(status='failed', accuracy_micro=np.nan, **{'per_class.a.accuracy': np.nan})
    frame = pd.DataFrame(rows)
    summary = sweep_summary.summarise(frame, grid, {'loss.type': 'CCE'}).set_index('point')
    for t in grid['loss.type']:
        ok = frame[(frame['loss.type'] == t) & (frame.status == 'finished')]
        row = summary.loc[f'loss.type={t}']
        assert row.n == len(ok)
        for m in ('accuracy_micro', 'per_class.a.accuracy'):
            assert row[f'{m}_mean'] == pytest.approx(ok[m].mean())
            assert row[f'{m}_std'] == pytest.approx(np.std(ok[m], ddof=1))
            assert (row[f'{m}_ci95_low'], row[f'{m}_ci95_high']) == pytest.approx(ci(ok[m]))
        base = frame[frame['loss.type'] == 'CCE'].set_index('seed').accuracy_micro
        diff = (ok.set_index('seed').accuracy_micro - base).dropna()
        assert row.n_pairs == len(diff)
        assert row.accuracy_micro_diff_mean == pytest.approx(diff.mean())
        if t != 'CCE':
            assert (row.accuracy_micro_diff_ci95_low,
                    row.accuracy_micro_diff_ci95_high) == pytest.approx(ci(diff))
    # Counts and per-class figures stay out of the paired differences and the table.
    assert 'per_class.a.accuracy_diff_mean' not in summary.columns
    md = sweep_summary.markdown(summary.reset_index(), ['accuracy_micro'], grid, {'loss.type': 'CCE'})
    assert md.count('\n| ') == 3 and 'accuracy_micro 95 % CI' in md


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('sweep')
    data = tiny_dataset(root / 'data', n_classes=5, train_per_class=12, test_per_class=4,
                        seed=4)
    return root, write_tiny_config(root / 'tiny.yaml', data, root, {'learn': {'n_epochs': 1}})


@pytest.mark.slow
def test_sweep_runs_on_ray_summarises_and_skips_finished_runs(tiny, capsys, readable_png):
    root, params = tiny
    argv = ['-p', str(params), '--grid', 'learn.lr=0.001,0.003', '--seeds', '0,1',
            '--name', 'tiny', '--cpus-per-run', '1', '--baseline', 'learn.lr=0.001']
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert 'skipped 0 finished runs' in out and '4 runs finished, 0 failed' in out
    logs = root / 'logs'
    results = [json.loads(p.read_text()) for p in sorted(logs.glob('tiny/*/results.json'))]
    names = sorted(r['run_name'] for r in results)
    assert names == [f'tiny/learn.lr={lr}_seed{s}' for lr in ('0.001', '0.003') for s in (0, 1)]
    # Features were extracted once, before the runs: every run found the cache.
    for name in names:
        assert 'using cached features' in (logs / f'{name}.out').read_text()

    sweep_dir = logs / 'sweeps' / 'tiny'
    runs = pd.read_csv(sweep_dir / 'runs.csv')
    assert len(runs) == 4 and (runs.status == 'finished').all()
    assert {'learn.lr', 'seed', 'accuracy_micro', 'wall_time_s'} <= set(runs.columns)
    assert any(c.startswith('per_class.') for c in runs.columns)
    summary = pd.read_csv(sweep_dir / 'summary.csv')
    assert list(summary.n) == [2, 2]
    for _, row in summary.iterrows():
        acc = runs[runs['learn.lr'] == row['learn.lr']].accuracy_micro
        assert row.accuracy_micro_mean == pytest.approx(acc.mean(), abs=1e-3)
        expected = ci(acc) if acc.std() > 0 else (acc.mean(), acc.mean())  # seeds may tie
        assert (row.accuracy_micro_ci95_low, row.accuracy_micro_ci95_high) == pytest.approx(
            expected, abs=1e-3)
    assert summary.accuracy_micro_diff_mean[0] == 0
    md = (sweep_dir / 'summary.md').read_text()
    assert 'accuracy_micro mean' in md and 'accuracy_micro 95 % CI' in md
    readable_png(sweep_dir / 'summary.png')

    # The same sweep again: nothing runs, the summary is rewritten.
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert 'skipped 4 finished runs' in out and '0 runs finished' in out
    assert len(pd.read_csv(sweep_dir / 'runs.csv')) == 4


class FakeRay:
    """Ray's task API, run in order, with a given outcome per run name (no processes).

    A task's ref is its run name (its last override is ctrl.run_name=...).
    """

    def __init__(self, outcomes):
        self.outcomes, self.options_seen = outcomes, None

    def remote(self, fn):
        assert fn is sweep.run_one
        ray = self

        class Task:
            def options(self, **options):
                ray.options_seen = options
                return self

            def remote(self, cwd, params, overrides):
                return overrides[-1].split('=', 1)[1]
        return Task()

    def wait(self, refs, num_returns, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        if isinstance(self.outcomes[ref], Exception):
            raise self.outcomes[ref]
        return self.outcomes[ref]


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, capsys):
    runs = [sweep.Run(f's/p_seed{i}', 'p', {}, i, [f'ctrl.run_name=s/p_seed{i}'])
            for i in range(3)]
    ray = FakeRay({'s/p_seed0': (0, 'done'), 's/p_seed1': (2, 'error: ctrl.train_data x'),
                   's/p_seed2': RuntimeError('Traceback ...\n  File "x"\nValueError: boom')})
    failed = sweep.execute(ray, runs, 'p.yaml', 0.5, 0.25)
    assert failed == {'s/p_seed1': 'exit code 2: error: ctrl.train_data x',
                      's/p_seed2': 'ValueError: boom'}
    assert ray.options_seen == {'num_cpus': 0.5, 'num_gpus': 0.25, 'max_retries': 0}
    out = capsys.readouterr().out
    assert 'run s/p_seed1 failed: exit code 2' in out and 'run s/p_seed2 failed' in out


@pytest.mark.slow
def test_errors_of_real_runs_reach_the_sweep(tiny, capsys):
    """Through Ray: a run that stops before training (exit 2; it removes its own .out) and
    one that diverges (exit 1, results.json status diverged) are reported with their one
    line, in the output and in runs.csv, and neither counts in the summary."""
    root, params = tiny
    argv = ['-p', str(params), '--grid', 'learn.val_split=0.01,0.2', '--name', 'broken',
            '-o', 'learn.lr=1e30']
    assert sweep.main(argv) == 1
    out = capsys.readouterr().out
    no_val = 'learn.val_split 0.01 leaves no validation clip'
    assert re.search(rf'failed: broken/learn.val_split=0.01_seed0: exit code 2: error: '
                     rf'{no_val}', out), out
    assert re.search(r'diverged: broken/learn.val_split=0.2_seed0: training diverged: the '
                     r'loss is nan at epoch 1', out), out
    assert '0 runs finished, 1 failed, 1 diverged' in out
    assert not (root / 'logs' / 'broken' / 'learn.val_split=0.01_seed0.out').exists()
    runs = pd.read_csv(root / 'logs' / 'sweeps' / 'broken' / 'runs.csv').set_index('run')
    failed, diverged = runs.loc['broken/learn.val_split=0.01_seed0'], runs.loc[
        'broken/learn.val_split=0.2_seed0']
    assert failed.status == 'failed' and failed.error.startswith(f'exit code 2: error: {no_val}')
    assert diverged.status == 'diverged' and diverged.error.startswith('training diverged')
    assert (runs.overrides == '-o learn.lr=1e30').all()
    assert not {'epoch', 'step'} & set(runs.columns)  # where it diverged: no metric
    summary = pd.read_csv(root / 'logs' / 'sweeps' / 'broken' / 'summary.csv')
    assert list(summary.n) == [0, 0]


def _results(tmp, name, **results):
    """A results.json as main.py writes it."""
    path = tmp / 'logs' / name / 'results.json'
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({'run_name': name, **results}))


def test_ended_runs_are_skipped_and_only_finished_ones_summarised(tiny, capsys):
    """Every run has ended (nothing runs, Ray is not started): diverged runs are skipped
    and counted apart, kept out of n, mean and CI; summary.md and the paired differences
    show real metrics only, not counts or echoes of the config."""
    root, params = tiny
    acc = {(0.001, 0): 60.0, (0.001, 1): 70.0, (0.001, 2): 62.5, (0.1, 2): 40.0}
    precision = {0: 0.5, 1: 0.75, 2: 0.25}
    for (lr, seed), value in acc.items():
        _results(root, f'ended/learn.lr={lr}_seed{seed}', status='finished',
                 accuracy_micro=value, n_files_evaluated=20, wall_time_s=10.0 + seed,
                 evaluated_epoch=1, per_class={'a': {'accuracy': value, 'n_files': 10}},
                 label_noise={'rate': 0.4, 'kind': 'symmetric', 'share_changed': 0.38},
                 noise_detection={'precision': precision[seed], 'recall': 0.5,
                                  'n_flagged': 4 + seed, 'n_wrong': 8})
    for seed in (0, 1):
        _results(root, f'ended/learn.lr=0.1_seed{seed}', status='diverged', epoch=2, step=7,
                 message=f'training diverged: the loss is nan at epoch 2, step 7 ({seed})')
    argv = ['-p', str(params), '--grid', 'learn.lr=0.001,0.1', '--seeds', '0,1,2',
            '--name', 'ended', '--baseline', 'learn.lr=0.001', '-o', 'learn.n_epochs=1',
            '-o', 'ctrl.dataset_path=' + str(root / 'data')]
    assert sweep.main(argv) == 1  # two runs of the sweep have no result
    out = capsys.readouterr().out
    assert 'skipped 4 finished runs and runs that ended without a result: 2 diverged' in out
    assert '0 runs finished, 0 failed, 0 diverged, 0 collapsed' in out

    sweep_dir = root / 'logs' / 'sweeps' / 'ended'
    runs = pd.read_csv(sweep_dir / 'runs.csv')
    assert list(runs.status) == ['finished'] * 3 + ['diverged', 'diverged', 'finished']
    assert runs.error[3] == 'training diverged: the loss is nan at epoch 2, step 7 (0)'
    assert not {'epoch', 'step'} & set(runs.columns)
    assert (runs.overrides == f'-o learn.n_epochs=1 -o ctrl.dataset_path={root}/data').all()
    summary = pd.read_csv(sweep_dir / 'summary.csv').set_index('learn.lr')
    assert summary.n.to_dict() == {0.001: 3, 0.1: 1}
    base = [acc[0.001, s] for s in range(3)]
    assert summary.accuracy_micro_mean[0.001] == pytest.approx(np.mean(base))
    assert (summary.accuracy_micro_ci95_low[0.001],
            summary.accuracy_micro_ci95_high[0.001]) == pytest.approx(ci(base))
    assert summary.accuracy_micro_mean[0.1] == 40.0  # the diverged seeds are not in it
    assert summary.n_pairs[0.1] == 1
    assert summary.accuracy_micro_diff_mean[0.1] == pytest.approx(40.0 - acc[0.001, 2])
    assert summary['noise_detection.precision_mean'][0.001] == pytest.approx(0.5)
    # Paired differences and the table: metrics only.
    diffs = {c[:-len('_diff_mean')] for c in summary.columns if c.endswith('_diff_mean')}
    assert diffs == {'accuracy_micro', 'noise_detection.precision', 'noise_detection.recall'}
    md = (sweep_dir / 'summary.md').read_text()
    head = md.splitlines()[2]
    shown = {c[:-len(' mean')] for c in head.strip('| ').split(' | ') if c.endswith(' mean')}
    assert shown == diffs


def test_a_rerun_says_the_results_are_incomplete_as_the_first_run_did(tiny, capsys):
    """Issue 19, cases 13, 8 and 3: every run has ended, one finished, one diverged, one
    collapsed and one with a corrupt results.json. Each call (nothing runs) reports the
    corrupt one as failed with its path and goes on, writes runs.csv and the summary, lists
    every run without a result, and exits 1 because the sweep's results are incomplete."""
    root, params = tiny
    _results(root, 'rerun/learn.lr=0.001_seed0', status='finished', accuracy_micro=60.0)
    corrupt = root / 'logs' / 'rerun' / 'learn.lr=0.001_seed1' / 'results.json'
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text('{"status": "fini')
    _results(root, 'rerun/learn.lr=0.1_seed0', status='diverged', epoch=1, step=2,
             message='training diverged: the loss is nan at epoch 1, step 2')
    _results(root, 'rerun/learn.lr=0.1_seed1', status='collapsed', epoch=3,
             message='training collapsed: at epoch 3 the training loss ...')
    argv = ['-p', str(params), '--grid', 'learn.lr=0.001,0.1', '--seeds', '0,1',
            '--name', 'rerun', '-o', 'ctrl.dataset_path=' + str(root / 'data')]
    for _ in range(2):
        assert sweep.main(argv) == 1
        out = capsys.readouterr().out
        assert ('skipped 1 finished runs and runs that ended without a result: 1 failed, '
                '1 diverged, 1 collapsed') in out
        assert (f'  failed: rerun/learn.lr=0.001_seed1: {corrupt} is unreadable '
                f'(JSONDecodeError: ') in out
        assert '  diverged: rerun/learn.lr=0.1_seed0: training diverged' in out
        assert '  collapsed: rerun/learn.lr=0.1_seed1: training collapsed' in out
        assert '3 of 4 runs of the sweep have no result: it is incomplete' in out
        runs = pd.read_csv(root / 'logs' / 'sweeps' / 'rerun' / 'runs.csv')
        assert list(runs.status) == ['finished', 'failed', 'diverged', 'collapsed']
        assert runs.error[1].startswith(f'{corrupt} is unreadable')
        summary = pd.read_csv(root / 'logs' / 'sweeps' / 'rerun' / 'summary.csv')
        assert list(summary.n) == [1, 0]


# ----------------------------------------------------------------------------- sweep files

def resolve(*argv):
    import sweepspec
    return sweepspec.resolve(sweep.parse_args(list(argv)))


def test_a_sweep_file_holds_every_option_and_the_command_line_overrides_it(tmp_path):
    import sweepspec
    (tmp_path / 'recipes').mkdir()
    exp = tmp_path / 'recipes' / 'exp.yaml'
    exp.write_text('learn:\n  mode: 1\n')
    spec = tmp_path / 'recipes' / 'table.yaml'
    spec.write_text('params: exp.yaml  # relative to this file\n'
                    'name: table2\n'
                    'grid:\n  loss.type: [CCE, lq_loss]\n  learn.lr: [0.001, 0.01]\n'
                    'seeds: [0, 1, 2]\n'
                    'baseline: {loss.type: CCE}\n'
                    'overrides: {ctrl.inject_noise.rate: 0.4, learn.n_epochs: 3, '
                    'ctrl.run_name: "true"}\n')
    s = resolve('--spec', str(spec))
    assert s.params == str(exp) and s.configs is None and s.name == 'table2'
    assert s.grid == {'loss.type': ['CCE', 'lq_loss'], 'learn.lr': [0.001, 0.01]}
    assert s.seeds == [0, 1, 2] and s.baseline == {'loss.type': 'CCE'}
    assert s.override == ['ctrl.inject_noise.rate=0.4', 'learn.n_epochs=3',
                          'ctrl.run_name="true"']
    # every override reads back as the file's value (the string 'true' stays a string)
    assert [config.parse_override(o)[2] for o in s.override] == [0.4, 3, 'true']
    # the command line over the file: per --grid / -o key, whole --seeds / --name / baseline
    s = resolve('--spec', str(spec), '--grid', 'learn.lr=0.1', '--seeds', '5', '--name', 'x',
                '-o', 'learn.n_epochs=7', '--baseline', 'loss.type=lq_loss')
    assert s.grid == {'loss.type': ['CCE', 'lq_loss'], 'learn.lr': [0.1]}
    assert s.seeds == [5] and s.name == 'x' and s.baseline == {'loss.type': 'lq_loss'}
    assert s.override == ['ctrl.inject_noise.rate=0.4', 'ctrl.run_name="true"',
                          'learn.n_epochs=7']
    assert resolve('--spec', str(spec), '-p', 'config/demo.yaml').params == 'config/demo.yaml'
    # params relative to the repository when not beside the file
    other = tmp_path / 'other.yaml'
    other.write_text('params: config/demo.yaml\ngrid: {loss.type: [CCE]}\n')
    assert resolve('--spec', str(other)).params == str(sweepspec.ROOT / 'config' / 'demo.yaml')
    assert resolve('--spec', str(other)).seeds == [0]  # the command line's default


@pytest.mark.parametrize('text, message', [
    ('params: config/demo.yaml\ngird: {loss.type: [CCE]}\n', "unknown key 'gird'; valid keys"),
    ('params: config/demo.yaml\ngrid: [loss.type]\n', 'grid must be a mapping'),
    ('params: config/demo.yaml\ngrid: {loss.type: CCE}\n', 'grid entries are section.key'),
    ('params: config/demo.yaml\ngrid: {loss.type: [CCE]}\nseeds: [a]\n', 'must be integers'),
    ('params: config/demo.yaml\ngrid: {loss.type: [CCE]}\nbaseline: {loss.type: Lq}\n',
     'not one of the grid values'),
    ('params: nowhere.yaml\ngrid: {loss.type: [CCE]}\n', 'params nowhere.yaml: no such file'),
    ('grid: {loss.type: [CCE]}\n', 'give the experiments'),
    ('params: config/demo.yaml\nconfigs: [config/demo.yaml]\n', 'params or configs, not both'),
    ('- params\n', 'must be a mapping of params'),
])
def test_mistakes_in_a_sweep_file_are_one_line(tmp_path, capsys, text, message):
    spec = tmp_path / 'spec.yaml'
    spec.write_text(text)
    assert sweep.main(['--spec', str(spec), '-o', f'ctrl.logs_dir={tmp_path}']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err and err.count('\n') == 1
    assert list(tmp_path.iterdir()) == [spec]


@pytest.mark.parametrize('argv, message', [
    ([], 'give the experiments: -p CONFIG.yaml, --configs'),
    (['-p', 'config/demo.yaml', '--configs', 'config/waspaa19/cce.yaml'], 'not both'),
    (['--configs', 'config/waspaa19/cce.yaml', 'cce.yaml'], "the same stem 'cce'"),
    (['-p', 'config/demo.yaml'], 'give at least one --grid'),
    (['--configs', 'config/waspaa19/cce.yaml', 'config/waspaa19/lq.yaml', '--baseline', 'lsr'],
     '--baseline config=lsr is not one of the grid values cce, lq'),
])
def test_the_experiments_are_given_once(tmp_path, capsys, argv, message):
    assert sweep.main([*argv, '-o', f'ctrl.logs_dir={tmp_path}']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err and err.count('\n') == 1


def test_configs_are_a_grid_axis_named_by_their_stems():
    s = resolve('--configs', 'config/waspaa19/cce.yaml', 'config/waspaa19/lq.yaml',
                '--grid', 'learn.lr=0.001,0.01', '--seeds', '0,1', '--baseline', 'cce',
                '-o', 'learn.n_epochs=2')
    assert s.grid == {'config': ['cce', 'lq'], 'learn.lr': [0.001, 0.01]}
    assert s.baseline == {'config': 'cce'}
    assert resolve('--configs', 'config/waspaa19/cce.yaml', 'config/waspaa19/lq.yaml',
                   '--grid', 'learn.lr=0.001,0.01',
                   '--baseline', 'config=lq,learn.lr=0.01').baseline == {'config': 'lq',
                                                                          'learn.lr': 0.01}
    name, runs = sweep.plan(s, s.grid, s.seeds, s.configs)
    assert name == 'cce+lq-learn.lr' and len(runs) == 8
    assert len({r.name for r in runs}) == 8
    assert runs[0].name == f'{name}/config=cce,learn.lr=0.001_seed0'
    assert runs[-1].name == f'{name}/config=lq,learn.lr=0.01_seed1'
    assert [r.params for r in runs] == ['config/waspaa19/cce.yaml'] * 4 + \
        ['config/waspaa19/lq.yaml'] * 4
    # 'config' is no config key: it picks the file, it is no override
    assert runs[-1].overrides == ['learn.n_epochs=2', 'learn.lr=0.01', 'ctrl.seed=1',
                                  f'ctrl.run_name={runs[-1].name}']
    cfgs = sweep.check_runs(None, runs)
    assert [c['loss']['type'] for c in cfgs] == ['CCE'] * 4 + ['lq_loss'] * 4


def test_a_sweep_mixing_fast_dev_and_real_runs_is_refused(tiny, capsys):
    root, params = tiny
    argv = ['-p', str(params), '--grid', 'learn.lr=0.001,0.1', '--name', 'mixed']
    _results(root, 'mixed/learn.lr=0.001_seed0', status='finished', accuracy_micro=50.0,
             fast_dev_run=True)
    # one finished dry run, one real run still to run
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: the sweep mixes 1 fast-dev runs') and err.count('\n') == 1
    _results(root, 'mixed/learn.lr=0.1_seed0', status='finished', accuracy_micro=60.0)
    assert sweep.main(argv) == 2  # both finished, of two kinds: not summarised
    assert 'mixes 1 fast-dev runs (ctrl.fast_dev_run' in capsys.readouterr().err
    assert not (root / 'logs' / 'sweeps' / 'mixed').exists()


@pytest.mark.slow
def test_a_fast_dev_sweep_over_configs_runs_and_summarises(tiny, capsys):
    """--configs with -o ctrl.fast_dev_run=true: every run a dry run, the config column in
    runs.csv and summary.csv, paired differences to the baseline file."""
    root, params = tiny
    other = root / 'tiny_lq.yaml'
    other.write_text(params.read_text().replace('type: CCE', 'type: lq_loss'))
    argv = ['--configs', str(params), str(other), '--baseline', 'tiny', '--name', 'fastcfg',
            '-o', 'ctrl.fast_dev_run=true']
    assert sweep.main(argv) == 0
    runs = pd.read_csv(root / 'logs' / 'sweeps' / 'fastcfg' / 'runs.csv')
    assert list(runs.config) == ['tiny', 'tiny_lq'] and (runs.status == 'finished').all()
    for name in runs.run:
        results = json.loads((root / 'logs' / name / 'results.json').read_text())
        assert results['fast_dev_run'] is True and results['run_name'] == name
    summary = pd.read_csv(root / 'logs' / 'sweeps' / 'fastcfg' / 'summary.csv')
    assert list(summary.config) == ['tiny', 'tiny_lq'] and list(summary.n) == [1, 1]
    assert summary.accuracy_micro_diff_mean[0] == 0
    assert summary.accuracy_micro_diff_mean[1] == pytest.approx(
        runs.accuracy_micro[1] - runs.accuracy_micro[0], abs=1e-3)


def test_summary_clips_intervals_to_the_range_marks_them_and_flags_idle_methods(tmp_path):
    """Two seeds of 20 and 95 % accuracy: the t interval passes 100 % and shows clipped
    with †, summary.csv keeps the computed end; a point of one run shows '-' for its
    interval; a run whose method did nothing is counted and flagged on the console."""
    grid = {'learn.mode': [1, 3]}
    rows = [{'run': f'r{m}{s}', 'point': f'learn.mode={m}', 'learn.mode': m, 'seed': s,
             'status': 'finished', 'method_acted': (False if m == 3 else None),
             'accuracy_micro': acc, 'lwlrap': 0.5}
            for m, s, acc in ((1, 0, 20.0), (1, 1, 95.0), (3, 0, 50.0))]
    frame = pd.DataFrame(rows)
    summary, md, shown = sweep_summary.write_outputs(tmp_path, 's', frame, grid,
                                                     {'learn.mode': 1}, 'accuracy_micro')
    high = ci([20.0, 95.0])[1]
    assert high > 100 and summary.accuracy_micro_ci95_high[0] == pytest.approx(high)
    saved = pd.read_csv(tmp_path / 'summary.csv')
    assert saved.accuracy_micro_ci95_high[0] == pytest.approx(high, rel=1e-5)
    row1, row3 = md.splitlines()[2], md.splitlines()[3]
    assert '100†]' in row1 and '[, ]' not in md and '| - |' in row3
    assert sweep_summary.CLIPPED_NOTE in md and 'method did nothing' in md
    assert list(summary.n_method_idle) == [0, 1]
    lines = shown.splitlines()
    assert lines[0].split() == ['point', 'n', 'accuracy_micro', 'mean', '%', '95', '%', 'CI',
                                '-', 'baseline', '95', '%', 'CI']
    assert 'lwlrap' not in shown and '100†]' in lines[1]
    assert lines[2].endswith('! method did nothing in 1 of 1 runs')
    assert sweep_summary.clip(-0.2, 'lwlrap') == (0.0, True)
    assert sweep_summary.clip(-150.0, 'accuracy_micro', diff=True) == (-100.0, True)
    assert sweep_summary.clip(3.5, 'dprime') == (3.5, False)


def test_progress_shows_each_started_run_and_its_epoch(tmp_path):
    """The bar's postfix: runs with a history.csv and their epochs (the newest history of
    a run that trains folds), nothing for a run that has not started."""
    def cfg(name):
        return {'ctrl': {'logs_dir': str(tmp_path), 'run_name': f's/{name}'},
                'learn': {'n_epochs': 6}}
    (tmp_path / 's' / 'a_seed0').mkdir(parents=True)
    (tmp_path / 's' / 'a_seed0' / 'history.csv').write_text('epoch,loss\n1,2.0\n2,1.5\n')
    (tmp_path / 's' / 'b_seed0').mkdir()
    (tmp_path / 's' / 'b_seed0' / 'history_1.csv').write_text('epoch,loss\n1,2.0\n')
    runs = {name: sweep.Run(f's/{name}', 'p', {}, 0, []) for name in
            ('a_seed0', 'b_seed0', 'c_seed0')}
    cfgs = {f's/{name}': cfg(name) for name in runs}
    assert sweep.in_flight(runs, cfgs) == 'a_seed0 epoch 2/6; b_seed0 fold 1 epoch 1/6'
