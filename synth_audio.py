"""The sounds of synthetic.py's classes: one recipe per class (a sound family and a
class-specific range of its key parameter), and the clips drawn from recipes.

Each class is one recipe: a sound family (tonal, noise band, harmonic, chirp, impulsive,
AM, FM) and a class-specific range of that family's key parameter (frequency, formant
centre or rate). Classes of one family have neighbouring, disjoint ranges, so they are
learnable from log-mel patches but not trivially; every clip draws its own parameters
inside its class's range, its own envelope, level and background noise (SNR 5-30 dB).
"""
import numpy as np
from scipy.fft import next_fast_len
from scipy.signal import fftconvolve

# Each synth function: (rng, n samples, sr, (low, high) class range, member index within
# its family) -> float64 signal of n samples, any scale (the clip is rescaled later).

def _log_uniform(rng, low, high):
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _tonal(rng, n, sr, band, member):
    t = np.arange(n) / sr
    return np.sin(2 * np.pi * _log_uniform(rng, *band) * t + rng.uniform(0, 2 * np.pi))


def _noise_band(rng, n, sr, band, member):
    # Gaussian band-pass applied to a white spectrum: one inverse FFT, no filter design.
    centre = _log_uniform(rng, *band)
    half_width = centre * rng.uniform(0.05, 0.15)
    spectrum, freqs = _white_spectrum(rng, n, sr)
    return _to_time(spectrum * np.exp(-0.5 * ((freqs - centre) / half_width) ** 2), n)


def _harmonic(rng, n, sr, band, member):
    # The pitch is shared by all harmonic classes; the class is the formant (spectral
    # envelope centre), a Gaussian bump half an octave wide on the partials. One period is
    # tabulated and read at the pitch (the sum of sines per sample would be 30x slower).
    f0 = _log_uniform(rng, 110, 440)
    formant = _log_uniform(rng, *band)
    harmonics = np.arange(1, 31)
    gains = np.exp(-0.5 * (np.log2(f0 * harmonics / formant) / 0.5) ** 2)
    gains[f0 * harmonics >= 0.45 * sr] = 0
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))
    grid = np.arange(4096) / 4096
    period = np.sin(2 * np.pi * grid[:, None] * harmonics + phases) @ gains
    return np.interp(f0 * np.arange(n) / sr, grid, period, period=1)


def _chirp(rng, n, sr, band, member):
    # Repeated log sweeps across the class band; even members sweep up, odd ones down.
    period = rng.uniform(0.15, 0.5)
    low, high = band[0] * rng.uniform(1, 1.15), band[1] / rng.uniform(1, 1.15)
    position = (np.arange(n) / sr / period + rng.uniform()) % 1
    if member % 2:
        position = 1 - position
    return np.sin(2 * np.pi * np.cumsum(low * (high / low) ** position) / sr)


def _impulsive(rng, n, sr, band, member):
    # Decaying noise bursts at a class-specific rate (Hz), with +-15 % jitter.
    rate = _log_uniform(rng, *band)
    gaps = rng.uniform(0.85, 1.15, int(n / sr * rate) + 2) / rate
    onsets = (np.cumsum(gaps) - gaps[0] * rng.uniform()) * sr
    onsets = onsets[(onsets >= 0) & (onsets < n)].astype(int)
    train = np.zeros(n)
    train[onsets] = rng.uniform(0.5, 1, len(onsets))
    tau = rng.uniform(0.002, 0.008) * sr
    burst = rng.standard_normal(int(5 * tau) + 1) * np.exp(-np.arange(int(5 * tau) + 1) / tau)
    return fftconvolve(train, burst)[:n]


def _am(rng, n, sr, band, member):
    # The carrier is shared by all AM classes; the class is the modulation rate (Hz).
    t = np.arange(n) / sr
    carrier = np.sin(2 * np.pi * _log_uniform(rng, 300, 3000) * t)
    depth = rng.uniform(0.7, 1)
    phase = 2 * np.pi * _log_uniform(rng, *band) * t + rng.uniform(0, 2 * np.pi)
    return (1 - depth * (0.5 + 0.5 * np.cos(phase))) * carrier


def _fm(rng, n, sr, band, member):
    # Vibrato of 3-8 % at 3-8 Hz around a class-specific carrier.
    t = np.arange(n) / sr
    vibrato = rng.uniform(0.03, 0.08) * np.sin(2 * np.pi * rng.uniform(3, 8) * t)
    frequency = _log_uniform(rng, *band) * (1 + vibrato)
    return np.sin(2 * np.pi * np.cumsum(frequency) / sr)


