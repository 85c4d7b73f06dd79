"""data.py: clip table, split, patches, scaler, label smoothing, epoch plans, mixup, batches.

Every number is compared with a computation written here in numpy/pandas.
"""
import math

import numpy as np
import pandas as pd
import pytest
from keras import ops

import data
import datasets
import sampling
import splits
from config import ConfigError


def _cfg(make_cfg, root, *more):
    return make_cfg(f'ctrl.dataset_path={root}', 'learn.n_classes=3', *more)


# ----------------------------------------------------------------------------- clip table

def test_load_table_columns_and_values(make_cfg, dataset):
    root, train, test = dataset
    table, classes = datasets.load(_cfg(make_cfg, root))
    assert classes == ['Acoustic_guitar', 'Rain', 'Wind']
    assert len(table) == len(train) + len(test)
    for col in ['fname', 'path', 'label', 'label_idx', 'verified', 'noisy_small', 'subset',
                'aso_id', 'comment']:
        assert col in table.columns, col
    # Train rows first, in CSV order, then test rows.
    assert table.fname.tolist() == train.fname.tolist() + test.fname.tolist()
    assert table.subset.tolist() == ['train'] * len(train) + ['test'] * len(test)
    expected_idx = [sorted(set(train.label)).index(lab)
                    for lab in train.label.tolist() + test.label.tolist()]
    assert table.label_idx.tolist() == expected_idx
    assert table.verified.tolist() == train.manually_verified.tolist() + [1] * len(test)
    assert table.path.tolist() == (
        [str(root / 'FSDnoisy18k.audio_train' / f) for f in train.fname]
        + [str(root / 'FSDnoisy18k.audio_test' / f) for f in test.fname])
    # The extra column of train.csv is kept.
    assert table.comment.iloc[:len(train)].tolist() == train.comment.tolist()


@pytest.mark.parametrize('train_data', ['noisy', 'clean', 'noisy_small',
                                        'noisy_small_clean', 'all'])
def test_train_rows_match_pandas_filters(make_cfg, dataset, train_data):
    root, train, _ = dataset
    table, _ = datasets.load(_cfg(make_cfg, root))
    mv, ns = train.manually_verified, train.noisy_small
    mask = {'noisy': mv == 0, 'clean': mv == 1, 'noisy_small': ns == 1,
            'noisy_small_clean': (ns == 1) | (mv == 1),
            'all': pd.Series(True, index=train.index)}[train_data]
    expected = train.index[mask].to_numpy()  # train rows come first, so indices agree
    rows = datasets.train_rows(table, train_data)
    np.testing.assert_array_equal(rows, expected)
    assert rows.size > 0 and set(table.subset.iloc[rows]) == {'train'}


def test_train_rows_selecting_nothing(make_cfg, fsd, tmp_path):
    write_dataset, train_rows, _ = fsd
    rows = [r[:3] + (1, 0) for r in train_rows]  # all verified: no noisy clip
    write_dataset(tmp_path, rows)
    table, _ = datasets.load(_cfg(make_cfg, tmp_path))
    with pytest.raises(ConfigError, match='noisy'):
        datasets.train_rows(table, 'noisy')


def test_n_classes_mismatch(make_cfg, dataset):
    root, _, _ = dataset
    with pytest.raises(ConfigError, match='n_classes'):
        datasets.load(make_cfg(f'ctrl.dataset_path={root}', 'learn.n_classes=20'))


def test_missing_dataset_folder(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match='no_such'):
        datasets.load(_cfg(make_cfg, tmp_path / 'no_such'))


@pytest.mark.parametrize('name', ['train.csv', 'test.csv'])
def test_missing_csv(make_cfg, dataset, name):
    root, _, _ = dataset
    (root / 'FSDnoisy18k.meta' / name).unlink()
    with pytest.raises(ConfigError, match=name):
        datasets.load(_cfg(make_cfg, root))


