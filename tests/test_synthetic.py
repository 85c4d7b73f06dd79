import hashlib

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import synthetic
from config import ConfigError

SMALL = dict(n_classes=3, train_per_class=10, test_per_class=2, clean_fraction=0.2,
             noise_rate=0.4, min_dur=0.2, max_dur=0.5, sr=16000, seed=7)


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def syn_dataset(tmp_path_factory):
    return synthetic.make_dataset(tmp_path_factory.mktemp('syn') / 'data', **SMALL)


def _tables(root):
    return (pd.read_csv(root / synthetic.META_DIR / 'train.csv'),
            pd.read_csv(root / synthetic.META_DIR / 'test.csv'))


def test_same_seed_gives_identical_bytes(syn_dataset, tmp_path):
    again = synthetic.make_dataset(tmp_path / 'again', **SMALL)
    assert _digests(again) == _digests(syn_dataset)
    other = synthetic.make_dataset(tmp_path / 'other', **{**SMALL, 'seed': 8})
    assert _digests(other) != _digests(syn_dataset)


def test_csv_columns_counts_and_files(syn_dataset):
    train, test = _tables(syn_dataset)
    assert list(train.columns) == ['fname', 'label', 'aso_id', 'manually_verified',
                                   'noisy_small', 'true_label']
    assert list(test.columns) == ['fname', 'label', 'aso_id']
    assert len(train) == 30 and len(test) == 6
    fnames = pd.concat([train.fname, test.fname])
    assert fnames.is_unique and fnames.str.fullmatch(r'\d+\.wav').all()
    for folder, table in [(synthetic.TRAIN_DIR, train), (synthetic.TEST_DIR, test)]:
        assert sorted(p.name for p in (syn_dataset / folder).iterdir()) == sorted(table.fname)
    names = synthetic.FSDNOISY18K_CLASSES[:3]
    assert sorted(set(train.true_label)) == sorted(names)
    assert (test.label.value_counts() == 2).all() and set(test.label) == set(names)
    aso = dict(zip(train.label, train.aso_id))
    assert len(set(aso.values())) == 3 and all(test.aso_id == test.label.map(aso))


def test_clean_and_noisy_labels(syn_dataset):
    train, _ = _tables(syn_dataset)
    clean, noisy = train[train.manually_verified == 1], train[train.manually_verified == 0]
    assert (clean.groupby('true_label').size() == round(0.2 * 10)).all()
    assert (clean.label == clean.true_label).all() and (clean.noisy_small == 0).all()
    assert (noisy.label != noisy.true_label).sum() == round(0.4 * len(noisy))
    assert noisy.noisy_small.sum() == len(noisy) // 2


def test_audio_is_mono_pcm16_within_durations(syn_dataset):
    for path in sorted(syn_dataset.rglob('*.wav')):
        info = sf.info(path)
        assert (info.channels, info.subtype, info.samplerate) == (1, 'PCM_16', 16000)
        assert 0.2 <= info.frames / info.samplerate <= 0.5
        audio, _ = sf.read(path)
        assert 0.05 < np.max(np.abs(audio)) <= 0.9


def test_class_names_and_disjoint_ranges():
    names = synthetic.class_names(22)
    assert names[:20] == synthetic.FSDNOISY18K_CLASSES and names[20:] == ['class_20', 'class_21']
    recipes = synthetic.class_recipes(22)
    for family in synthetic.FAMILIES:
        bands = sorted(band for fam, band, _ in recipes if fam == family)
        assert all(low < high for low, high in bands)
        assert all(a[1] < b[0] for a, b in zip(bands, bands[1:]))


def test_tonal_clip_peaks_inside_its_class_band():
    rng = np.random.default_rng(0)
    sr, n = 16000, 16000
    for recipe in synthetic.class_recipes(20):
        if recipe[0] != 'tonal':
            continue
        spectrum = np.abs(np.fft.rfft(synthetic.synth_clip(rng, recipe, n, sr)))
        peak = np.fft.rfftfreq(n, 1 / sr)[np.argmax(spectrum)]
        assert recipe[1][0] - 1 <= peak <= recipe[1][1] + 1


def test_refuses_existing_dataset_and_bad_arguments(syn_dataset, tmp_path):
    with pytest.raises(ConfigError, match='already holds'):
        synthetic.make_dataset(syn_dataset, **SMALL)
    with pytest.raises(ConfigError, match='noise_rate'):
        synthetic.make_dataset(tmp_path / 'x', **{**SMALL, 'noise_rate': 1.5})
    with pytest.raises(ConfigError, match='min_dur'):
        synthetic.make_dataset(tmp_path / 'x', **{**SMALL, 'min_dur': 0.6})


def test_command_line(tmp_path, capsys):
    args = ['--out', str(tmp_path / 'cli'), '--n-classes', '2', '--train-per-class', '4',
            '--test-per-class', '1', '--min-dur', '0.1', '--max-dur', '0.2', '--sr', '16000']
    assert synthetic.main(args) == 0
    assert '2 classes, 8 train clips' in capsys.readouterr().out
    assert synthetic.main(args) == 2
    assert 'already holds' in capsys.readouterr().err
