"""extract.load_mode zeropad (Akiyama & Sato, Sec. 3.3.1): short clips are extended by zeros
to extract.audio_len_s, not repeated; the padded length must cover the frames a clip is read
over, or the read would still repeat it."""
import numpy as np
import pytest
import soundfile as sf

import config
import feat_extract as fe
from config import ConfigError

SMALL = dict(fs=16000, n_fft=512, win_length_samples=400, hop_length_samples=160, n_mels=40,
             fmin=0, fmax=8000, normalize_audio=False)


def _params(**changes):
    return {**config.DEFAULTS['extract'], **SMALL, **changes}


def test_short_clips_are_zero_padded_to_audio_len(tmp_path):
    y = np.random.default_rng(1).uniform(-0.5, 0.5, 3000)
    sf.write(tmp_path / 'short.wav', y, 16000, subtype='FLOAT')
    out = fe.load_audio(tmp_path / 'short.wav', _params(load_mode='zeropad', audio_len_s=1))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.pad(y, (0, 16000 - 3000)), atol=1e-7)
    sf.write(tmp_path / 'long.wav', np.tile(y, 7), 16000, subtype='FLOAT')
    long = fe.load_audio(tmp_path / 'long.wav', _params(load_mode='zeropad', audio_len_s=1))
    np.testing.assert_allclose(long, np.tile(y, 7), atol=1e-7)  # long clips unchanged


def test_padding_follows_peak_normalisation(tmp_path):
    """The clip is normalised on its own samples, then padded (zeros stay zeros)."""
    y = 0.25 + np.random.default_rng(2).uniform(-0.5, 0.5, 1000)
    sf.write(tmp_path / 'short.wav', y, 16000, subtype='FLOAT')
    out = fe.load_audio(tmp_path / 'short.wav', _params(load_mode='zeropad', audio_len_s=0.25,
                                                        normalize_audio=True))
    centred = y - y.mean()
    expected = np.pad(centred / (np.abs(centred).max() + 0.005), (0, 4000 - 1000))
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_zeropad_must_cover_the_frames_a_clip_is_read_over():
    # 2 s at hop 882 / 44.1 kHz: 1 + 88200 // 882 = 101 frames >= patch_len 100
    config.load_config(None, ['extract.load_mode=zeropad', 'ctrl.run_name=x'])
    with pytest.raises(ConfigError) as err:
        config.load_config(None, ['extract.load_mode=zeropad', 'extract.crop=random_crop',
                                  'ctrl.run_name=x'])
    assert str(err.value) == (
        'extract.load_mode zeropad pads clips to extract.audio_len_s = 2 s (101 frames), '
        'fewer than extract.clip_frames = 2000: set audio_len_s to at least 40 s, or short '
        'clips are repeated')
    # (2000 - 1) frames x 882 / 44100 = 39.98 s; 40 s gives 1 + 1764000 // 882 = 2001 frames
    config.load_config(None, ['extract.load_mode=zeropad', 'extract.crop=random_crop',
                              'extract.audio_len_s=40', 'ctrl.run_name=x'])
    with pytest.raises(ConfigError, match='fewer than extract.patch_len = 300: set '
                                          'audio_len_s to at least 6 s'):
        config.load_config(None, ['extract.load_mode=zeropad', 'extract.patch_len=300',
                                  'ctrl.run_name=x'])
