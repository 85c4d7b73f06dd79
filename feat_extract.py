"""Audio -> log-mel spectrogram or waveform (config section `extract`), cached on disk.

The features of a dataset are computed once and kept in one folder per (dataset,
extraction parameters, clip list):

    <ctrl.features_dir>/<dataset>/<hash>/
        frames<suffix.in>.f32|f16   every clip's frames, one after the other, [frames, n_mels]
                                    (extract.features waveform: its samples, [samples, 1])
        start.npy, length.npy       first row and number of rows of each clip (int64)
        audio.npy                   size and modification time (ns) of each audio file
        manifest.json               counts, dtype, failed clips and why, constant clips,
                                    hash, parameters, complete

The folder is filled under a temporary name and renamed when complete, so a crash
never leaves a folder that looks complete. Frames are memory-mapped read-only: patches
are (clip, start) indices into them, never copies.

The folder's name keys the parameters and the clip list; the audio itself is keyed by
each file's size and modification time (audio.npy), checked on every use. A stat per file
costs milliseconds on 18k files, where hashing their contents would read all 18k files
(several GB) on every run. A file that changed (repaired in place, another dataset in a
folder of the same name) is re-extracted; the frames of unchanged clips are reused.
"""
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import scipy.signal
import soundfile as sf
import threadpoolctl
from tqdm import tqdm

from config import ConfigError
from keys import FEATURE_KEYS
from utils import atomic_write_text, n_workers

logger = logging.getLogger(__name__)

PEAK_HEADROOM = 0.005  # peak normalisation divides by max|y| + this, as in waspaa19
FRAMES_EXT = {'float32': 'f32', 'float16': 'f16'}


class BadAudio(Exception):
    """An audio file that cannot be read or holds no samples."""


# ----------------------------------------------------------------------------- one clip

