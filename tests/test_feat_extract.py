import json
import os

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import feat_extract as fe
import config
from config import ConfigError

SMALL = dict(fs=16000, n_fft=512, win_length_samples=400, hop_length_samples=160, n_mels=40,
             fmin=0, fmax=8000, audio_len_s=0.5, load_mode='full', normalize_audio=False)


def _params(**changes):
    return {**config.DEFAULTS['extract'], **SMALL, **changes}


def _sine(freq, n, sr, amplitude=0.5):
    return amplitude * np.sin(2 * np.pi * freq * np.arange(n) / sr)


# ----------------------------------------------------------------------------- log_mel

def _reference_log_mel(y, sr, n_fft, win, hop, n_mels, fmax, eps, exponent=2, log=True):
    """Framing with reflect padding, periodic Hamming centred in n_fft, |rfft|^exponent,
    Slaney mel filters without normalisation, log10."""
    x = np.pad(y.astype(np.float64) + eps, n_fft // 2, mode='reflect')
    n_frames = 1 + len(y) // hop
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left:left + win] = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(win) / win)
    frames = np.stack([x[i * hop:i * hop + n_fft] * window for i in range(n_frames)])
    spectrum = np.abs(np.fft.rfft(frames, axis=1)) ** exponent
    mel = spectrum @ librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0, fmax=fmax,
                                      htk=False, norm=None).T
    return np.log10(mel + eps) if log else mel


