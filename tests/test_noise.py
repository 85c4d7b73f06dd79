"""ctrl.inject_noise: controlled label noise on the clip table (datasets.inject_noise)."""
import numpy as np
import pandas as pd
import pytest

import config
import datasets
from conftest import clip_table

K = 6
CLASSES = [f'class{k}' for k in range(K)]


def table(n_unverified=200, n_verified=60, n_test=40):
    return clip_table(CLASSES, n_unverified, n_verified, n_test, seed=3)


def spec(**kw):
    return config.load_config(None, [f'ctrl.inject_noise.{k}={v}' for k, v in kw.items()]
                              )['ctrl']['inject_noise']


@pytest.mark.parametrize('kind', ['symmetric', 'pairflip'])
def test_rate_and_subset(kind):
    before = table()
    after = datasets.inject_noise(before, CLASSES, spec(rate=0.4, kind=kind, seed=5))
    changed = after.label_idx.to_numpy() != before.label_idx.to_numpy()
    unverified = (before.verified == 0).to_numpy()
    assert abs(changed[unverified].mean() - 0.4) <= 0.05  # 200-clip subset
    assert not changed[~unverified].any()  # verified and test clips keep their labels
    # The labels before injection are the truth; names follow the indices.
    assert (after.true_idx == before.label_idx).all() and (after.true_label == before.label).all()
    assert (after.label == np.asarray(CLASSES, object)[after.label_idx]).all()
    assert (after.noise_injected.to_numpy() == changed).all()
    assert (before.columns == table().columns).all()  # the input table is not modified
    # Same seed, same labels (sweeps compare methods on the same noisy labels).
    again = datasets.inject_noise(before, CLASSES, spec(rate=0.4, kind=kind, seed=5))
    assert (again.label_idx == after.label_idx).all()


def test_symmetric_is_uniform_over_the_other_classes():
    before = table(n_unverified=6000, n_verified=0, n_test=0)
    after = datasets.inject_noise(before, CLASSES, spec(rate=1.0, subset='all'))
    old, new = before.label_idx.to_numpy(), after.label_idx.to_numpy()
    assert (old != new).all()
    counts = pd.crosstab(old, new).to_numpy()
    assert (np.diag(counts) == 0).all()
    others = ~np.eye(K, dtype=bool)
    expected = np.bincount(old, minlength=K)[:, None].repeat(K, 1)[others] / (K - 1)
    off = counts[others]
    assert np.all(np.abs(off - expected) < 5 * np.sqrt(expected))  # ~5 sigma


def test_pairflip_follows_one_cycle_through_every_class():
    before = table(n_verified=0)
    after = datasets.inject_noise(before, CLASSES, spec(rate=1.0, kind='pairflip', seed=2))
    old = before.label_idx.to_numpy()[:200]
    new = after.label_idx.to_numpy()[:200]
    mapping = {}
    for o, n in zip(old, new):
        assert mapping.setdefault(o, n) == n  # every clip of a class goes to one class
    assert set(mapping) == set(range(K))
    # The map is a single cycle (the next class in one permutation), never a fixed point.
    c, seen = 0, []
    for _ in range(K):
        seen.append(c)
        c = mapping[c]
    assert c == 0 and sorted(seen) == list(range(K))


def test_existing_true_labels_are_kept_and_rate_zero_is_a_no_op():
    before = table()
    truth = (before.label_idx + 1) % K
    before['true_idx'], before['true_label'] = truth, np.asarray(CLASSES, object)[truth]
    assert datasets.inject_noise(before, CLASSES, spec()) is before
    after = datasets.inject_noise(before, CLASSES, spec(rate=0.5, subset='verified'))
    assert (after.true_idx == truth).all()
    cfg = config.load_config(None, ['ctrl.inject_noise.rate=0.5',
                                    'ctrl.inject_noise.subset=verified'])
    entry = datasets.label_noise(cfg, after)['label_noise']
    verified = (after.subset == 'train') & (after.verified == 1)
    share = (after.label_idx != before.label_idx)[verified].mean()
    assert entry == {'rate': 0.5, 'kind': 'symmetric', 'subset': 'verified',
                     'share_changed': pytest.approx(share)}
