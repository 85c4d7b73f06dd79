"""Akiyama & Sato's batches and epochs (issue 17, section 1): the multitask streams per
step, steps per epoch, learn.fold_subset, learn.mixup_p, and learn.augment_domain power
(mixing and masking before the dB conversion and per-clip standardisation)."""
import numpy as np
import pytest

import sampling
import splits
from config import ConfigError

VER, UNV = np.arange(0, 50), np.arange(100, 300)  # patch indices of the two pools


def _plans(**kw):
    verified = np.zeros(300, bool)
    verified[VER] = True
    args = dict(batch_size=8, mixup=True, alpha=1.0, mixup_mode='intra',
                augment=lambda rng, plan: plan, verified=verified, multitask=True)
    return sampling.Plans(**{**args, **kw})


@pytest.mark.parametrize('pseudo', [False, True])
def test_paper_streams_count_per_step(pseudo):
    """Each step: 8 verified, 8 unverified (and 8 pseudo-label-stream) examples, in that
    order; an epoch is one pass over the 50 verified patches: ceil(50 / 8) = 7 steps."""
    pool = np.r_[VER, UNV]
    plan = _plans(pseudo_labels=pseudo).epoch(pool)(np.random.default_rng(0))
    assert plan.idx.shape == (7, 24 if pseudo else 16)
    cur, noisy = plan.idx[:, :8], plan.idx[:, 8:16]
    assert np.isin(cur, VER).all() and np.isin(noisy, UNV).all()
    assert set(cur.ravel()) == set(VER)  # every verified patch once (the last step padded)
    assert len(set(noisy.ravel())) == noisy.size  # 56 of 200 unverified, without repeats
    # mixup partners stay inside their stream; semi marks the third stream only
    assert np.isin(plan.partner[:, :8], VER).all() and np.isin(plan.partner[:, 8:16], UNV).all()
    np.testing.assert_array_equal(plan.semi[:, :16], 0)
    if pseudo:
        semi = plan.idx[:, 16:]
        np.testing.assert_array_equal(plan.semi[:, 16:], 1)
        assert np.isin(semi, pool).all()
        partners = plan.partner[:, 16:]
        for row, partner in zip(semi, partners):  # mixed inside the step's semi batch
            assert sorted(row) == sorted(partner)


def test_semi_stream_is_half_verified():
    """1:1 from verified and pseudo-labelled unverified patches (binomial: 3 sigma)."""
    plan = _plans(pseudo_labels=True, batch_size=16).epoch(np.r_[VER, UNV])
    semi = np.concatenate([plan(np.random.default_rng(s)).idx[:, 32:].ravel()
                           for s in range(20)])
    share = np.isin(semi, VER).mean()
    assert abs(share - 0.5) < 3 * np.sqrt(0.25 / semi.size), share


def test_split_batches_are_todays_halves():
    plan = _plans(batches='split', mixup=False).epoch(np.r_[VER, UNV])(
        np.random.default_rng(0))
    assert plan.idx.shape == (50, 8)  # one pass over 200 unverified, 4 per step
    assert np.isin(plan.idx[:, :4], VER).all() and np.isin(plan.idx[:, 4:], UNV).all()


