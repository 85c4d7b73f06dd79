"""Full-length prediction in length buckets and padding augmentation (section `recognizer`:
length_tolerance, tta_pad), as Akiyama & Sato predict (DCASE 2019 task 2, Sec. 3.6; the
released make_final_submission1.py).

Full length (recognizer.length_tolerance a number): each clip is scored over all its
frames, however long, rather than fixed to extract.clip_frames. Clips are sorted by length
and grouped: a clip joins the current group while its length L is at most the group's
first (shortest) length + int(L x tolerance), the released get_num_batch's rule with its
"patience rate"; the clips of a group are padded with silence after their end to the
group's longest length and scored in one call (a group is cut where a call would exceed the
frame budget). Tolerance 0 groups only clips of equal length: each clip is scored exactly
as it would be alone. A clip shorter than the training input (extract.crop_frames) is
padded with silence to it, as the released code pads its EnvNet batches to 20,580 samples.

Padding augmentation (recognizer.tta_pad): every clip is scored once per entry, with that
many frames of silence on both sides (the released `pad`; the paper's "Pad = 8, 32"), or a
ratio of the scored length on each side when the entry has a decimal point (0.25: a quarter
of it each side); 0 is the clip as it is. The views are averaged by eval.py. Silence is the
stored frame of a digitally silent signal, standardised with the clip.

The feature kind (extract.features) is read from the config (KINDS): log-mel frames, or a
waveform's samples (silence 0, the shortest length extract.crop_samples, no fixed length:
length_tolerance null scores each clip at its own length). The source gathers the padded
inputs (its padded(); data.PatchSource for log-mel).
"""
from dataclasses import dataclass

import numpy as np
import tensorflow as tf  # tf.function with a dynamic input signature: one trace, any length

from config import ConfigError, lookup


def check(cfg):
    """recognizer.tta_pad holds frames (integers >= 0) or ratios (> 0); on log-mel, both
    keys score whole clips, so they need extract.crop random_crop (a model of any length)."""
    rec = cfg['recognizer']
    for pad in rec['tta_pad'] or []:
        if isinstance(pad, bool) or not isinstance(pad, (int, float)) or pad < 0 or \
                (isinstance(pad, float) and pad == 0):
            raise ConfigError(f'recognizer.tta_pad entries are frames of padding on each side '
                              f'(integers >= 0) or ratios of the scored length (numbers with '
                              f'a decimal point, > 0), got {pad!r}')
    used = [key for key in ('length_tolerance', 'tta_pad') if rec[key] not in (None, [])]
    if used and kind(cfg) == 'logmel' and cfg['extract']['crop'] != 'random_crop':
        raise ConfigError(f'recognizer.{used[0]} scores whole clips, which needs extract.crop '
                          f'random_crop (extract.crop patches scores fixed patches of a '
                          f'fixed-length model)')


def active(cfg):
    """Whether the recognizer scores whole clips in buckets or with padding views."""
    rec = cfg['recognizer']
    return rec['length_tolerance'] is not None or bool(rec['tta_pad'])


def pad_frames(pad, length):
    """Frames of silence on each side: an integer entry as it is, a ratio of `length`."""
    return int(round(pad * length)) if isinstance(pad, float) else int(pad)


def plan(lengths, tolerance, budget, padded_len):
    """Clip lengths [N] -> [(positions, common length)]: groups of clips sorted by length, a
    clip joining the current group while length <= first + int(length x tolerance) and
    (members + 1) x padded_len(length) <= budget frames; the common length is the group's
    longest. Every group holds at least one clip."""
    lengths = np.asarray(lengths, np.int64)
    groups = []
    for i in np.argsort(lengths, kind='stable'):
        n = int(lengths[i])
        if groups:
            first, members = groups[-1]
            if n <= first + int(n * tolerance) and (len(members) + 1) * padded_len(n) <= budget:
                members.append(i)
                continue
        groups.append((n, [i]))
    return [(np.asarray(members), int(lengths[members].max())) for _, members in groups]


def _silent_log_mel(ext, width):
    """The log-mel frame of a zero signal (what extract.load_mode zeropad stores)."""
    import feat_extract
    frames = feat_extract.log_mel(np.zeros(4 * ext['win_length_samples'], np.float32), ext)
    return frames[len(frames) // 2]


@dataclass(frozen=True)
class Kind:
    """What whole-clip scoring needs to know of a feature kind (extract.features): the
    stored frame of silence [width], the shortest scored length (the training input: a
    shorter clip is padded to it) and the fixed length of length_tolerance null (None:
    each clip at its own length)."""
    silence: object
    shortest: object
    fixed: object


KINDS = {'logmel': Kind(_silent_log_mel, lambda ext: ext['crop_frames'],
                        lambda ext: ext['clip_frames']),
         # samples: silence is 0, read with zeros beyond a clip's ends (never repeated)
         'waveform': Kind(lambda ext, width: np.zeros(width, np.float32),
                          lambda ext: ext['crop_samples'], lambda ext: None)}


def kind(cfg):
    return cfg['extract'].get('features', 'logmel')


def _kind(cfg):
    return lookup(KINDS, kind(cfg), 'extract.features')


def silence(cfg, width):
    return np.asarray(_kind(cfg).silence(cfg['extract'], width), np.float32)


def whole_clip_scorer(classifier, source, patches, cfg):
    """A function of (table rows, progress) -> (evaluated rows, views [V, n, K]): the
    classifier's scores of each whole clip under each padding view (one view, pad 0, without
    recognizer.tta_pad), in length buckets (length_tolerance) or fixed to clip_frames
    (length_tolerance null). Compiled once for any batch size and length; progress(k) is
    called with the clips of each finished call."""
    ext, rec = cfg['extract'], cfg['recognizer']
    tolerance, pads = rec['length_tolerance'], rec['tta_pad'] or [0]
    shortest, fixed = _kind(cfg).shortest(ext), _kind(cfg).fixed(ext)
    wrap = tolerance is None and fixed is not None  # fixed-length clips, as in training
    quiet = silence(cfg, source.n_mels)
    spec = [tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int32),
            tf.TensorSpec([], tf.int32)]
    compiled = tf.function(
        lambda idx, content, pad: classifier(source.padded(idx, content, pad, quiet, wrap),
                                             training=False)['scores'],
        input_signature=spec)
    # The frame budget of a call, as eval.eval_batch_size's: predict_batch_size crops.
    budget = cfg['learn']['predict_batch_size'] * shortest

    def padded_len(n):
        return n + 2 * max(pad_frames(p, n) for p in pads)

    def score(rows, progress=None):
        idx = patches.of_clips(rows)
        lengths = (np.full(idx.size, fixed) if wrap
                   else np.maximum(patches.clen[idx], shortest))
        views = np.zeros((len(pads), idx.size, source.n_classes), np.float64)
        for members, length in plan(lengths, tolerance or 0.0, budget, padded_len):
            for v, pad in enumerate(pads):
                views[v, members] = compiled(tf.constant(idx[members]), tf.constant(length),
                                             tf.constant(pad_frames(pad, length))).numpy()
            if progress is not None:
                progress(members.size)
        return patches.clip[idx], views
    return score
