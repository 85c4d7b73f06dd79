"""sweep.py: grids x seeds on embedded Ray, summaries with t confidence intervals."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

import config
import sweep
import synthetic
from test_e2e import TINY


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
    summary = sweep.summarise(frame, grid, {'loss.type': 'CCE'}).set_index('point')
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
    md = sweep.markdown(summary.reset_index(), ['accuracy_micro'], grid, {'loss.type': 'CCE'})
    assert md.count('\n| ') == 3 and 'accuracy_micro 95 % CI' in md


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('sweep')
    data = synthetic.make_dataset(root / 'data', n_classes=5, train_per_class=12,
                                  test_per_class=4, clean_fraction=0.3, noise_rate=0.0,
                                  min_dur=0.5, max_dur=1.0, sr=16000, seed=4)
    cfg = {section: dict(values) for section, values in TINY.items()}
    cfg['ctrl'].update(dataset_path=str(data), features_dir=str(root / 'features'),
                       logs_dir=str(root / 'logs'))
    cfg['learn'].update(n_epochs=1)
    path = root / 'tiny.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return root, path


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

    def wait(self, refs, num_returns):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        if isinstance(self.outcomes[ref], Exception):
            raise self.outcomes[ref]
        return self.outcomes[ref]


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, capsys):
    runs = [sweep.Run(f's/p_seed{i}', 'p', {}, i, [f'ctrl.run_name=s/p_seed{i}'],
                      tmp_path / f'p_seed{i}.out') for i in range(3)]
    runs[1].log.write_text('resolved config:\n...\nerror: ctrl.train_data all is needed\n\n')
    ray = FakeRay({'s/p_seed0': 0, 's/p_seed1': 2,
                   's/p_seed2': RuntimeError('Traceback ...\n  File "x"\nValueError: boom')})
    failed = sweep.execute(ray, runs, 'p.yaml', 0.5, 0.25)
    assert failed == {'s/p_seed1': 'exit code 2: error: ctrl.train_data all is needed',
                      's/p_seed2': 'ValueError: boom'}
    assert ray.options_seen == {'num_cpus': 0.5, 'num_gpus': 0.25, 'max_retries': 0}
    out = capsys.readouterr().out
    assert 'run s/p_seed1 failed: exit code 2' in out and 'run s/p_seed2 failed' in out