@pytest.mark.parametrize('name, column', [('train.csv', 'manually_verified'),
                                          ('train.csv', 'noisy_small'),
                                          ('test.csv', 'label')])
def test_csv_missing_required_column(make_cfg, dataset, name, column):
    root, _, _ = dataset
    path = root / 'FSDnoisy18k.meta' / name
    pd.read_csv(path).drop(columns=[column]).to_csv(path, index=False)
    with pytest.raises(ConfigError) as err:
        datasets.load(_cfg(make_cfg, root))
    assert column in str(err.value) and name in str(err.value)


def test_test_label_absent_from_train(make_cfg, fsd, tmp_path):
    write_dataset, train_rows, test_rows = fsd
    write_dataset(tmp_path, train_rows, test_rows + [('t9.wav', 'Thunder', '/m/0ngt1')])
    with pytest.raises(ConfigError, match='Thunder'):
        datasets.load(_cfg(make_cfg, tmp_path))


@pytest.mark.parametrize('name, column, value, line, expected', [
    ('train.csv', 'label', '', 4, "(fname a3.wav): empty label in column 'label'"),
    ('test.csv', 'fname', '', 3, 'empty fname cell'),
    ('train.csv', 'manually_verified', 'yes', 5, "manually_verified must be 0 or 1, got 'yes'"),
    ('train.csv', 'noisy_small', '2', 2, 'noisy_small must be 0 or 1'),
])
def test_bad_csv_cell_names_file_and_line(make_cfg, dataset, name, column, value, line,
                                          expected):
    """Issue 11, case 10: a malformed cell is one line naming the file and its line."""
    root, _, _ = dataset
    path = root / 'FSDnoisy18k.meta' / name
    frame = pd.read_csv(path, dtype=str)
    frame.loc[line - 2, column] = value
    frame.to_csv(path, index=False)
    with pytest.raises(ConfigError) as err:
        datasets.load(_cfg(make_cfg, root))
    assert str(err.value).startswith(f'{path} line {line}') and expected in str(err.value)


def test_misnamed_audio_folder_is_named(make_cfg, dataset):
    """Issue 11, case 1: a misnamed audio folder stops before extraction, naming it."""
    root, _, _ = dataset
    (root / 'FSDnoisy18k.audio_train').rename(root / 'FSDnoisy18k.audio_trian')
    with pytest.raises(ConfigError, match='FSDnoisy18k.audio_train does not exist'):
        datasets.load(_cfg(make_cfg, root))


# ----------------------------------------------------------------------------- split

def _split_input():
    sizes = {0: 20, 1: 13, 2: 7, 3: 2, 4: 1, 5: 40}
    labels = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    rows = np.arange(labels.size) * 3 + 5  # row numbers that are not 0..n-1
    perm = np.random.default_rng(1).permutation(labels.size)
    return rows[perm], labels[perm], sizes


@pytest.mark.parametrize('val_split', [0.15, 0.5, 0.9, 0.0])  # 0.9: the cap binds
def test_split_train_val_counts_and_partition(val_split):
    rows, labels, sizes = _split_input()
    tr, va = splits.split_train_val(rows, labels, val_split, seed=3)
    assert np.intersect1d(tr, va).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.sort(rows))
    label_of = dict(zip(rows.tolist(), labels.tolist()))
    for c, n in sizes.items():
        n_val = sum(label_of[r] == c for r in va.tolist())
        assert n_val == min(round(val_split * n), n - 1), (c, n)
        assert sum(label_of[r] == c for r in tr.tolist()) >= 1


