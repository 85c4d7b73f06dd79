"""subsets.py (ctrl.n_noisy, ctrl.n_clean): the drawn counts and per-class counts against
pandas on the CSV, and the rounding rule against an exact computation written here."""
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import datasets
import experiment
import subsets
from config import ConfigError

# 4 classes with different sizes in each part: (label, verified, clips).
SIZES = [('Wind', 0, 23), ('Rain', 0, 11), ('Fire', 0, 5), ('Slam', 0, 1),
         ('Wind', 1, 7), ('Rain', 1, 4), ('Fire', 1, 3), ('Slam', 1, 2)]


@pytest.fixture
def csv_dataset(tmp_path, fsd):
    write, _, test_rows = fsd
    rows = [(f'{label}{verified}_{i}.wav', label, '/m/x', verified, 0)
            for label, verified, n in SIZES for i in range(n)]
    root = tmp_path / 'FSDnoisy18k'
    write(root, train_rows=rows, test_rows=[('t1.wav', 'Wind', '/m/x')])
    return root, pd.read_csv(root / 'FSDnoisy18k.meta' / 'train.csv')


def hamilton(sizes, n):
    """The documented rule in exact arithmetic: one per class when n >= C, the other
    n - C in proportion to size - 1 (n < C: to size), floors first, then the largest
    fractional parts, ties to the first class."""
    names = list(sizes)
    base = 1 if n >= len(names) else 0
    pool = {c: sizes[c] - base for c in names}
    left, total = n - base * len(names), sum(pool.values())
    share = {c: Fraction(left * pool[c], total) if total else Fraction(0) for c in names}
    got = {c: base + int(share[c]) for c in names}
    rest = n - sum(got.values())
    by_remainder = sorted(names, key=lambda c: (-(share[c] - int(share[c])), names.index(c)))
    for c in by_remainder[:rest]:
        got[c] += 1
    return got


def _split(make_cfg, root, *overrides):
    cfg = make_cfg(f'ctrl.dataset_path={root}', 'ctrl.train_data=all', *overrides)
    table, classes = datasets.load(cfg)
    store = SimpleNamespace(length=np.full(len(table), 10))  # every clip readable
    rows, folds, drawn = experiment.split(cfg, SimpleNamespace(split=None), table, classes,
                                          store)
    return table, rows, folds, drawn


@pytest.mark.parametrize('n_noisy, n_clean', [(20, None), (3, 9), (None, 16), (40, 0)])
def test_drawn_counts_per_class_against_the_csv(make_cfg, csv_dataset, n_noisy, n_clean):
    root, csv = csv_dataset
    over = [f'ctrl.n_noisy={"null" if n_noisy is None else n_noisy}',
            f'ctrl.n_clean={"null" if n_clean is None else n_clean}', 'learn.val_split=0.2']
    table, rows, folds, drawn = _split(make_cfg, root, *over)
    train, val = folds[0]
    assert np.array_equal(np.union1d(train, val), rows)  # the split is of the drawn clips
    picked = csv[csv.fname.isin(table.fname.to_numpy()[rows])]
    per_class = picked.groupby(['manually_verified', 'label']).size()
    for flag, n in ((0, n_noisy), (1, n_clean)):
        sizes = csv[csv.manually_verified == flag].groupby('label', sort=True).size()
        expected = sizes.to_dict() if n is None else hamilton(sizes.to_dict(), n)
        got = per_class[flag].to_dict() if flag in per_class.index.levels[0] else {}
        assert {c: got.get(c, 0) for c in sizes.index} == expected, flag
    assert drawn == {'n_noisy': int((picked.manually_verified == 0).sum()),
                     'n_clean': int((picked.manually_verified == 1).sum())}
    assert drawn['n_noisy'] == (n_noisy if n_noisy is not None else 40)


def test_the_draw_depends_on_the_seed_only(make_cfg, csv_dataset):
    root, _ = csv_dataset
    a = _split(make_cfg, root, 'ctrl.n_noisy=10', 'ctrl.seed=1')[1]
    assert np.array_equal(a, _split(make_cfg, root, 'ctrl.n_noisy=10', 'ctrl.seed=1')[1])
    assert not np.array_equal(a, _split(make_cfg, root, 'ctrl.n_noisy=10', 'ctrl.seed=2')[1])


def test_no_keys_draw_nothing_and_change_no_split(make_cfg, csv_dataset):
    root, _ = csv_dataset
    table, rows, folds, drawn = _split(make_cfg, root)
    assert drawn == {} and rows.size == len(table[table.subset == 'train'])


def test_quotas_rule_cases():
    assert subsets.quotas([23, 11, 5, 1], 4).tolist() == [1, 1, 1, 1]
    assert subsets.quotas([23, 11, 5, 1], 2).tolist() == [1, 1, 0, 0]  # n < C: by size
    assert subsets.quotas([5, 5], 3).tolist() == [2, 1]  # a tie goes to the first class
    assert subsets.quotas([23, 11, 5, 1], 40).tolist() == [23, 11, 5, 1]


def test_more_than_available_is_one_line(make_cfg, csv_dataset):
    root, _ = csv_dataset
    with pytest.raises(ConfigError, match=r'^ctrl.n_clean = 17 exceeds the 16 readable '
                                          r'verified clips'):
        _split(make_cfg, root, 'ctrl.n_clean=17')
    with pytest.raises(ConfigError, match='ctrl.n_noisy'):
        make_cfg('ctrl.n_noisy=-1')


def test_results_json_gets_the_drawn_counts_only_when_set():
    from results import Results
    results = Results()
    results.subset_drawn({})
    assert 'n_noisy' not in results.to_json()
    results.subset_drawn({'n_noisy': 3, 'n_clean': 16})
    assert results.to_json() == {'n_noisy': 3, 'n_clean': 16}


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from conftest import tiny_dataset
    root = tmp_path_factory.mktemp('subsets')
    return root, tiny_dataset(root / 'tiny', n_classes=3, train_per_class=8,
                              test_per_class=2, seed=6)


def test_a_run_logs_and_reports_the_drawn_counts_and_refuses_too_many(tiny, capsys):
    import json
    import main
    from conftest import write_tiny_config
    root, data = tiny
    csv = pd.read_csv(data / 'FSDnoisy18k.meta' / 'train.csv')
    n_verified = int((csv.manually_verified == 1).sum())
    params = write_tiny_config(root / 'deng.yaml', data, root, {
        'ctrl': {'workers': 1, 'n_noisy': 6}, 'extract': {'n_mels': 16},
        'learn': {'n_classes': 3, 'n_epochs': 1}})
    assert main.main(['-p', str(params), '-o', 'ctrl.run_name=drawn']) == 0
    results = json.loads((root / 'logs' / 'drawn' / 'results.json').read_text())
    assert (results['n_noisy'], results['n_clean']) == (6, n_verified)
    log = (root / 'logs' / 'drawn.out').read_text()
    assert f'6 unverified + {n_verified} verified clips of {len(csv)}' in log
    capsys.readouterr()
    code = main.main(['-p', str(params), '-o', 'ctrl.run_name=many',
                      '-o', f'ctrl.n_clean={n_verified + 1}'])
    err = capsys.readouterr().err
    assert code == 2 and 'Traceback' not in err
    assert err.strip().splitlines()[-1] == (
        f'error: ctrl.n_clean = {n_verified + 1} exceeds the {n_verified} readable verified '
        f'clips of the training subset (ctrl.train_data)')
    assert not (root / 'logs' / 'many').exists()