def load_audio(path, params_extract):
    """Read a file -> mono float32 at fs, optionally peak-normalised, then tiled (varup) or
    zero-padded at its end (zeropad) up to audio_len_s."""
    p = params_extract
    # libsndfile reports a missing file as "System error."; say what is wrong instead.
    if not os.path.isfile(path):
        raise BadAudio(f'file not found: {path}')
    try:
        y, sr = sf.read(path, dtype='float32', always_2d=True)
    except (RuntimeError, OSError) as err:  # soundfile's errors are RuntimeErrors
        raise BadAudio(f'{path}: {err}') from None
    if y.size == 0:
        raise BadAudio(f'{path}: no samples')
    if not np.isfinite(y).all():  # librosa would stop the whole extraction on them
        raise BadAudio(f'{path}: samples that are NaN or infinite')
    y = y.mean(axis=1)
    if sr != p['fs']:
        y = librosa.resample(y, orig_sr=sr, target_sr=p['fs'])
    if p['trim_silence']:
        y = trim_silence(y, p)
    if p['normalize_audio']:
        y = y - y.mean()
        y = y / (np.max(np.abs(y)) + PEAK_HEADROOM)
    target = int(round(p['audio_len_s'] * p['fs']))
    if p['load_mode'] == 'varup' and len(y) < target:
        # Short clips are repeated rather than zero-padded, so every patch holds sound.
        y = np.tile(y, -(-target // len(y)))[:target]
    elif p['load_mode'] == 'zeropad' and len(y) < target:
        # Akiyama & Sato (Sec. 3.3.1): short clips are extended by zeros (digital silence).
        y = np.concatenate([y, np.zeros(target - len(y), y.dtype)])
    return y.astype(np.float32)


def trim_silence(audio, params_extract):
    """Drop the silent start and end of a clip (He et al., DCASE 2019: silent frames at the
    beginning and end are ignored), before normalisation and varup.

    Frames are the STFT's (win_length_samples long, hop_length_samples apart, centred); a
    frame is silent when its RMS is more than extract.trim_top_db dB below the loudest
    frame's (librosa.effects.trim). The loudest frame always stays, so a clip is never
    emptied.
    """
    p = params_extract
    trimmed, _ = librosa.effects.trim(audio, top_db=p['trim_top_db'],
                                      frame_length=p['win_length_samples'],
                                      hop_length=p['hop_length_samples'])
    return trimmed


@functools.lru_cache(maxsize=4)
def _mel_basis(fs, n_fft, n_mels, fmin, fmax):
    return librosa.filters.mel(sr=fs, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                               htk=False, norm=None)


def log_mel(audio, params_extract):
    """Mono audio -> float32 [frames, n_mels] (log10 when extract.log), frames = 1 + len // hop."""
    p = params_extract
    # extract.window: periodic (fftbins), as librosa's own window argument makes it.
    window = scipy.signal.get_window(p['window'], p['win_length_samples'], fftbins=True)
    # pad_mode is explicit: librosa's default changed from 'reflect' to 'constant'.
    stft = librosa.stft(audio + p['eps'], n_fft=p['n_fft'], hop_length=p['hop_length_samples'],
                        win_length=p['win_length_samples'], window=window, center=True,
                        pad_mode='reflect')
    spec = np.abs(stft) ** 2 if p['spectrogram_type'] == 'power' else np.abs(stft)
    mel = _mel_basis(p['fs'], p['n_fft'], p['n_mels'], p['fmin'], p['fmax']) @ spec
    if p['log']:
        mel = np.log10(mel + p['eps'])
    return mel.T.astype(np.float32)


def clip_features(audio, params_extract):
    """Mono audio -> the rows cached for it: log-mel frames [frames, n_mels], or with
    extract.features waveform the samples themselves as one column [samples, 1] (Akiyama &
    Sato, Sec. 3.2.1: the waveform in [-1, 1], 16-bit PCM read as int16 / 32768, which is
    what soundfile's float read of such a file gives)."""
    if params_extract['features'] == 'waveform':
        return audio[:, None]
    return log_mel(audio, params_extract)


def _clip_frames(path, params_extract):
    """Worker task: (frames or None, error message or None); never raises on bad audio."""
    try:
        return clip_features(load_audio(path, params_extract), params_extract), None
    except BadAudio as err:
        return None, str(err)


# ----------------------------------------------------------------------------- the store

@dataclass
class FeatureStore:
    """Frames of every clip; clip i (table row i) is frames[start[i]:start[i] + length[i]]."""
    frames: np.ndarray  # np.memmap, read-only, [total_frames, n_mels], store_dtype
    start: np.ndarray   # int64 [n_clips]
    length: np.ndarray  # int64 [n_clips], 0 for a failed clip
    failed: list        # fnames that could not be read
    path: Path          # the cache folder
    errors: list = ()   # why each of `failed` could not be read
    audio: np.ndarray = None  # int64 [n_clips, 2]: size, mtime_ns of each audio file
    constant: list = ()  # fnames whose frames are all equal (digital silence, one sample)

    def clip(self, i):
        return self.frames[self.start[i]:self.start[i] + self.length[i]]


def _frames_name(cfg):
    return f'frames{cfg["suffix"]["in"]}.{FRAMES_EXT[cfg["extract"]["store_dtype"]]}'


DEFAULT_WINDOW = 'hamming'
PATCH_KEYS = ('patch_len', 'patch_hop', 'crop', 'crop_frames', 'clip_frames', 'normalize',
              'crop_samples')
# What a waveform's samples do not depend on (the log-mel transform), left out of its key.
LOGMEL_KEYS = tuple(name.split('.')[1] for name in FEATURE_KEYS['logmel']
                    if name.startswith('extract.'))


def columns(params_extract):
    """Values per cached row: n_mels log-mel bands, or 1 for a waveform's samples."""
    return 1 if params_extract['features'] == 'waveform' else params_extract['n_mels']


def cache_dir(cfg, table):
    """<features_dir>/<dataset>/<sha1 of the extract parameters and the clip list>."""
    root = os.path.normpath(cfg['ctrl']['dataset_path'])
    clips = [Path(os.path.relpath(os.path.abspath(p), os.path.abspath(root))).as_posix()
             for p in table['path']]
    # Patching, cropping and standardisation happen after extraction, so a sweep over them
    # reuses the cache.
    params = {k: v for k, v in cfg['extract'].items() if k not in PATCH_KEYS}
    if params['features'] == 'waveform':
        params = {k: v for k, v in params.items() if k not in LOGMEL_KEYS}
    else:
        # Keys the cache had no value of before they existed (the default window, log-mel
        # features): left out of the key, so that the caches of earlier runs stay valid.
        del params['features']
        if params['window'] == DEFAULT_WINDOW:
            del params['window']
    key = json.dumps({'extract': params, 'clips': clips}, sort_keys=True,
                     separators=(',', ':'))
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return Path(cfg['ctrl']['features_dir']) / os.path.basename(root) / digest


def audio_stamps(paths):
    """int64 [n, 2]: size and modification time (ns) of each file; -1 for a missing one."""
    stamps = np.full((len(paths), 2), -1, np.int64)
    for i, path in enumerate(paths):
        try:
            info = os.stat(path)
        except OSError:
            continue
        stamps[i] = info.st_size, info.st_mtime_ns
    return stamps


def _open(folder, frames_name):
    """The store in a complete cache folder, or None when the folder is not one."""
    try:
        manifest = json.loads((folder / 'manifest.json').read_text())
        shape = (manifest['total_frames'], manifest['n_mels'])
        dtype = np.dtype(manifest['dtype'])
        complete = manifest['complete'] is True and manifest['hash'] == folder.name
        size = (folder / frames_name).stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not complete or size != shape[0] * shape[1] * dtype.itemsize:
        return None
    # np.memmap cannot map an empty file (every clip failed): use an empty array then.
    frames = (np.memmap(folder / frames_name, dtype=dtype, mode='r', shape=shape) if shape[0]
              else np.empty(shape, dtype))
    audio = np.load(folder / 'audio.npy') if (folder / 'audio.npy').is_file() else None
    return FeatureStore(frames, np.load(folder / 'start.npy'), np.load(folder / 'length.npy'),
                        manifest['failed'], folder, manifest.get('errors', manifest['failed']),
                        audio, manifest.get('constant', []))


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True


def _remove_stale_temps(final):
    """Temporary folders of this hash left by a process that died mid-extraction."""
    for tmp in final.parent.glob(f'.{final.name}.tmp-*'):
        pid = tmp.name.rsplit('-', 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid() or not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _one_blas_thread():
    """Parallelism is across clips: a multi-threaded BLAS on each clip's small matrices
    oversubscribes the cores and made log_mel ten times slower."""
    threadpoolctl.threadpool_limits(1)


# A job of fewer clips is extracted in this process, whatever ctrl.workers says. Each
# spawned worker starts a Python and imports librosa, scipy and numpy before its first
# clip: about 2 s of CPU on an idle machine, well over a minute on a loaded one (the bar
# once sat at 1/1000 for 140 s), during which no clip is computed, while a clip's log-mel
# takes some 10-20 ms. A 400-clip job was measured slower with 2 workers than with 1; at
# 1000 clips (the demo) the pool's start is a small part of the job.
POOL_MIN_CLIPS = 1000


def pool_size(n_clips, workers):
    """The processes that extract n_clips: 1 (this process) below POOL_MIN_CLIPS, else
    the requested workers, never more than the clips."""
    return 1 if n_clips < POOL_MIN_CLIPS else max(1, min(workers, n_clips))


def _computed(paths, params, workers):
    """An iterator of (frames or None, error) per path, in order; a Pool only when
    workers > 1, said at once (before the progress bar), as the bar shows no clip until
    the first worker has started and imported its modules."""
    task = functools.partial(_clip_frames, params_extract=params)
    if workers == 1:
        return _in_process(task, paths)
    logger.info('log-mel of %d clips: starting %d workers', len(paths), workers)
    return _pooled(task, paths, workers)


def _in_process(task, paths):
    with threadpoolctl.threadpool_limits(1):
        yield from map(task, paths)


def _pooled(task, paths, workers):
    chunksize = max(2, min(16, len(paths) // (4 * workers)))
    # spawn, not fork: the parent may already run TensorFlow, whose threads and state do
    # not survive a fork (a forked worker aborted when garbage collection touched them).
    context = multiprocessing.get_context('spawn')
    with context.Pool(workers, initializer=_one_blas_thread) as pool:
        yield from pool.imap(task, paths, chunksize=chunksize)


def _extract(cfg, table, tmp, workers, progress, todo, old=None):
    """Write frames, start and length into tmp: clips flagged in `todo` are computed, the
    others copied from the `old` store. Returns (failed fnames, their errors, constant
    fnames, total frames).
    """
    dtype = cfg['extract']['store_dtype']
    start, length = np.zeros(len(table), np.int64), np.zeros(len(table), np.int64)
    failed, errors, constant, total = [], [], [], 0
    old_errors = {} if old is None else dict(zip(old.failed, old.errors))
    results = _computed(list(table['path'][todo]), cfg['extract'], workers)
    kind = 'waveform' if cfg['extract']['features'] == 'waveform' else 'log-mel'
    bar = tqdm(total=int(todo.sum()), desc=kind, unit='clip', disable=not progress)
    with open(tmp / _frames_name(cfg), 'wb') as out, bar:
        for i, fname in enumerate(table['fname']):
            start[i] = total
            if todo[i]:
                frames, error = next(results)
                bar.update()
            else:
                frames = old.clip(i) if old.length[i] else None
                error = old_errors.get(str(fname), 'unreadable')
            if frames is None:
                if todo[i]:
                    logger.warning('skipping unreadable audio %s (%s)', fname, error)
                failed.append(str(fname))
                errors.append(error)
                continue
            if (frames == frames[0]).all():
                constant.append(str(fname))
            out.write(np.ascontiguousarray(frames, dtype=dtype).tobytes())
            length[i] = len(frames)
            total += len(frames)
    results.close()  # ends the worker pool
    np.save(tmp / 'start.npy', start)
    np.save(tmp / 'length.npy', length)
    return failed, errors, constant, total


def report_clips(store):
    """Every run says which clips could not be read, and which are constant (every frame
    the same: nothing to learn from, yet trained as their class), also when it reuses the
    cache."""
    if store.failed:
        shown = '; '.join(store.errors[:10]) + ('; ...' if len(store.failed) > 10 else '')
        logger.warning('%d audio file(s) could not be read and are skipped (listed in %s): %s',
                       len(store.failed), store.path / 'manifest.json', shown)
    if store.constant:
        shown = ', '.join(store.constant[:5]) + (', ...' if len(store.constant) > 5 else '')
        logger.warning('%d clip(s) are digital silence or too short to vary: every frame is '
                       'the same (kept; listed in %s): %s', len(store.constant),
                       store.path / 'manifest.json', shown)


def _make_folder(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f'cannot create the feature cache folder {folder}: '
                          f'{err.strerror} (ctrl.features_dir)') from None


def features(cfg, table, workers=None, progress=True):
    """Log-mel frames of every clip of `table` (columns fname, path), cached on disk."""
    params = cfg['extract']
    if not params['mono']:
        raise ConfigError('extract.mono is false, but features are single-channel: '
                          'set extract.mono true')
    final = cache_dir(cfg, table)
    audio = audio_stamps(list(table['path']))
    store = _open(final, _frames_name(cfg))
    if store is not None and np.array_equal(store.audio, audio):
        logger.info('using cached features %s (%d clips, %d frames)', final, len(store.start),
                    len(store.frames))
        report_clips(store)
        return store
    if not cfg['ctrl']['feat_ext']:
        why = ('no complete feature cache' if store is None else
               'audio files changed since the feature cache was made')
        raise ConfigError(f'{why} at {final} for these extract parameters and clips; set '
                          f'ctrl.feat_ext true to extract them')
    todo = np.ones(len(table), bool)
    if store is not None and store.audio is not None:
        todo = (store.audio != audio).any(axis=1)
        logger.info('%d of %d audio files changed (size or modification time) since the '
                    'feature cache was made: extracting them again', todo.sum(), len(table))
    workers = n_workers(cfg['ctrl']['workers']) if workers is None else workers
    workers = pool_size(int(todo.sum()), workers)
    started = time.time()
    _make_folder(final.parent)
    _remove_stale_temps(final)
    tmp = final.parent / f'.{final.name}.tmp-{os.getpid()}'
    _make_folder(tmp)
    try:
        failed, errors, constant, total = _extract(cfg, table, tmp, workers, progress, todo,
                                                   store)
        np.save(tmp / 'audio.npy', audio)
        manifest = {'n_clips': len(table), 'total_frames': total, 'n_mels': columns(params),
                    'dtype': params['store_dtype'], 'frames_file': _frames_name(cfg),
                    'failed': failed, 'errors': errors, 'n_constant': len(constant),
                    'constant': constant, 'hash': final.name, 'params': params,
                    'complete': True}
        atomic_write_text(tmp / 'manifest.json', json.dumps(manifest, indent=1))
        if final.exists():  # an incomplete or unreadable folder under the final name
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info('extracted features of %d clips (%d reused from the cache, %d failed) in '
                '%.1f s with %d worker(s) -> %s', todo.sum(), len(table) - todo.sum(),
                len(failed), time.time() - started, workers, final)
    store = _open(final, _frames_name(cfg))
    report_clips(store)
    return store