def test_split_train_val_depends_on_seed():
    rows, labels, _ = _split_input()
    a = splits.split_train_val(rows, labels, 0.15, seed=3)
    b = splits.split_train_val(rows, labels, 0.15, seed=3)
    c = splits.split_train_val(rows, labels, 0.15, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


# ----------------------------------------------------------------------------- patches

def test_n_patches_formula():
    for L, H in [(100, 50), (8, 3), (5, 5), (1, 1)]:
        F = np.arange(0, 4 * L + 7)
        expected = [0 if f == 0 else max(1, math.ceil((f - L) / H)) for f in F]
        np.testing.assert_array_equal(data.n_patches(F, L, H), expected)
    # Reference geometry: a 2 s patch and 1 s hop of 20 ms frames.
    assert data.n_patches(100, 100, 50) == 1
    assert data.n_patches(99, 100, 50) == 1
    assert data.n_patches(151, 100, 50) == 2
    assert data.n_patches(300, 100, 50) == 4


def _materialise(clips, patches, idx):
    """Patches [len(idx), L, n_mels] built by slicing/tiling each clip's own frames."""
    f, L = clips['frames'], clips['patch_len']
    out = []
    for p in idx:
        c = patches.clip[p]
        own = f[clips['starts'][c]:clips['starts'][c] + clips['lengths'][c]]
        tiled = np.tile(own, (math.ceil((patches.offset[p] + L) / len(own)), 1))
        out.append(tiled[patches.offset[p]:patches.offset[p] + L])
    return np.stack(out)


def test_make_patches_table(clips):
    L, H = clips['patch_len'], clips['patch_hop']
    p = data.make_patches(clips['starts'], clips['lengths'], L, H)
    counts = [0 if n == 0 else max(1, math.ceil((n - L) / H)) for n in clips['lengths']]
    np.testing.assert_array_equal(np.bincount(p.clip, minlength=len(counts)), counts)
    assert np.all(np.diff(p.clip) >= 0)  # patches of a clip are contiguous, in clip order
    for c, n in enumerate(counts):
        sel = p.clip == c
        np.testing.assert_array_equal(p.offset[sel], np.arange(n) * H)
        assert np.all(p.row0[sel] == clips['starts'][c])
        assert np.all(p.clen[sel] == clips['lengths'][c])
    assert 3 not in p.clip  # the failed clip (0 frames) has no patch
    np.testing.assert_array_equal(p.of_clips([2, 5]), np.flatnonzero(np.isin(p.clip, [2, 5])))


def test_frame_rows_short_clip_wraps_by_repetition(clips):
    L, H = clips['patch_len'], clips['patch_hop']
    p = data.make_patches(clips['starts'], clips['lengths'], L, H)
    f = clips['frames']
    for c in [0, 5]:  # 5 frames and 1 frame, patch_len 8
        (i,) = np.flatnonzero(p.clip == c)
        own = f[clips['starts'][c]:clips['starts'][c] + clips['lengths'][c]]
        expected = np.tile(own, (math.ceil(L / len(own)), 1))[:L]
        np.testing.assert_array_equal(f[p.frame_rows(np.array([i]), L)[0]], expected)


def test_frame_rows_long_clip_are_slices(clips):
    L, H = clips['patch_len'], clips['patch_hop']
    p = data.make_patches(clips['starts'], clips['lengths'], L, H)
    f = clips['frames']
    for c in [1, 2, 4]:
        start = clips['starts'][c]
        idx = np.flatnonzero(p.clip == c)
        got = f[p.frame_rows(idx, L)]
        for k, o in enumerate(np.arange(idx.size) * H):
            assert o + L <= clips['lengths'][c]  # a long clip's patches never wrap
            np.testing.assert_array_equal(got[k], f[start + o:start + o + L])


# ----------------------------------------------------------------------------- scaler

def test_fit_scaler_equals_moments_of_materialised_patches(clips):
    L, H = clips['patch_len'], clips['patch_hop']
    p = data.make_patches(clips['starts'], clips['lengths'], L, H)
    # Overlapping patches of the long clips plus the short repeated clips 0 and 5.
    idx = np.flatnonzero(np.isin(p.clip, [0, 2, 4, 5]))
    x = np.concatenate(list(_materialise(clips, p, idx))).astype(np.float64)
    for chunk in [7, 1 << 20]:  # small chunks exercise the chunked sums
        mean, std = data.fit_scaler(clips['frames'], p, idx, L, chunk=chunk)
        np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(std, x.std(axis=0), rtol=1e-5, atol=1e-6)
    # Overlap weighting matters: the plain mean over the clips' frames is different.
    plain = clips['frames'][np.concatenate(
        [np.arange(clips['starts'][c], clips['starts'][c] + clips['lengths'][c])
         for c in [0, 2, 4, 5]])].mean(axis=0)
    assert not np.allclose(plain, x.mean(axis=0), rtol=1e-3)


def test_fit_scaler_constant_band_has_unit_std(clips):
    L, H = clips['patch_len'], clips['patch_hop']
    f = clips['frames'].copy()
    f[:, 1] = 2.5
    p = data.make_patches(clips['starts'], clips['lengths'], L, H)
    idx = np.arange(p.clip.size)
    mean, std = data.fit_scaler(f, p, idx, L)
    assert std[1] == 1.0 and mean[1] == pytest.approx(2.5)
    assert np.all(std[[0, 2, 3]] > 0.1)


# ----------------------------------------------------------------------------- targets

CLASSES = ['Acoustic_guitar', 'Bass_guitar', 'Clapping', 'Fire', 'Piano', 'Wind']


def _learn(**kw):
    cfg = {'LSR': True, 'eps_LSR_noisy': 0.15, 'LSRmode': 'STANDARD', 'delta_eps_LSR': 0.05,
           'noisier_classes': ['Bass_guitar', 'Clapping', 'Fire', 'Wind', 'Rain']}
    cfg.update(kw)
    return cfg


def test_lsr_eps_modes():
    np.testing.assert_array_equal(data.lsr_eps(_learn(LSR=False), CLASSES), np.zeros(6))
    np.testing.assert_allclose(data.lsr_eps(_learn(), CLASSES), np.full(6, 0.15), rtol=1e-6)
    got = data.lsr_eps(_learn(LSRmode='GROUPS2'), CLASSES)
    noisier = np.array([c in ['Bass_guitar', 'Clapping', 'Fire', 'Wind'] for c in CLASSES])
    np.testing.assert_allclose(got, np.where(noisier, 0.20, 0.10), rtol=1e-6)


def test_lsr_eps_out_of_unit_interval():
    with pytest.raises(ConfigError, match='delta_eps_LSR'):
        data.lsr_eps(_learn(LSRmode='GROUPS2', eps_LSR_noisy=0.02, delta_eps_LSR=0.05),
                     CLASSES)


def test_smooth_targets_matches_numpy():
    rng = np.random.default_rng(0)
    K = len(CLASSES)
    labels = rng.integers(0, K, size=50)
    eps = data.lsr_eps(_learn(LSRmode='GROUPS2'), CLASSES)
    onehot = np.eye(K, dtype=np.float32)[labels]
    e = data.clip_eps(onehot, eps)
    np.testing.assert_array_equal(e, eps[labels])  # one label: exactly its class's eps
    got = np.asarray(data.smooth_targets(ops.convert_to_tensor(onehot),
                                         ops.convert_to_tensor(e)))
    expected = np.eye(K)[labels] * (1 - e[:, None]) + e[:, None] / K
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)


