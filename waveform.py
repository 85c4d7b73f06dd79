"""Waveform inputs (extract.features waveform): crops, their augmentations and whole-clip
scoring, after Akiyama & Sato, "Multitask learning and semi-supervised learning with noisy
data for audio tagging" (DCASE 2019 task 2), Sec. 3.2.1 and 3.3.2, and their released code
(OsciiArt/Freesound-Audio-Tagging-2019, utils.py WaveDataset, train_model4/5.py).

The feature store holds each clip's samples as one column, [samples, 1] (feat_extract.py),
and the patch table one entry per clip (data.make_clips): a training example is a crop of
extract.crop_samples samples read out of it by index, never a copy. As in the released
code, which pads every clip with crop_samples // 2 zeros on both sides and crops it at a
random place, a crop starts anywhere from crop_samples // 2 samples before the clip to
crop_samples // 2 after its end minus the crop, and reads zeros outside the clip (never
the clip repeated). Its augmentations, drawn into the epoch plan:

- learn.wave_scale {p, max}: the clip resampled by s = max^U(-1, 1) (the released
  do_scaling, scaling 1.25: 0.8 - 1.25) before the crop: the stretched clip is floor(len
  x s) long and its sample j is the clip's sample floor(j / s) (nearest; s > 1 slows the
  clip down and lowers its pitch);
- learn.wave_gain {p, db}: the (mixed) crop multiplied by 10^(U(-db, db) / 20) (the
  released do_gain, gain 6: 0.501 - 1.995), one factor per example applied after mixup,
  as the released code applies it (both members get the same factor, which on a linear
  mix is the same thing).

Mixup (learn.mixup) mixes two crops linearly (lam a + (1 - lam) b, as for log-mel). No
standardisation: the model reads the samples in [-1, 1] as stored (the paper's input),
so scaler.npz holds the identity of the one column. Validation loss and accuracy are
those of each clip's first crop; clip scores (validation clip accuracy, the test report,
predict.py) are those of the whole clip in one pass, zero-padded on both sides to the
shortest input the model takes (architectures.MIN_SAMPLES).
"""
import numpy as np
import tensorflow as tf  # tf.function with an unknown batch and length: one trace

import data


def scales(rng, shape, setting):
    """[*shape] float32 resampling factors: max^U(-1, 1) with probability p, else 1."""
    on = rng.random(shape) < setting['p']
    s = np.power(float(setting['max']), rng.uniform(-1.0, 1.0, size=shape))
    return np.where(on, s, 1.0).astype(np.float32)


def gains_db(rng, shape, setting):
    """[*shape] float32 gain factors: 10^(U(-db, db) / 20) with probability p, else 1."""
    on = rng.random(shape) < setting['p']
    g = np.power(10.0, rng.uniform(-setting['db'], setting['db'], size=shape) / 20.0)
    return np.where(on, g, 1.0).astype(np.float32)


def stretched_length(clen, scale):
    """Samples of a clip of clen samples resampled by scale: floor(clen x scale), in float32
    as WaveSource.windows computes it."""
    return np.floor(np.asarray(clen, np.float32) * np.asarray(scale, np.float32)).astype(
        np.int64)


def crop_starts(rng, clen, scale, crop):
    """Start of each crop in its (stretched) clip: U{-pad .. max(-pad, L + pad - crop)},
    L the stretched length, pad = crop // 2 (the released code's zero padding on both
    sides); a start below 0 or a crop past L reads zeros there."""
    pad = crop // 2
    high = np.maximum(stretched_length(clen, scale) + pad - crop, -pad)
    return rng.integers(-pad, high + 1)


def augment_plan(rng, plan, clen, crop, scale, gain):
    """Crop starts, resampling factors and gains of an epoch plan's members and partners.
    clen [clips]: samples of each entry of the patch table; scale, gain: learn.wave_scale
    and learn.wave_gain. Factors are drawn only when their p > 0, so that a run without
    them draws the crops it drew before they existed."""
    shape = plan.idx.shape
    ones = np.ones(shape, np.float32)
    stretch = scale['p'] > 0
    s_a = scales(rng, shape, scale) if stretch else ones
    s_b = scales(rng, shape, scale) if stretch else ones
    plan.shift = crop_starts(rng, clen[plan.idx], s_a, crop)
    plan.partner_shift = crop_starts(rng, clen[plan.partner], s_b, crop)
    if stretch:
        plan.scale = np.stack([s_a, s_b], axis=-1)
    if gain['p'] > 0:
        plan.gain = gains_db(rng, shape, gain)
        plan.partner_gain = plan.gain.copy()  # one factor on the mixed example
    return plan


