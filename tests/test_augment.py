"""Akiyama & Sato's augmentations (augment.py) and per-clip standardisation."""
import numpy as np
import pytest
from keras import ops

import augment
import data
import sampling
from config import ConfigError

FREQ = {'p': 0.5, 'min_width': 8, 'max_width': 32}
CROP = {'p': 0.5, 'min_frac': 0.25, 'max_frac': 1.0}


def test_frequency_masks_have_the_paper_widths():
    m = augment.freq_masks(np.random.default_rng(0), (200, 50), FREQ, n_mels=64)
    assert m.shape == (200, 50, 1, 2)
    start, width = m[..., 0, 0], m[..., 0, 1]
    on = width > 0
    assert abs(on.mean() - 0.5) < 0.02
    assert width[on].min() == 8 and width[on].max() == 32
    assert (start >= 0).all() and (start + width <= 64).all()


def test_additional_crops_keep_a_quarter_to_all_of_the_crop():
    length = 40
    m = augment.crop_masks(np.random.default_rng(1), (300, 20), CROP, length)
    assert m.shape == (300, 20, 2, 2)
    (b_start, b_width), (a_start, a_width) = m[..., 0, :].T, m[..., 1, :].T
    assert (b_start == 0).all() and (a_start + a_width == length).all()
    kept = length - b_width - a_width
    assert (a_start == b_width + kept).all()  # one contiguous kept span
    cropped = kept < length
    # f >= 39.5 / 40 rounds to the whole crop
    assert abs(cropped.mean() - 0.5 * (39.5 / 40 - 0.25) / 0.75) < 0.03
    assert kept.min() == 10 and kept.max() == length


def test_an_unused_frequency_mask_range_is_not_checked_against_the_bands(make_cfg):
    assert make_cfg('extract.n_mels=16')['learn']['freq_mask']['max_width'] == 32


def test_gains_are_drawn_with_probability_p():
    g = augment.gains(np.random.default_rng(2), (100, 100), {'p': 0.5, 'low': 0.8,
                                                              'high': 1.2})
    assert abs((g != 1).mean() - 0.5) < 0.02
    assert g.min() >= 0.8 and g.max() <= 1.2


def test_nothing_is_drawn_when_off():
    off = {'freq_mask': dict(FREQ, p=0.0), 'gain': {'p': 0.0, 'low': 0.8, 'high': 1.2},
           'extra_crop': dict(CROP, p=0.0)}
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    plan = sampling.plan_epoch(rng_a, np.arange(20), 4)
    plan = augment.augment_plan(rng_a, plan, n_mels=64, length=40, paper=off)
    augment.augment_plan(rng_b, sampling.plan_epoch(rng_b, np.arange(20), 4))
    assert rng_a.random() == rng_b.random()
    assert plan.fmask.shape[-2] == plan.tmask.shape[-2] == 0 and (plan.gain == 1).all()


def _exact_patches(clips, p):
    """Patches that lie inside their clip (no wrap-around) and their frames."""
    L = clips['patch_len']
    idx = np.array([i for i in range(p.clip.size)
                    if p.offset[i] + L <= clips['lengths'][p.clip[i]]])
    f = np.stack([clips['frames'][p.row0[i] + p.offset[i]:p.row0[i] + p.offset[i] + L]
                  for i in idx])
    return idx, f


@pytest.mark.parametrize('log', [True, False])
def test_gain_multiplies_the_mel_energies_before_the_log(clips, log):
    """Akiyama & Sato multiply the mel spectrogram by g before the log (their code: the
    power mel spectrogram times g, then power_to_db): with stored log10 frames f the input
    is log10(10**f * g), with linear frames f * g, then standardised."""
    p = data.make_patches(clips['starts'], clips['lengths'], clips['patch_len'],
                          clips['patch_hop'])
    mean, std = np.full(4, 1.5, np.float32), np.full(4, 2.0, np.float32)
    src = _source(clips, p, mean, std, log)
    idx, f = _exact_patches(clips, p)
    g = np.linspace(0.8, 1.2, idx.size)[:, None, None]
    energies = 10.0 ** f.astype(np.float64) if log else f.astype(np.float64)
    expected = np.log10(energies * g) if log else energies * g
    got = ops.convert_to_numpy(src.inputs(idx.astype(np.int32),
                                          gain=g[:, 0, 0].astype(np.float32)))[..., 0]
    np.testing.assert_allclose(got, (expected - mean) / std, rtol=1e-5, atol=1e-5)
    # g = 1.2 on log frames: a shift of log10(1.2) = 0.0792, not log10(1.44) (a signal gain)
    if log:
        np.testing.assert_allclose(got[-1] * std - (f[-1] - mean), 0.0792, atol=1e-4)


def test_per_clip_standardisation(clips):
    p = data.make_patches(clips['starts'], clips['lengths'], clips['patch_len'],
                          clips['patch_hop'])
    src = _source(clips, p, np.zeros(4, np.float32), np.ones(4, np.float32), True,
                  per_clip=True)
    idx, f = _exact_patches(clips, p)
    got = ops.convert_to_numpy(src.inputs(idx.astype(np.int32)))[..., 0]
    mu, sd = f.mean(axis=(1, 2), keepdims=True), f.std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(got, (f - mu) / sd, rtol=1e-4, atol=1e-5)


def _source(clips, p, mean, std, log, per_clip=False):
    import pandas as pd
    n = len(clips['lengths'])
    table = pd.DataFrame({'label_idx': np.arange(n) % 2, 'verified': np.ones(n, int)})
    table['labels_idx'] = [(k,) for k in table.label_idx]
    return data.PatchSource(clips['frames'], p, table, mean, std, np.zeros(2, np.float32),
                            clips['patch_len'], False, log=log,
                            per_clip=per_clip)


@pytest.mark.parametrize('override, message', [
    ('learn.freq_mask.min_width=40', 'learn.freq_mask.min_width = 40 exceeds'),
    ('learn.gain.low=1.5', 'learn.gain.low = 1.5 exceeds'),
    ('learn.extra_crop.min_frac=0.0', 'out of range'),
    ('learn.freq_mask.p=0.5 learn.freq_mask.max_width=200', 'exceeds extract.n_mels'),
])
def test_augmentation_ranges_are_checked(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(*override.split())