def test_log_mel_matches_numpy_reference():
    sr, n = 22050, 5000
    # A little white noise keeps every band far above float32 rounding noise.
    y = (_sine(1000, n, sr) + 0.01 * np.random.default_rng(0).standard_normal(n))
    y = y.astype(np.float32)
    params = _params(fs=sr, fmax=11025, n_fft=512, win_length_samples=400,
                     hop_length_samples=128)
    out = fe.log_mel(y, params)
    ref = _reference_log_mel(y, sr, 512, 400, 128, 40, 11025, params['eps'])
    assert out.dtype == np.float32 and out.shape == ref.shape == (1 + n // 128, 40)
    np.testing.assert_allclose(out, ref, rtol=1e-4)


def test_magnitude_without_log_matches_numpy_reference():
    y = (_sine(1000, 4000, 16000) + 0.01 * np.random.default_rng(1).standard_normal(4000))
    y = y.astype(np.float32)
    params = _params(log=False, spectrogram_type='magnitude')
    ref = _reference_log_mel(y, 16000, 512, 400, 160, 40, 8000, params['eps'], exponent=1,
                             log=False)
    np.testing.assert_allclose(fe.log_mel(y, params), ref, rtol=1e-4)


@pytest.mark.parametrize('freq', [300, 1000, 3000, 6000])
def test_sine_peaks_in_the_nearest_mel_band(freq):
    params = _params()
    out = fe.log_mel(_sine(freq, 8000, 16000).astype(np.float32), params)
    centres = librosa.mel_frequencies(n_mels=42, fmin=0, fmax=8000, htk=False)[1:-1]
    assert np.argmax(out.mean(axis=0)) == np.argmin(np.abs(centres - freq))


@pytest.mark.parametrize('n', [1000, 1599, 1600, 8001])
def test_number_of_frames(n):
    assert len(fe.log_mel(np.zeros(n, np.float32), _params())) == 1 + n // 160


# ----------------------------------------------------------------------------- load_audio

def test_load_audio_mixes_stereo_to_mono(tmp_path):
    left, right = _sine(440, 3000, 16000), 0.25 * np.ones(3000)
    sf.write(tmp_path / 's.wav', np.stack([left, right], axis=1), 16000, subtype='FLOAT')
    np.testing.assert_allclose(fe.load_audio(tmp_path / 's.wav', _params()),
                               (left + right) / 2, atol=1e-6)


def test_load_audio_normalises_dc_and_peak(tmp_path):
    y = _sine(440, 3000, 16000, 0.3) + 0.2
    sf.write(tmp_path / 'dc.wav', y, 16000, subtype='FLOAT')
    out = fe.load_audio(tmp_path / 'dc.wav', _params(normalize_audio=True))
    centred = y - y.mean()
    peak = np.max(np.abs(centred))
    assert abs(out.mean()) < 1e-6
    assert np.isclose(np.max(np.abs(out)), peak / (peak + 0.005), rtol=1e-5)
    np.testing.assert_allclose(out, centred / (peak + 0.005), atol=1e-6)


def test_load_audio_varup_tiles_to_exact_length(tmp_path):
    y = np.random.default_rng(1).uniform(-0.5, 0.5, 3000)
    sf.write(tmp_path / 'short.wav', y, 16000, subtype='FLOAT')
    out = fe.load_audio(tmp_path / 'short.wav', _params(load_mode='varup', audio_len_s=1))
    assert len(out) == 16000
    for k in range(5):
        np.testing.assert_allclose(out[3000 * k:3000 * (k + 1)], y, atol=1e-6)
    np.testing.assert_allclose(out[15000:], y[:1000], atol=1e-6)
    assert len(fe.load_audio(tmp_path / 'short.wav', _params(audio_len_s=1))) == 3000
    sf.write(tmp_path / 'long.wav', np.tile(y, 7), 16000, subtype='FLOAT')
    assert len(fe.load_audio(tmp_path / 'long.wav', _params(load_mode='varup',
                                                             audio_len_s=1))) == 21000


def test_load_audio_resamples(tmp_path):
    sf.write(tmp_path / 'lo.wav', _sine(1000, 4000, 8000), 8000, subtype='FLOAT')
    out = fe.load_audio(tmp_path / 'lo.wav', _params())
    assert out.dtype == np.float32 and len(out) == 8000
    spectrum = np.abs(np.fft.rfft(out))
    assert np.fft.rfftfreq(len(out), 1 / 16000)[np.argmax(spectrum)] == pytest.approx(1000, abs=4)


def test_load_audio_rejects_bad_files(tmp_path):
    (tmp_path / 'empty.wav').write_bytes(b'')
    (tmp_path / 'junk.wav').write_bytes(b'not a wav file at all' * 10)
    sf.write(tmp_path / 'silent.wav', np.zeros(0), 16000)
    for name in ['empty.wav', 'junk.wav', 'silent.wav', 'missing.wav']:
        with pytest.raises(fe.BadAudio, match=name):
            fe.load_audio(tmp_path / name, _params())


# ----------------------------------------------------------------------------- features

@pytest.fixture
def wav_clips(tmp_path):
    """Five short clips in tmp_path/data and a config whose cache lives in tmp_path."""
    folder = tmp_path / 'data' / 'audio'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    names = []
    for k, freq in enumerate([300, 600, 1200, 2400, 4800]):
        names.append(f'{k}.wav')
        sf.write(folder / names[-1], _sine(freq, 2000 + 700 * k, 16000) +
                 0.01 * rng.standard_normal(2000 + 700 * k), 16000, subtype='PCM_16')
    table = pd.DataFrame({'fname': names, 'path': [str(folder / n) for n in names]})
    cfg = config.load_config(None)
    cfg['extract'].update(SMALL)
    cfg['ctrl'].update(dataset_path=str(tmp_path / 'data') + '/',
                       features_dir=str(tmp_path / 'features'), workers=1)
    return cfg, table


def test_features_are_cached_and_reused(wav_clips, monkeypatch):
    cfg, table = wav_clips
    store = fe.features(cfg, table, progress=False)
    assert store.path.parent.name == 'data' and len(store.path.name) == 12
    manifest = json.loads((store.path / 'manifest.json').read_text())
    assert manifest['complete'] and manifest['hash'] == store.path.name
    assert (store.path / 'frames_mel.f32').is_file() and store.failed == []
    assert isinstance(store.frames, np.memmap) and not store.frames.flags.writeable
    assert store.frames.shape == (store.length.sum(), 40) and store.frames.dtype == np.float32
    np.testing.assert_array_equal(store.start, np.concatenate([[0], np.cumsum(store.length)[:-1]]))
    for i, path in enumerate(table.path):
        expected = fe.log_mel(fe.load_audio(path, cfg['extract']), cfg['extract'])
        np.testing.assert_array_equal(store.clip(i), expected)

    def fail(*args):
        raise AssertionError('features were recomputed')
    monkeypatch.setattr(fe, 'log_mel', fail)
    cached = fe.features(cfg, table, progress=False)
    assert cached.path == store.path
    np.testing.assert_array_equal(cached.frames, store.frames)


def test_changed_parameter_or_clips_give_a_new_folder(wav_clips):
    cfg, table = wav_clips
    first = fe.features(cfg, table, progress=False).path
    cfg['extract']['n_mels'] = 32
    second = fe.features(cfg, table, progress=False)
    assert second.path != first and second.frames.shape[1] == 32
    assert fe.features(cfg, table.iloc[:3], progress=False).path not in (first, second.path)


def test_patching_parameters_do_not_invalidate_the_cache(wav_clips):
    cfg, table = wav_clips
    first = fe.cache_dir(cfg, table)
    cfg['extract'].update(patch_len=7, patch_hop=3)
    assert fe.cache_dir(cfg, table) == first
    cfg['extract']['hop_length_samples'] += 1
    assert fe.cache_dir(cfg, table) != first


def test_bad_files_are_skipped(wav_clips):
    cfg, table = wav_clips
    open(table.path[1], 'wb').close()
    with open(table.path[3], 'wb') as f:
        f.write(b'garbage' * 100)
    store = fe.features(cfg, table, progress=False)
    assert store.failed == ['1.wav', '3.wav']
    assert list(store.length[[1, 3]]) == [0, 0] and all(store.length[[0, 2, 4]] > 0)
    assert store.frames.shape[0] == store.length.sum()
    assert json.loads((store.path / 'manifest.json').read_text())['failed'] == store.failed


def test_interrupted_extraction_is_not_taken_as_complete(wav_clips, monkeypatch):
    cfg, table = wav_clips
    calls = []
    real_log_mel = fe.log_mel

    def crash_on_third(audio, params):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return real_log_mel(audio, params)
    monkeypatch.setattr(fe, 'log_mel', crash_on_third)
    with pytest.raises(RuntimeError, match="interrupted"):
        fe.features(cfg, table, progress=False)
    final = fe.cache_dir(cfg, table)
    assert not final.exists() and list(final.parent.iterdir()) == []
    cfg['ctrl']['feat_ext'] = False
    with pytest.raises(ConfigError):
        fe.features(cfg, table, progress=False)


def test_stale_or_incomplete_folders_are_ignored(wav_clips):
    cfg, table = wav_clips
    final = fe.cache_dir(cfg, table)
    # A temp folder of a process that died (no such pid) and a final folder whose
    # manifest does not say complete.
    stale = final.parent / f'.{final.name}.tmp-999999999'
    for folder, complete in [(stale, True), (final, False)]:
        folder.mkdir(parents=True)
        (folder / 'frames_mel.f32').write_bytes(b'')
        np.save(folder / 'start.npy', np.zeros(5, np.int64))
        np.save(folder / 'length.npy', np.zeros(5, np.int64))
        (folder / 'manifest.json').write_text(json.dumps(
            {'complete': complete, 'hash': final.name, 'total_frames': 0, 'n_mels': 40,
             'dtype': 'float32', 'failed': []}))
    cfg['ctrl']['feat_ext'] = False
    with pytest.raises(ConfigError, match='set ctrl.feat_ext true'):
        fe.features(cfg, table, progress=False)
    cfg['ctrl']['feat_ext'] = True
    store = fe.features(cfg, table, progress=False)
    assert store.path == final and store.length.sum() > 0 and not stale.exists()


def test_no_cache_and_feat_ext_false_raises(wav_clips):
    cfg, table = wav_clips
    cfg['ctrl']['feat_ext'] = False
    with pytest.raises(ConfigError) as err:
        fe.features(cfg, table, progress=False)
    assert str(fe.cache_dir(cfg, table)) in str(err.value) and 'ctrl.feat_ext' in str(err.value)


def test_mono_false_is_refused(wav_clips):
    cfg, table = wav_clips
    cfg['extract']['mono'] = False
    with pytest.raises(ConfigError, match='extract.mono'):
        fe.features(cfg, table, progress=False)


def test_small_jobs_are_extracted_in_process():
    assert [fe.pool_size(n, 4) for n in (1, fe.POOL_MIN_CLIPS - 1)] == [1, 1]
    assert fe.pool_size(fe.POOL_MIN_CLIPS, 4) == 4 and fe.pool_size(fe.POOL_MIN_CLIPS, 1) == 1


def test_two_workers_give_the_same_frames(wav_clips, tmp_path, monkeypatch, caplog):
    cfg, table = wav_clips
    one = fe.features(cfg, table, workers=1, progress=False)
    cfg['ctrl']['features_dir'] = str(tmp_path / 'features2')
    monkeypatch.setattr(fe, 'POOL_MIN_CLIPS', 2)  # a pool for these few clips
    with caplog.at_level('INFO'):
        two = fe.features(cfg, table, workers=2, progress=False)
    assert f'log-mel of {len(table)} clips: starting 2 workers' in caplog.text
    assert two.path != one.path and os.path.basename(two.path) == os.path.basename(one.path)
    np.testing.assert_array_equal(two.frames, one.frames)
    np.testing.assert_array_equal(two.length, one.length)


def test_float16_store(wav_clips):
    cfg, table = wav_clips
    full = fe.features(cfg, table, progress=False)
    cfg['extract']['store_dtype'] = 'float16'
    half = fe.features(cfg, table, progress=False)
    assert half.path != full.path and (half.path / 'frames_mel.f16').is_file()
    assert half.frames.dtype == np.float16
    np.testing.assert_allclose(half.frames, full.frames, rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------- trim silence

def _reference_trim(y, frame, hop, top_db):
    """Frame RMS over zero-padded centred frames, dB below the loudest frame; keep from the
    first to the end of the last frame above -top_db (frame k covers hop*k .. hop*(k+1))."""
    x = np.pad(y.astype(np.float64), frame // 2)
    n = 1 + len(y) // hop
    rms = np.sqrt([np.mean(x[k * hop:k * hop + frame] ** 2) for k in range(n)])
    db = 20 * np.log10(np.maximum(rms, 1e-5) / max(rms.max(), 1e-5))
    loud = np.flatnonzero(db > -top_db)
    return y[loud[0] * hop:min(len(y), (loud[-1] + 1) * hop)]


@pytest.mark.parametrize('top_db', [20.0, 60.0])
def test_trim_silence_against_numpy_frame_energies(top_db):
    rng = np.random.default_rng(3)
    sr = 16000
    # silence, a faint hum (-40 dB), a tone, a faint tail, silence: 20 dB trims the faint
    # parts, 60 dB keeps them.
    y = np.concatenate([np.zeros(3000), 0.005 * _sine(220, 1600, sr), _sine(440, 8000, sr),
                        0.005 * rng.standard_normal(1200), np.zeros(2500)]).astype(np.float32)
    params = _params(trim_silence=True, trim_top_db=top_db)
    trimmed = fe.trim_silence(y, params)
    expected = _reference_trim(y, 400, 160, top_db)
    np.testing.assert_array_equal(trimmed, expected)
    # the tone is kept whole, the silence around it is gone
    assert len(trimmed) < len(y) - 5000 and np.abs(trimmed).max() == np.abs(y).max()
    assert (len(trimmed) < 9000) == (top_db == 20.0)


def test_load_audio_trims_before_varup(tmp_path):
    sr = 16000
    y = np.concatenate([np.zeros(4000), _sine(440, 3200, sr), np.zeros(4000)])
    sf.write(tmp_path / 'a.wav', y, sr, subtype='FLOAT')
    params = _params(trim_silence=True, load_mode='varup', audio_len_s=1.0)
    audio = fe.load_audio(tmp_path / 'a.wav', params)
    core = fe.trim_silence(y.astype(np.float32), params)
    assert len(core) < 4000 and len(audio) == sr  # trimmed, then repeated up to 1 s
    np.testing.assert_array_equal(audio, np.tile(core, 8)[:sr])


def test_trim_and_crop_parameters_and_the_cache_key(wav_clips):
    cfg, table = wav_clips
    first = fe.cache_dir(cfg, table)
    cfg['extract'].update(crop='random_crop', crop_frames=7, clip_frames=30)
    assert fe.cache_dir(cfg, table) == first  # cropping happens after extraction
    cfg['extract']['trim_silence'] = True
    trimmed = fe.cache_dir(cfg, table)
    assert trimmed != first
    cfg['extract']['trim_top_db'] = 30.0
    assert fe.cache_dir(cfg, table) not in (first, trimmed)


# ----------------------------------------------------------------------------- issue 11

def test_load_audio_rejects_nan_and_inf_samples(tmp_path):
    """Issue 11, case 7: NaN / inf samples are a bad file, named, not a librosa error."""
    for name, bad in [('nan.wav', np.nan), ('inf.wav', np.inf)]:
        y = _sine(440, 4000, 16000)
        y[100] = bad
        sf.write(tmp_path / name, y, 16000, subtype='FLOAT')
        with pytest.raises(fe.BadAudio, match=f'{name}: samples that are NaN or infinite'):
            fe.load_audio(tmp_path / name, _params())


def test_nan_audio_is_skipped_and_counted(wav_clips):
    cfg, table = wav_clips
    y = _sine(440, 4000, 16000)
    y[5] = np.nan
    sf.write(table.path[2], y, 16000, subtype='FLOAT')
    store = fe.features(cfg, table, progress=False)
    assert store.failed == ['2.wav'] and store.length[2] == 0 and (store.length[[0, 1]] > 0).all()


def _touch_other_audio(path, freq):
    """Rewrite a clip in place with other audio (and a later modification time)."""
    mtime = os.stat(path).st_mtime_ns
    sf.write(path, _sine(freq, 3000, 16000), 16000, subtype='PCM_16')
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))


def test_changed_audio_is_extracted_again_and_only_it(wav_clips, monkeypatch):
    """Issue 11, case 3: a file repaired in place is re-extracted; the others reused."""
    cfg, table = wav_clips
    first = fe.features(cfg, table, progress=False)
    before = [np.array(first.clip(i)) for i in range(len(table))]
    _touch_other_audio(table.path[3], 700)
    seen = []
    real = fe._clip_frames
    monkeypatch.setattr(fe, '_clip_frames',
                        lambda path, **kw: seen.append(path) or real(path, **kw))
    second = fe.features(cfg, table, progress=False)
    assert seen == [table.path[3]] and second.path == first.path
    expected = fe.log_mel(fe.load_audio(table.path[3], cfg['extract']), cfg['extract'])
    np.testing.assert_array_equal(second.clip(3), expected)
    assert len(expected) != len(before[3])  # the new audio, not the cached frames
    for i in (0, 1, 2, 4):
        np.testing.assert_array_equal(second.clip(i), before[i])
    seen.clear()
    fe.features(cfg, table, progress=False)  # unchanged now: nothing is computed
    assert seen == []


def test_changed_audio_with_feat_ext_false_is_refused(wav_clips):
    cfg, table = wav_clips
    fe.features(cfg, table, progress=False)
    _touch_other_audio(table.path[0], 900)
    cfg['ctrl']['feat_ext'] = False
    with pytest.raises(ConfigError, match='audio files changed'):
        fe.features(cfg, table, progress=False)


def test_cached_run_reports_the_clips_that_failed(wav_clips, caplog):
    """Issue 11, case 13: the manifest keeps why clips failed; a cached run says so too."""
    cfg, table = wav_clips
    open(table.path[1], 'wb').close()
    fe.features(cfg, table, progress=False)
    caplog.clear()
    with caplog.at_level('WARNING'):
        store = fe.features(cfg, table, progress=False)
    assert '1 audio file(s) could not be read' in caplog.text and '1.wav' in caplog.text
    manifest = json.loads((store.path / 'manifest.json').read_text())
    assert manifest['failed'] == ['1.wav'] and '1.wav' in manifest['errors'][0]


def test_unwritable_features_folder_is_one_line(wav_clips, monkeypatch):
    """Issue 11, case 10: a read-only features folder without a cache names the folder.
    (Tests run as root, which chmod does not stop: the refusal is simulated.)"""
    cfg, table = wav_clips
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):
        if str(path).startswith(cfg['ctrl']['features_dir']):
            raise PermissionError(13, 'Permission denied', str(path))
        return real_mkdir(path, *args, **kwargs)
    monkeypatch.setattr(os, 'mkdir', read_only)
    with pytest.raises(ConfigError) as err:
        fe.features(cfg, table, progress=False)
    assert str(err.value).startswith('cannot create the feature cache folder ')
    assert 'Permission denied (ctrl.features_dir)' in str(err.value)