class WaveSource(data.PatchSource):
    """The batch source of waveform runs: crops [B, length] of the stored samples (one
    column, mean 0 and std 1: no standardisation), resampled and zero outside the clip.
    Everything else (targets, smoothing, mixup, the Batch) is data.PatchSource's."""

    def __init__(self, frames, patches, *args, **kwargs):
        super().__init__(frames, patches, *args, **kwargs)
        self.samples = frames  # the stored samples on the host, for whole-clip scoring
        # A dataset's samples outnumber int32 (FSDKaggle2019 at 44.1 kHz: ~1.4e10), so the
        # first sample of each clip is an int64, where the frames of log-mel need int32.
        with tf.device('/GPU:0' if self.on_device else '/CPU:0'):
            self.row0 = tf.constant(patches.row0.astype(np.int64))

    def inputs(self, idx, shift=None, length=None, gain=None, scale=None):
        """Crops [B, length] of patch-table entries idx starting `shift` samples into
        their clips (resampled by scale [B]), times gain [B]; length: the training crop."""
        take = self.ops.take
        offset = take(self.offset, idx)
        if shift is not None:
            offset = offset + self.ops.cast(shift, 'int32')
        return self.windows(take(self.row0, idx), offset, take(self.clen, idx), length, gain,
                            scale)

    def windows(self, row0, offset, clen, length=None, gain=None, scale=None):
        """[B, length] float32: sample offset + t (t < length) of each clip stretched by
        scale [B] (None: 1), which is the clip's sample floor((offset + t) / scale), 0 where
        that lies outside the stretched clip; times gain [B]."""
        ops = self.ops
        length = self.patch_len if length is None else length
        j = ops.expand_dims(offset, -1) + ops.arange(length, dtype='int32')  # [B, length]
        clen = ops.expand_dims(clen, -1)
        if scale is None:
            src, end = j, clen
        else:
            s = ops.expand_dims(ops.cast(scale, 'float32'), -1)
            src = ops.cast(ops.floor(ops.cast(j, 'float32') / s), 'int32')
            end = ops.cast(ops.floor(ops.cast(clen, 'float32') * s), 'int32')
        inside = ops.logical_and(ops.logical_and(j >= 0, j < end), src < clen)
        src = ops.minimum(ops.maximum(src, 0), clen - 1)
        rows = ops.reshape(ops.expand_dims(ops.cast(row0, 'int64'), -1) +
                           ops.cast(src, 'int64'), (-1,))
        x = ops.reshape(ops.cast(ops.take(self.frames, rows, axis=0), 'float32'), (-1, length))
        x = x * ops.cast(inside, 'float32')
        if gain is not None:
            x = x * ops.reshape(ops.cast(gain, 'float32'), (-1, 1))
        return x

    def padded(self, idx, content, pad, silence, wrap):
        """Inputs [B, pad + content + pad] of whole-clip indices idx for buckets.py
        (recognizer.length_tolerance, tta_pad): each clip's samples from its start, zeros
        beyond its end and in the `pad` samples on both sides (silence of a waveform is 0,
        so `silence` is not needed; a waveform is never repeated, so neither is `wrap`)."""
        take = self.ops.take
        return self.windows(take(self.row0, idx), take(self.offset, idx) - pad,
                            take(self.clen, idx), content + 2 * pad)


def padded(samples, length):
    """A clip's samples zero-padded on both sides (the extra sample after it) to length."""
    extra = max(0, length - samples.size)
    return np.pad(samples, (extra // 2, extra - extra // 2))


def clip_scorer(classifier, source, patches, min_samples, budget):
    """A function of table rows -> (evaluated rows, clip scores [n, K]): each whole clip
    scored in one pass, zero-padded to min_samples when shorter (padded). Clips of one
    (padded) length are scored together, at most `budget` samples per call; no clip is
    padded to another's length, so each scores as it would alone."""
    compiled = tf.function(lambda x: classifier(x, training=False)['scores'],
                           input_signature=[tf.TensorSpec([None, None], tf.float32)])

    def score(rows, progress=None):
        idx = patches.of_clips(rows)
        lengths = np.maximum(patches.clen[idx], min_samples)
        scores = np.zeros((idx.size, source.n_classes), np.float32)
        for length in np.unique(lengths):
            same = np.flatnonzero(lengths == length)
            per_call = max(1, budget // int(length))
            for lo in range(0, same.size, per_call):
                part = same[lo:lo + per_call]
                x = np.stack([padded(_samples(source, patches, i), int(length))
                              for i in idx[part]])
                scores[part] = np.asarray(compiled(tf.constant(x, tf.float32)))
                if progress is not None:  # eval.progress_bar: clips scored so far
                    progress(part.size)
        return patches.clip[idx], scores
    return score


def _samples(source, patches, i):
    """float32 samples of patch-table entry i."""
    start = patches.row0[i]
    return np.asarray(source.samples[start:start + patches.clen[i], 0], np.float32)