def test_smooth_multi_hot_targets_per_class():
    eps = data.lsr_eps(_learn(LSRmode='GROUPS2'), CLASSES)
    K = len(CLASSES)
    y = np.zeros((3, K), np.float32)
    y[0, [0, 3]] = 1
    y[1, [1, 2, 5]] = 1
    y[2, 4] = 1
    e = data.clip_eps(y, eps)
    expected_e = [np.mean(eps[[0, 3]]), np.mean(eps[[1, 2, 5]]), eps[4]]
    np.testing.assert_allclose(e, expected_e, rtol=1e-6)
    got = np.asarray(data.smooth_targets(ops.convert_to_tensor(y), ops.convert_to_tensor(e)))
    for i in range(3):
        for k in range(K):
            want = (1 - expected_e[i]) + expected_e[i] / K if y[i, k] else expected_e[i] / K
            assert got[i, k] == pytest.approx(want, rel=1e-6)


def test_strata_single_label_is_the_label_and_multi_label_the_rarest():
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 0, 0]]
    np.testing.assert_array_equal(splits.strata(y), [0, 1, 2, 1, 0, 0])
    y[0, 2] = y[3, 0] = 1  # counts now: class 0: 4, 1: 2, 2: 2
    np.testing.assert_array_equal(splits.strata(y), [2, 1, 2, 1, 0, 0])


