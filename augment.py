"""Augmentations drawn into the epoch plan (augment_plan), so that a run stays
repeatable: random crop offsets (extract.crop random_crop), random cyclic shifts of clips
shorter than the training input (cyclic_shifts), SpecAugment's time warp (warp_points,
applied by time_warp) and masks
(learn.specaugment), and the augmentations of Akiyama & Sato, "Multitask learning and
semi-supervised learning with noisy data for audio tagging" (DCASE 2019 task 2,
Sec. 3.3.1):

- learn.freq_mask {p, min_width, max_width}: with probability p one frequency mask of
  width ~ U{min_width..max_width} bands (the paper: 8-32, p 0.5);
- learn.gain {p, low, high}: with probability p a factor g ~ U(low, high) on the mel
  spectrogram before the log (the paper: 0.8-1.2, p 0.5; its released code multiplies
  the power mel spectrogram by g), applied to the stored frames (gain_frames);
- learn.extra_crop {p, min_frac, max_frac}: with probability p only a random span of
  min_frac..max_frac of the crop is kept and the rest zero-padded (the paper: 25-100 %,
  p 0.5).

Each is off (p 0) by default and draws nothing then, so a run without them draws the
same batches as before they existed.
"""
import numpy as np


def specaugment(learn):
    """(freq masks, max freq width, time masks, max time width, time warp W) of
    learn.specaugment."""
    masks = learn['specaugment']
    return tuple(masks[k] for k in ('freq_masks', 'freq_width', 'time_masks', 'time_width',
                                    'time_warp'))


def warp_points(rng, shape, max_warp, length):
    """SpecAugment's time warping (Park et al., Interspeech 2019, Sec. 2): per example a
    point p ~ U{W+1 .. length-W-2}, the open interval (W, length - 1 - W) of the frame
    indices 0 .. length - 1 (the paper's (W, tau - W), taken symmetric, so that the moved
    point p + w stays inside, off both ends), and a distance w ~ U{-W .. W} (left or right
    by up to W frames) -> int64 [*shape, 2] of (p, w)."""
    p = rng.integers(max_warp + 1, length - max_warp - 1, size=shape)
    w = rng.integers(-max_warp, max_warp + 1, size=shape)
    return np.stack([p, w], axis=-1)


def time_warp(ops, x, warp):
    """x [B, T, F, 1] warped in time: frame p of each example moves to p + w (warp [B, 2]
    = (p, w); w = 0 is the identity), the frames between 0, p and T - 1 stretched or
    squeezed linearly, each output frame t read at source time s(t) (s(0) = 0, s(p + w) =
    p, s(T - 1) = T - 1, linear in between) by linear interpolation between the two
    nearest frames, every band alike. A one-dimensional piecewise-linear form of Park et
    al.'s warp, which moves the point with a 2-D spline image warp (sparse_image_warp)."""
    steps = ops.shape(x)[1]
    last = float(steps - 1)
    t = ops.arange(steps, dtype='float32')[None, :]
    p = ops.cast(warp[:, 0:1], 'float32')
    moved = p + ops.cast(warp[:, 1:2], 'float32')
    left = t * p / ops.maximum(moved, 1.0)
    right = p + (t - moved) * (last - p) / ops.maximum(last - moved, 1.0)
    s = ops.clip(ops.where(t <= moved, left, right), 0.0, last)  # [B, T]
    i0 = ops.cast(ops.floor(s), 'int32')
    i1 = ops.minimum(i0 + 1, steps - 1)
    frac = ops.cast(s - ops.cast(i0, 'float32'), x.dtype)[:, :, None, None]
    base = ops.arange(ops.shape(x)[0], dtype='int32')[:, None] * steps
    flat = ops.reshape(x, (-1, ops.shape(x)[2], ops.shape(x)[3]))

    def frames(i):
        return ops.reshape(ops.take(flat, ops.reshape(base + i, (-1,)), axis=0), ops.shape(x))
    return frames(i0) * (1.0 - frac) + frames(i1) * frac


def freq_masks(rng, shape, setting, n_mels):
    """[*shape, 1, 2] (first band, width) of one mask per example; width 0 where the
    mask is not drawn (probability 1 - p)."""
    on = rng.random(shape) < setting['p']
    width = rng.integers(setting['min_width'], setting['max_width'] + 1, size=shape)
    width = np.where(on, np.minimum(width, n_mels), 0)
    start = np.floor(rng.random(shape) * (n_mels - width + 1)).astype(np.int64)
    return np.stack([start, width], axis=-1)[..., None, :]


def gains(rng, shape, setting):
    """[*shape] float32 gain factors: U(low, high) with probability p, else 1."""
    on = rng.random(shape) < setting['p']
    g = rng.uniform(setting['low'], setting['high'], size=shape)
    return np.where(on, g, 1.0).astype(np.float32)