def test_paper_steps_per_epoch_on_fsdkaggle2019_with_5_folds():
    """The issue's figure: 4,970 curated clips, 4 folds of 5 training, batch 64 -> 63 steps
    (split: the 19,815 noisy clips in halves of 32 -> 620; 4/5 of them, today's k-fold of
    all clips, -> ~496)."""
    train_cur = 4970 - 4970 // 5
    assert -(-train_cur // 64) == 63
    verified = np.r_[np.ones(train_cur, bool), np.zeros(19815, bool)]
    plans = _plans(batch_size=64, mixup=False, verified=verified)
    pool = np.arange(verified.size)
    assert plans.epoch(pool)(np.random.default_rng(0)).idx.shape == (63, 128)


def test_batch_size_against_the_paper_streams():
    verified = np.r_[np.ones(10, bool), np.zeros(30, bool)]
    sampling.check_batch_size(10, np.arange(40), verified, streams=True)
    with pytest.raises(ConfigError, match=r'needs 11 of the 10 verified training patches '
                                          r'\(learn.multitask takes batch_size.*at most 10$'):
        sampling.check_batch_size(11, np.arange(40), verified, streams=True)


@pytest.mark.parametrize('p', [0.0, 0.5, 1.0])
def test_mixup_p_share_of_mixed_examples(p):
    """learn.mixup_p: each example mixed with probability p (partner != itself, lam < 1),
    else its own partner with lam 1; p 1 draws what it drew before the key existed."""
    rng = np.random.default_rng(5)
    pool = np.arange(4000)
    plan = sampling.plan_epoch(rng, pool, 40, mixup=True, alpha=1.0, mode='inter', p=p)
    mixed = plan.partner != plan.idx
    assert abs(mixed.mean() - p) < 3 * np.sqrt(0.25 / mixed.size) + 1e-9
    assert (plan.lam[~mixed] == 1).all() and (plan.lam[mixed] < 1).all()
    if p == 1.0:
        old = np.random.default_rng(5)
        order = old.permutation(pool).reshape(100, 40)
        np.testing.assert_array_equal(plan.idx, order)
        np.testing.assert_array_equal(plan.partner, np.roll(order, -1, axis=0))
        np.testing.assert_allclose(plan.lam, old.beta(1.0, 1.0, size=(100, 40)), rtol=1e-6)


def test_fold_subset_verified_splits_only_the_verified_clips():
    rows = np.arange(100, 160)
    verified = np.r_[np.ones(20, bool), np.zeros(40, bool)]
    labels = np.arange(60) % 4
    folds = splits.fold_split(rows, labels, verified, 5, 'verified', seed=0)
    unv = set(rows[~verified])
    vals = [set(val) for _, val in folds]
    assert all(len(v) == 4 and v <= set(rows[verified]) for v in vals)  # 20 / 5, verified
    assert set().union(*vals) == set(rows[verified])
    for (train, val), v in zip(folds, vals):
        assert len(train) == 16 + 40 and unv <= set(train) and not v & set(train)
    every = splits.fold_split(rows, labels, verified, 5, 'all', seed=0)
    assert [len(val) for _, val in every] == [12] * 5
    assert sum(len(set(val) & unv) for _, val in every) == 40  # today: noisy clips validate
    # no verified clip: nothing to keep apart, the folds split every clip
    none = splits.fold_split(rows, labels, np.zeros(60, bool), 5, 'verified', seed=0)
    assert [len(val) for _, val in none] == [12] * 5


def test_power_to_db_as_librosa():
    import librosa
    from keras import ops
    import data
    rng = np.random.default_rng(0)
    scale = 10.0 ** rng.integers(-12, 2, (3, 6, 5, 1))
    x = (rng.uniform(0, 1, (3, 6, 5, 1)) * scale).astype('float32')
    x[0, :, 2] = 0.0  # a masked band
    got = ops.convert_to_numpy(data.power_to_db(ops, x))
    for i in range(3):
        np.testing.assert_allclose(got[i], librosa.power_to_db(x[i]), rtol=1e-4, atol=1e-3)


def test_power_domain_batch_is_mixed_and_masked_before_db_and_standardisation(clips):
    """learn.augment_domain power, against numpy in the released MelDataset's order: crop,
    mixup of the mel energies, gain, frequency mask (zero energy), power_to_db, per-clip
    standardisation."""
    import librosa
    import pandas as pd
    from keras import ops
    import data
    f = clips['frames']  # positive: read as log10 frames, their energies are 10^f
    patches = data.make_patches(clips['starts'], clips['lengths'], 8, 3)
    n = len(clips['lengths'])
    table = pd.DataFrame({'labels_idx': [(0,)] * n, 'label_idx': [0] * n, 'verified': [1] * n})
    n_mels = clips['n_mels']
    source = data.PatchSource(f, patches, table, np.zeros(n_mels, 'float32'),
                              np.ones(n_mels, 'float32'), np.zeros(2, 'float32'), 8,
                              on_device=False, log=True, per_clip=True, power=True)
    idx, partner = np.array([2, 5]), np.array([6, 2])
    lam, gain = np.array([0.3, 1.0], 'float32'), np.array([1.2, 0.9], 'float32')
    fmask = np.array([[[1, 2]], [[0, 0]]])
    batch = source.train_batch(idx, partner, lam, gain=gain, partner_gain=np.ones(2, 'float32'),
                               fmask=fmask, tmask=np.zeros((2, 0, 2), np.int64))
    rows = patches.frame_rows(np.r_[idx, partner], 8)
    energy = 10.0 ** f[rows].astype('float64')  # [4, 8, n_mels]
    for i in range(2):
        x = lam[i] * gain[i] * energy[i] + (1 - lam[i]) * energy[2 + i]
        s, w = fmask[i, 0]
        x[:, s:s + w] = 0.0
        db = librosa.power_to_db(x)
        expected = (db - db.mean()) / db.std()
        np.testing.assert_allclose(ops.convert_to_numpy(batch.x)[i, ..., 0], expected,
                                   rtol=1e-3, atol=1e-3)
    x_eval, _ = source.eval_batch(idx)
    db = librosa.power_to_db(energy[0])
    np.testing.assert_allclose(ops.convert_to_numpy(x_eval)[0, ..., 0],
                               (db - db.mean()) / db.std(), rtol=1e-3, atol=1e-3)


def test_power_domain_needs_per_clip_standardisation(make_cfg):
    with pytest.raises(ConfigError, match='learn.augment_domain power .* set extract.normalize '
                                          'per_clip'):
        make_cfg('learn.augment_domain=power')
    make_cfg('learn.augment_domain=power', 'extract.normalize=per_clip')