# family: (synth function, low, high) of the range that the family's classes split.
FAMILIES = {
    'tonal': (_tonal, 250.0, 3000.0),
    'noise_band': (_noise_band, 400.0, 6000.0),
    'harmonic': (_harmonic, 500.0, 4000.0),
    'chirp': (_chirp, 300.0, 4000.0),
    'impulsive': (_impulsive, 2.0, 16.0),
    'am': (_am, 2.0, 16.0),
    'fm': (_fm, 400.0, 4000.0),
}


def _bands(low, high, n):
    """n neighbouring log-spaced bands of [low, high], each shrunk by 5 % (in log) per side
    so that neighbours are close but never overlap."""
    edges = np.geomspace(low, high, n + 1)
    shrink = (high / low) ** (0.05 / n)
    return [(a * shrink, b / shrink) for a, b in zip(edges[:-1], edges[1:])]


def class_recipes(n_classes):
    """Class k -> (family, (low, high), member): families are dealt round-robin."""
    names = list(FAMILIES)
    recipes = [None] * n_classes
    for f, family in enumerate(names):
        members = list(range(f, n_classes, len(names)))
        if not members:  # fewer classes than families
            break
        _, low, high = FAMILIES[family]
        for member, (k, band) in enumerate(zip(members, _bands(low, high, len(members)))):
            recipes[k] = (family, band, member)
    return recipes


def _white_spectrum(rng, n, sr):
    """Complex Gaussian rfft spectrum of white noise of a fast FFT length >= n, with its
    frequencies; _to_time cuts the signal back to n (prime lengths are slow to FFT)."""
    size = next_fast_len(n, real=True)
    bins = size // 2 + 1
    spectrum = rng.standard_normal(bins) + 1j * rng.standard_normal(bins)
    return spectrum, np.fft.rfftfreq(size, 1 / sr)


def _to_time(spectrum, n):
    # irfft's default length 2 (bins - 1) is one short of an odd FFT length; when that
    # odd length is n itself, ask for n samples (every other length is unchanged).
    return np.fft.irfft(spectrum, max(n, 2 * (spectrum.size - 1)))[:n]


def _pink_noise(rng, n, sr):
    spectrum, freqs = _white_spectrum(rng, n, sr)
    spectrum[0] = 0
    spectrum[1:] /= np.sqrt(freqs[1:])
    return _to_time(spectrum, n)


def _envelope(rng, n, sr):
    """Linear attack (5-50 ms), exponential decay (time constant 0.5-3 x the clip),
    10 ms fade-out so that no clip ends on a click."""
    t = np.arange(n) / sr
    attack = rng.uniform(0.005, 0.05)
    decay = rng.uniform(0.5, 3) * n / sr
    env = np.minimum(t / attack, 1) * np.exp(-t / decay)
    return env * np.minimum((n - 1 - np.arange(n)) / (0.01 * sr), 1)


def synth_mix(rng, recipes, n, sr):
    """One clip of the sources of several class recipes: each source is signal x envelope;
    several are brought to unit RMS (so that none drowns the others) and summed; then a
    pink background at 5-30 dB SNR and a peak of 0.1-0.9."""
    sources = [FAMILIES[family][0](rng, n, sr, band, member) * _envelope(rng, n, sr)
               for family, band, member in recipes]
    # A lone source is left as it is: the clip is rescaled at the end anyway, and the
    # single-label datasets stay byte-identical to those written before mixing existed.
    signal = sources[0] if len(sources) == 1 else sum(
        source / (np.sqrt(np.mean(source ** 2)) + 1e-12) for source in sources)
    noise = _pink_noise(rng, n, sr)
    snr_db = rng.uniform(5, 30)
    scale = np.sqrt(np.mean(signal ** 2) / (np.mean(noise ** 2) * 10 ** (snr_db / 10) + 1e-20))
    clip = signal + scale * noise
    return clip * rng.uniform(0.1, 0.9) / (np.max(np.abs(clip)) + 1e-12)


def synth_clip(rng, recipe, n, sr):
    """One clip of a class recipe: signal x envelope + pink background, peak 0.1-0.9."""
    return synth_mix(rng, [recipe], n, sr)

