"""The input pipeline of section `learn`: the patch table and the batch source a run (and
predict.py, bench/) builds from the feature store, where the frames live (GPU or host),
whether the step is compiled with XLA, and the tf.data datasets that feed training and
validation.

On the device path the datasets carry patch indices and the step gathers its batch from
the resident frames; on the host path tf.data gathers it (PatchSource.train_batch,
eval_batch) in parallel ahead of the step.
"""
import logging

import numpy as np
import tensorflow as tf  # tf.data input pipeline and device placement: Keras has neither

import architectures
import data
import waveform
from config import ConfigError
from utils import atomic_path

logger = logging.getLogger(__name__)


def on_device(cfg):
    """Where the frames should live: learn.frames_on_device, 'auto' = GPU when there is one."""
    choice = cfg['learn']['frames_on_device']
    if choice != 'auto':
        return choice == 'always'
    return bool(tf.config.list_logical_devices('GPU'))


def use_xla(cfg):
    """learn.jit_compile: 'auto' compiles the step with XLA on a GPU only; on CPU the XLA
    step of the baseline CNN measured slower than TensorFlow's own kernels."""
    choice = cfg['learn']['jit_compile']
    return bool(tf.config.list_logical_devices('GPU')) if choice == 'auto' else choice


def patch_table(cfg, store):
    """The patch table: every patch of every clip, or one whole clip each (random_crop,
    and waveforms, whose crops waveform.augment_plan draws)."""
    ext = cfg['extract']
    if ext['crop'] == 'random_crop' or ext['features'] == 'waveform':
        return data.make_clips(store.start, store.length)
    return data.make_patches(store.start, store.length, ext['patch_len'], ext['patch_hop'])


def batch_source(cfg, store, patches, table, mean, std, eps, needs=frozenset(), pseudo=None):
    """The PatchSource (waveform.WaveSource for waveforms), with frames in GPU memory when
    wanted and they fit, else on host; needs and pseudo: what its batches carry for the
    loss (data.PatchSource)."""
    train_len, eval_len = architectures.lengths(cfg)
    args = (store.frames, patches, table, mean, std, eps, train_len)
    ext = cfg['extract']
    # log: whether the stored frames are log-mel (how a gain acts on them,
    # augment.gain_frames); per_clip: each example standardised by itself; power: mixed,
    # scaled and masked as mel energies, dB and standardisation last (learn.augment_domain)
    more = dict(eval_len=eval_len, log=ext['log'], per_clip=ext['normalize'] == 'per_clip',
                needs=needs, pseudo=pseudo, power=cfg['learn']['augment_domain'] == 'power')
    kind = waveform.WaveSource if ext['features'] == 'waveform' else data.PatchSource
    if on_device(cfg):
        try:
            return kind(*args, on_device=True, **more)
        except (tf.errors.ResourceExhaustedError, tf.errors.InternalError) as err:
            if cfg['learn']['frames_on_device'] == 'always':
                raise ConfigError(f'the frames ({store.frames.nbytes / 2**30:.1f} GiB) do not '
                                  f'fit in GPU memory; set learn.frames_on_device to auto or '
                                  f'never, or extract.store_dtype float16') from err
            logger.warning('the frames (%.1f GiB) do not fit in GPU memory: batches are '
                           'gathered on the host instead (slower); extract.store_dtype '
                           'float16 halves them', store.frames.nbytes / 2**30)
    return kind(*args, on_device=False, **more)


def train_dataset(source, plan, first):
    """Epoch plans -> one element per step, prefetched: plan() draws the next epoch's
    sampling.EpochPlan, `first` is the first one. An element is a dict: on the device path
    the step's row of each plan array by name (idx, partner, lam, crop shifts, masks,
    gains), on the host path the batch itself (data.Batch.as_dict())."""
    def epochs():
        yield first.as_dict()
        while True:
            yield plan().as_dict()
    spec = {name: tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype))
            for name, a in first.as_dict().items()}
    ds = tf.data.Dataset.from_generator(epochs, output_signature=spec)
    ds = ds.flat_map(tf.data.Dataset.from_tensor_slices)
    if not source.on_device:
        ds = ds.map(lambda step: source.train_batch(**step).as_dict(),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(source, idx, batch_size):
    """Patch (or whole-clip) indices idx -> batches of batch_size for validation: indices
    on the device path, (x, y) on the host path."""
    ds = tf.data.Dataset.from_tensor_slices(idx.astype(np.int64)).batch(batch_size)
    if not source.on_device:
        ds = ds.map(source.eval_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def scaler(cfg, store, patches, idx):
    """(mean, std) per mel band over the inputs the model is evaluated on (patches, or
    whole fixed-length clips whose random crops it is trained on) of patch indices idx;
    0 and 1 when each example standardises itself (extract.normalize per_clip), and of the
    one column of a waveform, which the model reads as stored (in [-1, 1], the paper's)."""
    if cfg['extract']['features'] == 'waveform':
        return np.zeros(1, np.float32), np.ones(1, np.float32)
    if cfg['extract']['normalize'] == 'per_clip':
        n_mels = cfg['extract']['n_mels']
        return np.zeros(n_mels, np.float32), np.ones(n_mels, np.float32)
    return data.fit_scaler(store.frames, patches, idx, architectures.lengths(cfg)[1])


def write_scaler(path, mean, std):
    """scaler.npz (mean, std), which predict.py reads back."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        np.savez(f, mean=mean, std=std)
