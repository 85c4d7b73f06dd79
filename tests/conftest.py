"""Shared fixtures: a tiny FSDnoisy18k layout, default configs, a tiny frame matrix, and
the tiny synthetic dataset and config of the tests that run main.py (TINY)."""
import os

os.environ['KERAS_BACKEND'] = 'tensorflow'
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402


# Tiny FSDnoisy18k-style metadata: 3 classes, written unsorted so that sorting is tested.
TRAIN_ROWS = [
    # fname, label, aso_id, manually_verified, noisy_small
    ('a1.wav', 'Wind', '/m/03m9d0z', 1, 0),
    ('a2.wav', 'Wind', '/m/03m9d0z', 0, 1),
    ('a3.wav', 'Wind', '/m/03m9d0z', 0, 0),
    ('b1.wav', 'Acoustic_guitar', '/m/042v_gx', 1, 0),
    ('b2.wav', 'Acoustic_guitar', '/m/042v_gx', 0, 1),
    ('b3.wav', 'Acoustic_guitar', '/m/042v_gx', 0, 0),
    ('b4.wav', 'Acoustic_guitar', '/m/042v_gx', 0, 1),
    ('c1.wav', 'Rain', '/m/06mb1', 1, 0),
    ('c2.wav', 'Rain', '/m/06mb1', 0, 0),
    ('c3.wav', 'Rain', '/m/06mb1', 0, 1),
]
TEST_ROWS = [
    ('t1.wav', 'Rain', '/m/06mb1'),
    ('t2.wav', 'Wind', '/m/03m9d0z'),
    ('t3.wav', 'Acoustic_guitar', '/m/042v_gx'),
    ('t4.wav', 'Wind', '/m/03m9d0z'),
]


def write_dataset(root, train_rows=TRAIN_ROWS, test_rows=TEST_ROWS, extra=True):
    """Write FSDnoisy18k.meta/{train,test}.csv under root; return the two DataFrames."""
    meta = Path(root) / 'FSDnoisy18k.meta'
    meta.mkdir(parents=True, exist_ok=True)
    for audio in ('FSDnoisy18k.audio_train', 'FSDnoisy18k.audio_test'):
        (Path(root) / audio).mkdir(exist_ok=True)
    train = pd.DataFrame(train_rows, columns=['fname', 'label', 'aso_id',
                                              'manually_verified', 'noisy_small'])
    test = pd.DataFrame(test_rows, columns=['fname', 'label', 'aso_id'])
    if extra:
        train['comment'] = [f'note {i}' for i in range(len(train))]
    train.to_csv(meta / 'train.csv', index=False)
    test.to_csv(meta / 'test.csv', index=False)
    return train, test


def clip_table(classes, n_unverified, n_verified, n_test, seed):
    """A clip table like the dataset adapters' (datasets.load), without audio: single-label
    clips of random classes, unverified training rows first, then verified ones, then test."""
    rng = np.random.default_rng(seed)
    n = n_unverified + n_verified + n_test
    idx = rng.integers(0, len(classes), n)
    return pd.DataFrame({
        'fname': [f'{i}.wav' for i in range(n)], 'path': [f'/x/{i}.wav' for i in range(n)],
        'label': np.asarray(classes, object)[idx], 'label_idx': idx,
        'labels': [(classes[k],) for k in idx], 'labels_idx': [(k,) for k in idx],
        'verified': [0] * n_unverified + [1] * (n_verified + n_test),
        'subset': ['train'] * (n_unverified + n_verified) + ['test'] * n_test})


@pytest.fixture
def fsd():
    """(write_dataset, TRAIN_ROWS, TEST_ROWS) for tests that write their own variant."""
    return write_dataset, TRAIN_ROWS, TEST_ROWS


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / 'FSDnoisy18k'
    train, test = write_dataset(root)
    return root, train, test


@pytest.fixture
def make_cfg():
    """Validated default config with overrides, no file."""
    import config

    def make(*overrides):
        return config.load_config(None, list(overrides))
    return make


@pytest.fixture
def mixed_float16():
    """The mixed_float16 Keras policy for one test, float32 again afterwards."""
    import keras
    keras.mixed_precision.set_global_policy('mixed_float16')
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy('float32')


# Clip lengths in frames for patch_len 8, hop 3: short (wraps), exact, long, failed (0).
CLIP_LENGTHS = [5, 8, 20, 0, 14, 1]


@pytest.fixture
def clips():
    """Frame matrix [total_frames, n_mels] of clips stacked back to back, with distinct
    values per band, plus the clip starts/lengths and the patch geometry."""
    rng = np.random.default_rng(7)
    lengths = np.array(CLIP_LENGTHS, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n_mels = 4
    frames = (rng.normal(size=(int(lengths.sum()), n_mels)) * np.arange(1, n_mels + 1)
              + 3.0).astype(np.float32)
    return {'frames': frames, 'starts': starts, 'lengths': lengths,
            'patch_len': 8, 'patch_hop': 3, 'n_mels': n_mels}


@pytest.fixture
def readable_png():
    """Check a figure file: a PNG that matplotlib reads, of a readable size, not blank."""
    def check(path):
        import matplotlib.image
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 200, path
        assert image[..., :3].std() > 0.05, f'{path} is blank'
    return check


# ----------------------------------------------------------------------------- tiny runs

# The config of the tests that run main.py on synthetic data (test_e2e, test_reliability,
# test_sweep): small features, so that an epoch takes about a second on 2 CPU cores.
TINY = {
    'ctrl': {'train_data': 'all', 'verbose': 0, 'workers': 2},
    'extract': {'fs': 16000, 'fmax': 8000, 'n_fft': 512, 'win_length_samples': 400,
                'hop_length_samples': 160, 'n_mels': 32, 'patch_len': 32, 'patch_hop': 16,
                'audio_len_s': 1},
    'learn': {'n_classes': 5, 'batch_size': 32, 'n_epochs': 8, 'patience': 8,
              'mixup_warmup_epochs': 2, 'mode': 1, 'mixup': False, 'predict_batch_size': 256},
    'loss': {'type': 'CCE'},
}


def tiny_dataset(root, n_classes, train_per_class, test_per_class, seed, noise_rate=0.0,
                 max_dur=1.0):
    """A synthetic FSDnoisy18k-layout dataset at TINY's rate (16 kHz, 30 % of the training
    clips verified, clips of 0.5 s to max_dur) under root -> root."""
    import synthetic
    return synthetic.make_dataset(root, n_classes=n_classes, train_per_class=train_per_class,
                                  test_per_class=test_per_class, clean_fraction=0.3,
                                  noise_rate=noise_rate, min_dur=0.5, max_dur=max_dur,
                                  sr=16000, seed=seed)


def write_tiny_config(path, dataset, root, changes=None):
    """TINY with {section: {key: value}} changes, reading dataset and keeping features and
    logs under root (root/features, root/logs), written as YAML to path -> path."""
    cfg = {section: dict(values) for section, values in TINY.items()}
    for section, values in (changes or {}).items():
        cfg.setdefault(section, {}).update(values)
    cfg['ctrl'].update(dataset_path=str(dataset), features_dir=str(root / 'features'),
                       logs_dir=str(root / 'logs'))
    path.write_text(yaml.safe_dump(cfg))
    return path