def crop_masks(rng, shape, setting, length):
    """[*shape, 2, 2] time masks (start, width) that zero everything outside a kept span
    of round(f * length) frames, f ~ U(min_frac, max_frac), at a random place of the crop;
    widths 0 where no additional crop is drawn. The kept span stays where it was in the
    crop rather than moving to its start: the trunks end in global pooling, so the place
    of the padding does not matter to them."""
    on = rng.random(shape) < setting['p']
    frac = rng.uniform(setting['min_frac'], setting['max_frac'], size=shape)
    keep = np.where(on, np.clip(np.round(frac * length), 1, length), length).astype(np.int64)
    start = np.floor(rng.random(shape) * (length - keep + 1)).astype(np.int64)
    before = np.stack([np.zeros_like(start), start], axis=-1)
    after = np.stack([start + keep, length - start - keep], axis=-1)
    return np.stack([before, after], axis=-2)


def gain_frames(ops, frames, g, log):
    """Frames [B, T, F] whose mel energies are multiplied by g [B] (Akiyama & Sato's gain:
    the factor multiplies the mel spectrogram itself, power or magnitude alike, not the
    signal): log10 frames shift by log10(g) (the eps inside the log is neglected), linear
    frames are multiplied by g."""
    g = ops.reshape(ops.cast(g, frames.dtype), (-1, 1, 1))
    if log:
        return frames + ops.log(g) / np.log(10.0)
    return frames * g


def mask_spans(rng, shape, count, max_width, size):
    """SpecAugment masks (Park et al., Interspeech 2019): per example `count` masks of
    width w ~ U{0..max_width} starting at s ~ U{0..size - w} -> int64 [*shape, count, 2]
    of (s, w). Masks may overlap, as in the paper."""
    width = rng.integers(0, min(max_width, size) + 1, size=(*shape, count))
    start = np.floor(rng.random(width.shape) * (size - width + 1)).astype(np.int64)
    return np.stack([start, width], axis=-1)


def cyclic_shifts(rng, clen, length):
    """Shifts of the examples whose clips (clen [*shape] frames) are shorter than the
    training input of `length` frames: s ~ U{0..clen - 1}, so that the input, read as
    frame (s + t) mod clen, is a random cyclic shift of the wrapped clip (Dorfer & Widmer's
    released code tiles a short clip and slices it at random); 0 for the other examples.
    The input of a clip of 5 frames read 8 long from shift 3: frames 3 4 0 1 2 3 4 0."""
    clen = np.asarray(clen, np.int64)
    return rng.integers(0, np.where(clen < length, np.maximum(clen, 1), 1))


def augment_plan(rng, plan, max_shift=0, specaugment=(0, 0, 0, 0, 0), n_mels=1, length=1,
                 paper=None, clen=None):
    """Random crop offsets, cyclic shifts of short clips and SpecAugment masks drawn into
    an epoch plan.

    max_shift: a crop starts at a frame drawn uniformly from 0..max_shift of its fixed-
    length clip, independently for each example and partner (the clip read cyclically, so
    a clip shorter than the crop is shifted cyclically too). max_shift 0 (patches): clen
    [patches], the clip length of each patch's clip: a patch of a clip shorter than the
    training input (`length` frames), which has one patch at offset 0, gets a random
    cyclic shift per example and partner (cyclic_shifts) instead of the same excerpt every
    epoch; drawn only when the plan holds such a patch, so that runs on clips at least as
    long as the input draw the same batches as before. specaugment: (freq masks, max freq
    width, time masks, max time width, time warp W) over inputs of n_mels bands x length
    frames; counts and W of 0 draw nothing, so that a run without these draws the same
    batches as before they existed.
    """
    if max_shift > 0:
        plan.shift = rng.integers(0, max_shift + 1, size=plan.idx.shape)
        plan.partner_shift = rng.integers(0, max_shift + 1, size=plan.idx.shape)
    elif clen is not None and (np.any(clen[plan.idx] < length) or
                               np.any(clen[plan.partner] < length)):
        plan.shift = cyclic_shifts(rng, clen[plan.idx], length)
        plan.partner_shift = cyclic_shifts(rng, clen[plan.partner], length)
    n_freq, freq_width, n_time, time_width, max_warp = specaugment
    if max_warp:
        plan.warp = warp_points(rng, plan.idx.shape, max_warp, length)
    if n_freq:
        plan.fmask = mask_spans(rng, plan.idx.shape, n_freq, freq_width, n_mels)
    if n_time:
        plan.tmask = mask_spans(rng, plan.idx.shape, n_time, time_width, length)
    return augment_paper(rng, plan, paper or {}, n_mels, length)


def augment_paper(rng, plan, paper, n_mels, length):
    """Akiyama & Sato's frequency mask, gain and additional crop (below), each drawn
    only when its p > 0; `paper` maps learn.freq_mask / gain / extra_crop to their
    settings. Masks join SpecAugment's."""
    shape = plan.idx.shape
    if paper.get('freq_mask', {}).get('p', 0) > 0:
        plan.fmask = np.concatenate(
            [plan.fmask, freq_masks(rng, shape, paper['freq_mask'], n_mels)], axis=-2)
    if paper.get('gain', {}).get('p', 0) > 0:
        plan.gain = gains(rng, shape, paper['gain'])
        plan.partner_gain = gains(rng, shape, paper['gain'])
    if paper.get('extra_crop', {}).get('p', 0) > 0:
        plan.tmask = np.concatenate(
            [plan.tmask, crop_masks(rng, shape, paper['extra_crop'], length)], axis=-2)
    return plan