# ----------------------------------------------------------------------------- extract.window

# Periodic windows of length n, written out (the DCASE systems' Hann; Blackman).
WINDOWS = {
    'hann': lambda n: 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n),
    'blackman': lambda n: (0.42 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
                           + 0.08 * np.cos(4 * np.pi * np.arange(n) / n)),
    'hamming': lambda n: 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n) / n),
}


@pytest.mark.parametrize('window', list(WINDOWS))
def test_window_frames_against_librosa_stft_with_that_window(window):
    sr, n = 16000, 6000
    y = (_sine(700, n, sr) + 0.01 * np.random.default_rng(3).standard_normal(n))
    y = y.astype(np.float32)
    params = _params(window=window)
    stft = librosa.stft(y + params['eps'], n_fft=512, hop_length=160, win_length=400,
                        window=WINDOWS[window](400), center=True, pad_mode='reflect')
    mel = librosa.filters.mel(sr=sr, n_fft=512, n_mels=40, fmin=0, fmax=8000, htk=False,
                              norm=None) @ (np.abs(stft) ** 2)
    ref = np.log10(mel + params['eps']).T
    out = fe.log_mel(y, params)
    np.testing.assert_allclose(out, ref, rtol=1e-4)
    if window != 'hamming':  # the window is really applied: other frames than Hamming's
        assert np.abs(out - fe.log_mel(y, _params())).max() > 0.01


def test_window_is_part_of_the_cache_key_and_hamming_keeps_the_old_key(wav_clips):
    import hashlib
    cfg, table = wav_clips
    default = fe.cache_dir(cfg, table)
    # The key as it was formed before extract.window and extract.features existed (no
    # 'window' or 'features' entry).
    root = os.path.normpath(cfg['ctrl']['dataset_path'])
    clips = [os.path.relpath(os.path.abspath(p), os.path.abspath(root)) for p in table.path]
    params = {k: v for k, v in cfg['extract'].items()
              if k not in fe.PATCH_KEYS and k not in ('window', 'features')}
    old = hashlib.sha1(json.dumps({'extract': params, 'clips': clips}, sort_keys=True,
                                  separators=(',', ':')).encode()).hexdigest()[:12]
    assert default.name == old
    cfg['extract']['window'] = 'hann'
    assert fe.cache_dir(cfg, table) != default


def test_unknown_window_is_refused(make_cfg):
    with pytest.raises(ConfigError, match=r"extract.window is 'kaiser'; valid values: hamming, "
                                          r'hann'):
        make_cfg('extract.window=kaiser')