# ----------------------------------------------------------------------------- epoch plans

@pytest.mark.parametrize('mixup, mode', [(False, 'intra'), (True, 'intra'), (True, 'inter')])
def test_plan_epoch_covers_pool_with_padded_steps(mixup, mode):
    pool = np.arange(1000, 1000 + 237) * 2
    plan = sampling.plan_epoch(np.random.default_rng(0), pool, 16, mixup=mixup, mode=mode)
    steps = math.ceil(pool.size / 16)
    for a in (plan.idx, plan.partner, plan.lam):
        assert a.shape == (steps, 16)
    assert set(plan.idx.ravel().tolist()) == set(pool.tolist())
    assert np.isin(plan.idx, pool).all() and np.isin(plan.partner, pool).all()
    # Exactly the padding is repeated.
    assert plan.idx.size - np.unique(plan.idx).size == steps * 16 - pool.size


def test_plan_epoch_without_mixup():
    plan = sampling.plan_epoch(np.random.default_rng(0), np.arange(100), 32)
    np.testing.assert_array_equal(plan.partner, plan.idx)
    assert np.all(plan.lam == 1.0)


def test_plan_epoch_intra_partners_are_row_permutations():
    plan = sampling.plan_epoch(np.random.default_rng(0), np.arange(640), 64, mixup=True,
                           mode='intra')
    for row, partner in zip(plan.idx, plan.partner):
        np.testing.assert_array_equal(np.sort(row), np.sort(partner))
    assert (plan.partner != plan.idx).mean() > 0.5  # shuffled, not copied


def test_plan_epoch_inter_partner_is_next_batch():
    plan = sampling.plan_epoch(np.random.default_rng(0), np.arange(500), 50, mixup=True,
                           mode='inter')
    steps = plan.idx.shape[0]
    for s in range(steps):
        np.testing.assert_array_equal(plan.partner[s], plan.idx[(s + 1) % steps])


@pytest.mark.parametrize('alpha', [0.1, 2.0])
def test_plan_epoch_lam_is_beta(alpha):
    plan = sampling.plan_epoch(np.random.default_rng(5), np.arange(40000), 100, mixup=True,
                           alpha=alpha)
    lam = plan.lam.astype(np.float64).ravel()
    assert lam.min() >= 0 and lam.max() <= 1
    var = 1.0 / (4 * (2 * alpha + 1))  # variance of Beta(a, a)
    assert abs(lam.mean() - 0.5) < 0.01
    assert abs(lam.var() - var) < 0.1 * var
    # Beta(0.1, 0.1) piles up near 0 and 1; Beta(2, 2) near 0.5.
    extreme = np.mean((lam < 0.05) | (lam > 0.95))
    assert extreme > 0.6 if alpha < 1 else extreme < 0.05


def test_plan_epoch_same_seed_same_plan():
    a = sampling.plan_epoch(np.random.default_rng(9), np.arange(300), 64, mixup=True)
    b = sampling.plan_epoch(np.random.default_rng(9), np.arange(300), 64, mixup=True)
    c = sampling.plan_epoch(np.random.default_rng(10), np.arange(300), 64, mixup=True)
    for x, y in [(a.idx, b.idx), (a.partner, b.partner), (a.lam, b.lam)]:
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.idx, c.idx)


