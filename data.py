"""Patches and crops, scaler, batches, label smoothing, mixup, pseudo labels.

Shapes: frames [total_frames, n_mels] (every clip's log-mel stacked once, see
feat_extract.FeatureStore); a patch is a (clip, start frame) pair, never a copy. Patch
tables are flat numpy arrays over all patches of all clips; training, validation, test and
pruning select patches by index. With extract.crop random_crop the table holds one entry
per clip (its whole fixed-length clip) and a training example is that entry shifted by a
random crop offset drawn with the epoch plan (sampling.py draws the plans,
augment.augment_plan the crops and masks; splits.py splits the clips).
"""
import logging
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

import augment
import datasets
from config import ConfigError

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- patches

@dataclass
class Patches:
    """All patches of all clips, as flat arrays (one entry per patch).

    clip: table row; row0: first frame row of the clip in the frame matrix; offset: start
    frame within the clip; clen: clip length in frames (frame index = row0 + (offset + t)
    mod clen, which pads short clips by repetition).
    """
    clip: np.ndarray
    row0: np.ndarray
    offset: np.ndarray
    clen: np.ndarray

    def of_clips(self, rows):
        """Indices of the patches that belong to the given table rows."""
        return np.flatnonzero(np.isin(self.clip, rows))

    def frame_rows(self, idx, patch_len):
        """[len(idx), patch_len] frame-matrix rows of the given patches (numpy)."""
        t = np.arange(patch_len)
        return self.row0[idx, None] + (self.offset[idx, None] + t) % self.clen[idx, None]


