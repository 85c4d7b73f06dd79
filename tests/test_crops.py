"""Random crops of fixed-length clips, whole-clip prediction, SpecAugment masks.

Every number is compared with a computation written here in numpy.
"""
import keras
import numpy as np
import pandas as pd
import pytest
from keras import ops

import architectures
import augment
import data
import eval as evaluation
import sampling
from config import ConfigError


def _fixed_clip(clips, c, clip_frames):
    """Clip c repeated if shorter than clip_frames, cut if longer (numpy)."""
    f, s, n = clips['frames'], clips['starts'][c], clips['lengths'][c]
    own = f[s:s + n]
    return np.tile(own, (-(-clip_frames // n), 1))[:clip_frames]


@pytest.fixture
def crop_setup(clips):
    """Whole-clip table (one entry per readable clip), scaler over the fixed clips."""
    table = pd.DataFrame({'label_idx': [0, 1, 2, 0, 1, 2], 'verified': 1,
                          'labels_idx': [(0,), (1,), (2,), (0,), (1,), (2,)]})
    clip_frames = 12  # clip lengths 5, 8, 20, 0, 14, 1: repeated, repeated, cut, -, cut, repeated
    p = data.make_clips(clips['starts'], clips['lengths'])
    mean, std = data.fit_scaler(clips['frames'], p, np.arange(p.clip.size), clip_frames)
    return p, table, mean, std, clip_frames


def _source(clips, crop_setup, crop_frames=5, on_device=False):
    p, table, mean, std, clip_frames = crop_setup
    return data.PatchSource(clips['frames'], p, table, mean, std, np.zeros(3, np.float32),
                            crop_frames, on_device, eval_len=clip_frames)


def test_make_clips_one_entry_per_readable_clip(clips):
    p = data.make_clips(clips['starts'], clips['lengths'])
    np.testing.assert_array_equal(p.clip, [0, 1, 2, 4, 5])  # clip 3 has no frames
    np.testing.assert_array_equal(p.offset, 0)
    np.testing.assert_array_equal(p.row0, clips['starts'][p.clip])
    np.testing.assert_array_equal(p.clen, clips['lengths'][p.clip])


def test_scaler_is_over_the_fixed_length_clips(clips, crop_setup):
    p, _, mean, std, clip_frames = crop_setup
    stacked = np.concatenate([_fixed_clip(clips, c, clip_frames) for c in p.clip])
    np.testing.assert_allclose(mean, stacked.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, stacked.std(axis=0), rtol=1e-5)


@pytest.mark.parametrize('on_device', [False, True])
def test_crops_and_whole_clips_are_windows_of_the_fixed_clip(clips, crop_setup, on_device):
    p, _, mean, std, clip_frames = crop_setup
    src = _source(clips, crop_setup, on_device=on_device)
    idx = np.array([0, 1, 2, 3, 4, 2])
    shift = np.array([7, 0, 3, 7, 5, 6])  # 0 .. clip_frames - crop_frames
    got = np.asarray(src.inputs(ops.convert_to_tensor(idx.astype(np.int32)),
                                ops.convert_to_tensor(shift)))[..., 0]
    whole = np.asarray(src.eval_batch(ops.convert_to_tensor(idx.astype(np.int32)))[0])[..., 0]
    assert got.shape == (6, 5, clips['n_mels']) and whole.shape == (6, 12, clips['n_mels'])
    for k, (i, s) in enumerate(zip(idx, shift)):
        fixed = (_fixed_clip(clips, p.clip[i], clip_frames) - mean) / std
        np.testing.assert_allclose(got[k], fixed[s:s + 5], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(whole[k], fixed, rtol=1e-5, atol=1e-5)


def _plan(rng, n_steps=40, batch=8, pool=5):
    """n_steps x batch random patch indices, no mixup (partner = idx, lam = 1)."""
    idx = rng.integers(0, pool, (n_steps, batch))
    return sampling.EpochPlan(idx, idx, np.ones(idx.shape, np.float32))


def test_augment_plan_draws_crop_offsets_uniformly_and_repeatably():
    plan = augment.augment_plan(np.random.default_rng(1), _plan(np.random.default_rng(0)),
                             max_shift=7)
    for shift in (plan.shift, plan.partner_shift):
        assert shift.shape == (40, 8) and shift.min() == 0 and shift.max() == 7
        counts = np.bincount(shift.ravel(), minlength=8)
        assert counts.min() > 0.6 * shift.size / 8  # every offset, roughly equally often
    assert (plan.shift != plan.partner_shift).mean() > 0.5  # drawn independently
    again = augment.augment_plan(np.random.default_rng(1), _plan(np.random.default_rng(0)),
                              max_shift=7)
    np.testing.assert_array_equal(again.shift, plan.shift)


def test_augment_plan_draws_nothing_when_off():
    """Patches without SpecAugment: zero shifts, no masks, and the rng is not touched, so
    that the batches of such runs are those drawn before crops and masks existed."""
    rng = np.random.default_rng(5)
    plan = augment.augment_plan(rng, _plan(np.random.default_rng(0)))
    np.testing.assert_array_equal(plan.shift, 0)
    assert plan.fmask.shape == (40, 8, 0, 2) and plan.tmask.shape == (40, 8, 0, 2)
    assert rng.random() == np.random.default_rng(5).random()


@pytest.mark.parametrize('count,width,size', [(2, 4, 10), (1, 10, 10), (3, 0, 6)])
def test_mask_spans_counts_widths_and_bounds(count, width, size):
    spans = augment.mask_spans(np.random.default_rng(2), (300, 4), count, width, size)
    assert spans.shape == (300, 4, count, 2)
    start, w = spans[..., 0], spans[..., 1]
    assert w.min() == 0 and w.max() == width  # every width 0..width occurs
    assert set(np.unique(w)) == set(range(width + 1))
    assert start.min() == 0 and (start + w).max() == size and (start + w <= size).all()


def test_specaugment_masks_training_batches_only(clips, crop_setup):
    """Masked bands and frames are exactly the union of the planned spans (set to the band
    mean, 0 after standardisation); everything else and every eval batch is untouched."""
    src = _source(clips, crop_setup, crop_frames=9)
    rng = np.random.default_rng(4)
    plan = augment.augment_plan(rng, _plan(rng, n_steps=3, batch=6), max_shift=3,
                             specaugment=(2, 2, 2, 3, 0), n_mels=clips['n_mels'], length=9)
    for step in range(3):
        a = {k: ops.convert_to_tensor(v[step]) for k, v in plan.as_dict().items()}
        x = np.asarray(src.train_batch(**a).x)[..., 0]
        plain = np.asarray(src.inputs(a['idx'], a['shift']))[..., 0]  # lam = 1: no mixup
        for k in range(6):
            band = np.zeros(clips['n_mels'], bool)
            for s, w in plan.fmask[step, k]:
                band[s:s + w] = True
            frame = np.zeros(9, bool)
            for s, w in plan.tmask[step, k]:
                frame[s:s + w] = True
            hidden = frame[:, None] | band[None, :]
            np.testing.assert_array_equal(x[k][hidden], 0.0)
            np.testing.assert_allclose(x[k][~hidden], plain[k][~hidden], rtol=1e-6)
    idx = ops.convert_to_tensor(np.arange(5, dtype=np.int32))
    np.testing.assert_array_equal(np.asarray(src.eval_batch(idx)[0]),
                                  np.asarray(src.inputs(idx, length=12)))


# ----------------------------------------------------------------------------- config

def test_crop_longer_than_the_clip_is_refused(make_cfg):
    with pytest.raises(ConfigError, match='extract.crop_frames.*extract.clip_frames'):
        make_cfg('extract.crop=random_crop', 'extract.crop_frames=600',
                 'extract.clip_frames=500')
    make_cfg('extract.crop_frames=600', 'extract.clip_frames=500')  # patches: unused


@pytest.mark.parametrize('key,value,size_key', [
    ('freq_width', 97, 'extract.n_mels'), ('time_width', 101, 'extract.patch_len')])
def test_mask_wider_than_the_input_is_refused(make_cfg, key, value, size_key):
    with pytest.raises(ConfigError, match=f'learn.specaugment.{key} = {value} exceeds '
                                          f'{size_key}'):
        make_cfg(f'learn.specaugment.{key}={value}')
    cfg = make_cfg('learn.specaugment={freq_masks: 2, freq_width: 8}')
    assert augment.specaugment(cfg['learn']) == (2, 8, 0, 0, 0)


@pytest.mark.parametrize('model', ['baseline', 'DenSE'])
def test_fixed_input_model_with_random_crop_is_refused(make_cfg, model):
    cfg = make_cfg('extract.crop=random_crop', f'learn.model={model}')
    with pytest.raises(ConfigError, match=f'learn.model {model} .*extract.crop random_crop'):
        architectures.check(cfg)
    architectures.check(make_cfg(f'learn.model={model}'))  # patches: fine


@pytest.mark.parametrize('key, overrides', [
    ('crop_frames', ['extract.crop=random_crop', 'extract.crop_frames=190',
                     'extract.clip_frames=400']),
    ('patch_len', ['extract.patch_len=100'])])
def test_vgg_gap_refuses_inputs_shorter_than_its_last_valid_conv(make_cfg, key, overrides):
    """vgg_gap halves time once by stride 2 and five times by pooling, then a valid 3x3
    conv needs 3 positions: ceil(T / 2) // 32 >= 3, i.e. T >= 191 (counted here by hand);
    shorter inputs would give an empty or undefined map."""
    assert -(-191 // 2) // 32 == 3 and -(-190 // 2) // 32 == 2
    cfg = make_cfg('learn.model=vgg_gap', 'extract.n_mels=48', *overrides)
    with pytest.raises(ConfigError, match=f'extract.{key} = .*at least 191 frames'):
        architectures.check(cfg)
    architectures.check(make_cfg('learn.model=vgg_gap', 'extract.n_mels=48',
                                 'extract.crop=random_crop', 'extract.crop_frames=191',
                                 'extract.clip_frames=400'))


# ----------------------------------------------------------------------------- prediction

def _any_length_model(n_mels, n_classes):
    """A small model over inputs of any length, with batch normalisation (inference mode
    must not depend on the batch) and global average pooling."""
    inputs = keras.Input((None, n_mels, 1))
    x = keras.layers.Conv2D(4, 3, padding='same')(inputs)
    x = keras.layers.Activation('relu')(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    probs = keras.layers.Dense(n_classes, activation='softmax')(x)
    return keras.Model(inputs, {'scores': probs})


@pytest.mark.parametrize('budget', [1, 2, 64])
def test_whole_clip_prediction_equals_one_call_per_clip(clips, crop_setup, make_cfg, budget):
    """predict_clips batches whole clips by the frame budget; each clip alone through the
    model (built here from the frames in numpy) gives the same scores."""
    p, _, mean, std, clip_frames = crop_setup
    keras.utils.set_random_seed(0)
    model = _any_length_model(clips['n_mels'], 3)
    model.layers[2].moving_mean.assign(np.full(4, 0.3, np.float32))  # not the identity
    src = _source(clips, crop_setup, crop_frames=4)
    # eval_batch_size: budget x 4 crop frames / 12 clip frames clips per call
    cfg = make_cfg('extract.crop=random_crop', 'extract.crop_frames=4',
                   f'extract.clip_frames={clip_frames}', f'learn.predict_batch_size={budget}')
    assert evaluation.eval_batch_size(cfg) == max(1, budget * 4 // 12)
    rows, scores = evaluation.predict_clips(model, src, p, np.array([5, 0, 2, 3, 4, 1]), cfg)
    np.testing.assert_array_equal(rows, [0, 1, 2, 4, 5])
    for row, score in zip(rows, scores):
        x = (_fixed_clip(clips, row, clip_frames) - mean) / std
        alone = np.asarray(model(x[None, :, :, None], training=False)['scores'])[0]
        np.testing.assert_allclose(score, alone, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- short clips

def _patch_source(clips):
    """Patches of 8 frames, hop 3, of clips of 5, 8, 20, 0, 14 and 1 frames: the clips of
    5 and 1 frames are shorter than a patch (one patch each, at offset 0)."""
    p = data.make_patches(clips['starts'], clips['lengths'], clips['patch_len'],
                          clips['patch_hop'])
    table = pd.DataFrame({'label_idx': [0, 1, 2, 0, 1, 2], 'verified': 1,
                          'labels_idx': [(0,), (1,), (2,), (0,), (1,), (2,)]})
    mean, std = np.zeros(clips['n_mels'], np.float32), np.ones(clips['n_mels'], np.float32)
    return p, data.PatchSource(clips['frames'], p, table, mean, std, np.zeros(3, np.float32),
                               clips['patch_len'], False)


def test_short_clips_get_random_cyclic_shifts_of_the_wrapped_clip(clips):
    """A training patch of a clip shorter than the patch is a random cyclic shift of the
    wrapped clip each time it is drawn (np.roll of the clip, repeated to the patch
    length); patches of longer clips keep shift 0."""
    p, src = _patch_source(clips)
    L = clips['patch_len']
    rng = np.random.default_rng(4)
    plan = augment.augment_plan(rng, sampling.plan_epoch(rng, np.arange(p.clip.size), 4,
                                                         mixup=True, alpha=0.3),
                                length=L, clen=p.clen)
    for idx, shift in ((plan.idx, plan.shift), (plan.partner, plan.partner_shift)):
        short = p.clen[idx] < L
        assert np.all(shift[~short] == 0) and np.all(shift[short] < p.clen[idx][short])
    seen = set()
    for _ in range(30):  # the 5-frame clip's shifts over epochs: every one of 0..4
        again = augment.augment_plan(rng, sampling.plan_epoch(rng, np.arange(p.clip.size), 4),
                                     length=L, clen=p.clen)
        seen |= set(again.shift[p.clip[again.idx] == 0].tolist())
    assert seen == {0, 1, 2, 3, 4}
    idx, shift = plan.idx.ravel(), plan.shift.ravel()
    got = np.asarray(src.inputs(ops.convert_to_tensor(idx.astype(np.int32)),
                                ops.convert_to_tensor(shift)))[..., 0]
    for k, (i, s) in enumerate(zip(idx, shift)):
        c = p.clip[i]
        own = clips['frames'][clips['starts'][c]:clips['starts'][c] + clips['lengths'][c]]
        expected = (np.resize(np.roll(own, -s, axis=0), (L, clips['n_mels'])) if own.shape[0] < L
                    else own[p.offset[i]:p.offset[i] + L])
        np.testing.assert_allclose(got[k], expected, rtol=1e-6)


def test_clips_at_least_as_long_as_the_patch_draw_no_shift(clips):
    """Without short clips in the plan nothing is drawn: those runs keep their batches."""
    p, _ = _patch_source(clips)
    long_patches = np.flatnonzero(p.clen >= clips['patch_len'])
    rng, plain = np.random.default_rng(8), np.random.default_rng(8)
    plan = augment.augment_plan(rng, sampling.plan_epoch(rng, long_patches, 4),
                                length=clips['patch_len'], clen=p.clen)
    reference = augment.augment_plan(plain, sampling.plan_epoch(plain, long_patches, 4))
    np.testing.assert_array_equal(plan.shift, 0)
    np.testing.assert_array_equal(plan.idx, reference.idx)
    assert rng.random() == plain.random()


# ----------------------------------------------------------------------------- time warp

def _reference_warp(x, p, w):
    """x [T, F] warped in time, written with numpy: the source time of output frame t is
    the piecewise-linear map through (0, 0), (p + w, p), (T - 1, T - 1); each band is read
    there by linear interpolation (np.interp)."""
    steps = x.shape[0]
    t = np.arange(steps, dtype=np.float64)
    s = np.interp(t, [0, p + w, steps - 1], [0, p, steps - 1])
    return np.stack([np.interp(s, t, x[:, f]) for f in range(x.shape[1])], axis=1)


@pytest.mark.parametrize('p, w', [(10, 4), (10, -4), (5, 0), (6, -5), (21, 5), (1, 0)])
def test_time_warp_against_a_reference_warp(p, w):
    x = np.random.default_rng(p + w).normal(size=(2, 28, 6, 1)).astype(np.float32)
    warp = np.array([[p, w], [0, 0]], np.int64)  # the second example: no warp
    got = np.asarray(augment.time_warp(ops, ops.convert_to_tensor(x),
                                       ops.convert_to_tensor(warp)))
    np.testing.assert_allclose(got[0, ..., 0], _reference_warp(x[0, ..., 0], p, w),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], x[1], rtol=1e-6)
    if w:
        assert np.abs(got[0] - x[0]).max() > 0.1  # moved, not left as it was
    np.testing.assert_allclose(got[0, [0, -1]], x[0, [0, -1]], rtol=1e-6)  # ends stay


def test_warp_points_lie_in_the_papers_ranges_and_are_drawn_only_when_on():
    rng = np.random.default_rng(0)
    points = augment.warp_points(rng, (50, 16), 5, 28)
    p, w = points[..., 0], points[..., 1]
    assert p.min() == 6 and p.max() == 21  # (W, T - 1 - W) open
    assert w.min() == -5 and w.max() == 5 and np.all(p + w >= 1) and np.all(p + w <= 26)
    plan = augment.augment_plan(np.random.default_rng(1), _plan(np.random.default_rng(0)),
                                specaugment=(0, 0, 0, 0, 5), length=28)
    assert plan.warp.shape == (40, 8, 2)
    rng = np.random.default_rng(2)
    off = augment.augment_plan(rng, _plan(np.random.default_rng(0)), length=28)
    assert off.warp.shape == (40, 8, 0) and rng.random() == np.random.default_rng(2).random()


def test_training_batches_are_warped_before_masking(clips):
    """PatchSource.train_batch applies the planned warp (then the masks) to the training
    inputs, against the reference warp of the numpy patch."""
    p, src = _patch_source(clips)
    L = clips['patch_len']
    idx = np.array([1, 2, 4, 6])  # patches of clips 1 and 2 (>= 8 frames)
    warp = np.array([[3, 2], [4, -3], [2, 1], [3, 0]])
    batch = src.train_batch(ops.convert_to_tensor(idx), ops.convert_to_tensor(idx),
                            ops.ones((4,)), warp=ops.convert_to_tensor(warp))
    got = np.asarray(batch.x)[..., 0]
    rows = p.frame_rows(idx, L)
    for k in range(len(idx)):
        np.testing.assert_allclose(got[k], _reference_warp(clips['frames'][rows[k]],
                                                           *warp[k]), rtol=1e-5, atol=1e-5)


def test_time_warp_too_wide_for_the_input_is_refused(make_cfg):
    make_cfg('learn.specaugment.time_warp=48')  # patch_len 100: 2 x 48 + 3 = 99
    with pytest.raises(ConfigError, match=r'learn.specaugment.time_warp = 49 needs '
                                          r'extract.patch_len of at least 2 x 49 \+ 3 = 101'):
        make_cfg('learn.specaugment.time_warp=49')