@pytest.mark.parametrize('mixup, mode', [(False, 'intra'), (True, 'intra'), (True, 'inter')])
def test_plan_halves_keeps_pools_apart(mixup, mode):
    first, second = np.arange(0, 30), np.arange(100, 183)
    plan = sampling.plan_halves(np.random.default_rng(0), first, second, 16, mixup=mixup,
                            mode=mode)
    steps = math.ceil(second.size / 8)
    assert plan.idx.shape == plan.partner.shape == plan.lam.shape == (steps, 16)
    for a in (plan.idx, plan.partner):
        assert np.isin(a[:, :8], first).all() and np.isin(a[:, 8:], second).all()
    assert set(plan.idx[:, 8:].ravel().tolist()) == set(second.tolist())
    if not mixup:
        np.testing.assert_array_equal(plan.partner, plan.idx)


# ----------------------------------------------------------------------------- mixup

def test_mix_is_convex_combination():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 5, 3, 1)).astype(np.float32)
    b = rng.normal(size=(6, 5, 3, 1)).astype(np.float32)
    lam = rng.random(6).astype(np.float32)
    got = np.asarray(data.mix(ops, ops.convert_to_tensor(lam), ops.convert_to_tensor(a),
                              ops.convert_to_tensor(b)))
    expected = lam[:, None, None, None] * a + (1 - lam[:, None, None, None]) * b
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert np.all(got >= np.minimum(a, b) - 1e-6) and np.all(got <= np.maximum(a, b) + 1e-6)
    # Targets: mixing two distributions gives a distribution.
    ya = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 6)]
    yb = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 6)]
    y = np.asarray(data.mix(ops, ops.convert_to_tensor(lam), ops.convert_to_tensor(ya),
                            ops.convert_to_tensor(yb)))
    np.testing.assert_allclose(y, lam[:, None] * ya + (1 - lam[:, None]) * yb, rtol=1e-6)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------- PatchSource

@pytest.fixture
def source_setup(clips):
    L, H = clips['patch_len'], clips['patch_hop']
    p = data.make_patches(clips['starts'], clips['lengths'], L, H)
    n_clips = len(clips['lengths'])
    classes = ['Acoustic_guitar', 'Bass_guitar', 'Piano', 'Wind']
    table = pd.DataFrame({'label_idx': [0, 1, 2, 3, 1, 3][:n_clips],
                          'verified': [1, 0, 0, 1, 1, 0][:n_clips],
                          'true_idx': [0, 2, 2, 3, 0, 3][:n_clips]})
    table['labels_idx'] = [(k,) for k in table.label_idx]
    idx = np.arange(p.clip.size)
    mean, std = data.fit_scaler(clips['frames'], p, idx, L)
    eps = data.lsr_eps(_learn(LSRmode='GROUPS2'), classes)
    return p, table, mean, std, eps, classes