def n_patches(n_frames, patch_len, patch_hop):
    """Patches per clip: max(1, ceil((F - patch_len) / patch_hop)); 0 for a failed clip."""
    n_frames = np.asarray(n_frames, dtype=np.int64)
    n = np.maximum(1, -(-(n_frames - patch_len) // patch_hop))
    return np.where(n_frames > 0, n, 0)


def make_patches(start, length, patch_len, patch_hop):
    """Patch table for clips whose frames are rows start[i] .. start[i]+length[i]-1."""
    counts = n_patches(length, patch_len, patch_hop)
    clip = np.repeat(np.arange(len(length)), counts)
    first = np.cumsum(counts) - counts
    within = np.arange(clip.size) - np.repeat(first, counts)
    return Patches(clip=clip, row0=np.asarray(start, np.int64)[clip],
                   offset=within * patch_hop, clen=np.asarray(length, np.int64)[clip])


def make_clips(start, length):
    """One entry per readable clip, at offset 0: the whole clip for extract.crop random_crop.

    Read over clip_frames frames, frame t is row0 + t mod clen, so a short clip is repeated
    up to clip_frames and a long one is cut there (He et al. downsample a long clip instead;
    at their 2000 frames of 20 ms no clip of FSDKaggle2019, at most 30 s, is that long, and
    cutting keeps one gather formula for patches, crops and whole clips).
    """
    length = np.asarray(length, np.int64)
    clip = np.flatnonzero(length > 0)
    return Patches(clip=clip, row0=np.asarray(start, np.int64)[clip],
                   offset=np.zeros(clip.size, np.int64), clen=length[clip])


# ----------------------------------------------------------------------------- scaler

def fit_scaler(frames, patches, idx, patch_len, chunk=1 << 14):
    """Per-mel-band mean and std over the frames of the given (training) patches.

    Overlapping patches count a frame once per patch that holds it, exactly as if the
    patches had been materialised, without materialising them: each frame row gets a
    weight (how many patches hold it) and the moments are weighted sums.
    """
    weights = np.zeros(frames.shape[0], dtype=np.float64)
    for lo in range(0, idx.size, max(1, chunk // patch_len)):
        part = idx[lo:lo + max(1, chunk // patch_len)]
        weights += np.bincount(patches.frame_rows(part, patch_len).ravel(),
                               minlength=frames.shape[0])
    rows = np.flatnonzero(weights)
    total = weights[rows].sum()
    s1 = np.zeros(frames.shape[1])
    for lo in range(0, rows.size, chunk):
        r = rows[lo:lo + chunk]
        s1 += weights[r] @ np.asarray(frames[r], dtype=np.float64)
    mean = s1 / total
    s2 = np.zeros(frames.shape[1])
    for lo in range(0, rows.size, chunk):
        r = rows[lo:lo + chunk]
        s2 += weights[r] @ (np.asarray(frames[r], dtype=np.float64) - mean) ** 2
    std = np.sqrt(s2 / total)
    # A constant band would divide by zero; leave it unscaled instead.
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


# ----------------------------------------------------------------------------- targets

def lsr_eps(cfg_learn, classes):
    """Per-class smoothing epsilon (Fonseca et al., WASPAA 2019, Sec. 2.1 and 4.1).

    LSR off -> 0. STANDARD -> eps for every class. GROUPS2 (noise-dependent) -> eps + delta
    for the classes of learn.noisier_classes, eps - delta for the others; the epsilon of an
    example is that of its given label.
    """
    eps = np.zeros(len(classes), np.float32)
    if not cfg_learn['LSR']:
        return eps
    eps[:] = cfg_learn['eps_LSR_noisy']
    if cfg_learn['LSRmode'] == 'GROUPS2':
        noisier = np.isin(classes, cfg_learn['noisier_classes'])
        if not noisier.any():
            logger.warning('LSRmode GROUPS2: none of learn.noisier_classes is a class of this '
                           'dataset; every class gets eps - delta')
        delta = cfg_learn['delta_eps_LSR']
        eps = np.where(noisier, eps + delta, eps - delta).astype(np.float32)
    if (eps < 0).any() or (eps > 1).any():
        raise ConfigError('learn.eps_LSR_noisy -/+ learn.delta_eps_LSR must stay in [0, 1]')
    return eps


def clip_eps(y, eps):
    """Per-clip smoothing epsilon from [N, K] multi-hot targets and per-class eps [K]: the
    mean eps of the clip's labels (single-label: that of its label, as in the paper)."""
    return ((y @ eps) / np.maximum(y.sum(axis=1), 1)).astype(np.float32)


def smooth_targets(y, e):
    """Multi-hot targets [B, K] smoothed per example: y (1 - e) + e / K for every class,
    with e [B] the example's epsilon. A one-hot target gives the paper's LSR; a
    multi-hot one keeps its labels' mass (1 - e) + e / K each and e / K elsewhere."""
    e = e[:, None]
    return y * (1.0 - e) + e / y.shape[-1]


def sharpen(p, temperature):
    """Soft pseudo labels as Akiyama & Sato sharpen them (Sec. 2.2; released code,
    train_model2.py: `tmp ** TEMPERATURE` normalised): p_k^T / sum_j p_j^T per row, so
    that T > 1 sharpens (their best T = 2) and T = 1 leaves the scores unchanged.

    MixMatch's formula p^(1/T), which the paper cites and issue 9 wrote literally, would
    flatten the scores with T = 2 ([0.8, 0.2] -> [0.67, 0.33]), contradicting the paper's
    "sharpens the predicted categorical distribution" and its code."""
    p = np.power(np.clip(np.asarray(p, np.float64), 0.0, None), temperature)
    return (p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)).astype(np.float32)


def read_pseudo_labels(path, table, rows, classes):
    """learn.pseudo_labels: a predictions CSV (fname + one score column per class, as
    predictions.csv or predict.py writes it) -> [len(table), K] scores, filled for `rows`
    (the unverified training clips; other rows 0). One-line errors for a missing file, a
    class set that differs from the dataset's, or clips it does not cover."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'learn.pseudo_labels: no file {path}')
    frame = pd.read_csv(path)
    if 'fname' not in frame.columns or set(classes) - set(frame.columns):
        missing = sorted(set(classes) - set(frame.columns))
        raise ConfigError(f'learn.pseudo_labels {path} must have an fname column and one '
                          f'column per class of the dataset; missing: '
                          f'{", ".join(missing[:5] or ["fname"])}'
                          f'{" ..." if len(missing) > 5 else ""}')
    frame = frame.drop_duplicates('fname').set_index('fname')
    fnames = table.fname.to_numpy()[rows]
    absent = [f for f in fnames if f not in frame.index]
    if absent:
        raise ConfigError(f'learn.pseudo_labels {path} lacks {len(absent)} of the '
                          f'{len(fnames)} unverified training clips (e.g. {absent[0]})')
    scores = np.zeros((len(table), len(classes)), np.float32)
    scores[rows] = frame.loc[fnames, list(classes)].to_numpy(np.float32)
    return scores


DB_AMIN, DB_TOP = 1e-10, 80.0  # librosa.power_to_db's defaults, as the released code calls it


def power_frames(ops, x, log):
    """Stored frames -> mel energies: 10^x of log10 frames (extract.log; the eps inside the
    log is left in, below DB_AMIN's reach at any audible level), linear frames as they are."""
    return ops.power(10.0, x) if log else x


def power_to_db(ops, x):
    """Mel energies [B, ...] -> dB as librosa.power_to_db(x) (ref 1, amin 1e-10, top_db 80)
    computes it per example: 10 log10(max(x, amin)), floored DB_TOP below the example's
    maximum (so a masked band, 0, becomes the example's maximum - 80 dB)."""
    db = 10.0 * ops.log(ops.maximum(x, DB_AMIN)) / np.log(10.0)
    top = ops.max(db, axis=tuple(range(1, len(db.shape))), keepdims=True)
    return ops.maximum(db, top - DB_TOP)


def mix(ops, lam, a, b):
    """lam * a + (1 - lam) * b with lam [B] broadcast over the trailing axes of a and b."""
    lam = ops.reshape(lam, (-1,) + (1,) * (len(a.shape) - 1))
    return lam * a + (1.0 - lam) * b


# ----------------------------------------------------------------------------- batches

def wrong_labels(table):
    """Per clip: 1 where the given label(s) differ from the true label(s) (needs a
    true_label(s) column, as synthetic data or injected noise have); all 0 without one."""
    if 'true_labels_idx' in table.columns:
        return np.array([set(a) != set(b) for a, b in
                         zip(table.labels_idx, table.true_labels_idx)], bool)
    if 'true_idx' not in table.columns:
        return np.zeros(len(table), bool)
    return (table.label_idx.to_numpy() != table.true_idx.to_numpy())


TF_ALIGNMENT = 64  # bytes; TensorFlow's CPU kernels assume it for every buffer


def host_tensor(array):
    """A CPU tensor over the frames without copying them.

    tf.constant would copy the frame matrix twice (the mapped file plus two anonymous
    copies at its peak). DLPack hands TensorFlow the numpy buffer itself; a read-only
    memory map is reopened copy-on-write, which DLPack accepts and which never writes to
    the cache file. TensorFlow needs 64-byte aligned buffers (it aborts in a later op,
    not at the hand-over, when one is not), so other buffers are copied instead; memory
    maps of the cache are page-aligned.
    """
    import tensorflow as tf
    if isinstance(array, np.memmap) and not array.flags.writeable:
        array = np.memmap(array.filename, dtype=array.dtype, mode='c', shape=array.shape,
                          offset=array.offset)
    array = np.ascontiguousarray(array)
    if not array.flags.writeable or array.ctypes.data % TF_ALIGNMENT:
        return tf.constant(array)
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


@dataclass(frozen=True)
class Batch:
    """One training step's batch: PatchSource.train_batch builds it, the Trainer's step
    unpacks it at its top, the step loss reads its fields.

    x [B, T, F, 1] inputs and y [B, K] targets, smoothed first and then mixed, so that
    label smoothing and mixup combine (SpecAugment then masks the mixed input); verified
    [B]: that of the first member (partners stay in its pool); members [B]: examples in
    each mixed pair (2, or 1 without mixup); wrong [B]: how many of them have a wrong
    given label (noise detection counts both examples of a pair by their true labels).
    train_batch always sets these five; the others are None unless the loss declares
    that it reads them
    (losses.StepLoss.needs): 'members': y_a, y_b (each member's smoothed targets), lam
    [B] and verified_b (the partner's); 'pseudo': pseudo_a, pseudo_b (the members' soft
    pseudo labels); 'clean': x_clean and labels (the first member's inputs and given
    label before mixup and masks, for a loss that measures the batch itself); 'semi':
    semi [B], 1 for an example of the soft-pseudo-label stream (learn.multitask_batches
    paper).

    A dataclass names each field once, where a dict of string keys would spell them in
    every reader. tf.data has no dataclass structure and cannot carry None, so on the
    host path the batch crosses the tf.data boundary as as_dict() and the step rebuilds
    it with Batch(**element).
    """
    x: object = None
    y: object = None
    verified: object = None
    members: object = None
    wrong: object = None
    y_a: object = None
    y_b: object = None
    lam: object = None
    verified_b: object = None
    pseudo_a: object = None
    pseudo_b: object = None
    x_clean: object = None
    labels: object = None
    semi: object = None

    def as_dict(self):
        """The fields that are set, by name (the element tf.data carries)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


class PatchSource:
    """Frames and patch table as backend tensors; builds batches with backend ops.

    The same code runs inside the compiled training step (frames resident on the GPU) or
    in the tf.data input pipeline on the host (frames too large for the GPU, or no GPU).
    A batch is gathered by index: frame rows [B, patch_len] -> [B, patch_len, n_mels, 1],
    standardised per band, the clips' multi-hot target rows (datasets.targets) smoothed
    per example, then mixed (mixup).

    needs: what the batches carry beyond x, y, verified, members and wrong (the fields
    of Batch the loss reads: 'members', 'pseudo', 'clean'); pseudo [clips, K]: the soft
    pseudo labels of 'pseudo'.
    """

    def __init__(self, frames, patches, table, mean, std, eps, patch_len, on_device,
                 eval_len=None, log=True, per_clip=False, needs=frozenset(), pseudo=None,
                 power=False):
        import tensorflow as tf  # placement is TensorFlow's; Keras has no device API
        from keras import ops
        self.ops, self.patch_len, self.on_device = ops, patch_len, on_device
        self.needs = frozenset(needs)
        # log: the frames are log-mel (how augment.gain_frames applies a gain); per_clip:
        # extract.normalize per_clip, each example standardised by its own mean and std;
        # power: learn.augment_domain power, members mixed, scaled and masked as mel
        # energies, then converted to dB and standardised (finish)
        self.log, self.per_clip, self.power = log, per_clip, power
        # Frames per evaluated example: a patch, or a whole fixed-length clip (random_crop).
        self.eval_len = eval_len or patch_len
        self.n_classes = len(eps)
        self.n_mels = frames.shape[1]
        clip = patches.clip
        device = '/GPU:0' if on_device else '/CPU:0'
        host = host_tensor(frames)
        with tf.device(device):
            # On the host this is the mapped tensor itself; on a GPU, one device copy.
            self.frames = tf.identity(host) if on_device else host
            self.row0 = tf.constant(patches.row0.astype(np.int32))
            self.offset = tf.constant(patches.offset.astype(np.int32))
            self.clen = tf.constant(np.maximum(patches.clen, 1).astype(np.int32))
            # Targets and epsilons per clip, gathered through the patch's clip: a
            # [patches, K] copy would be large for many classes and many patches.
            self.clip = tf.constant(clip.astype(np.int32))
            y = datasets.targets(table, self.n_classes)
            self.y = tf.constant(y)
            self.clip_eps = tf.constant(clip_eps(y, eps))
            # The given (first) label per patch: the class an adaptive-Lq batch groups by.
            self.label = tf.constant(table.label_idx.to_numpy()[clip].astype(np.int32))
            self.verified = tf.constant(table.verified.to_numpy()[clip].astype(np.float32))
            self.wrong = tf.constant(wrong_labels(table)[clip].astype(np.float32))
            self.mean = tf.constant(mean.reshape(1, 1, -1, 1))
            self.std = tf.constant(std.reshape(1, 1, -1, 1))
            self.pseudo = None if pseudo is None else tf.constant(pseudo.astype(np.float32))

    def inputs(self, idx, shift=None, length=None, gain=None, finish=True):
        """Standardised inputs [B, length, n_mels, 1] float32 for patch indices idx, each
        starting `shift` frames after its patch (a random crop), its signal scaled by
        `gain` [B] (augment.gain_frames) before standardisation; length defaults to
        patch_len."""
        take = self.ops.take
        offset = take(self.offset, idx)
        if shift is not None:
            offset = offset + self.ops.cast(shift, 'int32')
        return self.windows(take(self.row0, idx), offset, take(self.clen, idx), length, gain,
                            finish)

    def windows(self, row0, offset, clen, length=None, gain=None, finish=True):
        """Standardised windows [B, length, n_mels, 1] of the clips whose frames start at
        row0 [B] and last clen [B] frames, starting `offset` [B] frames in (wrapping around
        short clips); length defaults to patch_len. Also the random excerpts of
        self-verification. gain [B] multiplies each clip's mel energies before
        standardisation. Standardised per band with the training set's scaler, or
        (extract.normalize per_clip) each example with its own mean and std over all its
        frames and bands (Akiyama & Sato, Sec. 3.2.2). With self.power the windows are mel
        energies (power_frames), left so when finish is False (a training batch, finished
        after its mixup and masks)."""
        ops = self.ops
        length = length or self.patch_len
        t = ops.arange(length, dtype='int32')
        offset, clen = ops.expand_dims(offset, -1), ops.expand_dims(clen, -1)
        rows = ops.expand_dims(row0, -1) + (offset + t) % clen
        x = ops.take(self.frames, ops.reshape(rows, (-1,)), axis=0)
        x = ops.reshape(ops.cast(x, 'float32'), (-1, length, self.n_mels))
        if self.power:
            x = power_frames(ops, x, self.log)
        if gain is not None:
            x = augment.gain_frames(ops, x, gain, self.log and not self.power)
        x = ops.expand_dims(x, -1)
        return self.finish(x) if finish or not self.power else x

    def finish(self, x):
        """Inputs [B, T, F, 1] standardised as the model sees them: with self.power first
        converted from mel energies to dB (power_to_db); per band with the training set's
        scaler, or (per_clip) each example by its own mean and std."""
        ops = self.ops
        if self.power:
            x = power_to_db(ops, x)
        if self.per_clip:
            mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
            std = ops.std(x, axis=(1, 2, 3), keepdims=True)
            return (x - mean) / ops.maximum(std, 1e-8)
        return (x - self.mean) / self.std

    def padded(self, idx, content, pad, silence, wrap):
        """Standardised inputs [B, pad + content + pad, n_mels, 1] of whole-clip indices idx
        (recognizer.length_tolerance, tta_pad; buckets.py): each clip read from its start
        over `content` frames, repeated up to them and cut there when wrap (the fixed-length
        clip of extract.clip_frames), else followed by silence once it ends (a clip padded
        to its bucket's length); `pad` frames of silence on both sides. silence [n_mels]:
        the stored frame of digital silence, standardised with the clip, as the released
        code pads before its per-clip standardisation. content and pad may be tensors."""
        ops = self.ops
        u = ops.arange(content + 2 * pad, dtype='int32') - pad         # [T] frame in the clip
        clen = ops.expand_dims(ops.take(self.clen, idx), -1)            # [B, 1]
        inside = ops.logical_and(u >= 0, u < content)[None, :]          # [1, T]
        if not wrap:
            inside = ops.logical_and(inside, u[None, :] < clen)         # [B, T]
        offset = ops.expand_dims(ops.take(self.offset, idx), -1)
        rows = (ops.expand_dims(ops.take(self.row0, idx), -1)
                + (offset + ops.maximum(u, 0)[None, :]) % clen)       # [B, T]
        x = ops.take(self.frames, ops.reshape(rows, (-1,)), axis=0)
        x = ops.reshape(ops.cast(x, 'float32'), (-1, ops.shape(u)[0], self.n_mels))
        quiet = ops.reshape(ops.cast(silence, 'float32'), (1, 1, -1))
        x = ops.where(ops.expand_dims(inside, -1), x, quiet)
        if self.power:  # the stored (log) frames and silence -> mel energies, as in windows
            x = power_frames(ops, x, self.log)
        return self.finish(ops.expand_dims(x, -1))

    def masked(self, x, fmask, tmask):
        """x [B, T, F, 1] with SpecAugment's bands and frames set to 0, which is the band
        mean after standardisation (Park et al. mask with the mean of normalised features);
        with self.power, zero energy (Akiyama & Sato's released code masks before the dB
        conversion). fmask / tmask [B, n, 2] hold (start, width)."""
        ops = self.ops

        def inside(spans, size):  # [B, size]: 1 where any of the spans covers the index
            spans = ops.cast(spans, 'int32')
            i = ops.arange(size, dtype='int32')
            start, width = spans[..., 0:1], spans[..., 1:2]
            hit = ops.logical_and(i >= start, i < start + width)  # [B, n, size]
            return ops.cast(ops.any(hit, axis=1), x.dtype)
        keep_f = 1.0 - inside(fmask, self.n_mels)
        keep_t = 1.0 - inside(tmask, ops.shape(x)[1])
        return x * keep_f[:, None, :, None] * keep_t[:, :, None, None]

    def targets(self, idx, smooth=True):
        """[B, K] targets of patch indices idx, smoothed (LSR) unless smooth is False."""
        clip = self.ops.take(self.clip, idx)
        y = self.ops.take(self.y, clip, axis=0)
        return smooth_targets(y, self.ops.take(self.clip_eps, clip)) if smooth else y

    def train_batch(self, idx, partner, lam, shift=None, partner_shift=None, fmask=None,
                    tmask=None, gain=None, partner_gain=None, warp=None, semi=None,
                    scale=None):
        """One planned step (the fields of a sampling.EpochPlan step, by name) -> Batch;
        partner == idx and lam == 1 mean no mixup. With self.power the members are mixed,
        warped and masked as mel energies (a mask zeroes them), and the batch is converted
        to dB and standardised after all of it, the order of Akiyama & Sato (Sec. 3.2.2).
        scale [B, 2] (waveforms only, waveform.WaveSource): each member's resampling
        factor; [B, 0] is none."""
        ops, take = self.ops, self.ops.take
        stretch = scale is not None and scale.shape[-1]  # static: 0 = off
        late = {'finish': False} if self.power else {}  # log-mel only (augment_domain power)
        member = dict(late, scale=scale[:, 0]) if stretch else late
        x_clean = self.inputs(idx, shift, gain=gain, **member)
        paired = ops.cast(ops.not_equal(idx, partner), 'float32')
        member = dict(late, scale=scale[:, 1]) if stretch else late
        x = mix(ops, lam, x_clean, self.inputs(partner, partner_shift, gain=partner_gain,
                                               **member))
        if warp is not None and warp.shape[-1]:  # static: 0 = off; warped before the masks
            x = augment.time_warp(ops, x, warp)
        if fmask is not None and (fmask.shape[1] or tmask.shape[1]):  # static: 0 = off
            x = self.masked(x, fmask, tmask)
        if self.power:
            x, x_clean = self.finish(x), self.finish(x_clean)
        y_a, y_b = self.targets(idx), self.targets(partner)
        more = {}
        if 'members' in self.needs:  # the members of each mixed pair
            more.update(y_a=y_a, y_b=y_b, lam=ops.cast(lam, 'float32'),
                        verified_b=take(self.verified, partner))
        if 'pseudo' in self.needs:
            more.update(pseudo_a=self.pseudo_of(idx), pseudo_b=self.pseudo_of(partner))
        if 'clean' in self.needs:
            more.update(x_clean=x_clean, labels=take(self.label, idx))
        if 'semi' in self.needs:
            more.update(semi=ops.cast(semi, 'float32'))
        return Batch(x=x, y=mix(ops, lam, y_a, y_b), verified=take(self.verified, idx),
                     members=1.0 + paired,
                     wrong=take(self.wrong, idx) + paired * take(self.wrong, partner), **more)

    def pseudo_of(self, idx):
        return self.ops.take(self.pseudo, self.ops.take(self.clip, idx), axis=0)

    def eval_batch(self, idx):
        """(x, multi-hot y) without smoothing, mixup or masks, for validation and scoring:
        patches, or whole fixed-length clips (eval_len frames)."""
        return self.inputs(idx, length=self.eval_len), self.targets(idx, smooth=False)