@pytest.mark.parametrize('on_device', [False, True])
def test_patch_source_inputs(clips, source_setup, on_device):
    p, table, mean, std, eps, _ = source_setup
    L = clips['patch_len']
    src = data.PatchSource(clips['frames'], p, table, mean, std, eps, L, on_device)
    idx = np.array([0, 3, p.clip.size - 1, 1, 3])
    got = np.asarray(src.inputs(ops.convert_to_tensor(idx.astype(np.int32))))
    expected = (_materialise(clips, p, idx) - mean) / std
    assert got.shape == (idx.size, L, clips['n_mels'], 1)
    np.testing.assert_allclose(got[..., 0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('on_device', [False, True])
def test_patch_source_train_batch_smooths_then_mixes(clips, source_setup, on_device):
    p, table, mean, std, eps, classes = source_setup
    L, K = clips['patch_len'], len(classes)
    src = data.PatchSource(clips['frames'], p, table, mean, std, eps, L, on_device,
                           needs={'clean'})
    rng = np.random.default_rng(3)
    idx = rng.integers(0, p.clip.size, 7)
    partner = rng.permutation(idx)
    lam = rng.random(7).astype(np.float32)
    partner[0] = idx[0]  # one example mixed with itself: a pair of one
    batch = src.train_batch(*(ops.convert_to_tensor(a) for a in (
        idx.astype(np.int32), partner.astype(np.int32), lam)))
    x, y, verified, wrong = batch.x, batch.y, batch.verified, batch.wrong

    xa = (_materialise(clips, p, idx) - mean) / std
    xb = (_materialise(clips, p, partner) - mean) / std
    lam4 = lam[:, None, None]
    np.testing.assert_allclose(np.asarray(x)[..., 0], lam4 * xa + (1 - lam4) * xb,
                               rtol=1e-5, atol=1e-5)
    labels = table.label_idx.to_numpy()[p.clip]

    def smoothed(i):
        e = eps[labels[i]][:, None]
        return np.eye(K)[labels[i]] * (1 - e) + e / K
    expected_y = lam[:, None] * smoothed(idx) + (1 - lam[:, None]) * smoothed(partner)
    np.testing.assert_allclose(np.asarray(y), expected_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(y).sum(axis=1), 1.0, rtol=1e-6)
    # Smoothing survives mixup: no target reaches 1 although some examples mix with
    # themselves or with a patch of the same class.
    assert np.asarray(y).max() <= 1 - eps.min() * (1 - 1 / K) + 1e-6
    np.testing.assert_array_equal(np.asarray(verified), table.verified.to_numpy()[p.clip[idx]])
    given, true = table.label_idx.to_numpy(), table.true_idx.to_numpy()
    # Noise detection counts both examples of a pair by their true labels.
    bad = (given != true)[p.clip]
    pair = idx != partner
    np.testing.assert_array_equal(np.asarray(batch.members), 1 + pair)
    np.testing.assert_array_equal(np.asarray(wrong), bad[idx] + pair * bad[partner])
    # The batch before mixup, for a loss that measures it (adaptive Lq).
    np.testing.assert_allclose(np.asarray(batch.x_clean)[..., 0], xa, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(batch.labels), given[p.clip[idx]])


def test_patch_source_eval_batch_is_unsmoothed(clips, source_setup):
    p, table, mean, std, eps, classes = source_setup
    src = data.PatchSource(clips['frames'], p, table, mean, std, eps, clips['patch_len'],
                           False)
    idx = np.array([0, 2, 4], np.int32)
    _, y = src.eval_batch(ops.convert_to_tensor(idx))
    labels = table.label_idx.to_numpy()[p.clip[idx]]
    np.testing.assert_array_equal(np.asarray(y), np.eye(len(classes))[labels])


def _aligned(shape, offset=0):
    """A float32 array whose buffer starts `offset` bytes past a 64-byte boundary."""
    n = int(np.prod(shape))
    raw = np.zeros(n * 4 + 128, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    return raw[start:start + n * 4].view(np.float32).reshape(shape)


def test_host_tensor_shares_an_aligned_numpy_buffer():
    array = _aligned((6, 4))
    array[:] = np.arange(24).reshape(6, 4)
    tensor = data.host_tensor(array)
    array[2, 1] = -5.0  # a copy would not see this
    assert float(np.asarray(tensor)[2, 1]) == -5.0


def test_host_tensor_copies_an_unaligned_buffer_and_gathers_from_it():
    array = _aligned((6, 4), offset=16)
    array[:] = np.arange(24).reshape(6, 4)
    tensor = data.host_tensor(array)
    array[0, 0] = -1.0  # copied: the tensor keeps the old value
    gathered = ops.take(tensor, np.array([5, 0]), axis=0)
    np.testing.assert_array_equal(np.asarray(gathered), [[20, 21, 22, 23], [0, 1, 2, 3]])


def test_host_tensor_over_a_read_only_memory_map_leaves_the_file_alone(tmp_path):
    path = tmp_path / 'frames.f32'
    expected = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    expected.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode='r', shape=(50, 8))
    tensor = data.host_tensor(mapped)
    np.testing.assert_array_equal(np.asarray(tensor), expected)
    np.testing.assert_array_equal(np.fromfile(path, np.float32).reshape(50, 8), expected)
